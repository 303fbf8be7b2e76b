"""`genloom serve`: every loaded model behind an OpenAI-compatible HTTP API, plus a web page at `/`.

Endpoints (OpenAI shapes): GET /v1/models, POST /v1/completions, POST /v1/chat/completions (text models;
`stream: true` gives server-sent events ending in `data: [DONE]`), POST /v1/images/generations (diffusion,
text-to-image and GAN models; `response_format: b64_json`), POST /v1/embeddings (text models and the
sentence encoder); vLLM's POST /v1/load_lora_adapter and /v1/unload_lora_adapter. genloom's own: GET
/health, GET /metrics (Prometheus text), and `stream: true` on image generation for sampler progress (the
web page uses it).
Errors are OpenAI error objects: {"error": {"message", "type", "param", "code"}}.

The package, by what each module answers for:
  app.py      this factory: the models' state, the routes, the error handlers and the guard, put together
  state.py    the names served (models and their adapters), their kinds and workers; limits, metrics
  text.py     /v1/completions and /v1/chat/completions        images.py   /v1/images/generations
  embeddings.py  /v1/embeddings                               adapters.py  LoRA adapters loaded at run time
  info.py     /v1/models, /health, /metrics and the page (page.html)
  schemas.py  request bodies      errors.py   OpenAI-shaped errors      events.py   worker events -> HTTP
  guard.py    Host/Origin check, API key, body limit, request metrics (ASGI middleware)
  workers.py  one thread per model (continuous batching for text), deadlines
  limits.py   the limits (no FastAPI import)      metrics.py  Prometheus text
  detect.py   watermarking text (--watermark KEY, a request's watermark field) and POST /v1/detect
  filters.py  the output filter of the text routes (--moderation: the safety classifier, blocklists)
A handle's `serves` attribute names its kind; `ROUTES` lists which module serves which kinds.
"""

from __future__ import annotations

from typing import Any, Iterable

from fastapi import FastAPI
from starlette.routing import Route

from . import adapters, detect, embeddings, filters, images, info, text
from .errors import APIError, install_error_handlers
from .guard import LOOPBACK_HOSTS, Guard
from .limits import Limits
from .state import ServerState

__all__ = ["Limits", "create_app", "APIError", "ROUTES", "LOOPBACK_HOSTS"]

ROUTES = (text, images, embeddings)        # each serves the kinds it lists in KINDS
OTHER_ROUTES = (info, adapters, detect)


def create_app(models: dict[str, Any], limits: Limits = Limits(), api_key: str | None = None,
               allowed_hosts: Iterable[str] | None = None, watermark: str | None = None,
               moderation: "filters.Moderation | None" = None) -> FastAPI:
    """The FastAPI app serving `models` (name -> handle from `genloom.load`).

    `api_key`: required as 'Authorization: Bearer KEY' on /v1/ paths. `allowed_hosts`: the host names the
    server answers to in Host and Origin headers (403 otherwise); by default loopback names when there is
    no API key, and any name when there is one; "*" allows any. `watermark`: a key that marks every text the
    server writes (POST /v1/detect checks with it; see detect.py). `moderation`: the output filter of the
    text routes (filters.py).
    """
    state = ServerState(models, limits, {kind: routes for routes in ROUTES for kind in routes.KINDS}, bool(api_key))
    app = FastAPI(title="genloom", version="0.1.0", description="genloom's models behind an OpenAI-compatible API")
    install_error_handlers(app)
    for routes in (*OTHER_ROUTES, *ROUTES):
        app.include_router(routes.router)
    app.state.genloom = state
    detect.configure(app, watermark)
    filters.configure(app, moderation)
    # The routes by template (FastAPI's own documentation routes, then ours): metrics count requests by them.
    routes = [route for route in app.routes if isinstance(route, Route)]
    routes += [route for module in (*OTHER_ROUTES, *ROUTES) for route in module.router.routes]
    state.metrics.routes = {route.path for route in routes}
    app.add_middleware(Guard, limits=limits, api_key=api_key, metrics=state.metrics, routes=routes,
                       allowed_hosts=allowed_hosts)
    return app
