"""The seed every handle (text, image, music, video) draws when a caller gives none, kept to be reported."""

from __future__ import annotations

import secrets

__all__ = ["Seeded"]


class Seeded:
    """Mixin: `_seed(seed)` returns `seed`, or a fresh random one, and keeps it in `last_seed`."""

    last_seed: int | None = None

    def _seed(self, seed: int | None) -> int:
        self.last_seed = secrets.randbelow(2**31) if seed is None else seed
        return self.last_seed
