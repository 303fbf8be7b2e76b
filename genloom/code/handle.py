"""The handle of a code model (trained on `data.kind = "code"`): continue code, fill in a gap, score it.

`genloom.load(DIR)` returns a `CodeModel` for such a checkpoint; it is a `TextModel` too (plain text
generation, the server, adapters work unchanged).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Iterator, Sequence

from ..core.errors import GenloomError
from ..handle import EvalRequest
from ..lm.decoding import Sampling, StopMatcher, stream_text
from ..lm.windows import score_split
from ..text.eval import TextEvalResult
from ..text.handle import CURRENT_ADAPTER, Completion, TextModel
from ..text.handle import open_checkpoint as open_text_checkpoint
from ..text.handle import score as score_text
from .data import CodeData, CodeDataConfig, code_files, is_validation
from .eval import (
    CodeEvalResult,
    InfillCase,
    function_prompts,
    functional_score,
    infill_cases,
    infill_score,
    resolve_tasks,
    syntax_score,
)
from .generate import (
    SPECIAL_STOPS,
    BlockEnd,
    LineEnd,
    allowed_first,
    code_prompt_ids,
    infill_prompt_ids,
)
from .sandbox import require_isolation

__all__ = ["CodeModel", "STOP_RULES", "open_checkpoint", "score"]


def _special_only(prompt: str) -> StopMatcher:
    return StopMatcher(SPECIAL_STOPS)


# What ends a completion: the end of the function/block, the end of the line, or only the model's own end.
STOP_RULES = {"block": BlockEnd, "line": LineEnd, "none": _special_only}


def _rule(stop_at: str):
    if stop_at not in STOP_RULES:
        raise GenloomError(f"stop_at={stop_at!r}: expected one of {', '.join(STOP_RULES)}")
    return STOP_RULES[stop_at]


class CodeModel(TextModel):
    """A language model of source code with fill-in-the-middle tokens."""

    @property
    def _pieces(self) -> list[str]:
        """Every token's text (for token healing)."""
        if not hasattr(self, "_token_texts"):
            self._token_texts = [self.tokenizer.decode([i]) for i in range(self.tokenizer.vocab_size)]
        return self._token_texts

    def _decode(self, prompts: list[tuple[list[int], str]], matchers: list, offsets: list[int], max_new_tokens: int,
                sampling: Sampling, seed: int | None, adapter) -> list[Completion]:
        healed = [h for _, h in prompts]
        return self._complete_rows([ids for ids, _ in prompts], matchers, offsets, max_new_tokens=max_new_tokens,
                                   sampling=sampling, seed=seed, adapter=adapter,
                                   first_allowed=allowed_first(self._pieces, healed), skips=healed)

    def _room(self, max_new_tokens: int) -> int:
        block = self.model.config.block_size
        return max(block - max_new_tokens, block // 2)

    def complete_code(self, prompts: str | Sequence[str], *, max_new_tokens: int = 256, temperature: float = 0.8,
                      top_p: float = 0.95, seed: int | None = None, num_samples: int = 1, stop_at: str = "block",
                      top_k: int = 0, adapter=CURRENT_ADAPTER) -> list[Completion]:
        """Continue each prompt `num_samples` times (prompt-major order), each ending where the function or
        block the prompt is in ends (`stop_at="block"`), at the end of the line ("line"), or only at the
        model's end of text ("none")."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        rule = _rule(stop_at)
        room = self._room(max_new_tokens)
        rows = [(prompt, j) for prompt in prompts for j in range(num_samples)]
        return self._decode([code_prompt_ids(self.tokenizer, p, room) for p, _ in rows], [rule(p) for p, _ in rows],
                            [j for _, j in rows], max_new_tokens, Sampling(temperature, top_k, top_p), seed, adapter)

    def infill(self, prefix: str | Sequence[str], suffix: str | Sequence[str], *, max_new_tokens: int = 64,
               temperature: float = 0.0, top_p: float = 1.0, seed: int | None = 0, num_samples: int = 1,
               stop_at: str = "none", adapter=CURRENT_ADAPTER) -> list[Completion]:
        """The code that goes between `prefix` and `suffix` (one pair, or lists of pairs), greedy by default.
        The model ends the middle itself (end of text); `stop_at="line"` keeps one line."""
        prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
        suffixes = [suffix] if isinstance(suffix, str) else list(suffix)
        if len(prefixes) != len(suffixes):
            raise GenloomError(f"infill: {len(prefixes)} prefixes but {len(suffixes)} suffixes")
        rule = _rule(stop_at)
        room = self._room(max_new_tokens)
        rows = [(p, s, j) for p, s in zip(prefixes, suffixes) for j in range(num_samples)]
        return self._decode([infill_prompt_ids(self.tokenizer, p, s, room) for p, s, _ in rows],
                            [LineEnd() if rule is LineEnd else _special_only("") for _ in rows],
                            [j for _, _, j in rows], max_new_tokens, Sampling(temperature, 0, top_p), seed, adapter)

    def stream_code(self, prompt: str = "", *, max_new_tokens: int = 256, temperature: float = 0.8, top_p: float = 0.95,
                    seed: int | None = None, stop_at: str = "block", suffix: str | None = None,
                    adapter=CURRENT_ADAPTER) -> Iterator[str]:
        """Stream the continuation of `prompt` (or, with `suffix`, the code between `prompt` and `suffix`)."""
        self._route(adapter)
        room = self._room(max_new_tokens)
        if suffix is None:
            (ids, healed), matcher = code_prompt_ids(self.tokenizer, prompt, room), _rule(stop_at)(prompt)
        else:
            ids, healed = infill_prompt_ids(self.tokenizer, prompt, suffix, room)
            matcher = LineEnd() if stop_at == "line" else _special_only("")
        return stream_text(self.model, self.tokenizer, prompt, max_new_tokens, self.draw_seed(seed),
                           Sampling(temperature, 0, top_p), matcher=matcher, prompt_ids=ids,
                           first_allowed=allowed_first(self._pieces, [healed])[0], skip=healed)

    # -- scores ------------------------------------------------------------------------------------------
    def _data_config(self, data_path: str | None) -> CodeDataConfig:
        config = self.config.data
        return dataclasses.replace(config, path=data_path) if data_path is not None else config

    def held_out_files(self, data_path: str | None = None) -> list[str]:
        """The texts of the files training held out (the same hash split)."""
        config = self._data_config(data_path)
        return [text for relative, text in code_files(config.path, config.extensions)
                if is_validation(relative, config.val_fraction)]

    def evaluate(self, data_path: str | None = None, *, progress: bool = True) -> TextEvalResult:
        """Perplexity and bits per byte on the held-out files (of the training corpus, or of `data_path`, a
        folder split the same way), tokenized with the model's tokenizer."""
        data = CodeData(self._data_config(data_path), self.model.config.block_size, self.tokenizer)
        data.prepare()
        nats, tokens = score_split(self.model, data, progress=progress)
        return TextEvalResult(source=f"{data.describe()}, {len(data.meta['val_files'])} held-out files",
                              tokens=tokens, characters=data.meta["val_chars"], nats_per_token=nats / tokens,
                              bits_per_character=nats / data.meta["val_chars"] / math.log(2),
                              perplexity=math.exp(nats / tokens),
                              bits_per_byte=nats / data.meta["val_bytes"] / math.log(2))

    def evaluate_code(self, tasks: str | Path | None = None, *, num_samples: int = 10, syntax_samples: int = 100,
                      infill_samples: int = 200, temperatures: Sequence[float] = (0.2, 0.8), seed: int = 0,
                      data_path: str | None = None, parts: Sequence[str] = ("syntax", "infill", "tasks"),
                      max_new_tokens: int = 384, progress: bool = True,
                      unsafe_sandbox: bool = False) -> CodeEvalResult:
        """Syntax validity of sampled function bodies, infilling exact match on held-out lines and
        expressions, and pass@1 / pass@10 on HumanEval-format `tasks` (genloom's own set by default), each
        sampled at every temperature in `temperatures` (Chen et al. 2021 report pass@1 at 0.2 and pass@10 at
        0.8). The generated programs run in the sandbox (genloom.code.sandbox); where the operating system cannot
        isolate them this refuses before any work, unless `unsafe_sandbox` (in-process limits only)."""
        if "tasks" in parts:
            require_isolation(unsafe_sandbox)
        result = CodeEvalResult()
        files = self.held_out_files(data_path) if {"syntax", "infill"} & set(parts) else []
        for temperature in temperatures if "syntax" in parts else ():
            prompts = function_prompts(files, syntax_samples, seed)
            if not prompts:
                raise GenloomError("no functions in the held-out files to prompt with")

            def bodies(group: list[str]) -> list[tuple[str, bool]]:
                return [(c.text, c.finish_reason == "stop")
                        for c in self.complete_code(group, max_new_tokens=max_new_tokens, temperature=temperature,
                                                    seed=seed)]

            syntax_score(bodies, prompts, result, str(temperature), progress=progress)
        if "infill" in parts:
            cases = {kind: infill_cases(files, infill_samples, kind, seed) for kind in ("line", "expression")}

            def fill(group: list[InfillCase]) -> list[str]:
                return [c.text for c in self.infill([c.prefix for c in group], [c.suffix for c in group],
                                                    max_new_tokens=48, stop_at="line")]

            infill_score(fill, cases, result, progress=progress)
        task_list = resolve_tasks(tasks) if "tasks" in parts else []
        for temperature in temperatures if task_list else ():
            def solve(prompts: list[str], n: int) -> list[list[str]]:
                texts = [c.text for c in self.complete_code(prompts, max_new_tokens=max_new_tokens,
                                                            temperature=temperature, seed=seed, num_samples=n)]
                return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

            functional_score(solve, task_list, str(tasks or "genloom's task set"), num_samples, (1, 10), result,
                             str(temperature), progress=progress, unsafe_sandbox=unsafe_sandbox)
        return result


def open_checkpoint(checkpoint) -> CodeModel:
    """The handle of an opened code checkpoint (a text checkpoint whose handle knows code)."""
    return open_text_checkpoint(checkpoint, CodeModel)


def score(handle: CodeModel, request: EvalRequest):
    """`genloom eval` of a code model: held-out perplexity and bits per byte, or `--task code` (syntax,
    infilling and pass@k of generated code, run in the sandbox), or `--task safety` as for text models."""
    if request.task == "code":
        request.check({"task", "tasks", "num_samples", "seed", "data", "unsafe_sandbox"}, "--task code")
        return handle.evaluate_code(request.tasks, num_samples=request.get("num_samples", 10),
                                    seed=request.get("seed", 0), data_path=request.data, progress=request.progress,
                                    unsafe_sandbox=request.unsafe_sandbox)
    if request.task not in (None, "safety"):
        raise GenloomError(f"--task {request.task!r}: code models have the tasks 'code' and 'safety'")
    return score_text(handle, request)             # the validation loss (per byte too), or --task safety

