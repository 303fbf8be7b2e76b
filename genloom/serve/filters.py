"""Output filters for the text routes (`genloom serve --moderation refuse|flag [--blocklist FILE]`).

Each request's prompt (the user's messages) is screened before decoding, and each reply after it:

- the moderation classifier (`text/moderation.py`, trained on builtin:safety: help to hurt or kill people)
  gives a harm score; at `threshold` or above the text is flagged "violence";
- the blocklist (one word or phrase a line, '#' comments; matched case-insensitively as whole words) flags
  any text that holds one of its entries ("blocklist").

With "refuse", a flagged prompt is not decoded and a flagged reply is withheld: the choice's finish_reason is
"content_filter", a chat message carries OpenAI's `refusal` text and no content, a completion's text is
empty. With "flag" the text is returned as it is. Either way the response has a `moderation` object (the
prompt's verdict and one per choice) and /metrics counts the verdicts (genloom_moderation_total by stage and
outcome). A streamed reply is screened on its prompt only (its text has left before it is complete).
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from ..core.errors import GenloomError

__all__ = ["Moderation", "configure", "screen", "review", "REFUSAL", "load_blocklist"]

REFUSAL = "I cannot help with that: the request was declined by this server's content filter."


def load_blocklist(path: str | Path) -> tuple[str, ...]:
    """A blocklist file's entries (one a line; blank lines and '#' comments skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise GenloomError(f"--blocklist {path}: cannot be read as UTF-8 text ({error})") from None
    entries = tuple(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))
    if not entries:
        raise GenloomError(f"--blocklist {path}: holds no entries (one word or phrase a line)")
    return entries


@dataclass
class Moderation:
    """What the server screens and what it does with a flagged text."""

    action: Literal["refuse", "flag"] = "refuse"
    classifier: bool = True                     # use the safety classifier (else the blocklist alone)
    threshold: float = 0.5                      # harm score at which a text is flagged
    blocklist: Sequence[str] = ()
    counts: dict = field(default_factory=lambda: defaultdict(int), repr=False)

    def __post_init__(self) -> None:
        if self.action not in ("refuse", "flag"):
            raise GenloomError(f"--moderation {self.action!r}: refuse or flag")
        if not 0 < self.threshold < 1:
            raise GenloomError(f"moderation threshold {self.threshold}: between 0 and 1")
        if not self.classifier and not self.blocklist:
            raise GenloomError("moderation without the classifier needs a --blocklist")
        terms = sorted({t.lower() for t in self.blocklist}, key=len, reverse=True)
        self._pattern = (re.compile(r"(?<!\w)(" + "|".join(re.escape(t) for t in terms) + r")(?!\w)", re.IGNORECASE)
                         if terms else None)
        self._model = None
        self._lock = threading.Lock()

    def _scores(self, texts: list[str]) -> list[float]:
        if not self.classifier:
            return [0.0] * len(texts)
        with self._lock:
            if self._model is None:
                from ..text.moderation import safety_classifier
                self._model = safety_classifier()
        return self._model.score(texts)

    def verdicts(self, texts: Sequence[str], stage: str) -> list[dict]:
        """{"flagged", "categories", "harm_score", "blocked"} per text; counted for /metrics under `stage`."""
        texts = list(texts)
        out = []
        for text, score in zip(texts, self._scores(texts)):
            blocked = sorted({m.group(0).lower() for m in self._pattern.finditer(text)}) if self._pattern else []
            categories = {"violence": self.classifier and score >= self.threshold, "blocklist": bool(blocked)}
            flagged = any(categories.values())
            out.append({"flagged": flagged, "categories": categories, "harm_score": round(score, 4),
                        "blocked": blocked})
            with self._lock:
                self.counts[(stage, ("refused" if self.action == "refuse" else "flagged") if flagged else "passed")] += 1
        return out

    def metric_lines(self) -> list[str]:
        lines = ["# HELP genloom_moderation_total Texts screened by the output filter, by stage and outcome.",
                 "# TYPE genloom_moderation_total counter"]
        with self._lock:
            lines += [f'genloom_moderation_total{{stage="{stage}",outcome="{outcome}"}} {n}'
                      for (stage, outcome), n in sorted(self.counts.items())]
        return lines


def configure(app, moderation: Moderation | None) -> None:
    app.state.moderation = moderation
    if moderation is not None:
        app.state.genloom.metrics.extra.append(moderation.metric_lines)


def _texts(body) -> list[str]:
    """What a request asks, as text: a completion's string prompts, a chat's user and system messages."""
    if hasattr(body, "messages"):
        out = []
        for message in body.messages:
            if message.role in ("user", "system", "developer"):
                content = message.content
                out.append(content if isinstance(content, str) else
                           "".join(getattr(part, "text", "") or "" for part in content or []))
        return out
    prompt = body.prompt
    return [prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)]


def screen(request, body, chat: bool):
    """None when the request may be decoded; else the response that refuses it (action "refuse")."""
    moderation: Moderation | None = getattr(request.app.state, "moderation", None)
    if moderation is None:
        return None
    texts = _texts(body)
    verdicts = moderation.verdicts(texts, "prompt") if texts else []
    flagged = any(v["flagged"] for v in verdicts)
    request.state.moderation = {"prompt": _merge(verdicts)}
    if not flagged or moderation.action == "flag":
        return None
    import secrets
    import time

    n = body.n * (1 if chat or isinstance(body.prompt, str) or (body.prompt and isinstance(body.prompt[0], int))
                  else len(body.prompt))
    if chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": None, "refusal": REFUSAL},
                    "logprobs": None, "finish_reason": "content_filter"} for i in range(n)]
        reply = {"id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion"}
    else:
        choices = [{"text": "", "index": i, "logprobs": None, "finish_reason": "content_filter"} for i in range(n)]
        reply = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion"}
    reply.update({"created": int(time.time()), "model": body.model, "choices": choices,
                  "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                  "moderation": {"prompt": _merge(verdicts), "choices": []}})
    if body.stream:
        from .events import event_stream, sse

        async def chunks():
            kind = "chat.completion.chunk" if chat else "text_completion"
            for choice in choices:
                delta = ({"index": choice["index"], "delta": {"role": "assistant", "refusal": REFUSAL},
                          "logprobs": None, "finish_reason": "content_filter"} if chat else choice)
                yield sse({**{k: reply[k] for k in ("id", "created", "model")}, "object": kind, "choices": [delta],
                           "moderation": reply["moderation"]})
        return event_stream(chunks())
    return reply


def review(request, reply: dict) -> dict:
    """The finished (not streamed) response with each choice screened, withheld when refused."""
    moderation: Moderation | None = getattr(request.app.state, "moderation", None)
    if moderation is None:
        return reply
    chat = reply.get("object") == "chat.completion"
    texts = [(c["message"].get("content") or "") if chat else c["text"] for c in reply["choices"]]
    verdicts = moderation.verdicts(texts, "reply")
    for choice, verdict in zip(reply["choices"], verdicts):
        if verdict["flagged"] and moderation.action == "refuse":
            choice["finish_reason"] = "content_filter"
            if chat:
                choice["message"].update({"content": None, "refusal": REFUSAL})
                choice["message"].pop("tool_calls", None)
            else:
                choice["text"] = ""
            choice["logprobs"] = None
    reply["moderation"] = {**getattr(request.state, "moderation", {}), "choices": verdicts}
    return reply


def _merge(verdicts: list[dict]) -> dict:
    """One verdict for several texts (a chat's messages): flagged if any is."""
    if not verdicts:
        return {"flagged": False, "categories": {"violence": False, "blocklist": False}, "harm_score": 0.0,
                "blocked": []}
    return {"flagged": any(v["flagged"] for v in verdicts),
            "categories": {k: any(v["categories"][k] for v in verdicts) for k in ("violence", "blocklist")},
            "harm_score": max(v["harm_score"] for v in verdicts),
            "blocked": sorted({b for v in verdicts for b in v["blocked"]})}
