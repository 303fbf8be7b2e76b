"""What the server offers: GET /v1/models and /v1/models/{name} (OpenAI's model cards, with genloom's
details per kind), GET /health, GET /metrics (Prometheus text) and the web page at `/` (page.html)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from .errors import APIError
from .state import ServerState

__all__ = ["router"]

router = APIRouter()
PAGE = Path(__file__).with_name("page.html")


def _state(request: Request) -> ServerState:
    return request.app.state.genloom


@router.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": [s.card() for s in _state(request).served.values()]}


@router.get("/v1/models/{name}")
async def get_model(name: str, request: Request):
    served = _state(request).served
    if name not in served:
        raise APIError(404, f"the model {name!r} does not exist", param="model", code="model_not_found")
    return served[name].card()


@router.get("/health")
async def health(request: Request):
    return {"status": "ok", "models": {name: {"kind": s.kind, "queue": s.worker.depth}
                                       for name, s in _state(request).served.items()}}


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus(request: Request):
    return _state(request).metrics.render()


@router.get("/", response_class=HTMLResponse)
async def page():
    return PAGE.read_text(encoding="utf-8")
