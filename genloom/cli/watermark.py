"""`genloom detect` and the --watermark options that `generate text|audio|image` share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.errors import GenloomError

__all__ = ["Watermark", "WatermarkScheme", "detect", "text_watermark_option"]

Watermark = Annotated[Optional[str], typer.Option(
    "--watermark", metavar="KEY", envvar="GENLOOM_WATERMARK_KEY",
    help="Mark the output invisibly with this secret key (8-256 printable characters, no spaces; or set "
         "GENLOOM_WATERMARK_KEY, which keeps it out of the shell's history); `genloom detect --key KEY FILE` "
         "finds the mark. See docs/watermarks.md.")]
WatermarkScheme = Annotated[str, typer.Option(
    "--watermark-scheme", help="Text: green (Kirchenbauer et al.: a keyed green list gets +2 on its logits; works "
                               "with greedy decoding) or gumbel (keyed exponential sampling: each token's "
                               "distribution unchanged; needs temperature > 0).")]


def text_watermark_option(key: str | None, scheme: str, temperature: float):
    """The TextWatermark that --watermark and --watermark-scheme ask for (None without a key)."""
    if key is None:
        if scheme != "green":
            raise GenloomError("--watermark-scheme goes with --watermark KEY")
        return None
    from ..watermark.text import TextWatermark

    mark = TextWatermark(key, scheme)
    mark.check_sampling(temperature)
    return mark


def _encoder(tokenizer: Path | None):
    if tokenizer is None:
        return None
    from ..lm.tokenizers import TextTokenizer

    path = tokenizer / "tokenizer.json" if tokenizer.is_dir() else tokenizer
    if not path.is_file():
        raise GenloomError(f"--tokenizer {tokenizer}: no tokenizer.json there (give the file or a text checkpoint "
                           "folder)")
    return TextTokenizer.load(path).encode


def detect(
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="Files to check: text (scored over the "
                                                "tokens of --tokenizer), PNG, JPEG or GIF images (a GIF: its "
                                                "first frame), WAV, FLAC, OGG or MP3 sound. The type is read from "
                                                "the file's first bytes.")],
    key: Annotated[str, typer.Option("--key", envvar="GENLOOM_WATERMARK_KEY", help="The secret key the content "
                                     "was marked with (or GENLOOM_WATERMARK_KEY).")],
    tokenizer: Annotated[Optional[Path], typer.Option("--tokenizer", help="Text files: the tokenizer.json of the "
                                                      "model that wrote them, or its checkpoint folder.")] = None,
    scheme: Annotated[str, typer.Option("--scheme", help="Text: auto (both schemes, the p-value doubled), green or "
                                        "gumbel.")] = "auto",
    context: Annotated[int, typer.Option("--context", min=0, max=16, help="Text: the previous tokens that keyed "
                                         "each position (h; 0 = the scheme's default: green 2, gumbel 3).")] = 0,
    gamma: Annotated[float, typer.Option("--gamma", min=0.01, max=0.99, help="Text, green scheme: the green "
                                         "fraction it was made with.")] = 0.25,
    fpr: Annotated[float, typer.Option("--fpr", min=1e-12, max=0.5, help="The false-positive rate: a file counts "
                                       "as marked when its p-value is below this.")] = 1e-3,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file instead of a line.")] = False,
) -> None:
    """Look for genloom's watermark in files: one line per file with its verdict and p-value (the chance that
    unmarked content scores as high). No model is needed for text and sound; the key is never printed."""
    from ..watermark.files import detect_bytes
    from ..watermark.keys import check_key
    from ..watermark.text import SCHEMES

    check_key(key, "--key")
    if scheme not in ("auto", *SCHEMES):
        raise GenloomError(f"--scheme {scheme!r}: auto, {', '.join(SCHEMES)}")
    encode = _encoder(tokenizer)
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise GenloomError(f"{path}: cannot be read ({error.strerror or error})") from None
        result = detect_bytes(data, key, name=str(path), encode=encode, scheme=scheme, threshold=fpr,
                              text_options={"context": context, "gamma": gamma})
        if as_json:
            typer.echo(json.dumps(result))
        else:
            verdict = "marked" if result["marked"] else "not marked"
            detail = ", ".join(f"{k}={result[k]}" for k in ("scheme", "z", "scored_tokens") if k in result)
            typer.echo(f"{path}: {verdict} ({result['kind']}; p={result['p_value']:.3g}{', ' + detail if detail else ''})")
