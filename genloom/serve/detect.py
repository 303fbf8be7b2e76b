"""Watermarks on the server: marking text and images (a server key from `genloom serve --watermark KEY`, or a
request's `watermark` field) and POST /v1/detect (genloom's own endpoint).

A text request's `watermark` field: `true` (mark with the server's key), or an object {"key", "scheme",
"context", "gamma", "delta"}; an image request's: `true` or {"key"} (the key may be left out when the server
has one; a server with a key marks every text and image with it, so a request cannot turn marking off or swap
the key). Keys are never logged, echoed or returned: errors
say what is wrong with a key, never what it is.

POST /v1/detect takes {"text" | "tokens" | "file" (base64 of a PNG, JPEG, WAV, FLAC, OGG or MP3), "model"
(the text model whose tokenizer reads "text"), "key" (default: the server's), "scheme", "context", "gamma",
"fpr"} and answers {"object": "watermark.detection", "kind", "marked", "p_value", ...}.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal, Optional, Union

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..core.errors import GenloomError
from ..watermark.keys import check_key
from .errors import APIError
from .schemas import BODIES, ImageWatermarkField, WatermarkField

__all__ = ["router", "configure", "request_watermark", "request_image_watermark", "DetectRequest"]

router = APIRouter()


class DetectRequest(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")

    text: Optional[str] = None
    tokens: Optional[list[int]] = None
    file: Optional[str] = None                  # base64 of the file's bytes
    model: Optional[str] = None                 # the text model whose tokenizer reads `text`
    key: Optional[str] = None
    scheme: Literal["auto", "green", "gumbel"] = "auto"
    context: int = Field(0, ge=0, le=16)
    gamma: float = Field(0.25, gt=0, lt=1)
    fpr: float = Field(1e-3, gt=0, le=0.5)


BODIES["/v1/detect"] = DetectRequest


def configure(app, key: str | None) -> None:
    """Keep the server's watermark key (checked; None: the server marks nothing by itself)."""
    if key is not None:
        check_key(key, "--watermark")
    app.state.watermark_key = key


def _key(request: Request, given: str | None, param: str) -> str:
    server = getattr(request.app.state, "watermark_key", None)
    if given is not None and server is not None and given != server:
        raise APIError(400, f"{param}: this server marks and checks with its own key; leave {param} out",
                       param=param)
    key = given if given is not None else server
    if key is None:
        raise APIError(400, f"{param}: the server has no watermark key (genloom serve --watermark KEY); give one",
                       param=param)
    try:
        check_key(key, param)
    except GenloomError as error:
        raise APIError(400, str(error), param=param) from None
    return key


def _marked(request: Request, field, what: str) -> bool:
    """Whether a request's output is marked: asked for (`watermark` true or an object), or always on a server
    started with a key, which refuses `watermark: false`."""
    if field is not None and field is not False:
        return True
    if getattr(request.app.state, "watermark_key", None) is None:
        return False
    if field is False:
        raise APIError(400, f"watermark: this server marks every {what}; leave watermark out", param="watermark")
    return True


def request_watermark(request: Request, field: Union[bool, WatermarkField, None], temperature: float):
    """The TextWatermark a text request is decoded with (None: unmarked)."""
    from ..watermark.text import TextWatermark

    if not _marked(request, field, "text it writes"):
        return None
    if field is None or field is True:
        field = WatermarkField()
    key = _key(request, field.key, "watermark.key")
    try:
        mark = TextWatermark(key, field.scheme, field.context, field.gamma, field.delta)
        mark.check_sampling(temperature)
    except GenloomError as error:
        raise APIError(400, f"watermark: {error}", param="watermark") from None
    return mark


def request_image_watermark(request: Request, field: Union[bool, ImageWatermarkField, None]):
    """The ImageWatermark an image request's pictures are marked with (None: unmarked)."""
    from ..watermark.image import ImageWatermark

    if not _marked(request, field, "image it makes"):
        return None
    key = _key(request, field.key if isinstance(field, ImageWatermarkField) else None, "watermark.key")
    return ImageWatermark(key, where="watermark.key")


@router.post("/v1/detect")
async def detect(body: DetectRequest, request: Request):
    from ..watermark.files import detect_bytes, detect_text_tokens, kind_of

    given = [name for name in ("text", "tokens", "file") if getattr(body, name) is not None]
    if len(given) != 1:
        raise APIError(400, "give one of text, tokens and file", param="text")
    key = _key(request, body.key, "key")
    options = {"context": body.context, "gamma": body.gamma}
    encode = None
    if body.text is not None or body.tokens is not None:
        if body.model is None:
            raise APIError(400, "a text mark is read from the text's tokens: give the model that wrote it",
                           param="model")
        entry = request.app.state.genloom.model(body.model, ("text",), "/v1/detect")
        vocab = entry.handle.model.config.vocab_size
        if body.tokens is not None and not all(0 <= t < vocab for t in body.tokens):
            raise APIError(400, f"tokens: token ids are 0 to {vocab - 1} for this model", param="tokens")
        encode = entry.handle.tokenizer.encode

    def run() -> dict:
        if body.tokens is not None:
            return {"kind": "tokens", **detect_text_tokens(body.tokens, key, body.scheme, body.fpr, **options)}
        if body.text is not None:
            return {"kind": "text", **detect_text_tokens(encode(body.text), key, body.scheme, body.fpr, **options)}
        try:
            data = base64.b64decode(body.file, validate=True)
        except (binascii.Error, ValueError):
            raise GenloomError("file: not base64") from None
        kind_of(data, "file")
        return detect_bytes(data, key, name="file", scheme=body.scheme, threshold=body.fpr, text_options=options)

    try:
        result = await run_in_threadpool(run)
    except GenloomError as error:
        raise APIError(400, str(error), param="file" if body.file is not None else "text") from None
    result.pop("file", None)
    return {"object": "watermark.detection", **result}
