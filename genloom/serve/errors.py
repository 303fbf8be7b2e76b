"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, for every failure the server
answers, including FastAPI's own (validation, 404, 405) and unexpected exceptions (500)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import BODIES, OPENAI_FIELDS, accepted_fields

__all__ = ["APIError", "install_error_handlers", "refused_fields"]


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _param(location: list) -> str:
    """OpenAI's spelling of a field's place: messages[0].content (without pydantic's union member names, such
    as the WatermarkField in watermark.WatermarkField.scheme: genloom's field names are lower case)."""
    out = ""
    for part in location:
        if isinstance(part, str) and part[:1].isupper():
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def refused_fields(path: str, problems: list[dict]) -> APIError | None:
    """A 400 naming every field of the body that `path` does not define (pydantic's `extra_forbidden`), saying
    which are OpenAI fields genloom does not implement; None when there are none."""
    extras = [[part for part in p.get("loc", ()) if part != "body"] for p in problems
              if p.get("type") == "extra_forbidden"]
    if not extras:
        return None
    openai_fields = OPENAI_FIELDS.get(path, frozenset())
    notes = []
    for location in extras:
        name, inside = location[-1], location[:-1]
        known = (OPENAI_FIELDS["message"] if inside[:1] == ["messages"] and len(inside) == 2 else
                 openai_fields if not inside else frozenset())
        what = "an OpenAI field genloom does not implement" if name in known else "not a field of this request"
        notes.append(f"{_param(location)} ({what})")
    body = BODIES.get(path)
    accepted = f"; {path} accepts {', '.join(accepted_fields(body))}" if body is not None else ""
    first = _param(extras[0])
    return APIError(400, f"{'; '.join(notes)}: refused rather than ignored{accepted} (docs/serving.md lists them)",
                    param=first, code="unsupported_field")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        refused = refused_fields(request.url.path, list(error.errors()))
        if refused is not None:
            return refused.response()
        problem = error.errors()[0] if error.errors() else {}
        location = [str(part) for part in problem.get("loc", ()) if part != "body"]
        if problem.get("type") == "json_invalid":
            return APIError(400, f"the request body is not valid JSON ({problem.get('msg', '')})",
                            code="invalid_json").response()
        param = ".".join(location) or None
        message = f"{param}: {problem.get('msg', 'invalid value')}" if param else problem.get("msg", "invalid request")
        return APIError(422, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(error.status_code, "invalid_request_error")
        return APIError(error.status_code, str(error.detail), kind).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        return APIError(500, f"internal error: {type(error).__name__}: {error}", "server_error").response()
