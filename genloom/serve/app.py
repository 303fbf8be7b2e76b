"""`genloom serve`: every loaded model behind an OpenAI-compatible HTTP API, plus a web page at `/`.

Endpoints (OpenAI shapes): GET /v1/models, POST /v1/completions, POST /v1/chat/completions (text models;
`stream: true` gives server-sent events ending in `data: [DONE]`), POST /v1/images/generations (diffusion,
text-to-image and GAN models; `response_format: b64_json`). genloom's own: GET /health, GET /metrics
(Prometheus text), and `stream: true` on image generation for sampler progress (the web page uses it).
Errors are OpenAI error objects: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import secrets
import time
from pathlib import Path
from typing import Any, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    StreamingResponse,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import api
from ..core.errors import GenloomError
from ..lm.decoding import Sampling, encode_prompt
from .limits import Limits
from .metrics import Metrics
from .workers import ImageJob, ImageWorker, QueueFull, TextJob, TextWorker

__all__ = ["Limits", "create_app", "APIError"]

PAGE = Path(__file__).with_name("page.html")


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


# ----------------------------------------------------------------------------------------------
# Request bodies (NaN and infinities are refused; unknown fields are ignored, as OpenAI does)
# ----------------------------------------------------------------------------------------------

class _Body(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    # genloom extras
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    user: Optional[str] = None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]] = ""
    logprobs: Optional[int] = Field(None, ge=0, le=5)
    echo: bool = False


class ContentPart(_Body):
    type: Literal["text"] = "text"
    text: str


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[ContentPart]]
    name: Optional[str] = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(..., min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)


class ImageRequest(_Body):
    model: str
    prompt: Optional[str] = None                # text-to-image: the description; class models: a label
    n: int = Field(1, ge=1)
    size: Optional[str] = None                  # "WxH"; must be the model's size
    response_format: Literal["b64_json", "url"] = "b64_json"
    quality: Optional[str] = None
    style: Optional[str] = None
    user: Optional[str] = None
    # genloom extras
    label: Optional[str] = None
    negative_prompt: Optional[str] = None
    steps: Optional[int] = Field(None, ge=1)
    guidance: Optional[float] = Field(None, ge=0, le=50)
    sampler: Optional[Literal["ddpm", "ddim", "dpmpp_2m", "euler", "heun"]] = None
    seed: Optional[int] = Field(None, ge=0, le=2**31 - 1)
    truncation: Optional[float] = Field(None, gt=0, le=2)
    stream: bool = False                       # server-sent progress events, then the result


# ----------------------------------------------------------------------------------------------
# Loaded models
# ----------------------------------------------------------------------------------------------

def _kind(handle) -> str:
    if isinstance(handle, api.TextToImageModel):
        return "text-to-image"
    if isinstance(handle, api.GANModel):
        return "gan"
    if isinstance(handle, api.ImageModel):
        return "image"
    return "text"


class Served:
    """A model name clients ask for: a loaded model, or one of its LoRA adapters (sharing its worker, so
    requests for the base and for every adapter are decoded in the same batches)."""

    def __init__(self, name: str, handle, limits: Limits, adapter: str | None = None, worker=None):
        self.name, self.handle, self.kind, self.adapter = name, handle, _kind(handle), adapter
        self.created = int(Path(handle.path).stat().st_mtime) if Path(handle.path).exists() else int(time.time())
        self.worker = worker or (TextWorker(name, handle, limits.queue_size, limits.max_batch) if self.kind == "text"
                                 else ImageWorker(name, limits.queue_size))

    def card(self) -> dict:
        card = {"id": self.name, "object": "model", "created": self.created, "owned_by": "genloom",
                "kind": self.kind}
        if self.adapter is not None:
            card["adapter"] = self.adapter
        if self.kind == "text":
            card["context_length"] = self.handle.model.config.block_size
        else:
            cfg, objective = self.handle.model.config, self.handle.config.objective
            card.update(size=f"{cfg.image_size}x{cfg.image_size}", labels=list(self.handle.labels))
            if self.kind != "gan":
                card.update(steps=objective.sample_steps, guidance=objective.guidance, sampler=objective.sampler)
        return card


def _png_base64(image) -> str:
    from ..media.image import to_pil_image

    buffer = io.BytesIO()
    to_pil_image(image, max(1, 64 // image.shape[-1])).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _sse(payload: Any) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _event_stream(chunks) -> StreamingResponse:
    """Server-sent events of `chunks` ending in `data: [DONE]`; an error after the headers went out is sent
    as an error event (the status can no longer change)."""
    async def stream():
        try:
            async for chunk in chunks:
                yield chunk
        except APIError as error:
            yield _sse({"error": {"message": error.message, "type": error.type, "param": error.param,
                                  "code": error.code}})
        yield _sse("[DONE]")
    return StreamingResponse(stream(), media_type="text/event-stream")


def create_app(models: dict[str, Any], limits: Limits = Limits(), api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving `models` (name -> handle from `genloom.load`)."""
    app = FastAPI(title="genloom", version="0.1.0",
                  description="genloom's models behind an OpenAI-compatible API")
    served: dict[str, Served] = {}
    for name, handle in models.items():
        served[name] = Served(name, handle, limits)
        for adapter in getattr(handle, "adapters", []) if served[name].kind == "text" else []:
            served[f"{name}:{adapter}"] = Served(f"{name}:{adapter}", handle, limits, adapter, served[name].worker)
    metrics = Metrics()
    metrics.queue_depth = lambda: {name: s.worker.depth for name, s in served.items()}

    # -- errors in OpenAI's shape -------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError):
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError):
        problem = error.errors()[0] if error.errors() else {}
        location = [str(part) for part in problem.get("loc", ()) if part != "body"]
        if problem.get("type") == "json_invalid":
            return APIError(400, f"the request body is not valid JSON ({problem.get('msg', '')})",
                            code="invalid_json").response()
        param = ".".join(location) or None
        message = f"{param}: {problem.get('msg', 'invalid value')}" if param else problem.get("msg", "invalid request")
        return APIError(422, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(error.status_code, "invalid_request_error")
        return APIError(error.status_code, str(error.detail), kind).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        return APIError(500, f"internal error: {type(error).__name__}: {error}", "server_error").response()

    def model_for(name: str, kinds: tuple[str, ...], endpoint: str) -> Served:
        if name not in served:
            raise APIError(404, f"the model {name!r} does not exist; loaded models: {', '.join(served)}",
                           param="model", code="model_not_found")
        entry = served[name]
        if entry.kind not in kinds:
            raise APIError(400, f"the model {name!r} is a {entry.kind} model; {endpoint} serves "
                           f"{' and '.join(kinds)} models", param="model", code="wrong_model_kind")
        return entry

    # -- models, health, metrics, page ------------------------------------------------------------
    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [s.card() for s in served.values()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str):
        if name not in served:
            raise APIError(404, f"the model {name!r} does not exist", param="model", code="model_not_found")
        return served[name].card()

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": {name: {"kind": s.kind, "queue": s.worker.depth}
                                           for name, s in served.items()}}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return metrics.render()

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text(encoding="utf-8")

    # -- text ---------------------------------------------------------------------------------
    def encode(entry: Served, prompt: str, param: str) -> list[int]:
        ids = encode_prompt(entry.handle.tokenizer, prompt)
        if len(ids) > limits.max_prompt_tokens:
            raise APIError(400, f"{param} has {len(ids)} tokens; the server's limit is {limits.max_prompt_tokens}",
                           param=param, code="context_length_exceeded")
        return ids

    def text_job(entry: Served, body: _Sampling, prompts: list[str], max_tokens: int | None, param: str,
                 loop: asyncio.AbstractEventLoop, events: asyncio.Queue, stops: list[str]) -> tuple[TextJob, int]:
        if body.n > limits.max_n:
            raise APIError(400, f"n={body.n} is more than the server's limit of {limits.max_n}", param="n")
        if len(prompts) * body.n > limits.max_batch:
            raise APIError(400, f"{len(prompts)} prompt(s) x n={body.n} is more than the server's limit of "
                           f"{limits.max_batch} completions per request", param="n")
        max_tokens = 16 if max_tokens is None else max_tokens
        if max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens={max_tokens} is more than the server's limit of {limits.max_tokens}",
                           param="max_tokens")
        encoded = [encode(entry, p, param) for p in prompts]
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        rows = [ids for ids in encoded for _ in range(body.n)]
        seeds = [seed + j for _ in encoded for j in range(body.n)]
        try:
            sampling = Sampling(body.temperature, body.top_k, body.top_p, body.min_p, body.repetition_penalty)
        except GenloomError as error:
            raise APIError(400, str(error)) from None

        def emit(event: dict) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        job = TextJob(rows, seeds, max_tokens, sampling, stops, emit, adapter=entry.adapter)
        try:
            entry.worker.submit(job)
        except QueueFull:
            raise APIError(429, f"the model {entry.name!r} is busy ({limits.queue_size} requests waiting); retry "
                           "shortly", "rate_limit_exceeded", code="queue_full") from None
        return job, seed

    async def collect(request: Request, job, events: asyncio.Queue, deadline: float):
        """Yield the job's events until it is done; cancel it when the client leaves or time runs out."""
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise APIError(503, f"the request took longer than the server's limit of {limits.timeout:g} s",
                                   "server_error", code="timeout")
                try:
                    event = await asyncio.wait_for(events.get(), timeout=min(remaining, 0.5))
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                if "error" in event:
                    raise APIError(500, f"generation failed: {event['error']}", "server_error")
                yield event
                if event.get("done") or "result" in event:
                    return
        finally:
            job.cancelled.set()

    async def gather(request: Request, job, events: asyncio.Queue, deadline: float, n: int, model: str):
        """A finished text job's (texts, token ids, log-probabilities, finish reasons) per row."""
        texts, tokens, logprobs, reasons = [""] * n, [[] for _ in range(n)], [[] for _ in range(n)], [None] * n
        async for event in collect(request, job, events, deadline):
            if event.get("done"):
                break
            row = event["row"]
            texts[row] += event["text"]
            if event["token"] is not None:
                tokens[row].append(event["token"])
                logprobs[row].append(event["logprob"])
                metrics.tokens(model, True)
            reasons[row] = event["finish_reason"] or reasons[row]
        return texts, tokens, logprobs, reasons

    def stops_of(stop) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4:
            raise APIError(400, "stop takes at most 4 strings", param="stop")
        return stops

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        entry = model_for(body.model, ("text",), "/v1/completions")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise APIError(400, "prompt is an empty list; give a string or a list of strings", param="prompt")
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job, seed = text_job(entry, body, prompts, body.max_tokens, "prompt", loop, events, stops_of(body.stop))
        ident, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        prompt_tokens = sum(len(r) for r in job.prompts)
        deadline = time.monotonic() + limits.timeout
        n = len(job.prompts)
        echo = [prompts[i // body.n] if body.echo else "" for i in range(n)]

        def logprob_entry(tokens, logprobs) -> dict:
            pieces = [entry.handle.tokenizer.decode([t]) for t in tokens]
            offsets = [sum(len(p) for p in pieces[:k]) for k in range(len(pieces))]
            return {"tokens": pieces, "token_logprobs": logprobs, "top_logprobs": None, "text_offset": offsets}

        if body.stream:
            async def completion_chunks():
                completion_tokens = 0
                first = [True] * n
                async for event in collect(request, job, events, deadline):
                    if event.get("done"):
                        break
                    completion_tokens += event["token"] is not None
                    metrics.tokens(entry.name, event["token"] is not None)
                    if first[event["row"]]:
                        metrics.first_token(time.perf_counter() - job.submitted)
                    text = (echo[event["row"]] if first[event["row"]] else "") + event["text"]
                    first[event["row"]] = False
                    if not text and event["finish_reason"] is None:
                        continue
                    choice = {"text": text, "index": event["row"], "finish_reason": event["finish_reason"],
                              "logprobs": logprob_entry([event["token"]], [event["logprob"]])
                              if body.logprobs is not None and event["token"] is not None else None}
                    yield _sse({"id": ident, "object": "text_completion", "created": created, "model": entry.name,
                                "choices": [choice], "seed": seed})
                if body.stream_options and body.stream_options.include_usage:
                    yield _sse({"id": ident, "object": "text_completion", "created": created, "model": entry.name,
                                "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
            return _event_stream(completion_chunks())

        texts, tokens, logprobs, reasons = await gather(request, job, events, deadline, n, entry.name)
        choices = [{"text": echo[i] + texts[i], "index": i, "finish_reason": reasons[i] or "length",
                    "logprobs": logprob_entry(tokens[i], logprobs[i]) if body.logprobs is not None else None}
                   for i in range(n)]
        return {"id": ident, "object": "text_completion", "created": created, "model": entry.name,
                "choices": choices, "usage": _usage(prompt_tokens, sum(map(len, tokens))), "seed": seed}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        entry = model_for(body.model, ("text",), "/v1/chat/completions")
        try:
            prompt = chat_prompt(entry.handle, body.messages)
        except GenloomError as error:
            raise APIError(400, str(error), param="messages") from None
        stops = stops_of(body.stop) + entry.handle.chat_template.stop
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        max_tokens = body.max_completion_tokens or body.max_tokens
        job, seed = text_job(entry, body, [prompt], max_tokens, "messages", loop, events, stops)
        ident, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        prompt_tokens = len(job.prompts[0]) * body.n
        deadline = time.monotonic() + limits.timeout
        n = body.n

        def logprob_content(tokens, logprobs) -> list[dict]:
            out = []
            for token, logprob in zip(tokens, logprobs):
                piece = entry.handle.tokenizer.decode([token])
                out.append({"token": piece, "logprob": logprob, "bytes": list(piece.encode()), "top_logprobs": []})
            return out

        if body.stream:
            async def chat_chunks():
                completion_tokens = 0
                base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": entry.name,
                        "system_fingerprint": None}
                for i in range(n):
                    yield _sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                     "logprobs": None, "finish_reason": None}]})
                first = [True] * n
                async for event in collect(request, job, events, deadline):
                    if event.get("done"):
                        break
                    if first[event["row"]]:
                        metrics.first_token(time.perf_counter() - job.submitted)
                        first[event["row"]] = False
                    completion_tokens += event["token"] is not None
                    metrics.tokens(entry.name, event["token"] is not None)
                    if not event["text"] and event["finish_reason"] is None:
                        continue
                    delta = {"content": event["text"]} if event["text"] else {}
                    logprobs = ({"content": logprob_content([event["token"]], [event["logprob"]])}
                                if body.logprobs and event["token"] is not None else None)
                    yield _sse({**base, "choices": [{"index": event["row"], "delta": delta, "logprobs": logprobs,
                                                     "finish_reason": event["finish_reason"]}]})
                if body.stream_options and body.stream_options.include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
            return _event_stream(chat_chunks())

        texts, tokens, logprobs, reasons = await gather(request, job, events, deadline, n, entry.name)
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i].strip(), "refusal": None},
                    "logprobs": {"content": logprob_content(tokens[i], logprobs[i])} if body.logprobs else None,
                    "finish_reason": reasons[i] or "length"} for i in range(n)]
        return {"id": ident, "object": "chat.completion", "created": created, "model": entry.name,
                "choices": choices, "usage": _usage(prompt_tokens, sum(map(len, tokens))),
                "system_fingerprint": None, "seed": seed}

    # -- images ---------------------------------------------------------------------------------
    @app.post("/v1/images/generations")
    async def images(body: ImageRequest, request: Request):
        entry = model_for(body.model, ("image", "text-to-image", "gan"), "/v1/images/generations")
        cfg = entry.handle.model.config
        if body.response_format != "b64_json":
            raise APIError(400, "genloom returns images inline only: use response_format \"b64_json\"",
                           param="response_format")
        if body.n > min(limits.max_n, limits.max_images):
            raise APIError(400, f"n={body.n} is more than the server's limit of {min(limits.max_n, limits.max_images)}"
                           " images per request", param="n")
        native = f"{cfg.image_size}x{cfg.image_size}"
        if body.size is not None and body.size != native:
            raise APIError(400, f"size {body.size!r}: this model makes {native} images only", param="size")
        if body.steps is not None and body.steps > limits.max_steps:
            raise APIError(400, f"steps={body.steps} is more than the server's limit of {limits.max_steps}",
                           param="steps")
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        options = image_options(entry, body, seed)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def run(progress):
            return generate_images(entry, body, seed, progress)

        job = ImageJob(run, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        try:
            entry.worker.submit(job)
        except QueueFull:
            raise APIError(429, f"the model {entry.name!r} is busy ({limits.queue_size} requests waiting); retry "
                           "shortly", "rate_limit_exceeded", code="queue_full") from None
        created = int(time.time())
        deadline = time.monotonic() + limits.timeout

        def result(images) -> dict:
            metrics.images(entry.name, len(images))
            return {"created": created, "data": [{"b64_json": _png_base64(image), "revised_prompt": None}
                                                 for image in images], "genloom": options}

        if body.stream:
            async def stream():
                try:
                    async for event in collect(request, job, events, deadline):
                        if "result" in event:
                            yield _sse({"type": "result", **result(event["result"])})
                        else:
                            yield _sse({"type": "progress", "step": event["progress"], "total": event["total"]})
                except APIError as error:
                    yield _sse({"type": "error", "error": {"message": error.message, "type": error.type}})
                yield _sse("[DONE]")
            return StreamingResponse(stream(), media_type="text/event-stream")
        async for event in collect(request, job, events, deadline):
            if "result" in event:
                return result(event["result"])
        raise APIError(503, "the request was cancelled", "server_error")

    def image_options(entry: Served, body: ImageRequest, seed: int) -> dict:
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
            options.update(steps=body.steps or objective.sample_steps, sampler=body.sampler or objective.sampler,
                           guidance=objective.guidance if body.guidance is None else body.guidance)
        return options

    def generate_images(entry: Served, body: ImageRequest, seed: int, progress):
        handle = entry.handle
        if entry.kind == "text-to-image":
            return handle.generate(body.prompt, body.n, body.steps, body.sampler, body.guidance, seed,
                                   negative_prompt=body.negative_prompt, callback=progress)
        label = body.label if body.label is not None else body.prompt
        labels = [label] if handle.num_classes else None
        if entry.kind == "gan":
            return handle.generate(labels, body.n, seed=seed, truncation=body.truncation or 1.0)
        return handle.generate(labels, body.n, body.steps, body.sampler, body.guidance, seed, callback=progress)

    app.state.served = served
    app.state.metrics = metrics
    app.add_middleware(Guard, limits=limits, api_key=api_key, metrics=metrics)
    return app


class _BodyTooLarge(Exception):
    pass


class Guard:
    """Plain ASGI middleware: body size limit (413), API key (401) and request metrics.

    (Starlette's BaseHTTPMiddleware is avoided on purpose: behind it `request.is_disconnected()` can report
    a disconnect while a streaming response is still being read, which would cancel live requests.)
    """

    def __init__(self, app, limits: Limits, api_key: str | None, metrics: Metrics):
        self.app, self.limits, self.api_key, self.metrics = app, limits, api_key, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, path = time.perf_counter(), scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        status = [500]
        limit = self.limits.max_body_bytes
        too_large = APIError(413, f"the request body is larger than the server's limit of {limit} bytes",
                             code="request_too_large")

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        size = headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > limit):
            await too_large.response()(scope, receive, send_status)
        elif self.api_key and path.startswith("/v1/") and \
                headers.get("authorization", "") != f"Bearer {self.api_key}":
            error = APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                             "authentication_error", code="invalid_api_key")
            await error.response()(scope, receive, send_status)
        else:
            received = 0

            async def counted_receive():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise _BodyTooLarge()
                return message
            try:
                await self.app(scope, counted_receive, send_status)
            except _BodyTooLarge:
                await too_large.response()(scope, receive, send_status)
        if path.startswith("/v1/"):
            self.metrics.request(path, status[0], time.perf_counter() - start)


def chat_prompt(handle, messages: list[Message]) -> str:
    """The messages in the model's chat template (its chat_template.json, or the plain default: "User: ..."
    turns closed by a blank line), ending with the assistant's prefix for the model to continue."""
    roles = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
    plain = [{"role": roles[m.role],
              "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)}
             for m in messages]
    return handle.chat_prompt(plain)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}

