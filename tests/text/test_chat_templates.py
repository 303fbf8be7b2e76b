"""Imported models' own chat templates: genloom's sandboxed Jinja rendering gives the prompt (and the token ids)
that transformers' `apply_chat_template` gives for real templates of Llama 3.1, Qwen2.5 and Gemma 3 (and Gemma 2's
refusals), built from the same tokenizer files; the stop tokens come from generation_config.json; a template that
fails is one line naming the Jinja error and the message."""

import pytest
from helpers_hf import TOKENS, tokenizer_folder

from genloom.core.errors import GenloomError
from genloom.lm.chat_templates import TemplateError, TokenizerSettings, render_chat
from genloom.lm.decoding import encode_prompt
from genloom.lm.tokenizers import TextTokenizer
from genloom.text.chat import ChatTemplate, ModelChatTemplate

transformers = pytest.importorskip("transformers")
pytest.importorskip("jinja2")

SYSTEM = {"role": "system", "content": "You are brief."}
TURNS = [{"role": "user", "content": "Hello, how are you?"},
         {"role": "assistant", "content": "  I am well, thank you!  "},
         {"role": "user", "content": "What is the model doing today?"}]
CASES = {"system, multi-turn, generation prompt": ([SYSTEM, *TURNS], True),
         "multi-turn, no generation prompt": ([*TURNS, {"role": "assistant", "content": "Answering."}], False),
         "one user turn, generation prompt": (TURNS[:1], True),
         "system and one user turn": ([SYSTEM, TURNS[0]], True)}


@pytest.fixture(params=["llama-3.1", "qwen2.5", "gemma-3"])
def model_folder(request, tmp_path):
    tokenizer_folder(tmp_path, request.param)
    return request.param, tmp_path


@pytest.mark.parametrize("case", list(CASES))
def test_prompts_render_as_transformers_renders_them(model_folder, case):
    name, folder = model_folder
    messages, generation = CASES[case]
    reference = transformers.PreTrainedTokenizerFast.from_pretrained(str(folder))
    expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    template = ChatTemplate.find(folder)
    assert isinstance(template, ModelChatTemplate)
    ours = template.prompt(messages) if generation else template.render(messages, False)
    assert ours == expected
    ids = reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    tokenizer = TextTokenizer.load(folder / "tokenizer.json")
    tokenizer.prompt_prefix = TokenizerSettings.read(folder).prompt_prefix(tokenizer)
    assert encode_prompt(tokenizer, ours) == list(ids)


def test_stop_tokens_come_from_the_generation_config(model_folder):
    name, folder = model_folder
    template = ModelChatTemplate.find(folder)
    assert template.stop == TOKENS[name]["generation_eos"]


def test_assistant_spans_cover_each_reply_and_its_end_marker(model_folder):
    name, folder = model_folder
    template = ModelChatTemplate.find(folder)
    messages = [*TURNS, {"role": "assistant", "content": "Answering."}]
    text, spans = template.spans(messages)
    assert len(spans) == 2
    for (start, end), reply in zip(spans, ("I am well, thank you!", "Answering.")):
        assert reply in text[start:end]
        assert any(marker in text[start:end] for marker in template.stop)
        assert "user" not in text[start:end]
    prompt, reply = template.exchange(TURNS[:1], "Fine.")
    assert prompt == template.prompt(TURNS[:1]) and reply.lstrip().startswith("Fine.")


def test_beginning_of_sequence_follows_the_tokenizer(tmp_path):
    """Gemma's and Llama 3's tokenizer.json add <bos> in their post-processor: so do genloom's prompts (once)."""
    from tokenizers import processors

    tokenizer = tokenizer_folder(tmp_path, "gemma-3")
    bos = tokenizer.token_id("<bos>")
    tokenizer.hf.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                                special_tokens=[("<bos>", bos)])
    tokenizer.save(tmp_path / "tokenizer.json")
    tokenizer = TextTokenizer.load(tmp_path / "tokenizer.json")
    tokenizer.prompt_prefix = TokenizerSettings.read(tmp_path).prompt_prefix(tokenizer)
    reference = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert encode_prompt(tokenizer, "hello")[0] == bos
    assert encode_prompt(tokenizer, "hello") == reference("hello")["input_ids"]
    chat = ModelChatTemplate.find(tmp_path).prompt(TURNS[:1])
    assert encode_prompt(tokenizer, chat).count(bos) == 1            # the template writes it; not twice
    assert encode_prompt(tokenizer, chat) == reference.apply_chat_template(TURNS[:1], add_generation_prompt=True,
                                                                           tokenize=True)["input_ids"]
    tokenizer_folder(tmp_path / "off", "gemma-3", add_bos_token=False)
    assert TokenizerSettings.read(tmp_path / "off").prompt_prefix(tokenizer) == []


def test_a_template_that_fails_names_the_error_and_the_message(tmp_path):
    tokenizer_folder(tmp_path, "gemma-2")
    template = ModelChatTemplate.find(tmp_path)
    with pytest.raises(TemplateError, match=r"at message 0 \('system'\).*System role not supported"):
        template.prompt([SYSTEM, TURNS[0]])
    with pytest.raises(TemplateError, match=r"at message 1 \('user'\).*roles must alternate"):
        template.prompt([TURNS[0], TURNS[0]])
    with pytest.raises(TemplateError, match="does not compile"):
        render_chat("{% if %}", TURNS, add_generation_prompt=True, special={})
    assert isinstance(TemplateError("x"), GenloomError)


def test_the_sandbox_holds(tmp_path):
    with pytest.raises(TemplateError, match="SecurityError|unsafe"):
        render_chat("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", TURNS,
                    add_generation_prompt=False, special={})
    with pytest.raises(TemplateError, match="namespace"):
        render_chat("{% set ns = namespace(_x=1) %}", TURNS, add_generation_prompt=False, special={})
    assert render_chat("{{ messages[0] | tojson }}", [{"role": "user", "content": "<é>"}],
                       add_generation_prompt=False, special={}) == '{"role": "user", "content": "<é>"}'
