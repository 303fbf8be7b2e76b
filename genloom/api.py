"""The public Python API. The command line and the server are thin layers over these functions."""

from __future__ import annotations

import datetime
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch

from . import registry
from .config import RunConfig, load_recipe
from .data.tokenizers import END_OF_TEXT, TextTokenizer
from .errors import CheckpointError, GenloomError
from .eval.text import TextEvalResult, evaluate_text

if TYPE_CHECKING:
    from PIL import Image

    from .eval.image import ImageEvalResult
    from .data.chat import ChatTemplate
    from .eval.concept import ConceptEvalResult
    from .eval.safety import SafetyEvalResult
    from .eval.scenes import SceneEvalResult
from .generate.search import beam_search, speculative_tokens
from .generate.text import Sampling, StopMatcher, TextStream, encode_prompt, generate_tokens, stream_text
from .nn.quantize import quantize_int8
from .train import checkpoint as ckpt
from .train.trainer import Trainer, TrainResult

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
    from .train.finetune import ADAPTER_JSON, copy_assets

    base, adapter, out = Path(base), Path(adapter), Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"--out {out} already exists and is not empty; choose a new folder")
    handle = load(base, adapters={"merged": adapter}, ema=True)
    model = handle.model
    merge_adapter(model, "merged")
    config = json.loads((base / ckpt.CONFIG_FILE).read_text())
    meta = json.loads((adapter / ADAPTER_JSON).read_text())
    from .nn.text_encoders import GrownEmbedding

    for name, module in list(model.named_modules()):
        if isinstance(module, GrownEmbedding):       # new words: their rows join the embedding table
            parent_name, _, attribute = name.rpartition(".")
            table = torch.cat([module.weight, module.extra]).detach()
            setattr(model.get_submodule(parent_name), attribute, torch.nn.Embedding.from_pretrained(table, freeze=False))
            config["model"]["text_vocab_size"] = table.shape[0]
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


class _Adapters:
    """LoRA adapters loaded on a handle's model (`genloom.load(..., adapters=...)`) and the one in use."""

    adapters: list[str] = []          # names of the loaded adapters (set by `load`)
    adapter: str | None = None        # the one applied by default (None: the base model)

    def use_adapter(self, name: str | None) -> None:
        """Apply the loaded adapter `name` to later generations (None: the base model alone)."""
        from .nn.lora import use_adapter

        if name is not None and name not in self.adapters:
            raise GenloomError(f"no adapter named {name!r} is loaded with {self.path} "
                               f"(loaded: {', '.join(self.adapters) or 'none'})")
        use_adapter(self.model, name)
        self.adapter = name


class TextModel(_Adapters):
    """A trained language model with its tokenizer: generate text, stream it, score it."""

    def __init__(self, path: Path, config: RunConfig, model: torch.nn.Module, tokenizer: TextTokenizer,
                 chat_template: "ChatTemplate | None" = None):
        from .data.chat import ChatTemplate

        self.path, self.config, self.model, self.tokenizer = path, config, model, tokenizer
        self.chat_template = chat_template or ChatTemplate.default(tokenizer)
        self.last_seed: int | None = None

    def chat_prompt(self, messages: Sequence[dict]) -> str:
        """The prompt that asks the model for the assistant's next turn (the model's chat template)."""
        return self.chat_template.prompt(messages)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _seed(self, seed: int | None) -> int:
        self.last_seed = secrets.randbelow(2**31) if seed is None else seed
        return self.last_seed

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
        sampling = Sampling(temperature, top_k, top_p, min_p, repetition_penalty)
        seed = self._seed(seed)
        self._route(adapter)
        rows = [(prompt, j) for prompt in prompts for j in range(num_samples)]
        encoded = [encode_prompt(self.tokenizer, prompt) for prompt, _ in rows]
        generators = [torch.Generator(device=self.device).manual_seed(seed + j) for _, j in rows]
        streams = [TextStream(self.tokenizer) for _ in rows]
        matchers = [StopMatcher(stop) for _ in rows]
        texts = [""] * len(rows)
        tokens: list[list[int]] = [[] for _ in rows]
        logprobs: list[list[float]] = [[] for _ in rows]
        for step_tokens, step_logprobs in generate_tokens(self.model, encoded, max_new_tokens, generators, sampling,
                                                          use_cache):
            for i, (token, logprob) in enumerate(zip(step_tokens.tolist(), step_logprobs.tolist())):
                if matchers[i].stopped:
                    continue
                texts[i] += matchers[i].push(streams[i].push(token))
                if not matchers[i].stopped:
                    tokens[i].append(token)
                    logprobs[i].append(logprob)
            if all(m.stopped for m in matchers):
                break
        return [Completion(texts[i] + matchers[i].flush(), tokens[i], logprobs[i],
                           "stop" if matchers[i].stopped else "length", seed + j)
                for i, (_, j) in enumerate(rows)]

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


class ImageModel(_Adapters):
    """A trained diffusion model: images of a class (or of anything), by any sampler, from a seed."""

    def __init__(self, path: Path, config: RunConfig, model: torch.nn.Module, labels: list[str]):
        self.path, self.config, self.model, self.labels = path, config, model, labels
        self.schedule = config.objective.noise_schedule()
        self.last_seed: int | None = None

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    def label_index(self, label: str | int) -> int:
        """The class index of a label name such as "7" or "A" (or an index given as an int)."""
        if not self.num_classes:
            raise GenloomError(f"{self.path} is an unconditional model: it takes no label")
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < self.num_classes:
            return label
        if str(label) in self.labels:
            return self.labels.index(str(label))
        shown = ", ".join(self.labels[:40]) + (" ..." if len(self.labels) > 40 else "")
        raise GenloomError(f"label {label!r} is not one the model was trained on; valid labels: {shown}")

    def generate(self, labels: str | int | Sequence[str | int] | None = None, num_samples: int = 1,
                 steps: int | None = None, sampler: str | None = None, guidance: float | None = None,
                 seed: int | None = None, spacing: str = "leading", eta: float = 0.0,
                 progress: bool = False, callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """`num_samples` images (N, C, H, W) in [-1, 1] for each label (label-major order), or unconditional.

        Sample i uses seed + i. Steps, sampler and guidance default to the recipe's objective settings.
        `callback(i, n)` runs after each sampler step (the server reports progress with it).
        """
        from .generate.image import generate_images

        objective = self.config.objective
        steps = objective.sample_steps if steps is None else steps
        sampler = objective.sampler if sampler is None else sampler
        guidance = objective.guidance if guidance is None else guidance
        seed = self._seed(seed)
        indices, total = self._requests(labels, num_samples)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=max(steps, 0) * -(-total // 256), unit="step", desc="sampling", leave=False)

        user_callback = callback

        def callback(i: int, n: int) -> None:
            if bar is not None:
                bar.update(1)
            if user_callback is not None:
                user_callback(i, n)
        try:
            return generate_images(self.model, self.schedule, indices, total, seed, sampler, steps, guidance, spacing,
                                   eta, callback=callback)
        finally:
            if bar is not None:
                bar.close()

    def _seed(self, seed: int | None) -> int:
        self.last_seed = secrets.randbelow(2**31) if seed is None else seed
        return self.last_seed

    def _requests(self, labels, num_samples: int) -> tuple[list[int] | None, int]:
        """(class index of every sample in label-major order, or None; how many samples)."""
        if num_samples < 1:
            raise GenloomError(f"num_samples={num_samples}: must be at least 1")
        if labels is None or (self.num_classes == 0 and labels == []):
            return None, num_samples
        names = [labels] if isinstance(labels, (str, int)) else list(labels)
        indices = [self.label_index(name) for name in names for _ in range(num_samples)]
        return indices, len(indices)

    def _images_for_eval(self, labels: list[int] | None, num_samples: int, seed: int, steps: int | None,
                         sampler: str | None, guidance: float | None, progress: bool) -> torch.Tensor:
        from .generate.image import generate_images

        objective = self.config.objective
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=(steps or objective.sample_steps) * -(-num_samples // 256), unit="step",
                       desc=f"sampling {num_samples} images", leave=False)
        try:
            return generate_images(self.model, self.schedule, labels, num_samples, seed,
                                   sampler or objective.sampler, steps or objective.sample_steps,
                                   objective.guidance if guidance is None else guidance,
                                   callback=(lambda i, n: bar.update(1)) if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()

    def evaluate(self, num_samples: int = 1000, steps: int | None = None, sampler: str | None = None,
                 guidance: float | None = None, seed: int = 0, data_path: str | None = None,
                 inception: str | Path | None = None, progress: bool = True) -> "ImageEvalResult":
        """Compare `num_samples` generated images (classes in turn) with the training images.

        Reports FID-<data> and KID on the features of a small classifier genloom trains once on the
        reference images (cached), k-NN precision/recall, how often that classifier recognises the
        requested class, and the standard FID when `inception` names FID Inception weights (.safetensors).
        """
        import dataclasses

        from .data.images import ImageData
        from .eval.image import data_feature_classifier, data_name, evaluate_images, training_images
        from .eval.inception import load_inception

        if num_samples < 4:
            raise GenloomError(f"num_samples={num_samples}: image metrics need at least 4 samples (1000 is usual)")
        inception_network = load_inception(inception) if inception else None      # fail early on a bad path
        data_config = self.config.data if data_path is None else dataclasses.replace(self.config.data, path=data_path)
        data = ImageData(data_config)
        data.prepare()
        settings = data.model_settings()
        mine = self.model.config
        if (settings["image_size"], settings["channels"]) != (mine.image_size, mine.channels):
            raise GenloomError(f"{data_config.path} has {settings['channels']}x{settings['image_size']}x"
                               f"{settings['image_size']} images but the model makes {mine.channels}x"
                               f"{mine.image_size}x{mine.image_size}; set --data to matching images")
        real_images, real_labels = training_images(data)
        name = data_name(data_config)
        classes = settings["num_classes"]
        classifier = data_feature_classifier(data, (real_images, real_labels), progress=progress)
        labels = [i % self.num_classes for i in range(num_samples)] if self.num_classes else None
        fake = self._images_for_eval(labels, num_samples, seed, steps, sampler, guidance, progress)
        fake_labels = torch.tensor(labels) if labels is not None and classes == self.num_classes else None
        return evaluate_images(fake, fake_labels, real_images, real_labels if classes else None, classifier,
                               max(classes, 1), inception_network, data_name=name)


def _picture(source, what: str) -> "Image.Image":
    """A PIL image from a path, a PIL image, an (H, W[, C]) uint8 array or a (C, H, W) tensor in [-1, 1]."""
    import numpy as np
    from PIL import Image

    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise GenloomError(f"{what}: {path} does not exist (expected an image file such as a PNG)")
        try:
            with Image.open(path) as image:
                return image.copy()
        except (OSError, SyntaxError, ValueError) as error:
            raise GenloomError(f"{what}: cannot read {path} as an image ({error})") from None
    if isinstance(source, torch.Tensor):
        from .data.image_io import to_pil_image

        return to_pil_image(source.detach().cpu().float())
    if isinstance(source, np.ndarray):
        return Image.fromarray(source)
    raise GenloomError(f"{what}: expected a path, a PIL image, an array or a tensor, got {type(source).__name__}")


class TextToImageModel(ImageModel):
    """A trained text-to-image diffusion model: images from a written prompt, with classifier-free guidance,
    negative prompts, image-to-image and inpainting."""

    def __init__(self, path: Path, config: RunConfig, model: torch.nn.Module, tokenizer, base_words=None):
        super().__init__(path, config, model, [])
        self.tokenizer = tokenizer
        self._base_words = set(base_words if base_words is not None else getattr(tokenizer, "vocab", []))

    def encode(self, prompt: str, what: str = "prompt") -> torch.Tensor:
        """The (L,) token ids of a prompt; an empty prompt is an error, a long one is cut with a warning."""
        if not isinstance(prompt, str):
            raise GenloomError(f"{what}: expected text, got {type(prompt).__name__}")
        if not prompt.strip():
            raise GenloomError(f"the {what} is empty: describe the image, e.g. \"a red letter A on the left on a "
                               "white background\" (for unconditional samples use guidance 0)")
        return self.tokenizer.encode(prompt)

    def _image_tensor(self, source, what: str, mode: str) -> tuple[torch.Tensor, tuple[int, int]]:
        """(C, H, W) in [-1, 1] (or (1, H, W) in {0, 1} for a mask) at the model's size; and the original size."""
        import numpy as np

        from .data.images import _conform

        picture = _picture(source, what)
        size, channels = self.model.config.image_size, self.model.config.channels
        pixels = _conform(picture, size, 1 if mode == "mask" else channels)           # (S, S, C) uint8
        tensor = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float()
        if mode == "mask":
            return (tensor >= 128).float(), picture.size
        return tensor / 127.5 - 1, picture.size

    def generate(self, prompts: str | Sequence[str], num_samples: int = 1, steps: int | None = None,
                 sampler: str | None = None, guidance: float | None = None, seed: int | None = None,
                 spacing: str = "leading", eta: float = 0.0, progress: bool = False,
                 negative_prompt: str | None = None, init_image=None, strength: float | None = None,
                 mask=None, callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """`num_samples` images (N, C, H, W) in [-1, 1] for each prompt (prompt-major order); sample i uses
        seed + i.

        `negative_prompt`: what guidance steers away from (instead of "no caption"). `init_image` (a path,
        PIL image or tensor; resized and centre-cropped to the model's size): start from it, noised to
        `strength` (default 0.6: keep its layout, redraw the details; 0 returns it, 1 ignores it).
        `mask` (same size as the init image; white = redraw, black = keep): inpainting, strength default 1.
        Steps, sampler and guidance default to the recipe's settings.
        """
        from .generate.image import generate_images

        if num_samples < 1:
            raise GenloomError(f"num_samples={num_samples}: must be at least 1")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise GenloomError("no prompt given: a text-to-image model draws what a prompt describes")
        ids = torch.stack([self.encode(p) for p in prompts for _ in range(num_samples)])      # (N, L)
        total = len(ids)
        negative = None
        if negative_prompt is not None:
            negative = self.encode(negative_prompt, "negative prompt").expand(total, -1)
        init = mask_tensor = None
        if mask is not None and init_image is None:
            raise GenloomError("a mask needs an init image: inpainting redraws the masked part of that image")
        if init_image is not None:
            image, image_size = self._image_tensor(init_image, "init image", "image")
            init = image.expand(total, -1, -1, -1)
            if mask is not None:
                mask_tensor, mask_size = self._image_tensor(mask, "mask", "mask")
                if mask_size != image_size:
                    raise GenloomError(f"the mask is {mask_size[0]}x{mask_size[1]} but the init image is "
                                       f"{image_size[0]}x{image_size[1]}; they must be the same size (white = "
                                       "redraw, black = keep)")
                mask_tensor = mask_tensor.expand(total, -1, -1, -1)
        if strength is None:
            strength = 1.0 if init is None or mask is not None else 0.6
        if not 0 <= strength <= 1:
            raise GenloomError(f"strength={strength}: must be between 0 (keep the init image) and 1 (redraw it)")
        if init is None and strength != 1.0:
            raise GenloomError("strength applies to image-to-image only; give an init image too")
        objective = self.config.objective
        steps = objective.sample_steps if steps is None else steps
        sampler = objective.sampler if sampler is None else sampler
        guidance = objective.guidance if guidance is None else guidance
        if guidance < 0:
            raise GenloomError(f"guidance={guidance}: must be 0 (unconditional) or more (1 = no guidance)")
        seed = self._seed(seed)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps * -(-total // 256), unit="step", desc="sampling", leave=False)

        def report(i: int, n: int) -> None:
            if bar is not None:
                bar.update(1)
            if callback is not None:
                callback(i, n)
        try:
            return generate_images(self.model, self.schedule, ids, total, seed, sampler, steps, guidance, spacing,
                                   eta, callback=report, negative=negative, init=init, strength=strength,
                                   mask=mask_tensor)
        finally:
            if bar is not None:
                bar.close()

    def evaluate(self, num_samples: int = 200, steps: int | None = None, sampler: str | None = None,
                 guidance: float | Sequence[float] | None = None, seed: int = 0, data_path: str | None = None,
                 inception: str | Path | None = None, progress: bool = True,
                 sets: Sequence[str] | None = None) -> "SceneEvalResult":
        """GenEval-style scores on builtin:scenes prompts: `num_samples` prompts per set (single objects,
        two objects, held-out combinations, paraphrases) at each guidance scale; see genloom.eval.scenes."""
        from .eval.scenes import PROMPT_SETS, evaluate_scenes

        guidances = [self.config.objective.guidance] if guidance is None else \
            [guidance] if isinstance(guidance, (int, float)) else list(guidance)
        source = self.config.data.path
        if source == "builtin:digits" and data_path is None:
            return self._evaluate_digits(num_samples, steps, sampler, guidances[0], seed, inception, progress)
        if source not in ("builtin:scenes", "builtin:stars") or data_path is not None or inception is not None:
            raise GenloomError(f"{self.path}: text-to-image scoring works on models of builtin:scenes (each "
                               "prompted attribute is checked by a classifier of rendered scenes) and "
                               f"builtin:digits; this model was trained on {source}")
        if (self.model.config.channels, self.model.config.image_size) != (3, 32):
            raise GenloomError(f"{self.path}: scene scoring needs 3x32x32 images")

        def generate(prompts: list[str], scale: float) -> torch.Tensor:
            return self.generate(prompts, 1, steps, sampler, scale, seed, progress=progress)

        return evaluate_scenes(generate, num_samples, guidances, tuple(sets or PROMPT_SETS), progress=progress)

    def evaluate_concept(self, word: str | None = None, num_samples: int = 100, guidance: float | None = None,
                         seed: int = 0, steps: int | None = None, progress: bool = True) -> "ConceptEvalResult":
        """How often images from prompts naming the new word (an adapter's finetune.new_words, trained on
        builtin:stars) show the concept, by a star detector trained on rendered pictures."""
        from .eval.concept import evaluate_concept

        words = [w for w in self.tokenizer.vocab[3:] if w not in self._base_words] if word is None else [word]
        if not words:
            raise GenloomError(f"{self.path}: no new word is loaded; load the adapter that taught one "
                               "(--adapter DIR) or name the word")
        scale = self.config.objective.guidance if guidance is None else guidance
        return evaluate_concept(lambda prompts, g: self.generate(prompts, 1, steps, None, g, seed, progress=progress),
                                words[0], num_samples, scale, progress=progress)

    def _evaluate_digits(self, num_samples: int, steps: int | None, sampler: str | None, guidance: float, seed: int,
                         inception: str | Path | None, progress: bool) -> "ImageEvalResult":
        """Captioned digits: prompts such as "a handwritten seven" for each digit in turn, scored like the
        class-conditional digits models (FID-digits, recall, how often the asked-for digit is recognised)."""
        import numpy as np

        from .data.images import ImageData, ImageDataConfig
        from .data.scenes import digit_caption
        from .eval.image import data_feature_classifier, evaluate_images, training_images
        from .eval.inception import load_inception

        inception_network = load_inception(inception) if inception else None
        data = ImageData(ImageDataConfig(path="builtin:digits", image_size=self.config.data.image_size,
                                         channels=self.config.data.channels))
        data.prepare()
        real_images, real_labels = training_images(data)
        classifier = data_feature_classifier(data, (real_images, real_labels), progress=progress)
        rng = np.random.default_rng(seed)
        labels = [i % 10 for i in range(num_samples)]
        fake = self.generate([digit_caption(d, rng) for d in labels], 1, steps, sampler, guidance, seed,
                             progress=progress)
        if fake.shape[1:] != real_images.shape[1:]:
            raise GenloomError(f"{self.path} makes {tuple(fake.shape[1:])} images, the digits are "
                               f"{tuple(real_images.shape[1:])}")
        return evaluate_images(fake, torch.tensor(labels), real_images, real_labels, classifier, 10,
                               inception_network, data_name="digits")


class GANModel(ImageModel):
    """A trained GAN: one generator pass per image, from a seed; latent walks between seeds."""

    def __init__(self, path: Path, config: RunConfig, model: torch.nn.Module, labels: list[str]):
        self.path, self.config, self.model, self.labels = path, config, model, labels
        self.last_seed = None

    def generate(self, labels: str | int | Sequence[str | int] | None = None, num_samples: int = 1,
                 steps: int | None = None, sampler: str | None = None, guidance: float | None = None,
                 seed: int | None = None, spacing: str | None = None, eta: float | None = None,
                 progress: bool = False, truncation: float = 1.0,
                 callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """`num_samples` images (N, C, H, W) in [-1, 1] for each label (label-major order), or unconditional.
        Sample i comes from the latent of seed + i; `truncation` < 1 shrinks the latents (less varied,
        more typical). The diffusion options (steps, sampler, guidance, spacing, eta) do not apply."""
        from .objectives.gan import generate_gan_images

        self._reject_diffusion_options(steps, sampler, guidance, spacing, eta)
        if not 0 < truncation <= 2:
            raise GenloomError(f"truncation={truncation}: must be in (0, 2] (1 = the training distribution)")
        seed = self._seed(seed)
        indices, total = self._requests(labels, num_samples)
        images = generate_gan_images(self.model, indices, total, seed, truncation=truncation)
        if callback is not None:
            callback(1, 1)                                               # one pass: done
        return images

    def _reject_diffusion_options(self, steps=None, sampler=None, guidance=None, spacing=None, eta=None) -> None:
        given = [name for name, value in (("steps", steps), ("sampler", sampler), ("guidance", guidance),
                                          ("spacing", spacing), ("eta", eta)) if value is not None]
        if given:
            raise GenloomError(f"{self.path} is a GAN: it makes each image in one pass, so "
                               f"{', '.join(given)} do(es) not apply (those are diffusion-sampler options)")

    def _images_for_eval(self, labels, num_samples, seed, steps, sampler, guidance, progress) -> torch.Tensor:
        from .objectives.gan import generate_gan_images

        self._reject_diffusion_options(steps, sampler, guidance)
        return generate_gan_images(self.model, labels, num_samples, seed)

    @torch.no_grad()
    def interpolate(self, label: str | int | None = None, seed: int = 0, to_seed: int = 1,
                    frames: int = 16) -> torch.Tensor:
        """Images (frames, C, H, W) along the great circle from the latent of `seed` to that of `to_seed`
        (spherical interpolation keeps every intermediate latent as likely as the ends)."""
        if frames < 2:
            raise GenloomError(f"frames={frames}: an interpolation needs at least 2 frames")
        gan = self.model
        device = next(gan.parameters()).device
        a, b = gan.latents(1, seed, device)[0], gan.latents(1, to_seed, device)[0]
        omega = torch.arccos((a / a.norm()).dot(b / b.norm()).clamp(-1 + 1e-7, 1 - 1e-7))
        ts = torch.linspace(0, 1, frames, device=device)[:, None]
        z = (torch.sin((1 - ts) * omega) * a + torch.sin(ts * omega) * b) / torch.sin(omega)   # (frames, D)
        labels = None
        if self.num_classes:
            if label is None:
                raise GenloomError(f"{self.path} is class-conditional: give the label to interpolate within")
            labels = torch.full((frames,), self.label_index(label), dtype=torch.long, device=device)
        elif label is not None:
            self.label_index(label)                                     # raises: unconditional
        return gan.generator(z, labels).float().clamp(-1, 1).cpu()


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
    """Open a checkpoint directory written by `genloom train`: a TextModel, an ImageModel (diffusion),
    a TextToImageModel (diffusion from captions) or a GANModel.

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
        meta, _ = read_adapter(path)
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
    metas = {name: read_adapter(folder)[0] for name, folder in adapter_dirs.items()}
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
    handle = TextModel(path, run_config or config, model, tokenizer, template)
    return _adapted(handle, list(adapter_dirs))


def _adapted(handle, names: list[str]):
    """The handle knowing its adapters: one is applied by default, several leave the base model in use."""
    handle.adapters = names
    handle.adapter = names[0] if len(names) == 1 else None
    return handle
