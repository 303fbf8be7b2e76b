"""Prometheus text-format metrics for the server: requests, latencies, tokens, images, queue depth.

Every label value comes from a fixed set: requests are counted by route template ("/v1/models/{name}",
not the path asked for; any path no route serves is UNMATCHED), status code and the operator's model names,
and every value is escaped as the text format requires, so no request can add a line or a series.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Callable, Iterable

__all__ = ["Metrics", "UNMATCHED", "escape"]

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
UNMATCHED = "unmatched"      # the route label of requests to paths no route serves


def escape(value: object) -> str:
    """A label value in the Prometheus text format: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**values: object) -> str:
    return ",".join(f'{name}="{escape(value)}"' for name, value in values.items())


class _Histogram:
    def __init__(self):
        self.counts = [0] * len(BUCKETS)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{bound}"}} {count}' for bound, count in zip(BUCKETS, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        out += [f"{name}_sum{{{labels}}} {self.sum:.6f}", f"{name}_count{{{labels}}} {self.total}"]
        return out


class Metrics:
    """`routes`: the route templates requests may be counted under (others count as UNMATCHED)."""

    def __init__(self, routes: Iterable[str] | None = None):
        self._lock = threading.Lock()
        self.routes = None if routes is None else set(routes)
        self._requests: dict[tuple[str, int], int] = defaultdict(int)
        self._latency: dict[str, _Histogram] = defaultdict(_Histogram)
        self._first_token = _Histogram()
        self._tokens: dict[str, int] = defaultdict(int)
        self._images: dict[str, int] = defaultdict(int)
        self.queue_depth: Callable[[], dict[str, int]] = dict
        self.extra: list[Callable[[], list[str]]] = []     # more metric families (the output filter's)

    def request(self, route: str, status: int, seconds: float) -> None:
        if self.routes is not None and route not in self.routes:
            route = UNMATCHED
        with self._lock:
            self._requests[(route, int(status))] += 1
            self._latency[route].observe(seconds)

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self._first_token.observe(seconds)

    def tokens(self, model: str, counted: bool = True) -> None:
        if counted:
            with self._lock:
                self._tokens[model] += 1

    def images(self, model: str, count: int) -> None:
        with self._lock:
            self._images[model] += count

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP genloom_requests_total HTTP requests by route template and status.",
                     "# TYPE genloom_requests_total counter"]
            lines += [f"genloom_requests_total{{{_labels(path=p, status=s)}}} {n}"
                      for (p, s), n in sorted(self._requests.items())]
            lines += ["# HELP genloom_request_seconds Time to answer a request (streams: until the last event).",
                      "# TYPE genloom_request_seconds histogram"]
            for path, histogram in sorted(self._latency.items()):
                lines += histogram.lines("genloom_request_seconds", _labels(path=path))
            lines += ["# HELP genloom_time_to_first_token_seconds From a text request's arrival to its first token.",
                      "# TYPE genloom_time_to_first_token_seconds histogram"]
            lines += self._first_token.lines("genloom_time_to_first_token_seconds", "")
            lines += ["# HELP genloom_tokens_generated_total Tokens generated per model.",
                      "# TYPE genloom_tokens_generated_total counter"]
            lines += [f"genloom_tokens_generated_total{{{_labels(model=m)}}} {n}" for m, n in sorted(self._tokens.items())]
            lines += ["# HELP genloom_images_generated_total Images generated per model.",
                      "# TYPE genloom_images_generated_total counter"]
            lines += [f"genloom_images_generated_total{{{_labels(model=m)}}} {n}" for m, n in sorted(self._images.items())]
        lines += ["# HELP genloom_queue_depth Requests waiting or running per model.", "# TYPE genloom_queue_depth gauge"]
        lines += [f"genloom_queue_depth{{{_labels(model=m)}}} {n}" for m, n in sorted(self.queue_depth().items())]
        for more in self.extra:
            lines += more()
        return "\n".join(lines) + "\n"
