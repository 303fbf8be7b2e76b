"""Function calling (OpenAI's `tools` and `tool_choice`): the functions a chat may call, how they are shown
to the model, the grammar that makes its calls valid, and the parsing of its reply into calls.

A model writes calls in a *tool format*, chosen from its chat template:

- `hermes` (Qwen2.5 and other templates that write `<tool_call>`): the template itself lists the tools
  (`tools=`), renders earlier calls and `role: "tool"` results; a call is
  `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, several separated by a newline.
- `llama3` (Llama 3.1's template, `"parameters"`): the template lists the tools; a call is the bare object
  `{"name": ..., "parameters": {...}}`, one per turn (the template refuses more).
- `genloom` (genloom's own plain template, and a Jinja template that knows nothing of tools): a preamble in
  the system message lists each function as a JSON object, one per line; a call is
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, several one per line; an earlier call is
  written back that way as the assistant's turn, and a tool's result comes back as a user turn
  `<tool_response>{"name": ..., "content": ...}</tool_response>`.

The arguments are constrained to each function's JSON schema by the llguidance grammar of `lm.constraints`
(a Lark grammar with the schemas inside `%json`): `required` forces calls of any of the functions (several
when `parallel_tool_calls`), a named choice forces a call of that one, `auto` lets the model write free text
or calls (the text must not begin the way a call does, nor with a space), `none` makes no grammar and parses
nothing. The calls end with the template's end-of-turn marker, so the model can finish its turn. A schema
feature the engine cannot enforce is refused when the grammar is built, before decoding.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

from ..core.errors import GenloomError
from .chat_templates import render_chat
from .constraints import Grammar

__all__ = ["ToolError", "Function", "ToolChoice", "ToolFormat", "ToolCall", "ToolReply", "Tools", "CallParser",
           "FORMATS", "template_format", "new_call_id"]

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
JSON_SEPARATORS = (", ", ": ")          # the grammar's compact JSON: what templates' tojson writes too


class ToolError(GenloomError):
    """A bad `tools` / `tool_choice` / tool message; `param` names the request field."""

    def __init__(self, message: str, param: str):
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(frozen=True)
class Function:
    """One callable function: its name, what it does, and the JSON schema of its arguments (an object)."""

    name: str
    description: str | None = None
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})

    def spec(self) -> dict:
        """The tool as OpenAI's request gives it (what chat templates are handed as `tools`)."""
        function = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "named"] = "auto"
    name: str | None = None           # the function a named choice forces


@dataclass(frozen=True)
class ToolFormat:
    """How a model writes its calls: `open` + {"name": ..., `arguments`: {...}} + `close`, calls joined by
    `separator`; `native`: its chat template lists the tools and renders calls and results itself."""

    name: str
    open: str
    close: str
    separator: str
    arguments: str
    parallel: bool
    native: bool

    def call_text(self, name: str, arguments: str) -> str:
        return f'{self.open}{{"name": {json.dumps(name)}, "{self.arguments}": {arguments}}}{self.close}'


FORMATS = {
    "genloom": ToolFormat("genloom", "<tool_call>", "</tool_call>", "\n", "arguments", True, False),
    "hermes": ToolFormat("hermes", "<tool_call>\n", "\n</tool_call>", "\n", "arguments", True, True),
    "llama3": ToolFormat("llama3", "", "", "", "parameters", False, True),
}


def template_format(jinja: str | None) -> ToolFormat:
    """The tool format of a chat template's Jinja source (None: genloom's own plain template)."""
    if jinja and "tools" in jinja:
        if "<tool_call>" in jinja:
            return FORMATS["hermes"]
        if '"parameters"' in jinja and "tool_calls" in jinja:
            return FORMATS["llama3"]
    return FORMATS["genloom"]


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str                    # the arguments as JSON text (OpenAI's `function.arguments`)

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolReply:
    """The assistant's turn: text (None when it made calls), its calls, and why it ended ("tool_calls",
    "stop" or "length")."""

    content: str | None
    tool_calls: list[ToolCall]
    finish_reason: str


def _function(tool: Any, where: str) -> Function:
    if not isinstance(tool, dict):
        raise ToolError("a tool must be an object {\"type\": \"function\", \"function\": {...}}", where)
    unknown = sorted(set(tool) - {"type", "function"})
    if unknown:
        raise ToolError(f"unknown field {unknown[0]!r} (a tool has type and function)", f"{where}.{unknown[0]}")
    if tool.get("type") != "function":
        raise ToolError(f"type is {tool.get('type')!r}; genloom's tools are of type \"function\"", f"{where}.type")
    spec = tool.get("function")
    if not isinstance(spec, dict):
        raise ToolError("must be an object with a name", f"{where}.function")
    unknown = sorted(set(spec) - {"name", "description", "parameters", "strict"})
    if unknown:
        raise ToolError(f"unknown field {unknown[0]!r} (a function has name, description, parameters and strict)",
                        f"{where}.function.{unknown[0]}")
    name = spec.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ToolError(f"{name!r} is not a function name: 1 to 64 letters, digits, underscores or dashes",
                        f"{where}.function.name")
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise ToolError("must be a string", f"{where}.function.description")
    if spec.get("strict") not in (None, True, False):
        raise ToolError("must be true or false", f"{where}.function.strict")
    parameters = spec.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise ToolError("must be a JSON schema of an object ({\"type\": \"object\", \"properties\": {...}})",
                        f"{where}.function.parameters")
    return Function(name, description, {"type": "object", **parameters})


def _choice(value: Any, names: Sequence[str], where: str = "tool_choice") -> ToolChoice:
    if value is None:
        return ToolChoice("auto" if names else "none")
    if isinstance(value, str):
        if value not in ("auto", "none", "required"):
            raise ToolError(f"{value!r}: expected \"auto\", \"none\", \"required\" or "
                            "{\"type\": \"function\", \"function\": {\"name\": ...}}", where)
        if value != "none" and not names:
            raise ToolError(f"{value!r} needs tools to choose from", where)
        return ToolChoice(value)
    shape = "a named choice is {\"type\": \"function\", \"function\": {\"name\": ...}}"
    if not isinstance(value, dict):
        raise ToolError(shape, where)
    unknown = sorted(set(value) - {"type", "function"})
    if unknown:
        raise ToolError(f"unknown field {unknown[0]!r} ({shape})", f"{where}.{unknown[0]}")
    if value.get("type") != "function":
        raise ToolError(f"type is {value.get('type')!r}; {shape}", f"{where}.type")
    function = value.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ToolError(shape, f"{where}.function")
    unknown = sorted(set(function) - {"name"})
    if unknown:
        raise ToolError(f"unknown field {unknown[0]!r} ({shape})", f"{where}.function.{unknown[0]}")
    if function["name"] not in names:
        known = ", ".join(names) or "none were given"
        raise ToolError(f"names the function {function['name']!r}, which is not among the tools ({known})",
                        f"{where}.function.name")
    return ToolChoice("named", function["name"])


def _json_object(text: str, where: str) -> dict:
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        raise ToolError(f"{text[:40]!r} is not JSON text (a call's arguments are a JSON object as a string)",
                        where) from None
    if not isinstance(value, dict):
        raise ToolError("a call's arguments must be a JSON object", where)
    return value


def _content(message: dict, where: str) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, list):       # content parts: their text
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    if not isinstance(content, str):
        raise ToolError("content must be a string or a list of text parts", f"{where}.content")
    return content


class Tools:
    """The tools of one chat request, checked: `functions`, `choice`, `parallel` (several calls per turn)."""

    def __init__(self, tools: Iterable | None = None, tool_choice: Any = None, parallel_tool_calls: bool = True):
        tools = list(tools or [])
        self.functions = [_function(t, f"tools[{i}]") for i, t in enumerate(tools)]
        names = [f.name for f in self.functions]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ToolError(f"the function name {name!r} is given twice", f"tools[{i}].function.name")
        self.choice = _choice(tool_choice, names)
        self.parallel = bool(parallel_tool_calls)

    @property
    def calling(self) -> bool:
        """Whether the reply may hold calls (the output is parsed for them)."""
        return bool(self.functions) and self.choice.mode != "none"

    # -- the prompt --------------------------------------------------------------------------------------------
    @staticmethod
    def format_of(template) -> ToolFormat:
        settings = getattr(template, "settings", None)
        return template_format(getattr(settings, "chat_template", None))

    def prompt(self, template, messages: Sequence[dict]) -> str:
        """The prompt asking for the assistant's next turn after `messages` (OpenAI's shape: tool calls on
        assistant messages, `role: "tool"` results with their `tool_call_id`), with the tools shown to the
        model in its template's tool format."""
        fmt = self.format_of(template)
        conversation = self._conversation(messages, fmt)
        if fmt.native:
            settings = template.settings
            return render_chat(settings.chat_template, conversation, add_generation_prompt=True,
                               special=settings.special, tools=[f.spec() for f in self.functions] or None)
        if self.functions:
            preamble = self.preamble()
            if conversation and conversation[0]["role"] == "system":
                conversation[0] = {"role": "system", "content": f"{conversation[0]['content']}\n{preamble}"}
            elif getattr(template, "settings", None) is None:
                conversation.insert(0, {"role": "system", "content": preamble})
            else:              # a Jinja template may refuse a system turn: the preamble opens the first message
                conversation[0] = {**conversation[0], "content": f"{preamble}\n{conversation[0]['content']}"}
        return template.prompt(conversation)

    def preamble(self) -> str:
        """genloom's tool format shown to the model (no blank lines: the plain template ends a turn there)."""
        listed = "\n".join(json.dumps(f.spec()["function"], ensure_ascii=False) for f in self.functions)
        return ("You may call these functions, listed one JSON object per line:\n" + listed + "\n"
                'To call one, reply with <tool_call>{"name": NAME, "arguments": ARGUMENTS}</tool_call> '
                "(ARGUMENTS: a JSON object; several calls one per line). A result comes back as "
                "<tool_response>...</tool_response>.")

    def _conversation(self, messages: Sequence[dict], fmt: ToolFormat) -> list[dict]:
        """Messages as the template takes them: for a native template OpenAI's shape with the arguments as
        objects (what transformers' templates expect); otherwise plain turns in genloom's tool format."""
        out, calls = [], {}
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            role = {"developer": "system"}.get(message.get("role"), message.get("role"))
            if role not in ("system", "user", "assistant", "tool"):
                raise ToolError(f"role {message.get('role')!r}: expected system, developer, user, assistant or tool",
                                f"{where}.role")
            content = _content(message, where)
            if role == "assistant" and not content and isinstance(message.get("refusal"), str):
                content = message["refusal"]        # what the assistant said was its refusal
            tool_calls = message.get("tool_calls")
            if tool_calls is not None and role != "assistant":
                raise ToolError("only an assistant message carries tool_calls", f"{where}.tool_calls")
            tool_calls = tool_calls or []
            if role != "tool" and message.get("tool_call_id") is not None:
                raise ToolError("only a tool message carries a tool_call_id", f"{where}.tool_call_id")
            if role == "assistant" and tool_calls:
                parsed = []
                for k, call in enumerate(tool_calls):
                    function = call.get("function") or {}
                    name = function.get("name")
                    if not isinstance(name, str) or not NAME.fullmatch(name):
                        raise ToolError(f"{name!r} is not a function name", f"{where}.tool_calls[{k}].function.name")
                    arguments = _json_object(function.get("arguments", "{}"),
                                             f"{where}.tool_calls[{k}].function.arguments")
                    calls[call.get("id")] = name
                    parsed.append({"id": call.get("id"), "type": "function",
                                   "function": {"name": name, "arguments": arguments}})
                if fmt.native:
                    if not fmt.parallel and len(parsed) > 1:
                        raise ToolError(f"this model's chat template ({fmt.name} tool format) takes one call per "
                                        "assistant turn", f"{where}.tool_calls")
                    out.append({"role": "assistant", "content": content or None, "tool_calls": parsed})
                else:
                    written = fmt.separator.join(
                        fmt.call_text(c["function"]["name"], json.dumps(c["function"]["arguments"], ensure_ascii=False,
                                                                        separators=JSON_SEPARATORS))
                        for c in parsed)
                    out.append({"role": "assistant", "content": f"{content}\n{written}" if content else written})
            elif role == "tool":
                call_id = message.get("tool_call_id")
                if not isinstance(call_id, str) or call_id not in calls:
                    raise ToolError(f"{call_id!r} answers no tool call of an earlier assistant message "
                                    "(tool_call_id must be one of their ids)", f"{where}.tool_call_id")
                if fmt.native:
                    out.append({"role": "tool", "content": content, "tool_call_id": call_id})
                else:
                    result = json.dumps({"name": calls[call_id], "content": content}, ensure_ascii=False)
                    out.append({"role": "user", "content": f"<tool_response>{result}</tool_response>"})
            else:
                if message.get("content") is None and not content:
                    raise ToolError("content is missing (only an assistant message with tool_calls may leave it out)",
                                    f"{where}.content")
                out.append({"role": role, "content": content})
        return out

    # -- the grammar -------------------------------------------------------------------------------------------
    def grammar(self, template, tokenizer) -> Grammar | None:
        """The Lark grammar the reply is held to (None when it is free: no tools, or tool_choice none)."""
        if not self.calling:
            return None
        fmt = self.format_of(template)
        chosen = [f for f in self.functions if self.choice.mode != "named" or f.name == self.choice.name]
        lines = []
        for k, function in enumerate(chosen):
            schema = {"type": "object", "properties": {"name": {"const": function.name},
                                                       fmt.arguments: function.parameters},
                      "required": ["name", fmt.arguments], "additionalProperties": False,
                      "x-guidance": {"whitespace_flexible": False, "item_separator": JSON_SEPARATORS[0],
                                     "key_separator": JSON_SEPARATORS[1], "lenient": False}}
            lines.append(f"call_{k}: {_literal(fmt.open)} %json {json.dumps(schema, ensure_ascii=False)} "
                         f"{_literal(fmt.close)}")
        several = self.parallel and fmt.parallel and self.choice.mode != "named"
        calls = f"call ({_literal(fmt.separator)} call)*" if several else "call"
        ends = " | ".join(_end(stop, tokenizer) for stop in template.stop) or '""'
        first = (fmt.open or "{")[0]
        start = "start: calls end" if self.choice.mode != "auto" else "start: calls end | TEXT end?"
        grammar = [start, f"calls: {calls}", f"call: {' | '.join(f'call_{k}' for k in range(len(chosen)))}",
                   *lines, f"end: {ends}"]
        if self.choice.mode == "auto":
            grammar.append(f"TEXT: /[^{re.escape(first)}\\s](.|\\n)*/")     # not a call's start, nor blank
        return Grammar("lark", "\n".join(grammar))

    # -- the reply ---------------------------------------------------------------------------------------------
    def parser(self, template) -> "CallParser":
        return CallParser(self.format_of(template), [f.name for f in self.functions], forced=self.choice.mode in
                          ("required", "named"))

    def reply(self, template, text: str, finish_reason: str) -> ToolReply:
        """The assistant's turn from the whole text of a reply."""
        if not self.calling:
            return ToolReply(text.strip(), [], finish_reason)
        parser = self.parser(template)
        parser.push(text)
        calls = parser.finish()
        if not calls:
            return ToolReply(text.strip(), [], finish_reason)
        return ToolReply(None, calls, "tool_calls" if parser.whole and finish_reason == "stop" else finish_reason)


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False) if text else '""'


def _end(stop: str, tokenizer) -> str:
    """A stop of the chat template in the grammar: the special token itself, or its text."""
    token = tokenizer.token_id(stop)
    added = tokenizer.hf.get_added_tokens_decoder() if token is not None else {}
    if token is not None and token in added and added[token].special:
        return f"<[{token}]>"
    return _literal(stop)


class CallParser:
    """Reads a reply as it streams: text that is content, and calls (their name first, then their arguments
    piece by piece), in the model's tool format. `push(text)` returns the events the new text completes:
    ("content", text), ("call", index, id, name), ("arguments", index, text)."""

    def __init__(self, fmt: ToolFormat, names: Sequence[str], forced: bool = False):
        self.fmt, self.names = fmt, list(names)
        self.mode: str | None = "calls" if forced else None     # None: not yet known whether text or calls
        self.buffer = ""                  # text not yet turned into events
        self.calls: list[list[str]] = []  # [id, name, arguments so far]
        self.state = "head"               # head (before a call's arguments), arguments, tail (after them)
        self.depth, self.in_string, self.escaped = 0, False, False
        names = "|".join(re.escape(n) for n in self.names) or "(?!)"
        self.head = re.compile(rf'\s*({re.escape(fmt.separator.strip()) + "?" if fmt.separator.strip() else ""})\s*'
                               rf'{re.escape(fmt.open.strip())}\s*\{{"name": "({names})", "{fmt.arguments}": ')
        self.opening = fmt.open.strip() + '{"name": "' if fmt.open.strip() else '{"name": "'
        self.broken = False               # the text stopped following the format

    def push(self, text: str) -> list[tuple]:
        self.buffer += text
        events: list[tuple] = []
        if self.mode is None:                # a call starts right away (the grammar's text cannot start so)
            start = self.buffer
            if not start or (self.opening.startswith(start) and len(start) < len(self.opening)):
                return events            # may still become a call: wait
            self.mode = "calls" if start.startswith(self.opening) else "content"
        if self.mode == "content":
            events.append(("content", self.buffer))
            self.buffer = ""
            return events
        while not self.broken and self.buffer:
            if self.state == "head":
                found = self.head.match(self.buffer)
                if found is None:
                    if not self._may_be_head(self.buffer):
                        self.broken = True
                    break
                self.calls.append([new_call_id(), found.group(2), ""])
                events.append(("call", len(self.calls) - 1, self.calls[-1][0], found.group(2)))
                self.buffer = self.buffer[found.end():]
                self.state, self.depth, self.in_string, self.escaped = "arguments", 0, False, False
            elif self.state == "arguments":
                end = self._scan(self.buffer)
                piece = self.buffer if end is None else self.buffer[:end]
                if piece:
                    self.calls[-1][2] += piece
                    events.append(("arguments", len(self.calls) - 1, piece))
                self.buffer = "" if end is None else self.buffer[end:]
                if end is not None:
                    self.state = "tail"
            else:
                tail = "}" + self.fmt.close
                if len(self.buffer) < len(tail):
                    if not tail.startswith(self.buffer):
                        self.broken = True
                    break
                if not self.buffer.startswith(tail):
                    self.broken = True
                    break
                self.buffer = self.buffer[len(tail):]
                self.state = "head"
        return events

    def _may_be_head(self, text: str) -> bool:
        """Whether `text` could still grow into the start of a call (it is shorter than the longest start)."""
        longest = len(self.fmt.separator) + len(self.opening) + 64 + len(self.fmt.arguments) + 16
        return len(text.strip()) < longest

    def _scan(self, text: str) -> int | None:
        """Where the arguments object ends in `text` (the index after its closing brace), None: not yet."""
        for at, char in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return at + 1
        return None

    def flush(self) -> list[tuple]:
        """At the end of the text: what is held back, as content, unless it is part of the calls."""
        if (self.mode != "calls" or self.broken) and self.buffer:
            self.mode, text, self.buffer = self.mode or "content", self.buffer, ""
            return [("content", text)]
        return []

    def finish(self) -> list[ToolCall]:
        """The complete calls once the text is all in (a call cut off by the token budget is left out; none
        when the text is not calls)."""
        if self.mode != "calls":
            return []
        done = self.calls if self.state == "head" else self.calls[:-1]
        return [ToolCall(i, name, arguments) for i, name, arguments in done]

    @property
    def whole(self) -> bool:
        """Whether the text so far is nothing but complete calls."""
        return self.mode == "calls" and not self.broken and self.state == "head" and not self.buffer.strip()
