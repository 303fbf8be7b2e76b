"""`genloom generate image` (diffusion, GAN and text-to-image models) and `genloom generate variations` (GANs)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..cli.options import (
    Adapter,
    Device,
    NoVerify,
    Seed,
    checkpoint_option,
    friendly,
    group,
    load_handle,
)
from ..cli.watermark import Watermark
from ..core.errors import GenloomError
from ..core.io import sha256_file
from ..media.image import read_generation_params, save_gif, save_image_grid, save_png, to_pil_image
from .handle import AutoencoderModel, GANModel, ImageHandle, image_watermark, watermark_images
from .params import file_record, generation_params, weights_of

__all__ = ["register"]


def generate_image(
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="A run folder written by `genloom train` "
                                                       "with an image recipe (e.g. digits-diffusion, digits-gan, "
                                                       "glyphs-text-to-image). With --like: by default the one the "
                                                       "PNG names.")] = None,
    like: Annotated[Optional[Path], typer.Option("--like", help="Redraw the image in this PNG (written by `genloom "
                                                 "generate image` or `genloom serve`) from the parameters it carries: "
                                                 "the same pixels on the same device and torch build. Options given "
                                                 "here override the PNG's; with --label, --prompt, --num-samples or "
                                                 "--seed it draws those instead, with the PNG's other settings.")]
    = None,
    adapter: Adapter = None,
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
    num_samples: Annotated[Optional[int], typer.Option("--num-samples", min=1, help="Images per label or prompt "
                                                       "(default 8; 1 with --like and a new label, prompt or "
                                                       "seed).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Sampler steps (default: the recipe's). More steps: "
                                                 "slower, usually better; 20 is plenty for dpmpp_2m.")] = None,
    sampler: Annotated[Optional[str], typer.Option("--sampler", help="ddpm, ddim, dpmpp_2m, euler or heun "
                                                   "(default: the recipe's, dpmpp_2m); flow-matching models "
                                                   "(digits-flow, distilled ones): euler or heun.")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale: 1 = none, "
                                                      "higher = closer to the label, less varied.")] = None,
    eta: Annotated[Optional[float], typer.Option("--eta", min=0.0, help="ddim only: 0 = deterministic (the default), "
                                                 "1 = as noisy as ddpm.")] = None,
    spacing: Annotated[Optional[str], typer.Option("--spacing", help="How the steps are spread over the noise levels: "
                                                   "leading (the default), trailing or linspace (flow-matching "
                                                   "models: trailing, which leading also gives, or linspace, "
                                                   "SD3's grid).")] = None,
    seed: Seed = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for one PNG per sample and grid.png.")] = Path("samples"),
    scale: Annotated[Optional[int], typer.Option("--scale", min=0, help="Enlarge the saved images this many times "
                                                 "(nearest neighbour); 0 (the default) = to at least 64 "
                                                 "pixels.")] = None,
    truncation: Annotated[Optional[float], typer.Option("--truncation", help="GANs only: scale of the latents "
                                                        "(default 1); below 1 gives more typical, less varied "
                                                        "images.")] = None,
    watermark: Watermark = None,
    no_verify: NoVerify = False,
    device: Device = "auto",
) -> None:
    """Draw images with a diffusion model, a text-to-image model or a GAN; writes OUT/LABEL_SEED.png (or
    OUT/PROMPT_SEED.png) for each sample and OUT/grid.png. Every PNG carries the parameters that drew it
    (text chunks); --like FILE.png draws it again."""
    mark = image_watermark(watermark, where="--watermark")
    recipe = read_generation_params(like) if like is not None else None
    if recipe is not None:
        checkpoint = checkpoint or _recorded_checkpoint(recipe, like)
        if adapter is None and recipe.get("adapter"):
            adapter = Path(recipe["adapter"])
    elif checkpoint is None:
        raise GenloomError("--checkpoint: give the run folder of an image model (or --like FILE.png to redraw an "
                           "image genloom drew)")
    model = load_handle(checkpoint, device, ImageHandle, "an image model; use `genloom generate text` for text models",
                        adapter, verify=not no_verify)
    if isinstance(model, AutoencoderModel):
        raise GenloomError(f"{checkpoint} is an autoencoder: it makes no images on its own; train a latent diffusion "
                           f"model on it (e.g. the glyphs64-latent recipe, model.autoencoder={checkpoint})")
    drawing = dict(label=label, prompt=prompt, negative_prompt=negative_prompt, init_image=init_image,
                   strength=strength, mask=mask, num_samples=num_samples, steps=steps, sampler=sampler,
                   guidance=guidance, eta=eta, spacing=spacing, seed=seed, scale=scale, truncation=truncation)
    keep = None                      # --like redrawing a batch: the index of its one image to write
    if recipe is not None:
        keep = _like(model, recipe, like, checkpoint, drawing)
    for name, default in (("num_samples", 8), ("eta", 0.0), ("spacing", "leading"), ("scale", 0),
                          ("truncation", 1.0)):
        if drawing[name] is None:
            drawing[name] = default
    written = dict(checkpoint=str(Path(checkpoint).resolve()), weights=weights_of(model), keep=keep, like=like,
                   adapter=str(Path(adapter).resolve()) if adapter else None, watermark=mark)
    if model.prompted:
        _from_prompts(model, checkpoint, out=out, written=written, **drawing)
        return
    label, prompt, negative_prompt, init_image, strength, mask, num_samples, steps, sampler, guidance, eta, spacing, \
        seed, scale, truncation = drawing.values()
    text_options = [name for name, value in (("--prompt", prompt), ("--negative-prompt", negative_prompt),
                                             ("--init-image", init_image), ("--strength", strength),
                                             ("--mask", mask)) if value is not None and value != []]
    if text_options:
        raise GenloomError(f"{', '.join(text_options)} appl(y/ies) to text-to-image models; {checkpoint} is not one")
    labels = list(label) if label else (model.labels if model.num_classes else None)
    if isinstance(model, GANModel):
        diffusion = [name for name, value in (("--steps", steps), ("--sampler", sampler), ("--guidance", guidance),
                                              ("--eta", eta or None), ("--spacing", None if spacing == "leading" else
                                                                        spacing)) if value is not None]
        if diffusion:
            raise GenloomError(f"{checkpoint} is a GAN: it makes each image in one pass, so {', '.join(diffusion)} "
                               "do(es) not apply (those are diffusion-sampler options)")
        images = model.generate(labels, num_samples=num_samples, seed=seed, truncation=truncation)
        options = {"truncation": truncation}
    else:
        if truncation != 1.0:
            raise GenloomError("--truncation applies to GANs only; this is a diffusion model (try --guidance)")
        images = model.generate(labels, num_samples=num_samples, steps=steps, sampler=sampler, guidance=guidance,
                                seed=seed, spacing=spacing, eta=eta, progress=True)
        steps, sampler, guidance = model.sampling(steps, sampler, guidance)
        options = {"steps": steps, "sampler": sampler, "guidance": guidance, "spacing": spacing, "eta": eta}
    seed = model.last_seed
    scale = scale or max(1, 64 // model.image_size)
    out.mkdir(parents=True, exist_ok=True)
    # Sample i (label-major) comes from seed + i: `--label L --num-samples 1 --seed S` redraws L_S.png.
    requested = [name for name in (labels or ["sample"]) for _ in range(num_samples)]
    names = [f"{name}_{seed + i}" for i, name in enumerate(requested)]
    batch = {"labels": labels, "num_samples": num_samples, "seed": seed}
    _write(model, images, names, batch, options, scale, out, written)
    if keep is None:
        save_image_grid(images, out / "grid.png", nrow=num_samples if labels else None, scale=scale)
        _mark_file(out / "grid.png", mark)
        typer.echo(f"genloom: seed {seed}; wrote {len(images)} images and grid.png to {out}", err=True)


def _mark_file(path: Path, mark) -> None:
    """Mark a PNG genloom just wrote (grid.png) in place."""
    if mark is not None:
        from PIL import Image

        with Image.open(path) as picture:
            marked = mark.mark(picture.convert("RGB"), where=str(path))
        marked.save(path, format="PNG")


def _recorded_checkpoint(recipe: dict, like: Path) -> Path:
    folder = Path(str(recipe.get("checkpoint") or ""))
    if not recipe.get("checkpoint") or not folder.is_dir():
        served = f" (served as the model {recipe['model']!r})" if recipe.get("model") else ""
        raise GenloomError(f"--like {like}: it was drawn by the checkpoint {recipe.get('checkpoint')!r}{served}, which "
                           "is not a folder here; give --checkpoint DIR")
    return folder


def _like(model, recipe: dict, like: Path, checkpoint: Path, drawing: dict) -> int | None:
    """Fill `drawing` (the options as given, None where not) from the PNG's parameters; returns the index of the
    image to keep when the PNG's whole batch is redrawn (no new label, prompt, number or seed given)."""
    if recipe.get("kind") != model.serves:
        raise GenloomError(f"--like {like}: it was drawn by a {recipe.get('kind')} model; {checkpoint} holds a "
                           f"{model.serves} model")
    if recipe.get("weights") != weights_of(model):
        typer.echo(f"genloom: note: the weights in {checkpoint} are not the ones {like} was drawn with; the image "
                   "will differ", err=True)
    if str(model.device) != recipe.get("device"):
        typer.echo(f"genloom: note: {like} was drawn on {recipe.get('device')}, this runs on {model.device}; the "
                   "pixels may differ slightly", err=True)
    for name in ("negative_prompt", "strength", "steps", "sampler", "guidance", "eta", "spacing", "scale",
                 "truncation"):
        if drawing[name] is None:
            drawing[name] = recipe.get(name)
    for name in ("init_image", "mask"):
        record = recipe.get(name)
        if drawing[name] is None and record:
            path = Path(record["path"])
            if not path.is_file() or sha256_file(path) != record["sha256"]:
                raise GenloomError(f"--like {like}: its {name.replace('_', ' ')} {path} is gone or changed since (its "
                                   f"SHA-256 differs); give --{name.replace('_', '-')} FILE")
            drawing[name] = path
    batch = recipe.get("batch") or {}
    if all(drawing[name] in (None, []) for name in ("label", "prompt", "num_samples", "seed")):
        if "prompts" in batch:
            drawing["prompt"] = list(batch["prompts"])
        else:
            drawing["label"] = None if batch.get("labels") is None else [str(x) for x in batch["labels"]]
        drawing["num_samples"], drawing["seed"] = batch.get("num_samples"), batch.get("seed")
        return batch.get("index")
    if not drawing["label"] and not drawing["prompt"]:
        drawing["label"] = [recipe["label"]] if recipe.get("label") is not None else None
        drawing["prompt"] = [recipe["prompt"]] if recipe.get("prompt") is not None else None
    drawing["num_samples"] = drawing["num_samples"] or 1
    drawing["seed"] = recipe.get("seed") if drawing["seed"] is None else drawing["seed"]
    return None


def _write(model, images, names: list[str], batch: dict, options: dict, scale: int, out: Path, written: dict) -> None:
    """OUT/NAME.png for each image (only the kept one when --like redrew a batch), with its parameters."""
    keep = written["keep"]
    for i, (name, image) in enumerate(zip(names, images)):
        if keep is not None and i != keep:
            continue
        params = generation_params(model, checkpoint=written["checkpoint"], batch=batch, index=i, options=options,
                                   scale=scale, weights=written["weights"], adapter=written["adapter"])
        picture = to_pil_image(image, scale)
        if written["watermark"] is not None:    # before saving; the parameters never hold the key
            picture = written["watermark"].mark(picture, where=f"{name}.png")
        save_png(picture, out / f"{name}.png", params)
        if keep is not None:
            typer.echo(f"genloom: redrew {written['like']} as {out / f'{name}.png'} (seed {params['seed']})", err=True)


def _from_prompts(model, checkpoint, *, label, prompt, negative_prompt, init_image, strength, mask, num_samples, steps,
                  sampler, guidance, eta, spacing, seed, out, scale, truncation, written) -> None:
    """`generate image` of a text-to-image model: OUT/PROMPT_SEED.png per sample, grid.png, prompts.txt."""
    if label:
        raise GenloomError(f"{checkpoint} draws from a prompt, not a label; use --prompt \"...\"")
    if not prompt:
        raise GenloomError(f"{checkpoint} is a text-to-image model: say what to draw with --prompt, e.g. "
                           "--prompt \"a red letter A on the left on a white background\"")
    if truncation != 1.0:
        raise GenloomError("--truncation applies to GANs only; this is a diffusion model (try --guidance)")
    images = model.generate(list(prompt), num_samples=num_samples, steps=steps, sampler=sampler, guidance=guidance,
                            seed=seed, spacing=spacing, eta=eta, progress=True, negative_prompt=negative_prompt,
                            init_image=init_image, strength=strength, mask=mask)
    seed = model.last_seed
    steps, sampler, guidance = model.sampling(steps, sampler, guidance)
    options = {"steps": steps, "sampler": sampler, "guidance": guidance, "spacing": spacing, "eta": eta,
               "negative_prompt": negative_prompt, "strength": strength, "init_image": file_record(init_image),
               "mask": file_record(mask)}
    scale = scale or max(1, 64 // model.image_size)
    out.mkdir(parents=True, exist_ok=True)
    slugs = ["-".join(re.findall(r"[A-Za-z0-9]+", p))[:48] or "prompt" for p in prompt]
    names = [f"{slug}_{seed + i * num_samples + j}" for i, slug in enumerate(slugs) for j in range(num_samples)]
    _write(model, images, names, {"prompts": list(prompt), "num_samples": num_samples, "seed": seed}, options, scale,
           out, written)
    if written["keep"] is None:
        save_image_grid(images, out / "grid.png", nrow=num_samples, scale=scale)
        _mark_file(out / "grid.png", written["watermark"])
        (out / "prompts.txt").write_text("".join(f"{p}\n" for p in prompt))
        typer.echo(f"genloom: seed {seed}; wrote {len(images)} images, grid.png (a row per prompt) and prompts.txt "
                   f"to {out}", err=True)


def generate_variations(
    checkpoint: checkpoint_option("A run folder written by `genloom train` with a GAN recipe (e.g. digits-gan)."),
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
    watermark: Watermark = None,
    no_verify: NoVerify = False,
    device: Device = "auto",
) -> None:
    """Walk the latent space of a GAN from one seed to another: an animated GIF of smooth variations."""
    mark = image_watermark(watermark, where="--watermark")
    model = load_handle(checkpoint, device, GANModel, "a GAN; variations walk a GAN's latent space (train e.g. "
                        "digits-gan)", verify=not no_verify)
    if out.suffix.lower() != ".gif":
        raise GenloomError(f"--out {out}: the variations are an animated GIF; give a name ending in .gif")
    images = model.interpolate(label, seed=seed, to_seed=to_seed, frames=frames)
    scale = scale or max(1, 64 // model.model.config.image_size)
    if mark is None:
        save_gif(images, out, scale=scale, seconds=seconds)
    else:                               # each frame marked as saved (the GIF's palette keeps grey exactly)
        save_gif(watermark_images(images, mark, scale), out, scale=1, seconds=seconds)
    save_image_grid(images, out.with_suffix(".png"), nrow=frames, scale=scale)
    _mark_file(out.with_suffix(".png"), mark)       # the strip is marked as one picture, like grid.png
    typer.echo(f"genloom: wrote {out} ({frames} frames, seed {seed} to {to_seed}) and {out.with_suffix('.png')}",
               err=True)


def register(app: typer.Typer) -> None:
    generate = group(app, "generate")
    generate.command("image")(friendly(generate_image))
    generate.command("variations")(friendly(generate_variations))
