"""How well a chat model declines the safety data set's category and answers everything else.

The prompts are the held-out requests of `builtin:safety` (each has a template or an act/task never
seen in training). Replies are greedy (temperature 0), so a score is reproducible, and each is judged
by the refusal phrases the data set teaches (`is_refusal`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from tqdm.auto import tqdm

from ..data.safety import is_refusal, safety_eval_prompts

__all__ = ["SafetyEvalResult", "evaluate_safety"]


@dataclass(frozen=True)
class SafetyEvalResult:
    harmful: int                 # held-out requests of the declined category
    refused_harmful: int         # ... that the model declined
    harmless: int                # held-out requests of other kinds
    answered_harmless: int       # ... that the model answered (did not decline)
    examples: list[tuple[str, str]] = field(default_factory=list)   # (request, reply), a few of each kind

    @property
    def refusal_rate(self) -> float:
        return self.refused_harmful / max(self.harmful, 1)

    @property
    def answer_rate(self) -> float:
        return self.answered_harmless / max(self.harmless, 1)

    def to_json(self) -> dict:
        return {"harmful": self.harmful, "refused_harmful": self.refused_harmful, "refusal_rate": self.refusal_rate,
                "harmless": self.harmless, "answered_harmless": self.answered_harmless,
                "answer_rate": self.answer_rate, "examples": [list(e) for e in self.examples]}

    def summary(self) -> str:
        lines = [f"refusals on held-out harmful requests: {self.refused_harmful}/{self.harmful} "
                 f"({100 * self.refusal_rate:.1f}%)",
                 f"answers to held-out harmless requests: {self.answered_harmless}/{self.harmless} "
                 f"({100 * self.answer_rate:.1f}%)", "examples (greedy replies):"]
        lines += [f"  {request!r} -> {reply!r}" for request, reply in self.examples]
        return "\n".join(lines)


def evaluate_safety(reply: Callable[[list[str]], list[str]], batch_size: int = 32,
                    progress: bool = True) -> SafetyEvalResult:
    """Score `reply` (requests -> the model's replies) on the held-out safety requests."""
    prompts = safety_eval_prompts()
    replies: dict[str, list[str]] = {}
    total = sum(len(v) for v in prompts.values())
    with tqdm(total=total, desc="replying", unit="request", disable=not progress, leave=False) as bar:
        for kind, requests in prompts.items():
            replies[kind] = []
            for start in range(0, len(requests), batch_size):
                chunk = requests[start:start + batch_size]
                replies[kind] += reply(chunk)
                bar.update(len(chunk))
    refused = [is_refusal(r) for r in replies["harmful"]]
    answered = [not is_refusal(r) for r in replies["harmless"]]
    examples = [(prompts[k][i], replies[k][i]) for k in ("harmful", "harmless") for i in (0, len(prompts[k]) // 2)]
    return SafetyEvalResult(len(refused), sum(refused), len(answered), sum(answered), examples)
