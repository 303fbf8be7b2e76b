"""Watermark keys: their form, and the keyed pseudo-random numbers every mark is made of.

A key is a secret string the user chooses (8 to 256 printable characters, no spaces). Each content type
draws from its own sub-key (HMAC-SHA256 of the key and a label), and each position from HMAC-SHA256 of the
sub-key and what the position depends on (the previous tokens, a frame index), stretched with SHAKE-256.
Both are fully specified by the standard library's `hmac` and `hashlib`, so a mark made on one machine is
detected on any other, whatever the versions of numpy and torch (never Python's salted `hash()`).
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np

from ..core.errors import GenloomError

__all__ = ["WatermarkKeyError", "check_key", "subkey", "keyed_bytes", "keyed_uniform", "keyed_signs",
           "keyed_normal"]

MIN_KEY, MAX_KEY = 8, 256


class WatermarkKeyError(GenloomError):
    """A watermark key of the wrong form."""


def check_key(key: str | bytes, where: str = "--watermark") -> bytes:
    """The key's bytes; a key that is too short, too long or not printable is refused naming `where`."""
    if isinstance(key, bytes):
        try:
            key = key.decode("utf-8")
        except UnicodeDecodeError:
            raise WatermarkKeyError(f"{where}: a watermark key is text (UTF-8)") from None
    if not isinstance(key, str):
        raise WatermarkKeyError(f"{where}: a watermark key is a string, not {type(key).__name__}")
    if not MIN_KEY <= len(key) <= MAX_KEY or not key.isprintable() or any(c.isspace() for c in key):
        raise WatermarkKeyError(f"{where}: a watermark key is {MIN_KEY} to {MAX_KEY} printable characters without "
                                f"spaces (got {len(key)} characters{'' if key.isprintable() else ', not all printable'})")
    return key.encode("utf-8")


def subkey(key: bytes, label: str) -> bytes:
    """The key of one use (`label`: "text/green", "audio", ...): marks of different kinds never share numbers."""
    return hmac.new(key, b"genloom-watermark-v1/" + label.encode(), hashlib.sha256).digest()


def keyed_bytes(key: bytes, message: bytes, count: int) -> bytes:
    """`count` pseudo-random bytes determined by (key, message): SHAKE-256 of HMAC-SHA256(key, message)."""
    return hashlib.shake_256(hmac.new(key, message, hashlib.sha256).digest()).digest(count)


def keyed_uniform(key: bytes, message: bytes, count: int) -> np.ndarray:
    """`count` numbers uniform in (0, 1) (float64, 32 bits each, never 0 or 1)."""
    words = np.frombuffer(keyed_bytes(key, message, 4 * count), dtype="<u4").astype(np.float64)
    return (words + 0.5) / 2.0**32


def keyed_signs(key: bytes, message: bytes, count: int) -> np.ndarray:
    """`count` values of +1 or -1 (float32), each with probability 1/2."""
    bits = np.unpackbits(np.frombuffer(keyed_bytes(key, message, (count + 7) // 8), dtype=np.uint8))[:count]
    return bits.astype(np.float32) * 2 - 1


def keyed_normal(key: bytes, message: bytes, count: int) -> np.ndarray:
    """`count` standard normal numbers (Box-Muller on keyed uniforms; float64)."""
    u = keyed_uniform(key, message, 2 * ((count + 1) // 2)).reshape(2, -1)
    radius = np.sqrt(-2.0 * np.log(u[0]))
    return np.concatenate([radius * np.cos(2 * np.pi * u[1]), radius * np.sin(2 * np.pi * u[1])])[:count]
