"""LoRA adapters loaded and unloaded while the server runs, in vLLM's shapes:

    POST /v1/load_lora_adapter    {"lora_name": NAME, "lora_path": FOLDER, "base_model": MODEL (genloom's; may be
                                   left out when one text model is served)}
    POST /v1/unload_lora_adapter  {"lora_name": NAME}

Both answer 200 with a line of plain text ("Success: LoRA adapter 'NAME' added successfully." / "... removed
successfully."), and OpenAI-shaped errors otherwise: 400 for a name in use or an adapter that does not fit
the base (another base model, other shapes, its files incomplete or damaged), 404 for a folder that is not
there or a name that is not loaded, 403 on a server without an API key (whoever can reach such a server could
make it read its folders), 401 without the key.

A loaded adapter is served as the model NAME (listed in /v1/models) and shares its base's worker: its rows
are decoded in the same continuous batches as everyone else's, each LoRA layer adding the adapter's
low-rank update to that adapter's rows only (`nn.lora`: per-row routing), so no other request's results
change. The adapter's tensors are attached by the worker's own thread between two decoding steps; an
unload waits until the rows decoding with the adapter have finished, and requests accepted for it after it
went answer 404. The base's chat template serves the adapter's chat requests.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Optional

import torch
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from ..core.config import RunConfig
from ..core.errors import GenloomError
from ..nn.lora import base_tensors, remove_adapter, weights_fingerprint
from ..train.finetune import attach_adapter, read_adapter
from .errors import APIError
from .events import failure, timeout_error
from .state import Served, ServerState
from .workers import ModelJob, QueueFull

__all__ = ["router", "LoadAdapterRequest", "UnloadAdapterRequest"]

router = APIRouter()
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_:-]{0,63}")


class _Body(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")     # a field it does not define is a 400


class LoadAdapterRequest(_Body):
    lora_name: str = Field(..., min_length=1)
    lora_path: str = Field(..., min_length=1)
    base_model: Optional[str] = None           # genloom: the served text model to put it on


class UnloadAdapterRequest(_Body):
    lora_name: str = Field(..., min_length=1)


def _keyed(server: ServerState) -> None:
    if not server.keyed:
        raise APIError(403, "loading and unloading adapters needs a server started with --api-key (whoever can "
                       "reach a server without one could make it read its folders)", "permission_error",
                       code="api_key_required")


def _base(server: ServerState, given: str | None) -> Served:
    text = [s for s in server.served.values() if s.kind == "text" and s.adapter is None]
    if given is None:
        if len(text) != 1:
            raise APIError(400, f"base_model: {len(text)} text models are served "
                           f"({', '.join(s.name for s in text) or 'none'}); say which one the adapter is for",
                           param="base_model")
        return text[0]
    entry = server.served.get(given)
    if entry is None or entry.kind != "text" or entry.adapter is not None:
        raise APIError(404 if entry is None else 400, f"base_model {given!r} is not a text model this server serves "
                       f"(text models: {', '.join(s.name for s in text) or 'none'})", param="base_model",
                       code="model_not_found" if entry is None else "wrong_model_kind")
    return entry


def _attach(base: Served, name: str, folder: Path, fingerprints: dict) -> None:
    """On the base's worker thread: check the adapter against the base and attach it under `name`."""
    handle, model = base.handle, base.handle.model
    floating = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if floating != {torch.float32}:
        raise APIError(400, f"lora_path: {base.name} was loaded with {', '.join(sorted(map(str, floating)))} weights "
                       "(quantized or bfloat16); adapters need its float32 weights: start the server with --adapter "
                       f"{base.name}:{name}={folder}", param="lora_path", code="adapter_does_not_fit")
    if base.name not in fingerprints:
        fingerprints[base.name] = weights_fingerprint(base_tensors(model))
    config = RunConfig.from_json_file(Path(handle.path) / "config.json")
    try:
        attach_adapter(model, json.loads(config.to_json())["model"], fingerprints[base.name], folder, name,
                       f"the served model {base.name!r}")
    except GenloomError as error:
        remove_adapter(model, name)                  # shapes are checked after the layers got it: take it out
        raise APIError(400, f"lora_path: {error}", param="lora_path", code="adapter_does_not_fit") from None
    handle.adapters = [*handle.adapters, name]


def _detach(handle, name: str) -> None:
    remove_adapter(handle.model, name)
    handle.adapters = [a for a in handle.adapters if a != name]


async def _on_worker(server: ServerState, entry: Served, run, waits_for=None) -> None:
    """`run()` on `entry`'s worker thread (between decoding steps), within the server's timeout. A client that
    leaves does not cancel it: a change to the model is made whole or not at all."""
    limits = server.limits
    deadline = time.monotonic() + limits.timeout
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    job = ModelJob(run, lambda event: loop.call_soon_threadsafe(events.put_nowait, event), deadline=deadline,
                   waits_for=waits_for)
    try:
        entry.worker.submit(job)
    except QueueFull:
        raise APIError(429, f"the model {entry.name!r} is busy ({limits.queue_size} requests waiting); retry "
                       "shortly", "rate_limit_exceeded", code="queue_full") from None
    try:
        event = await asyncio.wait_for(events.get(), timeout=max(0.0, deadline - time.monotonic()) + 1.0)
    except asyncio.TimeoutError:
        job.cancelled.set()
        raise timeout_error(limits.timeout) from None
    if "error" in event:
        raise failure(event["error"], limits.timeout)


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse)
async def load_lora_adapter(body: LoadAdapterRequest, request: Request):
    server: ServerState = request.app.state.genloom
    _keyed(server)
    name = body.lora_name
    if not NAME.fullmatch(name):
        raise APIError(400, f"lora_name {name!r}: use 1 to 64 letters, digits, '_', '-' or ':', starting with a "
                       "letter or digit", param="lora_name")
    if name in server.served or name in server.reserved:
        raise APIError(400, f"lora_name {name!r} is already served; unload it first or choose another name",
                       param="lora_name", code="adapter_exists")
    base = _base(server, body.base_model)
    if name in base.handle.adapters:
        raise APIError(400, f"lora_name {name!r}: {base.name} already has an adapter of that name (served as "
                       f"{base.name}:{name})", param="lora_name", code="adapter_exists")
    folder = Path(body.lora_path)
    if not folder.is_dir():
        raise APIError(404, f"lora_path {body.lora_path!r} is not a folder on the server", param="lora_path",
                       code="adapter_not_found")
    server.reserved.add(name)
    try:
        try:
            meta = await server.prepare(lambda: read_adapter(folder), time.monotonic() + server.limits.timeout)
        except GenloomError as error:
            raise APIError(400, f"lora_path: {error}", param="lora_path", code="adapter_does_not_fit") from None
        except Exception as error:
            raise failure(error, server.limits.timeout) from None
        whole = list(meta.get("train_also") or []) + list(meta.get("new_words") or [])
        if whole:
            raise APIError(400, f"lora_path: the adapter {folder} also changes whole parameters or words "
                           f"({', '.join(map(str, whole[:3]))}), which would change every request's results; fold it "
                           "into its base (genloom merge) and serve that", param="lora_path",
                           code="adapter_does_not_fit")
        await _on_worker(server, base, lambda: _attach(base, name, folder, server.fingerprints))
        server.served[name] = Served(name, base.handle, base.kind, base.routes, server.limits, name, base.worker)
    finally:
        server.reserved.discard(name)
    return f"Success: LoRA adapter '{name}' added successfully."


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse)
async def unload_lora_adapter(body: UnloadAdapterRequest, request: Request):
    server: ServerState = request.app.state.genloom
    _keyed(server)
    name = body.lora_name
    entry = server.served.get(name)
    if entry is None:
        raise APIError(404, f"lora_name {name!r} is not loaded (adapters: "
                       f"{', '.join(s.name for s in server.served.values() if s.adapter) or 'none'})",
                       param="lora_name", code="adapter_not_found")
    if entry.adapter is None:
        raise APIError(400, f"lora_name {name!r} is a model, not an adapter", param="lora_name")
    del server.served[name]                          # new requests for it: 404 from here on
    adapter = entry.adapter
    try:
        await _on_worker(server, entry, lambda: _detach(entry.handle, adapter),
                         waits_for=lambda rows: any(row.adapter == adapter for row in rows))
    except APIError:
        server.served.setdefault(name, entry)        # it could not be taken out (timeout): still served
        raise
    return f"Success: LoRA adapter '{name}' removed successfully."
