"""POST /v1/embeddings (OpenAI's shape): text models' pooled hidden states (`genloom.lm.embedding`), and
the all-MiniLM-L6-v2 sentence encoder where the server was started with `--model NAME=builtin:minilm`.

`input` is a string, a list of strings, a list of token ids or a list of such lists; `encoding_format`
"float" (lists of numbers) or "base64" (each vector's little-endian float32 bytes, base64-encoded: what the
official `openai` client asks for by default and decodes). `dimensions` is refused unless it is the model's
own size (genloom's models are not trained to be cut shorter). genloom extras: `pooling` ("mean" over the
text's tokens, the default, or the "last" token's vector; text models only) and `normalize` (L2, default
true). The work runs on the model's own worker, between decoding steps for a text model.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Literal, Optional, Union

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from ..core.errors import GenloomError
from ..lm.decoding import encode_prompt
from ..lm.embedding import embed_tokens
from .errors import APIError
from .events import collect, failure
from .limits import Limits
from .state import Served, ServerState
from .workers import CallWorker, ModelJob, QueueFull

__all__ = ["router", "KINDS", "ADAPTERS", "worker", "card", "EmbeddingRequest"]

router = APIRouter()
KINDS = ("embedding",)        # models that serve embeddings only (the sentence encoder)
ADAPTERS = False
SERVED = ("text", "embedding")    # the kinds /v1/embeddings answers for
MAX_INPUTS = 2048                 # texts per request (OpenAI's limit)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")     # a field it does not define is a 400

    model: str
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
    user: Optional[str] = None
    # genloom extras
    pooling: Literal["mean", "last"] = "mean"
    normalize: bool = True


def worker(name: str, handle, limits: Limits) -> CallWorker:
    return CallWorker(name, limits.queue_size)


def card(handle, kind: str) -> dict:
    return {"dimensions": handle.dimensions, "context_length": handle.max_tokens}


def _inputs(given) -> list[str | list[int]]:
    if isinstance(given, str) or (given and isinstance(given[0], int)):
        return [given]
    if not given:
        raise APIError(400, "input is empty: give a string, a list of strings or token ids", param="input")
    return list(given)


def _encode(entry: Served, inputs: list, limits: Limits) -> list[list[int]]:
    """Every input's token ids, checked against the model and the server's limits."""
    handle = entry.handle
    out = []
    if entry.kind == "embedding":
        if not all(isinstance(text, str) for text in inputs):
            raise APIError(400, f"{entry.name} embeds text: give input as strings, not token ids", param="input")
        try:
            out = handle.tokenize(inputs)
        except GenloomError as error:
            raise APIError(400, f"input: {error}", param="input", code="context_length_exceeded") from None
        return out
    vocab, block = handle.model.config.vocab_size, handle.model.config.block_size
    for i, text in enumerate(inputs):
        param = f"input[{i}]" if len(inputs) > 1 else "input"
        if isinstance(text, str):
            ids = encode_prompt(handle.tokenizer, text)
        else:
            if not text or not all(0 <= t < vocab for t in text):
                raise APIError(400, f"{param}: token ids must be a non-empty list of ids from 0 to {vocab - 1}",
                               param="input")
            ids = list(text)
        if len(ids) > min(block, limits.max_prompt_tokens):
            raise APIError(400, f"{param} has {len(ids)} tokens; this model embeds at most "
                           f"{min(block, limits.max_prompt_tokens)}", param="input", code="context_length_exceeded")
        out.append(ids)
    return out


def _dimensions(entry: Served) -> int:
    handle = entry.handle
    return handle.dimensions if entry.kind == "embedding" else handle.model.config.d_model


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    server: ServerState = request.app.state.genloom
    limits = server.limits
    entry = server.model(body.model, SERVED, "/v1/embeddings")
    size = _dimensions(entry)
    if body.dimensions is not None and body.dimensions != size:
        raise APIError(400, f"dimensions={body.dimensions}: {entry.name}'s embeddings have {size} dimensions and "
                       "it was not trained to give shorter ones; leave dimensions out", param="dimensions")
    if entry.kind == "embedding" and body.pooling != "mean":
        raise APIError(400, f"pooling={body.pooling!r}: {entry.name} was trained with mean pooling", param="pooling")
    inputs = _inputs(body.input)
    if len(inputs) > MAX_INPUTS:
        raise APIError(400, f"input has {len(inputs)} texts; the limit is {MAX_INPUTS} per request", param="input")
    deadline = time.monotonic() + limits.timeout
    try:
        encoded = await server.prepare(lambda: _encode(entry, inputs, limits), deadline)
    except Exception as error:
        raise failure(error, limits.timeout) from None
    handle = entry.handle
    if entry.kind == "embedding":
        run = lambda: handle.embed_ids(encoded, normalize=body.normalize)                     # noqa: E731
    else:
        run = lambda: embed_tokens(handle.model, encoded, body.pooling, body.normalize, entry.adapter)  # noqa: E731
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    job = ModelJob(run, lambda event: loop.call_soon_threadsafe(events.put_nowait, event), deadline=deadline,
                   adapter=entry.adapter)
    try:
        entry.worker.submit(job)
    except QueueFull:
        raise APIError(429, f"the model {entry.name!r} is busy ({limits.queue_size} requests waiting); retry "
                       "shortly", "rate_limit_exceeded", code="queue_full") from None
    vectors = None
    async for event in collect(request, job, events, deadline, limits.timeout):
        vectors = event["result"]
    if vectors is None:
        raise APIError(400, "the client closed the request", code="client_closed")
    data = []
    for i, vector in enumerate(vectors):
        if body.encoding_format == "base64":
            value = base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode()
        else:
            value = vector.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(map(len, encoded))
    return {"object": "list", "data": data, "model": entry.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
