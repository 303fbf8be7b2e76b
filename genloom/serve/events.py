"""From a worker's events to HTTP: waiting for them within the request's deadline while watching for the
client to leave, and server-sent events."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from .errors import APIError
from .workers import Overrun

__all__ = ["collect", "sse", "event_stream", "timeout_error", "failure"]

DISCONNECT_CHECK = 0.2       # seconds between checks that the client is still there


def timeout_error(timeout: float) -> APIError:
    return APIError(503, f"the request took longer than the server's limit of {timeout:g} s", "server_error",
                    code="timeout")


def failure(error: BaseException, timeout: float) -> APIError:
    """The answer to an exception a worker (or the preparation of a request) raised."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, Overrun):
        return timeout_error(timeout)
    return APIError(500, f"generation failed: {type(error).__name__}: {error}", "server_error")


async def collect(request: Request, job, events: asyncio.Queue, deadline: float, timeout: float) -> AsyncIterator[dict]:
    """Yield the job's events until it is done; cancel it when the client leaves or time runs out.

    The client is checked every DISCONNECT_CHECK seconds whether or not events are arriving, so a client
    that leaves a request whose tokens keep coming frees the worker within a fraction of a second."""
    checked = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise timeout_error(timeout)
            if now - checked >= DISCONNECT_CHECK:
                checked = now
                if await request.is_disconnected():
                    return
            try:
                event = await asyncio.wait_for(events.get(), timeout=min(deadline - now, DISCONNECT_CHECK))
            except asyncio.TimeoutError:
                continue
            if "error" in event:
                raise failure(event["error"], timeout)
            yield event
            if event.get("done") or "result" in event:
                return
    finally:
        job.cancelled.set()


def sse(payload: Any) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def event_stream(chunks: AsyncIterator[str], error_event=lambda error: error.body()) -> StreamingResponse:
    """Server-sent events of `chunks` ending in `data: [DONE]`; an error after the headers went out is sent
    as an event (`error_event(error)`; the status can no longer change)."""
    async def stream():
        try:
            async for chunk in chunks:
                yield chunk
        except APIError as error:
            yield sse(error_event(error))
        yield sse("[DONE]")
    return StreamingResponse(stream(), media_type="text/event-stream")
