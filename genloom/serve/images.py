"""Image routes: POST /v1/images/generations (OpenAI's shape, `response_format: b64_json`) for diffusion
("image"), text-to-image and GAN models, run one request at a time by the model's ImageWorker; genloom's
`stream: true` sends the sampler's progress as server-sent events, then the result (the web page uses it).
Every PNG carries its generation parameters in text chunks (`genloom generate image --like` redraws it).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from ..core.errors import GenloomError
from .detect import request_image_watermark
from .errors import APIError
from .events import collect, event_stream, sse
from .limits import Limits
from .schemas import ImageRequest
from .state import Served, ServerState
from .workers import ImageJob, ImageWorker, QueueFull

__all__ = ["router", "KINDS", "ADAPTERS", "worker", "card"]

router = APIRouter()
KINDS = ("image", "text-to-image", "gan")     # the handles' `serves` values these routes answer for
ADAPTERS = False


def worker(name: str, handle, limits: Limits) -> ImageWorker:
    return ImageWorker(name, limits.queue_size)


def card(handle, kind: str) -> dict:
    objective = handle.config.objective
    size = handle.image_size                  # pixels (a latent model's latents are smaller)
    out = {"size": f"{size}x{size}", "labels": list(handle.labels)}
    if kind != "gan":
        out.update(steps=objective.sample_steps, guidance=objective.guidance, sampler=objective.sampler)
    return out


def _png_base64(image, params: dict, mark=None) -> str:
    """The image as a PNG (enlarged to at least 64 pixels) carrying `params['scale']` and the rest of its recipe;
    marked by `mark` (an ImageWatermark: the server's key or the request's `watermark`) before it is encoded."""
    from ..media.image import png_bytes, to_pil_image

    picture = to_pil_image(image, params["scale"])
    if mark is not None:
        picture = mark.mark(picture)
    return base64.b64encode(png_bytes(picture, params)).decode()


def _recipes(server: ServerState, entry: Served, body: ImageRequest, options: dict, images) -> list[dict]:
    """Each image's generation parameters (`genloom.images.params`): what `genloom generate image --like` redraws
    it from. The checkpoint is named by its folder only (no server path goes to clients)."""
    from ..images.params import generation_params, weights_of

    handle = entry.handle
    if entry.name not in server.fingerprints:
        server.fingerprints[entry.name] = weights_of(handle)
    if entry.kind == "text-to-image":
        batch = {"prompts": [body.prompt], "num_samples": body.n, "seed": options["seed"]}
    else:
        batch = {"labels": [options["label"]] if handle.num_classes else None, "num_samples": body.n,
                 "seed": options["seed"]}
    settings = ({"truncation": options["truncation"]} if entry.kind == "gan" else
                {"steps": options["steps"], "sampler": options["sampler"], "guidance": options["guidance"],
                 "spacing": "leading", "eta": 0.0})
    if entry.kind == "text-to-image":
        settings.update(negative_prompt=body.negative_prompt, strength=None, init_image=None, mask=None)
    scale = max(1, 64 // images.shape[-1])
    return [generation_params(handle, checkpoint=Path(handle.path).name, batch=batch, index=i, options=settings,
                              scale=scale, weights=server.fingerprints[entry.name], model=entry.name)
            for i in range(len(images))]


def _options(entry: Served, body: ImageRequest, seed: int) -> dict:
    """Check the request against the model and return the parameters that reproduce it."""
    handle = entry.handle
    options: dict[str, Any] = {"model": entry.name, "n": body.n, "seed": seed}
    if entry.kind == "text-to-image":
        if body.label is not None:
            raise APIError(400, "this model draws from a prompt, not a label", param="label")
        if not body.prompt or not body.prompt.strip():
            raise APIError(400, "prompt is empty: describe the image, e.g. \"a red letter A on the left on a "
                           "white background\"", param="prompt")
        options.update(prompt=body.prompt, negative_prompt=body.negative_prompt)
    else:
        label = body.label if body.label is not None else body.prompt
        if handle.num_classes:
            if label is None:
                raise APIError(400, f"this model draws a class: give label (or prompt) as one of "
                               f"{', '.join(handle.labels[:40])}", param="label")
            try:
                handle.label_index(label)
            except GenloomError as error:
                raise APIError(400, str(error), param="label") from None
        elif label:
            raise APIError(400, "this model is unconditional: leave prompt and label out", param="prompt")
        options["label"] = label
    if entry.kind == "gan":
        given = [k for k in ("steps", "guidance", "sampler", "negative_prompt") if getattr(body, k) is not None]
        if given:
            raise APIError(400, f"{', '.join(given)}: a GAN makes images in one pass (no sampler options)",
                           param=given[0])
        options["truncation"] = body.truncation or 1.0
    else:
        if body.truncation is not None:
            raise APIError(400, "truncation applies to GANs only", param="truncation")
        objective = handle.config.objective
        if body.sampler is not None and body.sampler not in handle.samplers:
            raise APIError(400, f"sampler {body.sampler!r} does not work with this model (a flow-matching model "
                           f"takes {' or '.join(handle.samplers)})", param="sampler")
        options.update(steps=body.steps or objective.sample_steps, sampler=body.sampler or objective.sampler,
                       guidance=objective.guidance if body.guidance is None else body.guidance)
    return options


def _generate(entry: Served, body: ImageRequest, seed: int, progress):
    """The images, by the handle's `generate` (its options by keyword)."""
    handle = entry.handle
    if entry.kind == "text-to-image":
        return handle.generate(body.prompt, num_samples=body.n, steps=body.steps, sampler=body.sampler,
                               guidance=body.guidance, seed=seed, negative_prompt=body.negative_prompt,
                               callback=progress)
    label = body.label if body.label is not None else body.prompt
    labels = [label] if handle.num_classes else None
    if entry.kind == "gan":
        return handle.generate(labels, num_samples=body.n, seed=seed, truncation=body.truncation or 1.0,
                               callback=progress)
    return handle.generate(labels, num_samples=body.n, steps=body.steps, sampler=body.sampler,
                           guidance=body.guidance, seed=seed, callback=progress)


@router.post("/v1/images/generations")
async def images(body: ImageRequest, request: Request):
    server: ServerState = request.app.state.genloom
    limits = server.limits
    entry = server.model(body.model, KINDS, "/v1/images/generations")
    if body.response_format != "b64_json":
        raise APIError(400, "genloom returns images inline only: use response_format \"b64_json\"",
                       param="response_format")
    if body.n > min(limits.max_n, limits.max_images):
        raise APIError(400, f"n={body.n} is more than the server's limit of {min(limits.max_n, limits.max_images)}"
                       " images per request", param="n")
    native = f"{entry.handle.image_size}x{entry.handle.image_size}"
    if body.size is not None and body.size != native:
        raise APIError(400, f"size {body.size!r}: this model makes {native} images only", param="size")
    if body.steps is not None and body.steps > limits.max_steps:
        raise APIError(400, f"steps={body.steps} is more than the server's limit of {limits.max_steps}",
                       param="steps")
    mark = request_image_watermark(request, body.watermark)     # the server's key, or the request's
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    options = _options(entry, body, seed)
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    deadline = time.monotonic() + limits.timeout
    job = ImageJob(lambda progress: _generate(entry, body, seed, progress),
                   lambda event: loop.call_soon_threadsafe(events.put_nowait, event), deadline=deadline)
    try:
        entry.worker.submit(job)
    except QueueFull:
        raise APIError(429, f"the model {entry.name!r} is busy ({limits.queue_size} requests waiting); retry "
                       "shortly", "rate_limit_exceeded", code="queue_full") from None
    created = int(time.time())

    def result(images) -> dict:
        server.metrics.images(entry.name, len(images))
        recipes = _recipes(server, entry, body, options, images)
        return {"created": created, "data": [{"b64_json": _png_base64(image, recipe, mark), "revised_prompt": None}
                                             for image, recipe in zip(images, recipes)], "genloom": options}

    if body.stream:
        async def chunks():
            async for event in collect(request, job, events, deadline, limits.timeout):
                if "result" in event:
                    yield sse({"type": "result", **result(event["result"])})
                else:
                    yield sse({"type": "progress", "step": event["progress"], "total": event["total"]})
        return event_stream(chunks(), lambda error: {"type": "error",
                                                     "error": {"message": error.message, "type": error.type}})
    async for event in collect(request, job, events, deadline, limits.timeout):
        if "result" in event:
            return result(event["result"])
    raise APIError(503, "the request was cancelled", "server_error")
