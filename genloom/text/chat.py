"""Conversations for instruction tuning (SFT) and preference pairs for DPO.

A chat template turns messages into the text a model reads: each turn is a role prefix, the content
and an end marker; a reply is asked for by ending the prompt with the assistant's prefix, and it ends
where the model writes the end marker. The template is plain text, so it works with any tokenizer,
including a character vocabulary, and is stored beside the tokenizer (`chat_template.json`).
A model imported from Hugging Face brings its own Jinja template instead (`ModelChatTemplate`: its
tokenizer_config.json / chat_template.jinja, with the stop tokens of its generation_config.json), which
prompts, replies and fine-tuning use the same way.

Chat data (`kind = "chat"`): a JSONL file with one conversation per line,
`{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}`, or `builtin:safety`.
Only the assistant's tokens are trained (the others get target -100). Short conversations are packed
into windows of `model.block_size` tokens; attention and positions restart at each conversation
(the batch carries segment ids), so packing changes nothing but speed.

Preference data (`kind = "preference"`): JSONL lines `{"prompt", "chosen", "rejected"}`, or
`builtin:safety`. The prompt is asked as a user turn (or used as raw text with `chat = false`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..core.config import require, validate
from ..core.errors import CheckpointError, DataError, GenloomError
from ..core.registry import register
from ..core.sources import jsonl_records
from ..lm.chat_templates import HF_TOKENIZER_FILES, TokenizerSettings, render_chat
from ..lm.decoding import advance, failure_table
from ..lm.tokenizers import TextTokenizer
from ..train.data import split_examples

__all__ = ["ChatTemplate", "ModelChatTemplate", "ChatDataConfig", "ChatData", "PreferenceDataConfig", "PreferenceData",
           "read_conversations", "read_preferences", "IGNORE"]

log = logging.getLogger(__name__)

IGNORE = -100                 # target of tokens that are not trained (cross-entropy's ignore_index)
TEMPLATE_FILE = "chat_template.json"
ROLES = ("system", "user", "assistant")
MAX_FIELD_LENGTH = 1000      # characters in a template's prefixes and end marker


@dataclass(frozen=True)
class ChatTemplate:
    system: str = "System: "
    user: str = "User: "
    assistant: str = "Assistant: "
    end: str = "\n\n"         # closes every turn; a reply stops when the model writes it

    @classmethod
    def default(cls, tokenizer: TextTokenizer | None = None) -> "ChatTemplate":
        return cls()

    def clean(self, content: str) -> str:
        """Message text with the end marker made impossible inside it: each character that would complete
        the marker is left out (under the default "\n\n", blank lines become single newlines), and a
        one-character marker becomes a space (or is dropped, if it is a space). One pass over the text,
        for any template: an empty marker leaves the text as it is."""
        end = self.end
        if not end or end not in content:
            return content.strip()
        if len(end) == 1:
            return content.replace(end, "" if end == " " else " ").strip()
        if end == end[0] * len(end):                       # "\n\n": runs of the character are cut short
            return re.sub(f"{re.escape(end[0])}{{{len(end)},}}", lambda _: end[:-1], content).strip()
        table, state, kept = failure_table(end), 0, []
        for char in content:
            after = advance(end, table, state, char)
            if after < len(end):
                state = after
                kept.append(char)
        return "".join(kept).strip()

    def problems(self) -> list[str]:
        """What makes this template unusable (empty when it is fine)."""
        out = [f"{name} must be text (got {type(getattr(self, name)).__name__})"
               for name in ("system", "user", "assistant", "end") if not isinstance(getattr(self, name), str)]
        if out:
            return out
        if not self.end.strip(" \t"):
            out.append(f"end is {self.end!r}: the end marker closes every turn and stops every reply, so it must "
                       "hold a character other than spaces and tabs (the default is \"\\n\\n\")")
        out += [f"{name} has {len(getattr(self, name))} characters; a template field may have at most "
                f"{MAX_FIELD_LENGTH}" for name in ("system", "user", "assistant", "end")
                if len(getattr(self, name)) > MAX_FIELD_LENGTH]
        return out

    def spans(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans of assistant content (with its end marker)."""
        text, trained = "", []
        for message in messages:
            text += getattr(self, message["role"])
            start = len(text)
            text += self.clean(message["content"]) + self.end
            if message["role"] == "assistant":
                trained.append((start, len(text)))
        return text, trained

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """The text that asks for the assistant's next turn after `messages`."""
        check_messages(messages, "messages", final_assistant=False)
        return self.spans(list(messages))[0] + self.assistant

    def exchange(self, messages: list[dict[str, str]], reply: str) -> tuple[str, str]:
        """(the prompt asking for the next turn after `messages`, the text of `reply` as that turn)."""
        return self.prompt(messages), self.clean(reply) + self.end

    @property
    def stop(self) -> list[str]:
        return [self.end]

    def save(self, folder: Path) -> None:
        (Path(folder) / TEMPLATE_FILE).write_text(json.dumps({"format": "genloom-chat-1", **asdict(self)}, indent=2))

    @classmethod
    def find(cls, folder: Path) -> "ChatTemplate | ModelChatTemplate | None":
        """The template saved in `folder`: genloom's chat_template.json, else the Jinja chat template of an
        imported model's tokenizer_config.json / chat_template.jinja (None if there is none); a clear
        CheckpointError if it is not usable."""
        path = Path(folder) / TEMPLATE_FILE
        if not path.is_file():
            return ModelChatTemplate.find(folder)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            template = cls(**{k: raw[k] for k in ("system", "user", "assistant", "end")})
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{path}: not a genloom chat template ({type(error).__name__}: {error})") from None
        problems = template.problems()
        if problems:
            raise CheckpointError(f"{path}: not a usable chat template: {'; '.join(problems)}")
        return template


class ModelChatTemplate:
    """The Jinja chat template a Hugging Face model ships (rendered as transformers renders it, see
    `genloom.lm.chat_templates`), with the same methods as ChatTemplate. A reply stops at the model's
    end-of-turn tokens (generation_config.json's eos_token_id, or the eos token)."""

    def __init__(self, folder: Path, settings: TokenizerSettings, stop: list[str]):
        self.folder, self.settings, self._stop = Path(folder), settings, list(stop)

    @classmethod
    def find(cls, folder: Path) -> "ModelChatTemplate | None":
        folder = Path(folder)
        settings = TokenizerSettings.read(folder)
        if settings.chat_template is None:
            return None
        stop = []
        if (folder / "tokenizer.json").is_file():
            stop = settings.stop_strings(TextTokenizer.load(folder / "tokenizer.json"))
        elif settings.special.get("eos_token"):
            stop = [settings.special["eos_token"]]
        return cls(folder, settings, stop)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return render_chat(self.settings.chat_template, messages, add_generation_prompt=add_generation_prompt,
                           special=self.settings.special)

    def prompt(self, messages: list[dict[str, str]]) -> str:
        check_messages(messages, "messages", final_assistant=False)
        return self.render(list(messages), True)

    def clean(self, content: str) -> str:
        return content

    def spans(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans of each assistant turn: what the conversation up
        to and with that turn adds to the prompt asking for it (its content and end-of-turn marker)."""
        text = self.render(messages, False)
        trained, cursor = [], 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            span = None
            try:
                before, upto = self.render(messages[:i], True) if i else "", self.render(messages[:i + 1], False)
            except GenloomError:
                before = upto = None
            if upto is not None and i and text.startswith(upto) and upto.startswith(before) and len(before) >= cursor:
                span = (len(before), len(upto))
            else:          # a template that rewrites earlier turns: find the content, then its end marker
                start = text.find(message["content"].strip(), cursor)
                if start >= 0:
                    end = start + len(message["content"].strip())
                    for marker in self._stop:
                        if text.startswith(marker, end):
                            end += len(marker)
                            break
                    span = (start, end)
            if span is not None:
                trained.append(span)
                cursor = span[1]
        return text, trained

    def exchange(self, messages: list[dict[str, str]], reply: str) -> tuple[str, str]:
        prompt = self.prompt(messages)
        full = self.render([*messages, {"role": "assistant", "content": reply}], False)
        if full.startswith(prompt):
            return prompt, full[len(prompt):]
        return prompt, reply + (self._stop[0] if self._stop else "")

    @property
    def stop(self) -> list[str]:
        return list(self._stop)

    def save(self, folder: Path) -> None:
        """Copy the model's tokenizer settings (where its template lives) into `folder`."""
        for name in HF_TOKENIZER_FILES:
            source = self.folder / name
            if source.is_file() and source.resolve() != (Path(folder) / name).resolve():
                shutil.copyfile(source, Path(folder) / name)


def check_messages(messages: Any, where: str, final_assistant: bool = True) -> None:
    """Raise DataError unless `messages` is a list of {"role", "content"} (ending with the assistant's
    reply when `final_assistant`)."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: message {i} must be an object with a string \"content\"")
        if message.get("role") not in ROLES:
            raise DataError(f"{where}: message {i} has role {message.get('role')!r}; expected one of {', '.join(ROLES)}")
    if final_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant message, so there is nothing to learn")


def _jsonl(path: str) -> list[tuple[int, dict]]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"data.path: {path} does not exist (expected a .jsonl file or builtin:safety)")
    with open(file, encoding="utf-8") as f:
        out = list(jsonl_records(f, path))
    if not out:
        raise DataError(f"data.path: {path} holds no examples")
    return out


def read_conversations(path: str) -> list[list[dict[str, str]]]:
    if path == "builtin:safety":
        from .safety import safety_conversations
        return safety_conversations()
    if path.startswith("builtin:"):
        raise DataError(f"data.path: unknown built-in chat data {path!r}; available: builtin:safety")
    out = []
    for number, record in _jsonl(path):
        check_messages(record.get("messages"), f"{path}, line {number}")
        out.append([{"role": m["role"], "content": m["content"]} for m in record["messages"]])
    return out


def read_preferences(path: str) -> list[dict[str, str]]:
    if path == "builtin:safety":
        from .safety import safety_preferences
        return safety_preferences()
    if path.startswith("builtin:"):
        raise DataError(f"data.path: unknown built-in preference data {path!r}; available: builtin:safety")
    out = []
    for number, record in _jsonl(path):
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(record.get(key), str) or (key != "prompt" and not record[key].strip()):
                raise DataError(f"{path}, line {number}: expected a non-empty string field {key!r} "
                                "(each line: {\"prompt\", \"chosen\", \"rejected\"})")
        out.append({k: record[k] for k in ("prompt", "chosen", "rejected")})
    return out


def encode_spans(tokenizer: TextTokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    """Token ids of `text` and, per token, whether it starts inside one of the character `spans`."""
    encoding = tokenizer.hf.encode(text, add_special_tokens=False)
    trained = [any(a <= start < b for a, b in spans) for start, _ in encoding.offsets]
    return encoding.ids, trained


# ----------------------------------------------------------------------------------------------
# Instruction tuning
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChatDataConfig:
    kind: Literal["chat"] = "chat"
    path: str = "builtin:safety"     # a .jsonl file of {"messages": [...]} lines, or builtin:safety
    val_fraction: float = 0.1        # conversations kept for validation (a seeded shuffle)
    pack: bool = True                # several short conversations per window (attention stays within each)
    seed: int = 0                    # seeds the split

    def __post_init__(self) -> None:
        validate(self, "data")
        require(0 < self.val_fraction < 1, "data.val_fraction", "must be between 0 and 1 (e.g. 0.1)")


def _pack(examples: list[tuple[list[int], list[bool]]], length: int, pack: bool) -> torch.Tensor:
    """Windows (N, 3, length): token ids, trained flags and segment ids (-1 = padding)."""
    windows: list[list[tuple[list[int], list[bool]]]] = []
    used = length
    for ids, trained in examples:
        if not pack or used + len(ids) > length:
            windows.append([])
            used = 0
        windows[-1].append((ids, trained))
        used += len(ids)
    out = torch.zeros(len(windows), 3, length, dtype=torch.long)
    out[:, 2] = -1
    for w, window in enumerate(windows):
        at = 0
        for segment, (ids, trained) in enumerate(window):
            out[w, 0, at:at + len(ids)] = torch.tensor(ids)
            out[w, 1, at:at + len(ids)] = torch.tensor(trained, dtype=torch.long)
            out[w, 2, at:at + len(ids)] = segment
            at += len(ids)
    return out


class ChatData:
    """Conversations tokenized with a chat template; loss on the assistant's tokens only."""

    item_name = "tok"

    def __init__(self, config: ChatDataConfig, block_size: int, tokenizer: TextTokenizer | None = None,
                 template: ChatTemplate | None = None):
        if tokenizer is None:
            raise DataError("data.kind = \"chat\" fine-tunes a trained text model: run genloom finetune RECIPE "
                            "--from CHECKPOINT_DIR (the tokenizer comes from that model)")
        self.config, self.block_size, self.tokenizer = config, block_size, tokenizer
        self.template = template or ChatTemplate.default(tokenizer)
        self.conversations: list[list[dict[str, str]]] = []
        self._windows: dict[str, torch.Tensor] = {}

    def prepare(self) -> None:
        if self._windows:
            return
        self.conversations = read_conversations(self.config.path)
        if len(self.conversations) < 2:
            raise DataError(f"data.path: {self.config.path} has {len(self.conversations)} conversation; "
                            "training needs at least 2")
        splits = split_examples(len(self.conversations), self.config.val_fraction, self.config.seed)
        self.val_ids = splits["val"].tolist()
        length = self.block_size + 1
        cut = 0
        for split, ids in splits.items():
            examples = []
            for i in ids.tolist():
                text, spans = self.template.spans(self.conversations[i])
                tokens, trained = encode_spans(self.tokenizer, text, spans)
                if len(tokens) > length:
                    cut += 1
                    tokens, trained = tokens[:length], trained[:length]
                examples.append((tokens, trained))
            self._windows[split] = _pack(examples, length, self.config.pack)
        if cut:
            log.warning("%d conversation(s) are longer than model.block_size + 1 = %d tokens and were cut", cut, length)
        log.info("%s: %d conversations in %d training and %d validation windows of %d tokens", self.config.path,
                 len(self.conversations), len(self._windows["train"]), len(self._windows["val"]), length)

    def model_settings(self) -> dict:
        return {"vocab_size": self.tokenizer.vocab_size}

    def save_assets(self, folder: Path) -> None:
        self.tokenizer.save(Path(folder) / "tokenizer.json")
        self.template.save(folder)

    @property
    def items_per_example(self) -> int:
        return self.block_size

    def sample_indices(self, generator: torch.Generator, n: int) -> torch.Tensor:
        return torch.randint(0, len(self._windows["train"]), (n,), generator=generator)

    def val_indices(self, n: int) -> torch.Tensor:
        return torch.arange(n) % len(self._windows["val"])

    def batch(self, indices: torch.Tensor, split: str = "train") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs (B, T), targets (B, T) with -100 where not trained, segment ids (B, T) (-1 = padding)."""
        windows = self._windows[split][indices]                     # (B, 3, T+1)
        tokens, trained, segments = windows[:, 0], windows[:, 1], windows[:, 2]
        targets = torch.where(trained[:, 1:].bool(), tokens[:, 1:], IGNORE)
        return tokens[:, :-1], targets, segments[:, :-1]

    @property
    def sample_stop(self) -> list[str]:
        return self.template.stop

    def sample_prompt(self) -> str:
        """A validation conversation up to its last reply: the prompt of the samples written while training."""
        messages = self.conversations[self.val_ids[0]]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return self.template.prompt(messages[:last])


@register("data", "chat", ChatDataConfig)
def build_chat_data(config: ChatDataConfig, run, tokenizer: TextTokenizer | None = None,
                    template: ChatTemplate | None = None) -> ChatData:
    return ChatData(config, run.model.block_size, tokenizer, template)


# ----------------------------------------------------------------------------------------------
# Preference pairs
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreferenceDataConfig:
    kind: Literal["preference"] = "preference"
    path: str = "builtin:safety"     # a .jsonl file of {"prompt", "chosen", "rejected"} lines, or builtin:safety
    chat: bool = True                # ask the prompt as a user turn of the chat template (false: raw text)
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        validate(self, "data")
        require(0 < self.val_fraction < 1, "data.val_fraction", "must be between 0 and 1 (e.g. 0.1)")


class PreferenceData:
    """Each example: the prompt followed by the chosen reply, and by the rejected one; only reply tokens count."""

    item_name = "pair"
    items_per_example = 1

    def __init__(self, config: PreferenceDataConfig, block_size: int, tokenizer: TextTokenizer | None = None,
                 template: ChatTemplate | None = None):
        if tokenizer is None:
            raise DataError("data.kind = \"preference\" fine-tunes a trained text model: run genloom finetune "
                            "RECIPE --from CHECKPOINT_DIR (the tokenizer comes from that model)")
        self.config, self.block_size, self.tokenizer = config, block_size, tokenizer
        self.template = template or ChatTemplate.default(tokenizer)
        self.pairs: list[dict[str, str]] = []
        self._rows: dict[str, torch.Tensor] = {}

    def _encode(self, prompt: str, reply: str) -> tuple[list[int], list[bool]]:
        if self.config.chat:
            text, reply = self.template.exchange([{"role": "user", "content": prompt}], reply)
        else:
            text = prompt
        tokens, trained = encode_spans(self.tokenizer, text + reply, [(len(text), len(text + reply))])
        length = self.block_size + 1
        if len(tokens) > length:          # keep the reply: cut the prompt from the left
            tokens, trained = tokens[-length:], trained[-length:]
        return tokens, trained

    def prepare(self) -> None:
        if self._rows:
            return
        self.pairs = read_preferences(self.config.path)
        if len(self.pairs) < 2:
            raise DataError(f"data.path: {self.config.path} has {len(self.pairs)} pair; training needs at least 2")
        length = self.block_size + 1
        rows = torch.zeros(len(self.pairs), 2, 2, length, dtype=torch.long)   # (N, chosen/rejected, ids/trained, T+1)
        for i, pair in enumerate(self.pairs):
            for j, key in enumerate(("chosen", "rejected")):
                tokens, trained = self._encode(pair["prompt"], pair[key])
                rows[i, j, 0, :len(tokens)] = torch.tensor(tokens)
                rows[i, j, 1, :len(tokens)] = torch.tensor(trained, dtype=torch.long)
        splits = split_examples(len(self.pairs), self.config.val_fraction, self.config.seed)
        self._rows = {split: rows[ids] for split, ids in splits.items()}
        self.val_ids = splits["val"].tolist()
        log.info("%s: %d preference pairs (%d for validation)", self.config.path, len(self.pairs), len(splits["val"]))

    def model_settings(self) -> dict:
        return {"vocab_size": self.tokenizer.vocab_size}

    def save_assets(self, folder: Path) -> None:
        self.tokenizer.save(Path(folder) / "tokenizer.json")
        if self.config.chat:
            self.template.save(folder)

    def sample_indices(self, generator: torch.Generator, n: int) -> torch.Tensor:
        return torch.randint(0, len(self._rows["train"]), (n,), generator=generator)

    def val_indices(self, n: int) -> torch.Tensor:
        return torch.arange(n) % len(self._rows["val"])

    def batch(self, indices: torch.Tensor, split: str = "train") -> dict[str, torch.Tensor]:
        """inputs (B, 2, T) and targets (B, 2, T) (-100 outside the reply); index 0 chosen, 1 rejected."""
        rows = self._rows[split][indices]                          # (B, 2, 2, T+1)
        tokens, trained = rows[:, :, 0], rows[:, :, 1]
        targets = torch.where(trained[..., 1:].bool(), tokens[..., 1:], IGNORE)
        return {"inputs": tokens[..., :-1], "targets": targets}

    @property
    def sample_stop(self) -> list[str]:
        return self.template.stop if self.config.chat else []

    def sample_prompt(self) -> str:
        prompt = self.pairs[self.val_ids[0]]["prompt"]
        return self.template.prompt([{"role": "user", "content": prompt}]) if self.config.chat else prompt


@register("data", "preference", PreferenceDataConfig)
def build_preference_data(config: PreferenceDataConfig, run, tokenizer: TextTokenizer | None = None,
                          template: ChatTemplate | None = None) -> PreferenceData:
    return PreferenceData(config, run.model.block_size, tokenizer, template)
