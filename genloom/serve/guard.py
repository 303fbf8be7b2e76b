"""The ASGI middleware in front of every request: who may ask (Host/Origin, API key), how much they may send
(the body limit) and what is counted (request metrics by route template).

- Host and Origin (403): a server without an API key answers only requests whose Host header (and Origin
  header, when a browser sends one) names an allowed host: loopback names by default. A web page elsewhere
  can neither reach it by DNS rebinding (its requests carry the attacker's name in Host) nor post to it from
  another site (its requests carry that site in Origin). With an API key the key is the check, unless
  `allowed_hosts` is given.
- API key (401) on /v1/ paths; /health, /metrics and the page stay open.
- Body limit (413): a Content-Length over the limit is refused before anything is read; a body without one
  (chunked) is read only up to the limit, then refused; the app sees the body once it is complete.
- Metrics: each request is counted under the template of the route that serves it, never its raw path.

(Plain ASGI on purpose: behind Starlette's BaseHTTPMiddleware `request.is_disconnected()` can report a
disconnect while a streaming response is still being read, which would cancel live requests.)
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from typing import Iterable, Sequence
from urllib.parse import urlsplit

from starlette.routing import BaseRoute, Match

from .errors import APIError
from .limits import Limits
from .metrics import UNMATCHED, Metrics

__all__ = ["Guard", "LOOPBACK_HOSTS", "host_name"]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def host_name(value: str) -> str:
    """The host of a Host header ("name", "name:port", "[v6]:port"), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def route_template(routes: Sequence[BaseRoute], scope) -> str:
    """The path template of the route that serves `scope` (one that matches all but the method counts)."""
    partial = UNMATCHED
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "path", UNMATCHED)
        if match is Match.PARTIAL and partial == UNMATCHED:
            partial = getattr(route, "path", UNMATCHED)
    return partial


class Guard:
    def __init__(self, app, limits: Limits, api_key: str | None, metrics: Metrics, routes: Sequence[BaseRoute],
                 allowed_hosts: Iterable[str] | None = None):
        self.app, self.limits, self.api_key, self.metrics, self.routes = app, limits, api_key, metrics, routes
        if allowed_hosts is None:
            allowed_hosts = None if api_key else LOOPBACK_HOSTS
        self.allowed = None if allowed_hosts is None else {host_name(h) for h in allowed_hosts}
        if self.allowed is not None and "*" in self.allowed:
            self.allowed = None

    def refusal(self, scope, headers: dict[str, str]) -> APIError | None:
        """Why this request is refused before it is read (None: it is not)."""
        limit = self.limits.max_body_bytes
        if self.allowed is not None:
            host = headers.get("host")
            if host is not None and host_name(host) not in self.allowed:
                return self.not_allowed(f"the Host header {host!r}")
            origin = headers.get("origin")
            if origin is not None and (urlsplit(origin).hostname or "") not in self.allowed:
                return self.not_allowed(f"the Origin header {origin!r}")
        size = headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > limit):
            return APIError(413, f"the request body is larger than the server's limit of {limit} bytes",
                            code="request_too_large")
        if self.api_key and scope["path"].startswith("/v1/") and not secrets.compare_digest(
                headers.get("authorization", "").encode(), f"Bearer {self.api_key}".encode()):
            return APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                            "authentication_error", code="invalid_api_key")
        return None

    def not_allowed(self, what: str) -> APIError:
        return APIError(403, f"{what} names a host this server does not answer to (it answers to "
                        f"{', '.join(sorted(self.allowed))}); a server without an API key answers to loopback names "
                        "only, unless started with --allow-host NAME", "permission_error", code="host_not_allowed")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            error = self.refusal(scope, headers)
            if error is None:
                body, too_large = await self._read_body(receive)
                if too_large:
                    error = APIError(413, f"the request body is larger than the server's limit of "
                                     f"{self.limits.max_body_bytes} bytes", code="request_too_large")
            if error is not None:
                await error.response()(scope, receive, send_status)
            else:
                async def replay():
                    return body.popleft() if body else await receive()
                await self.app(scope, replay, send_status)
        finally:
            self.metrics.request(route_template(self.routes, scope), status[0], time.perf_counter() - start)

    async def _read_body(self, receive) -> tuple[deque, bool]:
        """The request's messages up to the end of its body (or a disconnect), and whether it was too large."""
        messages, size = deque(), 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, False
            size += len(message.get("body", b""))
            if size > self.limits.max_body_bytes:
                return messages, True
            if not message.get("more_body", False):
                return messages, False
