"""Tools through the server with the official client: `tool_choice` required and a named function give valid
calls (their arguments validate against the function's schema with jsonschema) across seeds, streamed and not,
from a barely trained genloom model (genloom's tool format) and from an imported Qwen2 whose own chat template
knows tools (its `<tool_call>` format); `role: "tool"` results and the assistant's calls are fed back; auto and
none behave; bad tool requests are a 400 naming the field; the tool-aware templates of Qwen2.5 and Llama 3.1
render tools, calls and results as transformers' `apply_chat_template(..., tools=...)` does."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from conftest import TINY

from genloom import api, load

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "text"))

from helpers_hf import hf_model_folder, tokenizer_folder  # noqa: E402
from test_serve import Server  # noqa: E402

from genloom.lm.tools import Tools  # noqa: E402
from genloom.serve.app import Limits  # noqa: E402
from genloom.text.chat import ChatTemplate  # noqa: E402

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a town over the next days.",
    "parameters": {"type": "object", "properties": {
        "town": {"type": "string", "maxLength": 10},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "detail": {"type": "object", "properties": {"wind": {"type": "boolean"},
                                                    "hours": {"type": "array", "items": {"type": "integer",
                                                                                         "minimum": 0,
                                                                                         "maximum": 23},
                                                              "maxItems": 3}},
                   "required": ["wind", "hours"], "additionalProperties": False}},
        "required": ["town", "unit", "days", "detail"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two whole numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 99},
                                                    "b": {"type": "integer", "minimum": -99, "maximum": 99}},
                   "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


def _corpus(path):
    """Chat-like lines with calls in genloom's format, so that a barely trained model closes its strings."""
    rng, words = random.Random(0), "oslo paris rome lima kiev bern add weather town unit days".split()
    lines = []
    for _ in range(1500):
        args = {"town": rng.choice(words), "unit": rng.choice(["celsius", "fahrenheit"]), "days": rng.randint(1, 7)}
        lines.append(f'User: {rng.choice(words)} {rng.choice(words)}?\n\nAssistant: <tool_call>'
                     f'{json.dumps({"name": "get_weather", "arguments": args})}</tool_call>\n\n')
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    api.train("shakespeare-char", out=root / "run", overrides=[
        f"data.path={_corpus(root / 'calls.txt')}", *TINY, "data.tokenizer=bpe", "data.vocab_size=300",
        "train.max_steps=20"])
    return load(root / "run")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    pytest.importorskip("transformers")
    from genloom.text.convert import import_hf

    root = tmp_path_factory.mktemp("qwen")
    import_hf(hf_model_folder(root / "hf", "qwen2.5", "qwen2"), root / "run")
    return load(root / "run")


@pytest.fixture(scope="module")
def server(own, qwen):
    s = Server({"own": own, "qwen": qwen}, Limits(max_batch=16))
    yield s
    s.stop()


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _ask(client, model, seed, tool_choice, stream=False, messages=ASK, **extra):
    extra = {"max_tokens": 250, **extra}
    return client.chat.completions.create(model=model, messages=messages, tools=TOOLS, tool_choice=tool_choice,
                                          temperature=1.0, seed=seed, stream=stream, **extra)


def _valid(calls, names):
    assert calls, "no tool call"
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def _streamed(chunks):
    """(content, [(id, name, arguments)], finish_reason) gathered from streamed deltas as a client does."""
    content, calls, reason = None, {}, None
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        delta = choice.delta
        if delta.content:
            content = (content or "") + delta.content
        for part in delta.tool_calls or []:
            if part.id is not None:
                assert part.index not in calls and part.type == "function" and part.function.arguments == ""
                calls[part.index] = [part.id, part.function.name, ""]
            else:
                assert part.function.name is None
                calls[part.index][2] += part.function.arguments
        reason = choice.finish_reason or reason
    return content, [tuple(calls[k]) for k in sorted(calls)], reason


@pytest.mark.parametrize("model", ["own", "qwen"])
def test_required_and_named_choices_give_valid_calls_streamed_and_not(client, model):
    named = {"type": "function", "function": {"name": "get_weather"}}
    for seed in range(4):
        for choice, names in (("required", set(SCHEMAS)), (named, {"get_weather"})):
            done = _ask(client, model, seed, choice, parallel_tool_calls=False)
            message = done.choices[0].message
            assert done.choices[0].finish_reason == "tool_calls" and message.content is None
            assert len(message.tool_calls) == 1
            _valid(message.tool_calls, names)
            content, calls, reason = _streamed(_ask(client, model, seed, choice, stream=True,
                                                    parallel_tool_calls=False))
            assert reason == "tool_calls" and content is None
            assert [(n, a) for _, n, a in calls] == [(c.function.name, c.function.arguments)
                                                     for c in message.tool_calls]


@pytest.mark.parametrize("model", ["own", "qwen"])
def test_parallel_calls_are_each_valid(client, model):
    counts = []
    for seed in range(6):
        done = _ask(client, model, seed, "required", max_tokens=400)
        _valid(done.choices[0].message.tool_calls, set(SCHEMAS))     # complete calls only, even when cut short
        assert done.choices[0].finish_reason in ("tool_calls", "length")
        counts.append(len(done.choices[0].message.tool_calls))
    assert max(counts) > 1, counts


def test_tool_results_and_the_assistants_calls_are_fed_back(client):
    done = _ask(client, "qwen", 1, "required")
    message = done.choices[0].message
    results = [{"role": "tool", "tool_call_id": call.id, "content": "12 degrees"} for call in message.tool_calls]
    for model in ("qwen", "own"):
        again = _ask(client, model, 2, "auto", messages=[*ASK, message, *results])
        assert again.choices[0].finish_reason in ("stop", "length", "tool_calls")
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(client, "own", 0, "auto", messages=[*ASK, message, {"role": "tool", "tool_call_id": "call_nope",
                                                                  "content": "x"}])
    assert caught.value.body["param"] == "messages[2].tool_call_id"


@pytest.mark.parametrize("model", ["own", "qwen"])
def test_auto_is_text_or_a_valid_call_and_none_is_text(client, model):
    for seed in range(3):
        done = _ask(client, model, seed, "auto", max_completion_tokens=60)
        message = done.choices[0].message
        if message.tool_calls:
            _valid(message.tool_calls, set(SCHEMAS))
            assert done.choices[0].finish_reason == "tool_calls"
        else:           # free text, which the grammar keeps from starting the way a call does
            assert not message.content.lstrip().startswith("<") and done.choices[0].finish_reason != "tool_calls"
        none = _ask(client, model, seed, "none", max_completion_tokens=20)
        assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("change, param, words", [
    ({"tools": [{**WEATHER, "function": {**WEATHER["function"], "strictly": True}}]}, "tools[0].function.strictly",
     "not a field"),
    ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools[0].function.name",
     "not a function name"),
    ({"tools": [ADD, ADD]}, "tools[1].function.name", "given twice"),
    ({"tools": [ADD], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     "tool_choice.function.name", "not among the tools"),
    ({"tools": [ADD], "tool_choice": "always"}, "tool_choice", "expected"),
    ({"tools": [ADD], "tool_choice": {"type": "function", "function": {"name": "add", "strict": True}}},
     "tool_choice.function.strict", "unknown field"),
    ({"tools": [{**ADD, "type": "funcion"}]}, "tools[0].type", "function"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": []}, "tools", "at least one"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters", "object"),
    ({"tools": [ADD, {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string", "format": "no-such-format"}}}}}],
      "tool_choice": "required"}, "tools[1].function.parameters", "no-such-format"),
    ({"tools": [ADD], "response_format": {"type": "json_object"}}, "response_format", "tools"),
    ({"messages": [{"role": "user", "content": "hi", "tool_calls": []}]}, "messages[0].tool_calls", "assistant"),
])
def test_a_bad_tool_request_is_a_400_naming_the_field(server, change, param, words):
    body = {"model": "own", "messages": ASK, "max_tokens": 4, **change}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_the_python_api_returns_the_calls(own):
    reply = own.chat(ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "add"}}, seed=3,
                     max_new_tokens=250)
    assert reply.finish_reason == "tool_calls" and reply.content is None and len(reply.tool_calls) == 1
    jsonschema.validate(json.loads(reply.tool_calls[0].arguments), SCHEMAS["add"])
    assert own.chat(ASK, tools=TOOLS, tool_choice="none", seed=3, max_new_tokens=8).tool_calls == []


def test_generate_text_tools_prints_the_calls(own, tmp_path):
    from typer.testing import CliRunner

    from genloom.cli import app

    (tmp_path / "tools.json").write_text(json.dumps(TOOLS))
    args = ["generate", "text", "--checkpoint", str(own.path), "--chat", "--prompt", "Weather?", "--tools",
            str(tmp_path / "tools.json"), "--seed", "1", "--max-new-tokens", "250"]
    result = CliRunner().invoke(app, [*args, "--tool-choice", "get_weather"])
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert line["type"] == "function" and line["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(line["function"]["arguments"]), SCHEMAS["get_weather"])
    result = CliRunner().invoke(app, [*args, "--tool-choice", "nowhere"])
    assert result.exit_code != 0 and "tool_choice.function.name" in result.output


@pytest.mark.parametrize("name", ["qwen2.5", "llama-3.1"])
def test_tool_aware_templates_render_as_transformers_renders_them(tmp_path, name):
    transformers = pytest.importorskip("transformers")
    tokenizer_folder(tmp_path, name)
    template = ChatTemplate.find(tmp_path)
    reference = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    ours = [{"role": "system", "content": "Be brief."}, *ASK, {"role": "assistant", "content": None,
                                                                "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "5"}]
    theirs = [*ours[:2], {"role": "assistant", "tool_calls": [
        {**call, "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]}, ours[3]]
    expected = reference.apply_chat_template(theirs, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    prompt = Tools(TOOLS).prompt(template, ours)
    assert prompt == expected and '"name": "get_weather"' in prompt


def test_a_character_vocabulary_is_held_to_the_calls_or_refused_naming_what_it_lacks():
    import string

    import torch

    from genloom.lm.constraints import GrammarError, TokenConstraint
    from genloom.lm.tokenizers import TextTokenizer

    tools, template = Tools([ADD], "required"), ChatTemplate()
    poor = TextTokenizer.train_char("abcdefgh ijklmnop\n:")
    with pytest.raises(GrammarError, match=r"lacks: '\",<>_rstu\{'"):
        TokenConstraint(tools.grammar(template, poor), poor, poor.vocab_size).allowed()
    rich = TextTokenizer.train_char(string.printable)
    for seed in range(3):                  # any token the grammar allows, drawn uniformly, until it is done
        constraint, generator, out = TokenConstraint(tools.grammar(template, rich), rich, rich.vocab_size), \
            torch.Generator().manual_seed(seed), []
        while not constraint.done:
            out.append(int(torch.multinomial(constraint.allowed().float(), 1, generator=generator)))
            constraint.advance(out[-1])
        text = rich.decode(out)
        assert text.endswith("</tool_call>\n\n")            # the calls, then the plain template's end of turn
        reply = tools.reply(template, text[:-2], "stop")
        assert reply.finish_reason == "tool_calls"
        for call in reply.tool_calls:
            jsonschema.validate(json.loads(call.arguments), SCHEMAS["add"])


@pytest.mark.parametrize("name, ending", [("qwen2.5", "\n</tool_call>"), ("llama-3.1", "}")])
def test_each_template_format_is_held_to_valid_calls_ending_its_turn(tmp_path, name, ending):
    """Uniform random walks over the tokens the grammar allows (a model with no preference at all) end the turn
    with one of the template's own end-of-turn tokens and read back as valid calls."""
    import torch

    from genloom.lm.constraints import TokenConstraint

    tokenizer = tokenizer_folder(tmp_path, name)
    template = ChatTemplate.find(tmp_path)
    tools = Tools(TOOLS, "required", parallel_tool_calls=False)
    for seed in range(3):
        constraint = TokenConstraint(tools.grammar(template, tokenizer), tokenizer, tokenizer.vocab_size)
        generator, out = torch.Generator().manual_seed(seed), []
        while not constraint.done and len(out) < 2000:
            out.append(int(torch.multinomial(constraint.allowed().float(), 1, generator=generator)))
            constraint.advance(out[-1])
        text = tokenizer.decode(out)
        stop = next((s for s in template.stop if text.endswith(s)), "")
        assert constraint.done and stop and text[:-len(stop)].endswith(ending), text
        reply = tools.reply(template, text[:-len(stop)], "stop")
        assert reply.finish_reason == "tool_calls" and len(reply.tool_calls) == 1, text
        call = reply.tool_calls[0]
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


def test_genloom_format_lists_the_tools_and_writes_calls_and_results_back():
    template = ChatTemplate()
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a":2,"b":3}'}}
    prompt = Tools(TOOLS).prompt(template, [*ASK, {"role": "assistant", "tool_calls": [call]},
                                            {"role": "tool", "tool_call_id": "call_1", "content": "5"}])
    assert prompt.startswith("System: You may call these functions") and json.dumps(ADD["function"]) in prompt
    assert ('Assistant: <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>\n\n'
            'User: <tool_response>{"name": "add", "content": "5"}</tool_response>\n\nAssistant: ') in prompt
