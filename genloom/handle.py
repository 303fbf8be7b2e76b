"""The seed every handle (text, image, music, video) draws when a caller gives none, kept to be reported."""

from __future__ import annotations

import secrets

from .core.errors import GenloomError
from .nn.lora import (
    use_adapter,
)

__all__ = ["Seeded"]


class Seeded:
    """Mixin: `_seed(seed)` returns `seed`, or a fresh random one, and keeps it in `last_seed`."""

    last_seed: int | None = None

    def _seed(self, seed: int | None) -> int:
        self.last_seed = secrets.randbelow(2**31) if seed is None else seed
        return self.last_seed


class AdapterChoice:
    """LoRA adapters loaded on a handle's model (`genloom.load(..., adapters=...)`) and the one in use."""

    adapters: list[str] = []          # names of the loaded adapters (set by `load`)
    adapter: str | None = None        # the one applied by default (None: the base model)

    def use_adapter(self, name: str | None) -> None:
        """Apply the loaded adapter `name` to later generations (None: the base model alone)."""
        if name is not None and name not in self.adapters:
            raise GenloomError(f"no adapter named {name!r} is loaded with {self.path} "
                               f"(loaded: {', '.join(self.adapters) or 'none'})")
        use_adapter(self.model, name)
        self.adapter = name
