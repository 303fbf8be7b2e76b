"""The public Python API. The command line and the server are thin layers over these functions."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from . import registry
from .api_images import GANModel, ImageModel, TextToImageModel
from .config import RunConfig, load_recipe
from .data.tokenizers import END_OF_TEXT, TextTokenizer
from .errors import CheckpointError, GenloomError
from .eval.text import TextEvalResult, evaluate_text
from .generate.search import beam_search, speculative_tokens
from .generate.seeding import Seeded
from .generate.text import Sampling, StopMatcher, TextStream, encode_prompt, generate_tokens, stream_text
from .nn.quantize import quantize_int8
from .train import checkpoint as ckpt
from .train.finetune import AdapterChoice
from .train.trainer import Trainer, TrainResult

if TYPE_CHECKING:
    from .data.chat import ChatTemplate
    from .eval.safety import SafetyEvalResult

__all__ = ["train", "finetune", "merge", "load", "TextModel", "ImageModel", "TextToImageModel", "GANModel", "Completion", "default_run_dir"]


def default_run_dir(recipe: str) -> Path:
    """runs/<recipe>-<date>-<time> in the current directory (never an existing folder)."""
    name = Path(recipe).stem if recipe.endswith(".toml") else recipe
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = Path("runs") / f"{name}-{stamp}-{n}"
    return path


def train(recipe: str | RunConfig, out: str | Path | None = None, overrides: list[str] | None = None,
          max_time: float | None = None, resume: bool = False) -> TrainResult:
    """Train a built-in recipe, a TOML file or a RunConfig into `out` (a checkpoint directory)."""
    overrides = list(overrides or [])
    if max_time is not None:
        overrides.append(f"train.max_time={max_time}")
    if isinstance(recipe, RunConfig):
        config = recipe
        if overrides:
            from .config import apply_overrides
            config = RunConfig.from_dict(apply_overrides(config.to_dict(), overrides))
    else:
        config = load_recipe(recipe, overrides)
    out = Path(out) if out is not None else default_run_dir(config.recipe or "run")
    return Trainer(config, out, resume=resume).fit()


def finetune(recipe: str, base: str | Path, out: str | Path | None = None, overrides: list[str] | None = None,
             max_time: float | None = None, resume: bool = False) -> TrainResult:
    """Fine-tune the checkpoint in `base` with a recipe (full, frozen parts, or LoRA per its [finetune] table).

    A LoRA run leaves in `out` the adapter alone (adapter.safetensors + adapter.json), not the base weights.
    """
    overrides = list(overrides or [])
    if max_time is not None:
        overrides.append(f"train.max_time={max_time}")
    config = load_recipe(recipe, overrides, base=base)
    out = Path(out) if out is not None else default_run_dir(config.recipe or "finetune")
    return Trainer(config, out, resume=resume).fit()


def merge(base: str | Path, adapter: str | Path, out: str | Path) -> Path:
    """Fold the LoRA adapter in `adapter` into the weights of `base`; write a full checkpoint to `out`."""
    from .nn.lora import merge_adapter
    from .train.finetune import ADAPTER_JSON, copy_assets, fold_new_words

    base, adapter, out = Path(base), Path(adapter), Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"--out {out} already exists and is not empty; choose a new folder")
    handle = load(base, adapters={"merged": adapter}, ema=True)
    model = handle.model
    merge_adapter(model, "merged")
    config = json.loads((base / ckpt.CONFIG_FILE).read_text())
    meta = json.loads((adapter / ADAPTER_JSON).read_text())
    vocab_size = fold_new_words(model)
    if vocab_size:
        config["model"]["text_vocab_size"] = vocab_size
    out.mkdir(parents=True, exist_ok=True)
    config["description"] = f"{config.get('description', '')} + adapter {adapter.name} merged".strip()
    writers = {
        ckpt.CONFIG_FILE: lambda p: p.write_text(json.dumps(config, indent=2) + "\n"),
        ckpt.MODEL_FILE: lambda p: ckpt.save_tensors(model.state_dict(), p, {
            "format": "genloom", "merged_adapter": str(adapter.resolve()), "adapter_step": str(meta.get("step"))}),
    }
    ckpt.commit(out, writers)
    copy_assets(base, out, overlay=adapter)
    if meta.get("new_words"):
        handle.tokenizer.save(out / "caption_tokenizer.json")        # with the new words
    return out


_CURRENT = object()    # "the adapter chosen with use_adapter" (the default of per-call `adapter=`)


@dataclass(frozen=True)
class Completion:
    """One generated continuation, with what a caller may want to know about it."""

    text: str                 # the continuation, without the prompt, cut before a stop string
    tokens: list[int]         # generated token ids (up to the stop string)
    logprobs: list[float]     # each token's log-probability under the model (temperature 1, unfiltered)
    finish_reason: str        # "stop" (a stop string was produced) or "length"
    seed: int                 # the seed that reproduces this sample alone


class TextModel(AdapterChoice, Seeded):
    """A trained language model with its tokenizer: generate text, stream it, score it."""

    def __init__(self, path: Path, config: RunConfig, model: torch.nn.Module, tokenizer: TextTokenizer,
                 chat_template: "ChatTemplate | None" = None):
        from .data.chat import ChatTemplate

        self.path, self.config, self.model, self.tokenizer = path, config, model, tokenizer
        self.chat_template = chat_template or ChatTemplate.default(tokenizer)

    def chat_prompt(self, messages: Sequence[dict]) -> str:
        """The prompt that asks the model for the assistant's next turn (the model's chat template)."""
        return self.chat_template.prompt(messages)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _route(self, adapter) -> None:
        if adapter is not _CURRENT:
            self.use_adapter(adapter)

    def stream(self, prompt: str = "", max_new_tokens: int = 256, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, seed: int | None = None, min_p: float = 0.0, repetition_penalty: float = 1.0,
               stop: Sequence[str] = (), use_cache: bool = True, adapter=_CURRENT) -> Iterator[str]:
        """Yield pieces of the continuation of `prompt` as they are sampled. `adapter` names a loaded LoRA
        adapter (None: the base model); by default the one chosen with `use_adapter` applies."""
        sampling = Sampling(temperature, top_k, top_p, min_p, repetition_penalty)
        self._route(adapter)
        return stream_text(self.model, self.tokenizer, prompt, max_new_tokens, self._seed(seed), sampling, stop,
                           use_cache)

    def complete(self, prompts: str | Sequence[str] = "", max_new_tokens: int = 256, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = None, num_samples: int = 1,
                 min_p: float = 0.0, repetition_penalty: float = 1.0, stop: Sequence[str] = (),
                 use_cache: bool = True, adapter=_CURRENT) -> list[Completion]:
        """Continue each prompt `num_samples` times, all in one batch (prompt-major order).

        Sample j of every prompt uses seed + j, so it is the text that prompt alone with that seed
        gives. Without a seed, one is drawn at random (kept in `last_seed`).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        rows = [(prompt, j) for prompt in prompts for j in range(num_samples)]
        return self._complete_rows([encode_prompt(self.tokenizer, prompt) for prompt, _ in rows],
                                   [StopMatcher(stop) for _ in rows], [j for _, j in rows], max_new_tokens,
                                   Sampling(temperature, top_k, top_p, min_p, repetition_penalty), seed, use_cache,
                                   adapter)

    def _complete_rows(self, encoded: list[list[int]], matchers: list, offsets: list[int], max_new_tokens: int,
                       sampling: Sampling, seed: int | None, use_cache: bool = True, adapter=_CURRENT,
                       first_allowed: torch.Tensor | None = None, skips: Sequence[str] = ()) -> list[Completion]:
        """Decode token prompts together; row i draws from seed + offsets[i] and ends where matchers[i]
        (a StopMatcher or anything with its push/flush/stopped) says. Token healing: `first_allowed` (B, V)
        limits the first tokens, and skips[i] (text the prompt already has) is cut from row i's start."""
        skips = list(skips) or [""] * len(encoded)
        seed = self._seed(seed)
        self._route(adapter)
        generators = [torch.Generator(device=self.device).manual_seed(seed + j) for j in offsets]
        streams = [TextStream(self.tokenizer) for _ in encoded]
        texts = [""] * len(encoded)
        tokens: list[list[int]] = [[] for _ in encoded]
        logprobs: list[list[float]] = [[] for _ in encoded]
        for step_tokens, step_logprobs in generate_tokens(self.model, encoded, max_new_tokens, generators, sampling,
                                                          use_cache, first_allowed):
            for i, (token, logprob) in enumerate(zip(step_tokens.tolist(), step_logprobs.tolist())):
                if matchers[i].stopped:
                    continue
                piece = streams[i].push(token)
                cut = min(len(piece), len(skips[i]))
                piece, skips[i] = piece[cut:], skips[i][cut:]
                texts[i] += matchers[i].push(piece)
                if not matchers[i].stopped:
                    tokens[i].append(token)
                    logprobs[i].append(logprob)
            if all(m.stopped for m in matchers):
                break
        return [Completion(texts[i] + matchers[i].flush(), tokens[i], logprobs[i],
                           "stop" if matchers[i].stopped else "length", seed + j)
                for i, j in enumerate(offsets)]

    def generate(self, prompt: str = "", max_new_tokens: int = 256, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, num_samples: int = 1, **options) -> list[str]:
        """`num_samples` continuations of `prompt` as strings (see `complete` for the details)."""
        return [c.text for c in self.complete(prompt, max_new_tokens, temperature, top_k, top_p, seed, num_samples,
                                              **options)]

    def beam_search(self, prompt: str, max_new_tokens: int = 64, num_beams: int = 4,
                    length_penalty: float = 1.0) -> list[tuple[str, float]]:
        """The most likely continuations found by beam search: (text, total log-probability), best first."""
        eos = self.tokenizer.token_id(END_OF_TEXT)
        beams = beam_search(self.model, encode_prompt(self.tokenizer, prompt), max_new_tokens, num_beams,
                            length_penalty, eos)
        return [(self.tokenizer.decode([t for t in b.tokens if t != eos]), b.logprob) for b in beams]

    def speculative(self, draft: "TextModel", prompt: str = "", max_new_tokens: int = 256, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0, seed: int | None = None, lookahead: int = 4,
                    stats: dict | None = None) -> str:
        """Sample as this model would, with a small `draft` model proposing tokens (same tokenizer)."""
        if draft.tokenizer.hf.to_str() != self.tokenizer.hf.to_str():
            raise GenloomError(f"the draft model {draft.path} uses another tokenizer than {self.path}")
        generator = torch.Generator(device=self.device).manual_seed(self._seed(seed))
        tokens = speculative_tokens(self.model, draft.model, encode_prompt(self.tokenizer, prompt), max_new_tokens,
                                    generator, Sampling(temperature, top_k, top_p), lookahead, stats)
        return self.tokenizer.decode(list(tokens))

    def evaluate(self, data_path: str | None = None, progress: bool = True) -> TextEvalResult:
        """Loss on the validation split of the training data, or of `data_path` split the same way."""
        data_config = self.config.data
        if data_config.kind != "text":
            if data_path is None:
                raise GenloomError(f"{self.path} was trained on {data_config.kind} data; give a text file to score "
                                   "with --data, or use --task safety for the safety evaluation")
            from .data.text import TextDataConfig
            data_config = TextDataConfig(path=data_path)
        return evaluate_text(self.model, self.tokenizer, data_config, data_path, progress=progress)

    def reply(self, conversations: Sequence[Sequence[dict]], max_new_tokens: int = 80, temperature: float = 0.0,
              seed: int | None = 0, **options) -> list[str]:
        """The assistant's next turn for each conversation (lists of {"role", "content"} messages), in one
        batch, ending where the chat template closes a turn. Greedy by default."""
        prompts = [self.chat_prompt(list(messages)) for messages in conversations]
        completions = self.complete(prompts, max_new_tokens, temperature, seed=seed,
                                    stop=self.chat_template.stop, **options)
        return [c.text.strip() for c in completions]

    def evaluate_safety(self, progress: bool = True) -> "SafetyEvalResult":
        """Refusal rate on the held-out harmful requests of builtin:safety and answer rate on the others."""
        from .eval.safety import evaluate_safety

        return evaluate_safety(lambda requests: self.reply([[{"role": "user", "content": r}] for r in requests]),
                               progress=progress)


TEXT_OBJECTIVES = ("lm", "dpo")


def _adapter_dirs(adapters) -> dict[str, Path]:
    if adapters is None:
        return {}
    if isinstance(adapters, (str, Path)):
        adapters = [adapters]
    if isinstance(adapters, dict):
        return {str(k): Path(v) for k, v in adapters.items()}
    out: dict[str, Path] = {}
    for item in adapters:
        folder = Path(item)
        name = folder.resolve().name
        while name in out:
            name += "_"
        out[name] = folder
    return out


def load(path: str | Path, device: str = "auto", quantize: str | None = None,
         ema: bool = True, adapters=None) -> TextModel | ImageModel:
    """Open a checkpoint directory written by `genloom train`: a TextModel (a CodeModel for code models), a
    MusicModel, an ImageModel (diffusion), a TextToImageModel (diffusion from captions), a GANModel, a
    VideoModel or an AudioModel.

    `quantize="int8"` stores the linear weights of a text model as int8 for faster CPU decoding (a
    small rounding error). `ema=True` uses the averaged weights where the run kept them.
    `adapters`: LoRA adapter folders (written by `genloom finetune`) to load on top: one folder, a list
    (named after their folders) or {name: folder}. One adapter is applied by default; with several, the
    base model is, and `handle.use_adapter(name)` (or `adapter=` per call) picks one. A LoRA run's
    folder can also be opened directly: its base model is loaded from where adapter.json says.
    """
    from .train.finetune import attach_adapter, is_adapter_dir, read_adapter

    path = Path(path)
    adapter_dirs = _adapter_dirs(adapters)
    run_config = None
    if path.is_dir() and is_adapter_dir(path):
        meta = read_adapter(path)
        base = Path(meta.get("base", ""))
        if not base.is_dir():
            raise CheckpointError(f"{path} holds an adapter whose base model {base} is gone; pass the base model and "
                                  f"the adapter: --checkpoint BASE_DIR --adapter {path}")
        adapter_dirs = {path.resolve().name: path, **adapter_dirs}
        run_config = RunConfig.from_json_file(path / ckpt.CONFIG_FILE)     # what the adapter was trained on
        path = base
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory (expected a genloom checkpoint directory)")
    ckpt.recover(path)
    for name in (ckpt.CONFIG_FILE, ckpt.MODEL_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} is missing {name}; is it a genloom checkpoint directory?")
    config = RunConfig.from_json_file(path / ckpt.CONFIG_FILE)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = registry.lookup("model", config.model.kind).build(config.model, config)
    weights = path / ckpt.EMA_FILE if ema and (path / ckpt.EMA_FILE).is_file() else path / ckpt.MODEL_FILE
    metas = {name: read_adapter(folder) for name, folder in adapter_dirs.items()}
    wanted = {meta.get("base_weights") for meta in metas.values()}
    if len(wanted) > 1:
        raise CheckpointError("these adapters were trained on different weights of the base (model and ema): "
                              + ", ".join(f"{n}: {m.get('base_weights')}" for n, m in metas.items()))
    if wanted and (path / next(iter(wanted))).is_file():
        weights = path / next(iter(wanted))
    ckpt.load_weights(model, weights)
    if adapter_dirs:
        from .nn.lora import use_adapter, weights_fingerprint

        full = [n for n, m in metas.items() if m.get("train_also")]
        if full and len(adapter_dirs) > 1:
            raise CheckpointError(f"the adapter {adapter_dirs[full[0]]} changes whole parameters "
                                  f"({', '.join(metas[full[0]]['train_also'][:3])}), so it cannot share a base "
                                  "model with other adapters; load it alone")
        fingerprint = weights_fingerprint(model.state_dict())
        model_dict = json.loads(config.to_json())["model"]
        for name, folder in adapter_dirs.items():
            attach_adapter(model, model_dict, fingerprint, folder, name, str(path))
        use_adapter(model, next(iter(adapter_dirs)) if len(adapter_dirs) == 1 else None)
        if quantize is not None:
            raise GenloomError("quantize and adapters cannot be combined: fold the adapter into the base first "
                               "(genloom merge --base BASE --adapter DIR --out MERGED) and quantize the result")
    model.to(device).eval()
    if quantize == "int8":
        quantize_int8(model)
    elif quantize is not None:
        raise GenloomError(f"quantize={quantize!r}: the choices are int8 or none")
    if config.objective.kind == "audio_diffusion":
        from .api_audio import AudioModel

        if adapter_dirs:
            raise GenloomError("adapters on audio models are not supported yet")
        return AudioModel(path, run_config or config, model)
    if config.objective.kind == "video_diffusion":
        from .api_video import VideoModel
        from .data.images import load_labels

        if adapter_dirs:
            raise GenloomError("adapters on video models are not supported yet")
        return VideoModel(path, run_config or config, model, load_labels(path))
    if config.objective.kind in ("diffusion", "gan"):
        if config.objective.kind == "diffusion" and getattr(config.model, "text_vocab_size", 0):
            from .data.captions import load_caption_tokenizer

            tokenizer = load_caption_tokenizer(path)
            base_words = list(tokenizer.vocab)
            new_words = [w for m in metas.values() for w in m.get("new_words", [])]
            if new_words:
                tokenizer = tokenizer.with_words(new_words)
            image_handle = TextToImageModel(path, run_config or config, model, tokenizer, base_words)
        else:
            from .data.images import load_labels

            handle_class = GANModel if config.objective.kind == "gan" else ImageModel
            image_handle = handle_class(path, run_config or config, model, load_labels(path))
        return _adapted(image_handle, list(adapter_dirs))
    if config.data.kind == "music":
        from .api_music import MusicModel

        if adapter_dirs:
            raise GenloomError("adapters on music models are not supported yet")
        return MusicModel(path, run_config or config, model)
    if config.objective.kind not in TEXT_OBJECTIVES:
        raise CheckpointError(f"{path}: objective {config.objective.kind!r} has no generation handle yet")
    tokenizer = TextTokenizer.load(path / "tokenizer.json")
    if tokenizer.vocab_size > config.model.vocab_size:
        raise CheckpointError(f"{path}/tokenizer.json has {tokenizer.vocab_size} tokens but the model only "
                              f"{config.model.vocab_size}")
    from .data.chat import ChatTemplate

    template = None
    for folder in [*adapter_dirs.values(), path]:          # an instruction-tuned adapter brings its template
        template = ChatTemplate.find(folder)
        if template is not None:
            break
    handle_class = TextModel
    if config.data.kind == "code":
        from .api_code import CodeModel as handle_class
    handle = handle_class(path, run_config or config, model, tokenizer, template)
    return _adapted(handle, list(adapter_dirs))


def _adapted(handle, names: list[str]):
    """The handle knowing its adapters: one is applied by default, several leave the base model in use."""
    handle.adapters = names
    handle.adapter = names[0] if len(names) == 1 else None
    return handle
