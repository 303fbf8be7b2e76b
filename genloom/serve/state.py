"""What a running server holds: the names it serves (a loaded model, or one of its LoRA adapters), each
with its kind and worker, and the server's limits, metrics and preparation threads.

A model's kind is its handle's `serves` attribute ("text", "image", "gan", "text-to-image"); the routes
module for that kind (`text`, `images`) makes its worker and its /v1/models card.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from ..core.errors import GenloomError
from .errors import APIError
from .limits import Limits
from .metrics import Metrics
from .workers import Overrun, call_with_deadline

__all__ = ["Served", "ServerState"]


class Served:
    """A model name clients ask for: a loaded model, or one of its LoRA adapters (sharing its worker, so
    requests for the base and for every adapter are decoded in the same batches)."""

    def __init__(self, name: str, handle, kind: str, routes: ModuleType, limits: Limits, adapter: str | None = None,
                 worker=None):
        self.name, self.handle, self.kind, self.routes, self.adapter = name, handle, kind, routes, adapter
        path = Path(handle.path)
        self.created = int(path.stat().st_mtime) if path.exists() else int(time.time())
        self.worker = worker or routes.worker(name, handle, limits)

    def card(self) -> dict:
        card = {"id": self.name, "object": "model", "created": self.created, "owned_by": "genloom",
                "kind": self.kind}
        if self.adapter is not None:
            card["adapter"] = self.adapter
        return {**card, **self.routes.card(self.handle, self.kind)}


class ServerState:
    """`routes_by_kind` maps each servable kind to the module with its routes, worker and card; `keyed`: the
    server asks for an API key (what loading adapters at run time needs)."""

    def __init__(self, models: dict[str, Any], limits: Limits, routes_by_kind: dict[str, ModuleType],
                 keyed: bool = False):
        self.limits, self.metrics, self.keyed = limits, Metrics(), keyed
        self.served: dict[str, Served] = {}
        self.reserved: set[str] = set()           # adapter names being loaded now
        self.fingerprints: dict[str, str] = {}    # each base model's weights_fingerprint, once computed
        for name, handle in models.items():
            kind = getattr(handle, "serves", "") or ""
            if kind not in routes_by_kind:
                raise GenloomError(f"the model {name!r} ({type(handle).__name__}) cannot be served: the server has "
                                   f"endpoints for {', '.join(sorted(routes_by_kind))} models")
            routes = routes_by_kind[kind]
            base = self.served[name] = Served(name, handle, kind, routes, limits)
            for adapter in getattr(handle, "adapters", []) if routes.ADAPTERS else []:
                self.served[f"{name}:{adapter}"] = Served(f"{name}:{adapter}", handle, kind, routes, limits, adapter,
                                                          base.worker)
        self.metrics.queue_depth = lambda: {name: s.worker.depth for name, s in self.served.items()}
        # Chat templates and tokenizers run here, off the event loop (which must keep answering /health)
        # and under each request's deadline.
        self._preparers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="genloom-prepare")

    def model(self, name: str, kinds: tuple[str, ...], endpoint: str) -> Served:
        """The served model `name`, which must be of one of `kinds` (a 404 or a 400 otherwise)."""
        if name not in self.served:
            raise APIError(404, f"the model {name!r} does not exist; loaded models: {', '.join(self.served)}",
                           param="model", code="model_not_found")
        entry = self.served[name]
        if entry.kind not in kinds:
            raise APIError(400, f"the model {name!r} is a {entry.kind} model; {endpoint} serves "
                           f"{' and '.join(kinds)} models", param="model", code="wrong_model_kind")
        return entry

    async def prepare(self, fn: Callable[[], Any], deadline: float) -> Any:
        """`fn()` on a preparation thread, stopped at `deadline` (raises workers.Overrun)."""
        work = asyncio.get_running_loop().run_in_executor(self._preparers, call_with_deadline, fn, deadline)
        try:
            return await asyncio.wait_for(work, timeout=max(0.0, deadline - time.monotonic()) + 0.5)
        except asyncio.TimeoutError:                    # every preparation thread busy until the deadline
            raise Overrun("the request waited past the server's timeout to be prepared") from None
