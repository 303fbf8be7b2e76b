"""The tokenizer settings of a Hugging Face model folder beside its `tokenizer.json`: `tokenizer_config.json`
(special tokens, `add_bos_token`, the Jinja `chat_template`), `chat_template.jinja` (where newer checkpoints keep
the template) and `generation_config.json` (the end-of-sequence ids that stop a reply, one or a list).

A chat template is Jinja code from the model's repository, so it runs in Jinja's immutable sandbox with the
environment `transformers` gives templates (trim_blocks, lstrip_blocks, loop controls; `raise_exception`,
`strftime_now`, a `tojson` that does not escape HTML and takes indent/separators/sort_keys, `dict`, a
`namespace` without underscore names) and the same variables (`messages`, `add_generation_prompt`, `tools`,
`documents` and the named special tokens: `bos_token`, `eos_token`, ...), so a prompt renders to the same
text as `tokenizer.apply_chat_template(messages, tokenize=False)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..core.errors import CheckpointError, DataError

__all__ = ["HF_TOKENIZER_FILES", "TokenizerSettings", "render_chat", "TemplateError"]

# The files next to tokenizer.json that import copies into a checkpoint and export writes back.
HF_TOKENIZER_FILES = ("tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
                      "chat_template.jinja")
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
MAX_SETTINGS_BYTES = 16 << 20
MAX_TEMPLATE_CHARS = 1 << 20


class TemplateError(DataError):
    """A chat template that cannot be compiled or rendered (one line: the Jinja error and where)."""


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    if path.stat().st_size > MAX_SETTINGS_BYTES:
        raise CheckpointError(f"{path} is over {MAX_SETTINGS_BYTES >> 20} MiB; not a tokenizer settings file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise CheckpointError(f"{path}: not readable JSON ({type(error).__name__}: {error})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken object {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _pick_template(value: Any, where: Path) -> str | None:
    """`chat_template` is one string, or a list of {"name", "template"} of which "default" is the chat one."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default")
        if isinstance(chosen, str):
            return chosen
        raise CheckpointError(f"{where}: chat_template lists templates {sorted(map(str, named))} but none named "
                              "'default'")
    raise CheckpointError(f"{where}: chat_template must be a string (found {type(value).__name__})")


@dataclass(frozen=True)
class TokenizerSettings:
    """What tokenizer_config.json, chat_template.jinja and generation_config.json say about a model's tokens."""

    special: dict[str, str] = field(default_factory=dict)     # bos_token, eos_token, ... -> their text
    add_bos_token: bool | None = None                          # None: as the tokenizer.json post-processor does
    chat_template: str | None = None
    eos_token_ids: tuple[int, ...] = ()                        # generation_config.json's eos_token_id(s)

    @classmethod
    def read(cls, folder: Path) -> "TokenizerSettings":
        folder = Path(folder)
        config_path = folder / "tokenizer_config.json"
        config = _read_json(config_path)
        special_map = _read_json(folder / "special_tokens_map.json")
        special = {}
        for name in SPECIAL_NAMES:
            text = _token_text(config.get(name, special_map.get(name)))
            if text is not None:
                special[name] = text
        template = _pick_template(config.get("chat_template"), config_path)
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():
            if jinja_file.stat().st_size > MAX_TEMPLATE_CHARS * 4:
                raise CheckpointError(f"{jinja_file} is too large to be a chat template")
            template = jinja_file.read_text(encoding="utf-8")
        if template is not None and len(template) > MAX_TEMPLATE_CHARS:
            raise CheckpointError(f"{config_path}: the chat template has {len(template)} characters (at most "
                                  f"{MAX_TEMPLATE_CHARS})")
        generation = _read_json(folder / "generation_config.json")
        eos = generation.get("eos_token_id")
        eos_ids = tuple(e for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int) and e >= 0)
        add_bos = config.get("add_bos_token")
        return cls(special, add_bos if isinstance(add_bos, bool) else None, template, eos_ids)

    @property
    def present(self) -> bool:
        return bool(self.special or self.chat_template or self.eos_token_ids or self.add_bos_token is not None)

    def prompt_prefix(self, tokenizer) -> list[int]:
        """The token ids a prompt starts with (the beginning-of-sequence token where the model expects one):
        what the tokenizer's post-processor adds, unless tokenizer_config.json's add_bos_token says otherwise."""
        implied = tokenizer.hf.encode("", add_special_tokens=True).ids
        if self.add_bos_token is False:
            return []
        bos = tokenizer.token_id(self.special["bos_token"]) if "bos_token" in self.special else None
        if self.add_bos_token and bos is not None:
            return [bos]
        return implied

    def stop_strings(self, tokenizer) -> list[str]:
        """The text of every token that ends a reply: generation_config's eos ids, else the eos token."""
        out: list[str] = []
        for i in self.eos_token_ids:
            piece = tokenizer.hf.id_to_token(i)
            if piece is not None and piece not in out:
                out.append(piece)
        if not out and self.special.get("eos_token"):
            out.append(self.special["eos_token"])
        return out


def _environment():
    try:
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise CheckpointError("this model's chat template needs jinja2: pip install 'jinja2>=3.1.6'") from None

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class SafeNamespace(jinja2.utils.Namespace):
        """Jinja's namespace() without underscore-prefixed attributes (no reaching CPython internals)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                SafeNamespace.check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            SafeNamespace.check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a chat template may not set {name!r} on a namespace")

    class Dicts:
        """dict(...) and dict.fromkeys(...) for templates, without exposing the type itself."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, dict=Dicts(),
                       namespace=SafeNamespace)
    return env, jinja2


_COMPILED: dict[str, Any] = {}


def _compiled(template: str):
    if template not in _COMPILED:
        env, jinja2 = _environment()
        try:
            _COMPILED[template] = env.from_string(template)
        except jinja2.TemplateSyntaxError as error:
            raise TemplateError(f"the chat template does not compile: {error.message} (template line "
                                f"{error.lineno})") from None
        if len(_COMPILED) > 16:
            _COMPILED.pop(next(iter(_COMPILED)))
    return _COMPILED[template]


def _plain(value: Any) -> Any:
    """Only JSON types reach a template (a message's values are copied, never the caller's objects)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def render_chat(template: str, messages: list[dict], *, add_generation_prompt: bool, special: dict[str, str],
                **variables) -> str:
    """`messages` rendered by the Jinja chat `template`, as transformers' apply_chat_template(tokenize=False) does.
    A template that fails raises TemplateError naming the Jinja error and the message it was rendering."""
    compiled = _compiled(template)
    _, jinja2 = _environment()
    chat = [{k: v for k, v in _plain(m).items() if v is not None} for m in messages]
    context = {**_plain(special), **_plain(variables)}
    context.setdefault("tools", None)
    context.setdefault("documents", None)
    try:
        return compiled.render(messages=chat, add_generation_prompt=add_generation_prompt, **context)
    except jinja2.TemplateError as error:
        where = _failing_message(compiled, chat, add_generation_prompt, context)
        raise TemplateError(f"the chat template fails{where}: {type(error).__name__}: {error}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, RecursionError) as error:
        where = _failing_message(compiled, chat, add_generation_prompt, context)
        raise TemplateError(f"the chat template fails{where}: {type(error).__name__}: {error}") from None


def _failing_message(compiled, chat: list[dict], add_generation_prompt: bool, context: dict) -> str:
    """' at message N (role)': the first message whose addition makes the template fail (found by rendering
    growing prefixes of the conversation), or '' when no prefix pins it down."""
    for n in range(1, len(chat) + 1):
        try:
            compiled.render(messages=chat[:n], add_generation_prompt=add_generation_prompt and n == len(chat),
                            **context)
        except Exception:        # noqa: BLE001 - any failure of the template on this prefix
            return f" at message {n - 1} ({chat[n - 1].get('role')!r})"
    return ""
