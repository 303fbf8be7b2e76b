"""The handle of a language model (`genloom.load` of a checkpoint trained on text, chat or preference data):
generate, stream and score text, chat, beam search and speculative decoding; `open_checkpoint` makes it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..core.config import RunConfig
from ..core.errors import CheckpointError, GenloomError
from ..handle import EvalRequest, Handle
from ..lm.chat_templates import TokenizerSettings
from ..lm.constraints import TokenConstraint
from ..lm.decoding import (
    Sampling,
    StopMatcher,
    TextStream,
    encode_prompt,
    generate_tokens,
    stream_text,
)
from ..lm.search import beam_search, speculative_tokens
from ..lm.tokenizers import END_OF_TEXT, TextTokenizer
from ..lm.tools import ToolReply, Tools
from .chat import ChatTemplate, ModelChatTemplate
from .eval import TextEvalResult, evaluate_text
from .safety import SafetyEvalResult

__all__ = ["TextModel", "Completion", "open_checkpoint", "score", "CURRENT_ADAPTER", "TEXT_OBJECTIVES"]

TEXT_OBJECTIVES = ("lm", "dpo")    # objectives whose checkpoints are language models
CURRENT_ADAPTER = object()    # "the adapter chosen with use_adapter" (the default of per-call `adapter=`)


@dataclass(frozen=True)
class Completion:
    """One generated continuation, with what a caller may want to know about it."""

    text: str                 # the continuation, without the prompt, cut before a stop string
    tokens: list[int]         # generated token ids (up to the stop string)
    logprobs: list[float]     # each token's log-probability under the model (temperature 1, unfiltered)
    finish_reason: str        # "stop" (a stop string was produced) or "length"
    seed: int                 # the seed that reproduces this sample alone


class TextModel(Handle):
    """A trained language model with its tokenizer: generate text, stream it, score it."""

    serves = "text"        # what `genloom serve` offers for it: completions and chat completions

    def __init__(self, path: Path, config: RunConfig, model: torch.nn.Module, tokenizer: TextTokenizer,
                 chat_template: "ChatTemplate | ModelChatTemplate | None" = None):
        super().__init__(path, config, model)
        self.tokenizer = tokenizer
        self.chat_template = chat_template or ChatTemplate.default(tokenizer)

    def chat_prompt(self, messages: Sequence[dict], tools: Tools | None = None) -> str:
        """The prompt that asks the model for the assistant's next turn (the model's chat template). `messages`
        are OpenAI's (assistant `tool_calls` and `role: "tool"` results too); `tools` (`genloom.lm.tools.Tools`)
        are shown in the template's tool format."""
        return (tools or Tools()).prompt(self.chat_template, list(messages))

    def _route(self, adapter) -> None:
        if adapter is not CURRENT_ADAPTER:
            self.use_adapter(adapter)

    def stream(self, prompt: str = "", *, max_new_tokens: int = 256, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, seed: int | None = None, min_p: float = 0.0, repetition_penalty: float = 1.0,
               stop: Sequence[str] = (), use_cache: bool = True, adapter=CURRENT_ADAPTER,
               watermark=None, grammar=None) -> Iterator[str]:
        """Yield pieces of the continuation of `prompt` as they are sampled. `adapter` names a loaded LoRA
        adapter (None: the base model); by default the one chosen with `use_adapter` applies. `watermark`: a
        key, or a `genloom.watermark.text.TextWatermark`, that marks the text (`genloom detect` finds it).
        `grammar`: as `complete`'s (checked here, before the first piece); the text ends where it does."""
        sampling = Sampling(temperature, top_k, top_p, min_p, repetition_penalty)
        watermark = text_watermark(watermark, temperature)
        constraint = None if grammar is None else TokenConstraint(grammar, self.tokenizer,
                                                                  self.model.config.vocab_size)
        self._route(adapter)
        return stream_text(self.model, self.tokenizer, prompt, max_new_tokens, self.draw_seed(seed), sampling, stop,
                           use_cache, watermark=watermark, constraint=constraint)

    def complete(self, prompts: str | Sequence[str] = "", *, max_new_tokens: int = 256, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = None, num_samples: int = 1,
                 min_p: float = 0.0, repetition_penalty: float = 1.0, stop: Sequence[str] = (),
                 use_cache: bool = True, adapter=CURRENT_ADAPTER, grammar=None, watermark=None) -> list[Completion]:
        """Continue each prompt `num_samples` times, all in one batch (prompt-major order).

        Sample j of every prompt uses seed + j, so it is the text that prompt alone with that seed
        gives. Without a seed, one is drawn at random (kept in `last_seed`). `grammar`
        (`genloom.lm.constraints.Grammar`: a JSON schema, any JSON object, a regex, a choice of strings, a Lark
        grammar) constrains every token to it (a grammar it cannot enforce raises GrammarError first); a
        completion ends where the grammar does (finish_reason "stop"). `watermark`: a key, or a
        `genloom.watermark.text.TextWatermark`, that marks every completion (`genloom detect` finds it).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        rows = [(prompt, j) for prompt in prompts for j in range(num_samples)]
        return self._complete_rows([encode_prompt(self.tokenizer, prompt) for prompt, _ in rows],
                                   [StopMatcher(stop) for _ in rows], [j for _, j in rows],
                                   max_new_tokens=max_new_tokens,
                                   sampling=Sampling(temperature, top_k, top_p, min_p, repetition_penalty), seed=seed,
                                   use_cache=use_cache, adapter=adapter, grammar=grammar,
                                   watermark=text_watermark(watermark, temperature))

    def _complete_rows(self, encoded: list[list[int]], matchers: list, offsets: list[int], *, max_new_tokens: int,
                       sampling: Sampling, seed: int | None, use_cache: bool = True, adapter=CURRENT_ADAPTER,
                       first_allowed: torch.Tensor | None = None, skips: Sequence[str] = (),
                       grammar=None, watermark=None) -> list[Completion]:
        """Decode token prompts together; row i draws from seed + offsets[i] and ends where matchers[i]
        (a StopMatcher or anything with its push/flush/stopped) says. Token healing: `first_allowed` (B, V)
        limits the first tokens, and skips[i] (text the prompt already has) is cut from row i's start."""
        skips = list(skips) or [""] * len(encoded)
        seed = self.draw_seed(seed)
        self._route(adapter)
        generators = [torch.Generator(device=self.device).manual_seed(seed + j) for j in offsets]
        streams = [TextStream(self.tokenizer) for _ in encoded]
        texts = [""] * len(encoded)
        tokens: list[list[int]] = [[] for _ in encoded]
        logprobs: list[list[float]] = [[] for _ in encoded]
        constraints = None
        if grammar is not None:
            from ..lm.constraints import TokenConstraint

            text = grammar.text()
            constraints = [TokenConstraint(text, self.tokenizer, self.model.config.vocab_size) for _ in encoded]
            matchers = [_GrammarEnd(m, c) for m, c in zip(matchers, constraints)]
        for step_tokens, step_logprobs in generate_tokens(self.model, encoded, max_new_tokens, generators, sampling,
                                                          use_cache, first_allowed, constraints,
                                                          None if watermark is None else
                                                          [watermark.marker() for _ in encoded]):
            for i, (token, logprob) in enumerate(zip(step_tokens.tolist(), step_logprobs.tolist())):
                if matchers[i].stopped:
                    continue
                if constraints is not None and constraints[i].done and token == constraints[i].ended_by:
                    texts[i] += matchers[i].flush()
                    matchers[i].end()                           # the end-of-text token: no text of its own
                    continue
                piece = streams[i].push(token)
                cut = min(len(piece), len(skips[i]))
                piece, skips[i] = piece[cut:], skips[i][cut:]
                texts[i] += matchers[i].push(piece)
                if not matchers[i].stopped:
                    tokens[i].append(token)
                    logprobs[i].append(logprob)
                if constraints is not None and constraints[i].done and not matchers[i].stopped:
                    texts[i] += matchers[i].flush()
                    matchers[i].end()
            if all(m.stopped for m in matchers):
                break
        return [Completion(texts[i] + matchers[i].flush(), tokens[i], logprobs[i],
                           "stop" if matchers[i].stopped else "length", seed + j)
                for i, j in enumerate(offsets)]

    def embed(self, texts: str | Sequence[str], *, pooling: str = "mean", normalize: bool = True,
              adapter=CURRENT_ADAPTER) -> torch.Tensor:
        """(N, d_model) float32 embeddings of `texts`: the hidden states the head reads, pooled by "mean" over
        each text's tokens or taken at its "last" token, L2-normalised unless `normalize=False`
        (`genloom.lm.embedding`). Each text is what it gives alone; at most `block_size` tokens each."""
        from ..lm.embedding import embed_tokens

        texts = [texts] if isinstance(texts, str) else list(texts)
        self._route(adapter)
        return embed_tokens(self.model, [encode_prompt(self.tokenizer, t) for t in texts], pooling, normalize,
                            self.adapter)

    def generate(self, prompt: str = "", *, num_samples: int = 1, **options) -> list[str]:
        """`num_samples` continuations of `prompt` as strings (the options of `complete`)."""
        return [c.text for c in self.complete(prompt, num_samples=num_samples, **options)]

    def chat(self, messages: Sequence[dict], *, tools: Sequence[dict] | None = None, tool_choice=None,
             parallel_tool_calls: bool = True, max_new_tokens: int = 256, temperature: float = 1.0,
             seed: int | None = None, **options) -> ToolReply:
        """The assistant's next turn after `messages` (OpenAI's shape: assistant `tool_calls` and `role: "tool"`
        results included) as a `genloom.lm.tools.ToolReply`: its text, or its calls of `tools` (OpenAI's function
        specs) with arguments held to each function's schema. `tool_choice`: "auto" (the default with tools),
        "none", "required" or {"type": "function", "function": {"name": ...}}; other options as `complete`."""
        request = Tools(tools, tool_choice, parallel_tool_calls)
        template = self.chat_template
        done = self.complete(self.chat_prompt(messages, request), max_new_tokens=max_new_tokens,
                             temperature=temperature, seed=seed, stop=template.stop,
                             grammar=request.grammar(template, self.tokenizer), **options)[0]
        return request.reply(template, done.text, done.finish_reason)

    def beam_search(self, prompt: str, *, max_new_tokens: int = 64, num_beams: int = 4,
                    length_penalty: float = 1.0) -> list[tuple[str, float]]:
        """The most likely continuations found by beam search: (text, total log-probability), best first."""
        eos = self.tokenizer.token_id(END_OF_TEXT)
        beams = beam_search(self.model, encode_prompt(self.tokenizer, prompt), max_new_tokens, num_beams,
                            length_penalty, eos)
        return [(self.tokenizer.decode([t for t in b.tokens if t != eos]), b.logprob) for b in beams]

    def speculative(self, draft: "TextModel", prompt: str = "", *, max_new_tokens: int = 256, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0, seed: int | None = None, lookahead: int = 4,
                    stats: dict | None = None) -> str:
        """Sample as this model would, with a small `draft` model proposing tokens (same tokenizer)."""
        if draft.tokenizer.hf.to_str() != self.tokenizer.hf.to_str():
            raise GenloomError(f"the draft model {draft.path} uses another tokenizer than {self.path}")
        generator = torch.Generator(device=self.device).manual_seed(self.draw_seed(seed))
        tokens = speculative_tokens(self.model, draft.model, encode_prompt(self.tokenizer, prompt), max_new_tokens,
                                    generator, Sampling(temperature, top_k, top_p), lookahead, stats)
        return self.tokenizer.decode(list(tokens))

    def evaluate(self, data_path: str | None = None, *, progress: bool = True) -> TextEvalResult:
        """Loss on the validation split of the training data, or of `data_path` split the same way."""
        data_config = self.config.data
        if data_config.kind != "text":
            if data_path is None:
                raise GenloomError(f"{self.path} was trained on {data_config.kind} data; give a text file to score "
                                   "with --data, or use --task safety for the safety evaluation")
            from .data import TextDataConfig
            data_config = TextDataConfig(path=data_path)
        return evaluate_text(self.model, self.tokenizer, data_config, data_path, progress=progress)

    def reply(self, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int = 80, temperature: float = 0.0,
              seed: int | None = 0, **options) -> list[str]:
        """The assistant's next turn for each conversation (lists of {"role", "content"} messages), in one
        batch, ending where the chat template closes a turn. Greedy by default."""
        prompts = [self.chat_prompt(list(messages)) for messages in conversations]
        completions = self.complete(prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                    stop=self.chat_template.stop, **options)
        return [c.text.strip() for c in completions]

    def evaluate_safety(self, *, progress: bool = True) -> SafetyEvalResult:
        """Refusal rate on the held-out harmful requests of builtin:safety and answer rate on the others."""
        from .safety import evaluate_safety

        return evaluate_safety(lambda requests: self.reply([[{"role": "user", "content": r}] for r in requests]),
                               progress=progress)


def text_watermark(watermark, temperature: float):
    """A `TextWatermark` from a key string (the green scheme) or one given as it is; None stays None."""
    if watermark is None:
        return None
    from ..watermark.text import TextWatermark

    watermark = watermark if isinstance(watermark, TextWatermark) else TextWatermark(watermark)
    watermark.check_sampling(temperature)
    return watermark


def open_checkpoint(checkpoint, handle_class: type[TextModel] = TextModel) -> TextModel:
    """The handle of an opened text checkpoint: its tokenizer, and the chat template of the first adapter that
    brings one (instruction tuning), else the checkpoint's own."""
    path, config = checkpoint.path, checkpoint.config
    if checkpoint.base_config.objective.kind not in TEXT_OBJECTIVES:
        raise CheckpointError(f"{path}: objective {checkpoint.base_config.objective.kind!r} has no text handle")
    tokenizer = TextTokenizer.load(path / "tokenizer.json")
    tokenizer.prompt_prefix = TokenizerSettings.read(path).prompt_prefix(tokenizer)
    if tokenizer.vocab_size > checkpoint.base_config.model.vocab_size:
        raise CheckpointError(f"{path}/tokenizer.json has {tokenizer.vocab_size} tokens but the model only "
                              f"{checkpoint.base_config.model.vocab_size}")
    template = None
    for folder in [*checkpoint.adapter_dirs.values(), path]:
        template = ChatTemplate.find(folder)
        if template is not None:
            break
    return handle_class(path, config, checkpoint.model, tokenizer, template)


def score(handle: TextModel, request: EvalRequest):
    """`genloom eval` of a text model: the validation loss, `--task safety`, or a limits task (`limits.py`)."""
    from .limits import TASKS, run_task

    if request.task in TASKS:
        return run_task(handle, request)
    if request.task == "safety":
        request.check({"task"}, "--task safety")
        return handle.evaluate_safety(progress=request.progress)
    if request.task is not None:
        raise GenloomError(f"--task {request.task!r}: text models have the tasks safety, {', '.join(TASKS)}")
    request.check({"data"}, "a text model")
    return handle.evaluate(request.data, progress=request.progress)


def finetune_assets(base: Path, data_config, finetune=None) -> dict:
    """What text data needs from the base checkpoint to read new data the way the base does: its tokenizer
    (and, for chat and preference data, the chat template a model tuned before keeps)."""
    base = Path(base)
    kind = data_config.kind
    if not (base / "tokenizer.json").is_file():
        raise CheckpointError(f"finetune.base: {base} has no tokenizer.json, so it is not a text model and cannot "
                              f"learn from data.kind = {kind!r}")
    assets: dict = {"tokenizer": TextTokenizer.load(base / "tokenizer.json")}
    if kind in ("chat", "preference"):
        assets["template"] = ChatTemplate.find(base)
    return assets


class _GrammarEnd:
    """A row's stop matcher that a grammar can also end (`end()`): stopped either way."""

    def __init__(self, matcher, constraint):
        self.matcher, self.constraint, self.ended = matcher, constraint, False

    @property
    def stopped(self) -> bool:
        return self.ended or self.matcher.stopped

    def push(self, piece: str) -> str:
        return self.matcher.push(piece)

    def flush(self) -> str:
        return "" if self.ended else self.matcher.flush()

    def end(self) -> None:
        self.ended = True
