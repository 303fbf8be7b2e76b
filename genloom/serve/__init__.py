"""The HTTP server: genloom's models behind an OpenAI-compatible API and a web page (`genloom serve`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["serve", "load_models"]


def load_models(specs: list[str], device: str = "auto") -> dict:
    """NAME=CHECKPOINT_DIR strings -> {name: handle}, with a clear error for a malformed spec."""
    from .. import api
    from ..errors import GenloomError

    models = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise GenloomError(f"--model {spec!r}: expected NAME=CHECKPOINT_DIR, e.g. --model shakes=runs/shakes")
        if name in models:
            raise GenloomError(f"--model {spec!r}: the name {name!r} is used twice")
        models[name.strip()] = api.load(Path(path.strip()), device=device)
    if not models:
        raise GenloomError("no model to serve: give --model NAME=CHECKPOINT_DIR (repeatable)")
    return models


def serve(models: dict, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, **limits) -> None:
    """Serve `models` until interrupted."""
    import uvicorn

    from .app import Limits, create_app

    app = create_app(models, Limits(**limits), api_key)
    uvicorn.run(app, host=host, port=port, log_level="warning")
