"""What a file is, by its first bytes (never by its name), and looking for a watermark in it.

`kind_of(data)` names the content: "png", "jpeg", "gif" (images), "wav", "flac", "ogg", "mp3" (sound) or "text"
(UTF-8 without NUL bytes); anything else is refused in one line. `detect_bytes` decodes the content and runs
the detector of its kind. Every failure to decode is a `GenloomError` naming the file, so arbitrary bytes
never end in a traceback (tests/watermark/test_detect.py feeds it random and truncated files).
"""

from __future__ import annotations

import io
import warnings
from typing import Callable, Sequence

import numpy as np

from ..core.errors import GenloomError
from .audio import AudioWatermark
from .keys import check_key
from .text import SCHEMES, TextWatermark

__all__ = ["kind_of", "detect_bytes", "detect_text_tokens", "KINDS", "MAX_BYTES"]

KINDS = {"png": "image", "jpeg": "image", "gif": "image", "wav": "audio", "flac": "audio", "ogg": "audio", "mp3": "audio",
         "text": "text"}
MAX_BYTES = 64 * 2**20           # larger files are refused (a detector reads the whole file)
MAX_PIXELS = 4096 * 4096         # ... and larger images


def kind_of(data: bytes, name: str = "the file") -> str:
    """The file's content type from its magic bytes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"                    # its first frame is checked (genloom generate variations writes GIFs)
    if len(data) >= 12 and data[:4] in (b"RIFF", b"RIFX") and data[8:12] == b"WAVE":
        return "wav"
    if data.startswith(b"fLaC"):
        return "flac"
    if data.startswith(b"OggS"):
        return "ogg"
    # ID3 tags, or an MPEG audio frame: 11 sync bits set and a layer other than the reserved 00
    if data.startswith(b"ID3") or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and data[1] & 0x06):
        return "mp3"
    if data and b"\x00" not in data:
        try:
            data.decode("utf-8")
            return "text"
        except UnicodeDecodeError:
            pass
    if not data:
        raise GenloomError(f"{name}: the file is empty")
    raise GenloomError(f"{name}: is not text (UTF-8), PNG, JPEG, GIF, WAV, FLAC, OGG or MP3 (by its first bytes); "
                       "genloom detect reads those")


def detect_text_tokens(tokens: Sequence[int], key: str, scheme: str = "auto", threshold: float = 1e-3,
                       **options) -> dict:
    """Both text schemes (or the one asked for): the smaller p-value, doubled when both were tried."""
    schemes = SCHEMES if scheme == "auto" else (scheme,)
    results = [TextWatermark(key, s, **options).detect(tokens, threshold) for s in schemes]
    best = min(results, key=lambda r: r.p_value)
    p = min(1.0, best.p_value * len(results))
    return {**best.to_json(), "p_value": p, "marked": p < threshold,
            "tried": [r.to_json() for r in results] if len(results) > 1 else None}


def detect_bytes(data: bytes, key: str, *, name: str = "the file", encode: Callable[[str], list[int]] | None = None,
                 scheme: str = "auto", threshold: float = 1e-3, text_options: dict | None = None) -> dict:
    """{"file", "kind", "marked", "p_value", ...} for one file's bytes. `encode`: text -> token ids (the
    tokenizer of the model that wrote it; a text file without one is refused)."""
    check_key(key, "--key")
    if len(data) > MAX_BYTES:
        raise GenloomError(f"{name}: {len(data)} bytes; genloom detect reads files up to {MAX_BYTES} bytes")
    kind = kind_of(data, name)
    if kind == "text":
        if encode is None:
            raise GenloomError(f"{name}: a text mark is read from the text's tokens; give the tokenizer of the model "
                               "that wrote it (--tokenizer: its tokenizer.json or checkpoint folder)")
        tokens = encode(data.decode("utf-8"))
        out = detect_text_tokens(tokens, key, scheme, threshold, **(text_options or {}))
    elif KINDS[kind] == "audio":
        wave, rate = read_sound(data, kind, name)
        out = AudioWatermark(key).detect(wave, rate, threshold, where=name).to_json()
    else:
        from .image import ImageWatermark

        pixels = read_image(data, name).astype(np.uint8)
        out = ImageWatermark(key, where="--key").detect(pixels, threshold, where=name).to_json()
    return {"file": name, "kind": kind, **out}


def read_sound(data: bytes, kind: str, name: str) -> tuple[np.ndarray, int]:
    """Mono float samples and the sample rate of a sound file's bytes."""
    try:
        import soundfile
    except ImportError:
        soundfile = None
    try:
        if soundfile is not None:
            wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
            wave = wave.mean(axis=1)
        elif kind == "wav":
            from scipy.io import wavfile

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rate, wave = wavfile.read(io.BytesIO(data))
            wave = np.asarray(wave, dtype=np.float64)
            wave = wave.mean(axis=1) if wave.ndim == 2 else wave
        else:
            raise GenloomError(f"{name}: reading {kind.upper()} needs soundfile: pip install 'genloom[audio]'")
    except GenloomError:
        raise
    except Exception as error:           # libsndfile and scipy say "format not recognised" and the like
        raise GenloomError(f"{name}: not a readable {kind.upper()} file ({type(error).__name__}: "
                           f"{str(error)[:100]})") from None
    if wave.size == 0 or not rate or rate <= 0:
        raise GenloomError(f"{name}: holds no samples")
    return np.asarray(wave, dtype=np.float32), int(rate)


def read_image(data: bytes, name: str) -> np.ndarray:
    """An image file's pixels as float32 (H, W, 3) in [0, 255]."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:          # a small file can decode to gigabytes
                raise ValueError(f"{image.width}x{image.height} pixels; genloom detect reads images of up to "
                                 f"{MAX_PIXELS} pixels")
            image.load()
            return np.asarray(image.convert("RGB"), dtype=np.float32)
    except Exception as error:           # PIL's errors for broken, truncated or enormous files
        raise GenloomError(f"{name}: not a readable image ({type(error).__name__}: {str(error)[:100]})") from None
