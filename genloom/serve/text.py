"""Text routes: POST /v1/completions and POST /v1/chat/completions (OpenAI's shapes; `stream: true` gives
server-sent events ending in `data: [DONE]`), decoded by the model's TextWorker in continuous batches.

A request is checked against the server's limits, then prepared off the event loop and within its deadline
(the chat template rendered, the prompts tokenized), then decoded; its text is gathered or streamed back.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from fastapi import APIRouter, Request

from ..core.errors import GenloomError
from ..lm.constraints import Grammar, TokenConstraint
from ..lm.decoding import Sampling, encode_prompt
from ..lm.tools import ToolError, Tools
from .detect import request_watermark
from .errors import APIError
from .events import collect, event_stream, failure, sse
from .filters import review, screen
from .limits import Limits
from .schemas import ChatRequest, CompletionRequest, Message, SamplingRequest
from .state import Served, ServerState
from .workers import QueueFull, ScoreJob, TextJob, TextWorker

__all__ = ["router", "KINDS", "ADAPTERS", "worker", "card"]

router = APIRouter()
KINDS = ("text",)            # the handles' `serves` values these routes answer for
ADAPTERS = True              # each LoRA adapter loaded with a model is served as "MODEL:ADAPTER"
MAX_STOPS = 4


def worker(name: str, handle, limits: Limits) -> TextWorker:
    return TextWorker(name, handle, limits.queue_size, limits.max_batch)


def card(handle, kind: str) -> dict:
    return {"context_length": handle.model.config.block_size}


def _stops(stop, limits: Limits) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"stop takes at most {MAX_STOPS} strings", param="stop")
    for i, text in enumerate(stops):
        if len(text) > limits.max_stop_length:
            raise APIError(400, f"stop[{i}] has {len(text)} characters; the server's limit is "
                           f"{limits.max_stop_length} per stop string", param="stop", code="stop_too_long")
    return stops


def _logit_bias(given: dict[str, float] | None, vocab: int) -> dict[int, float]:
    """OpenAI's logit_bias ({"token id": bias}) checked against the model's vocabulary."""
    out = {}
    for key, bias in (given or {}).items():
        if not key.strip().isdigit() or int(key) >= vocab:
            raise APIError(400, f"logit_bias: {key!r} is not a token id of this model (0 to {vocab - 1})",
                           param="logit_bias")
        if not -100 <= bias <= 100:
            raise APIError(400, f"logit_bias[{key!r}] = {bias}: a bias must be in [-100, 100]", param="logit_bias")
        out[int(key)] = bias
    return out


def _checked(entry: Served, grammar: Grammar, param: str) -> str:
    """The grammar's llguidance text, refused (400 naming `param`) when it cannot be enforced or the model's
    tokenizer cannot write a first token of it; the grammar is compiled here, off the event loop."""
    try:
        text = grammar.text()
        TokenConstraint(text, entry.handle.tokenizer, entry.handle.model.config.vocab_size).allowed()
    except GenloomError as error:
        raise APIError(400, f"{param}: {error}", param=param, code="unsupported_grammar") from None
    return text


def _response_format(body: ChatRequest) -> tuple[Grammar, str] | None:
    """OpenAI's response_format as a grammar: json_object (any JSON object) or json_schema (its schema)."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Grammar("json_object"), "response_format"
    if fmt.json_schema is None or not fmt.json_schema.schema_:
        raise APIError(400, "response_format: json_schema needs json_schema.schema (a JSON schema object)",
                       param="response_format.json_schema")
    return Grammar("json_schema", fmt.json_schema.schema_), "response_format.json_schema.schema"


def _encode(entry: Served, prompt: str | list[int], param: str, limits: Limits) -> list[int]:
    """A prompt's token ids: text is encoded; token ids (OpenAI's list-of-integers prompt) are checked."""
    if isinstance(prompt, str):
        ids = encode_prompt(entry.handle.tokenizer, prompt)
    else:
        vocab = entry.handle.model.config.vocab_size
        if not prompt or not all(0 <= t < vocab for t in prompt):
            raise APIError(400, f"{param}: a prompt of token ids must be non-empty ids from 0 to {vocab - 1}",
                           param=param)
        ids = list(prompt)
    if len(ids) > limits.max_prompt_tokens:
        raise APIError(400, f"{param} has {len(ids)} tokens; the server's limit is {limits.max_prompt_tokens}",
                       param=param, code="context_length_exceeded")
    return ids


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class _Run:
    """One text request on its way through the worker: the job, its events and deadline."""

    def __init__(self, server: ServerState, request: Request, entry: Served, body: SamplingRequest):
        self.server, self.request, self.entry, self.body = server, request, entry, body
        self.deadline = time.monotonic() + server.limits.timeout
        self.events: asyncio.Queue = asyncio.Queue()
        self.job: TextJob | None = None
        self.seed = body.seed if body.seed is not None else secrets.randbelow(2**31)

    async def start(self, render, count: int, max_tokens: int | None, param: str, stops: list[str],
                    top: int = 0, score: int | None = None, grammar: tuple[Grammar, str] | None = None) -> None:
        """Check the request, prepare its `count` prompts (`render()` gives their text or token ids) and queue
        it (not when max_tokens is 0). `top`: the likeliest tokens each event carries; `score`: also score the
        prompts (`self.scores`, with that many alternatives per position); `grammar`: (the grammar every row is
        constrained to, the request field that gave it), checked against the model's tokenizer first."""
        limits, body, entry = self.server.limits, self.body, self.entry
        if body.n > limits.max_n:
            raise APIError(400, f"n={body.n} is more than the server's limit of {limits.max_n}", param="n")
        if count * body.n > limits.max_batch:
            raise APIError(400, f"{count} prompt(s) x n={body.n} is more than the server's limit of "
                           f"{limits.max_batch} completions per request", param="n")
        max_tokens = 16 if max_tokens is None else max_tokens
        if max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens={max_tokens} is more than the server's limit of {limits.max_tokens}",
                           param="max_tokens")
        try:
            sampling = Sampling(body.temperature, body.top_k, body.top_p, body.min_p, body.repetition_penalty,
                                presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                                logit_bias=_logit_bias(body.logit_bias, entry.handle.model.config.vocab_size))
        except GenloomError as error:
            raise APIError(400, str(error)) from None
        try:
            text = None if grammar is None else await self.server.prepare(lambda: _checked(entry, *grammar),
                                                                          self.deadline)
            encoded = await self.server.prepare(lambda: [_encode(entry, p, param, limits) for p in render()],
                                                self.deadline)
        except Exception as error:
            raise failure(error, limits.timeout) from None
        loop, events = asyncio.get_running_loop(), self.events
        self.encoded, self.scores = encoded, None
        emit = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)   # noqa: E731
        if score is not None:
            scoring = ScoreJob(encoded, score, emit, deadline=self.deadline, adapter=entry.adapter)
            self._submit(scoring)
            async for event in collect(self.request, scoring, self.events, self.deadline, limits.timeout):
                self.scores = event["result"]
            if self.scores is None:                                        # the client left
                raise APIError(400, "the client closed the request", code="client_closed")
        self.job = TextJob([ids for ids in encoded for _ in range(body.n)],
                           [self.seed + j for _ in encoded for j in range(body.n)], max_tokens, sampling, stops,
                           emit, deadline=self.deadline, adapter=entry.adapter, top=top, grammar=text,
                           watermark=request_watermark(self.request, body.watermark, body.temperature))
        if max_tokens > 0:
            self._submit(self.job)

    def _submit(self, job) -> None:
        limits, entry = self.server.limits, self.entry
        try:
            entry.worker.submit(job)
        except QueueFull:
            raise APIError(429, f"the model {entry.name!r} is busy ({limits.queue_size} requests waiting); retry "
                           "shortly", "rate_limit_exceeded", code="queue_full") from None

    def events_until_done(self):
        return collect(self.request, self.job, self.events, self.deadline, self.server.limits.timeout)

    async def gather(self) -> tuple[list[str], list[list[int]], list[list[float]], list[str | None], list[list]]:
        """The finished job's (texts, token ids, log-probabilities, finish reasons, top alternatives) per row."""
        n = len(self.job.prompts)
        texts, tokens, logprobs, reasons = [""] * n, [[] for _ in range(n)], [[] for _ in range(n)], [None] * n
        tops: list[list] = [[] for _ in range(n)]
        if self.job.max_tokens == 0:
            return texts, tokens, logprobs, ["length"] * n, tops
        async for event in self.events_until_done():
            if event.get("done"):
                break
            row = event["row"]
            texts[row] += event["text"]
            if event["token"] is not None:
                tokens[row].append(event["token"])
                logprobs[row].append(event["logprob"])
                tops[row].append(event["top"])
                self.server.metrics.tokens(self.entry.name, True)
            reasons[row] = event["finish_reason"] or reasons[row]
        return texts, tokens, logprobs, reasons, tops


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    server: ServerState = request.app.state.genloom
    entry = server.model(body.model, KINDS, "/v1/completions")
    given = body.prompt
    prompts = [given] if isinstance(given, str) or (given and isinstance(given[0], int)) else list(given)
    if not prompts:
        raise APIError(400, "prompt is an empty list; give a string, a list of strings or token ids", param="prompt")
    scoring = body.echo and body.logprobs is not None
    if body.stream and (body.max_tokens == 0 or scoring):
        raise APIError(400, "a streamed completion cannot score its prompt (echo with logprobs) or have "
                       "max_tokens=0; send it with stream: false", param="echo" if scoring else "max_tokens")
    refused = screen(request, body, chat=False)            # the output filter (filters.py) may decline it
    if refused is not None:
        return refused
    run = _Run(server, request, entry, body)
    top = body.logprobs or 0
    await run.start(lambda: prompts, len(prompts), body.max_tokens, "prompt", _stops(body.stop, server.limits),
                    top=top, score=top if scoring else None)
    job, metrics, seed, tokenizer = run.job, server.metrics, run.seed, entry.handle.tokenizer
    ident, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
    prompt_tokens = sum(len(r) for r in job.prompts)
    n = len(job.prompts)
    echo = [(p if isinstance(p, str) else tokenizer.decode(p)) if body.echo else "" for p in prompts
            for _ in range(body.n)]

    def logprob_entry(tokens, logprobs, tops, offset: int = 0) -> dict:
        """OpenAI's legacy logprobs object; `tops[i]` the (token id, logprob) alternatives (None: none known)."""
        pieces = [tokenizer.decode([t]) for t in tokens]
        offsets = [offset + sum(len(p) for p in pieces[:k]) for k in range(len(pieces))]
        top_logprobs = [None if alts is None else {tokenizer.decode([t]): lp for t, lp in alts} for alts in tops]
        return {"tokens": pieces, "token_logprobs": logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}

    if body.stream:
        async def chunks():
            completion_tokens = 0
            first, offsets = [True] * n, [len(e) for e in echo]
            async for event in run.events_until_done():
                if event.get("done"):
                    break
                completion_tokens += event["token"] is not None
                metrics.tokens(entry.name, event["token"] is not None)
                if first[event["row"]]:
                    metrics.first_token(time.perf_counter() - job.submitted)
                text = (echo[event["row"]] if first[event["row"]] else "") + event["text"]
                first[event["row"]] = False
                if not text and event["finish_reason"] is None:
                    continue
                row = event["row"]
                choice = {"text": text, "index": row, "finish_reason": event["finish_reason"],
                          "logprobs": logprob_entry([event["token"]], [event["logprob"]], [event["top"]], offsets[row])
                          if body.logprobs is not None and event["token"] is not None else None}
                offsets[row] += len(event["text"])
                yield sse({"id": ident, "object": "text_completion", "created": created, "model": entry.name,
                           "choices": [choice], "seed": seed})
            if body.stream_options and body.stream_options.include_usage:
                yield sse({"id": ident, "object": "text_completion", "created": created, "model": entry.name,
                           "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
        return event_stream(chunks())

    texts, tokens, logprobs, reasons, tops = await run.gather()
    choices = []
    for i in range(n):
        entry_logprobs = None
        if body.logprobs is not None:
            if scoring:
                scored = run.scores[i // body.n]
                entry_logprobs = logprob_entry(scored.tokens + tokens[i], scored.logprobs + logprobs[i],
                                               scored.top + tops[i])
            else:
                entry_logprobs = logprob_entry(tokens[i], logprobs[i], tops[i], len(echo[i]))
        choices.append({"text": echo[i] + texts[i], "index": i, "finish_reason": reasons[i] or "length",
                        "logprobs": entry_logprobs})
    return review(request, {"id": ident, "object": "text_completion", "created": created, "model": entry.name,
                            "choices": choices, "usage": _usage(prompt_tokens, sum(map(len, tokens))), "seed": seed})


def _messages(messages: list[Message]) -> list[dict]:
    """OpenAI messages as the dicts `genloom.lm.tools` reads (tool calls, tool results and all)."""
    return [m.model_dump(exclude_none=True) for m in messages]


def _tools(body: ChatRequest) -> Tools:
    """The request's tools and tool_choice, checked (400 naming the field)."""
    if body.tools is not None and not body.tools:
        raise APIError(400, "tools: give at least one function, or leave tools out", param="tools")
    try:
        tools = Tools([t.model_dump(exclude_none=True) for t in body.tools or []], body.tool_choice,
                      body.parallel_tool_calls)
    except ToolError as error:
        raise APIError(400, str(error), param=error.param) from None
    fmt = body.response_format
    if tools.calling and fmt is not None and fmt.type != "text":
        raise APIError(400, "response_format cannot be combined with tools that may be called (tool_choice "
                       f"{tools.choice.mode!r}); give tool_choice \"none\" or leave response_format out",
                       param="response_format")
    return tools


def _tool_grammar(entry: Served, tools: Tools) -> tuple[Grammar, str] | None:
    """The grammar of the calls (None: free text); each function's schema is checked on its own first, so a
    feature the engine cannot enforce is a 400 naming that function's parameters."""
    grammar = tools.grammar(entry.handle.chat_template, entry.handle.tokenizer)
    if grammar is None:
        return None
    for i, function in enumerate(tools.functions):
        if tools.choice.mode != "named" or function.name == tools.choice.name:
            try:
                Grammar("json_schema", function.parameters).text()
            except GenloomError as error:
                raise APIError(400, f"tools[{i}].function.parameters: {error}", code="unsupported_grammar",
                               param=f"tools[{i}].function.parameters") from None
    return grammar, "tools"


def _tool_delta(event: tuple) -> dict:
    """One CallParser event as OpenAI's streamed delta."""
    if event[0] == "content":
        return {"content": event[1]}
    if event[0] == "call":
        _, index, ident, name = event
        return {"tool_calls": [{"index": index, "id": ident, "type": "function",
                                "function": {"name": name, "arguments": ""}}]}
    _, index, piece = event
    return {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    server: ServerState = request.app.state.genloom
    entry = server.model(body.model, KINDS, "/v1/chat/completions")
    messages, template = _messages(body.messages), entry.handle.chat_template
    tools = _tools(body)

    def render() -> list[str]:
        """The messages in the model's chat template (an imported model's own Jinja template, its
        chat_template.json, or the plain default: "User: ..." turns closed by a blank line), ending with the
        assistant's prefix for the model to continue; tools shown in the template's tool format."""
        try:
            prompt = entry.handle.chat_prompt(messages, tools)
            named = [i for i, m in enumerate(messages) if m.get("name") is not None]
            if named:   # a participant's name the template does not write would be silently dropped: refuse it
                plain = [{k: v for k, v in m.items() if k != "name"} for m in messages]
                if entry.handle.chat_prompt(plain, tools) == prompt:
                    raise APIError(400, f"messages[{named[0]}].name: this model's chat template does not use a "
                                   "participant's name, so it would be ignored; leave name out",
                                   param=f"messages[{named[0]}].name")
            return [prompt]
        except ToolError as error:
            raise APIError(400, str(error), param=error.param) from None
        except GenloomError as error:
            raise APIError(400, str(error), param="messages") from None

    refused = screen(request, body, chat=True)
    if refused is not None:
        return refused
    run = _Run(server, request, entry, body)
    grammar = _tool_grammar(entry, tools) or _response_format(body)
    # A response format decides where the text ends: the chat template's stop strings could cut it short. The
    # calls' grammar ends with the template's end of turn, which the stop strings then cut off.
    ends = grammar is None or grammar[1] == "tools"
    stops = _stops(body.stop, server.limits) + (list(template.stop) if ends else [])
    top = (body.top_logprobs or 0) if body.logprobs else 0
    if body.top_logprobs and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    await run.start(render, 1, body.max_completion_tokens or body.max_tokens, "messages", stops, top=top,
                    grammar=grammar)
    job, metrics, n = run.job, server.metrics, body.n
    ident, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
    prompt_tokens = len(job.prompts[0]) * n

    def logprob_content(tokens, logprobs, tops) -> list[dict]:
        def item(token: int, logprob: float) -> dict:
            piece = entry.handle.tokenizer.decode([token])
            return {"token": piece, "logprob": logprob, "bytes": list(piece.encode())}
        return [{**item(token, logprob), "top_logprobs": [item(t, lp) for t, lp in alts]}
                for token, logprob, alts in zip(tokens, logprobs, tops)]

    if body.stream:
        async def chunks():
            completion_tokens = 0
            base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": entry.name,
                    "system_fingerprint": None}
            forced = tools.choice.mode in ("required", "named")
            for i in range(n):
                yield sse({**base, "choices": [{"index": i, "delta": {"role": "assistant",
                                                                      "content": None if forced else ""},
                                                "logprobs": None, "finish_reason": None}]})
            first = [True] * n
            parsers = [tools.parser(template) for _ in range(n)] if tools.calling else None
            async for event in run.events_until_done():
                if event.get("done"):
                    break
                row = event["row"]
                if first[row]:
                    metrics.first_token(time.perf_counter() - job.submitted)
                    first[row] = False
                completion_tokens += event["token"] is not None
                metrics.tokens(entry.name, event["token"] is not None)
                logprobs = ({"content": logprob_content([event["token"]], [event["logprob"]], [event["top"]])}
                            if body.logprobs and event["token"] is not None else None)
                reason = event["finish_reason"]
                if parsers is not None:          # the text read as calls: their deltas, OpenAI's shape
                    found = parsers[row].push(event["text"]) + (parsers[row].flush() if reason else [])
                    deltas = [_tool_delta(e) for e in found] or ([{}] if logprobs else [])
                    for k, delta in enumerate(deltas):
                        yield sse({**base, "choices": [{"index": row, "delta": delta,
                                                        "logprobs": logprobs if k == 0 else None,
                                                        "finish_reason": None}]})
                    if reason:
                        whole = parsers[row].whole and parsers[row].finish() and reason == "stop"
                        reason = "tool_calls" if whole else reason
                        yield sse({**base, "choices": [{"index": row, "delta": {}, "logprobs": None,
                                                        "finish_reason": reason}]})
                    continue
                if not event["text"] and reason is None:
                    continue
                delta = {"content": event["text"]} if event["text"] else {}
                yield sse({**base, "choices": [{"index": row, "delta": delta, "logprobs": logprobs,
                                                "finish_reason": reason}]})
            if body.stream_options and body.stream_options.include_usage:
                yield sse({**base, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
        return event_stream(chunks())

    texts, tokens, logprobs, reasons, tops = await run.gather()
    choices = []
    for i in range(n):
        reply = tools.reply(template, texts[i], reasons[i] or "length")
        message = {"role": "assistant", "content": reply.content, "refusal": None}
        if reply.tool_calls:
            message["tool_calls"] = [call.to_openai() for call in reply.tool_calls]
        choices.append({"index": i, "message": message, "finish_reason": reply.finish_reason,
                        "logprobs": {"content": logprob_content(tokens[i], logprobs[i], tops[i])}
                        if body.logprobs else None})
    return review(request, {"id": ident, "object": "chat.completion", "created": created, "model": entry.name,
                            "choices": choices, "usage": _usage(prompt_tokens, sum(map(len, tokens))),
                            "system_fingerprint": None, "seed": run.seed})
