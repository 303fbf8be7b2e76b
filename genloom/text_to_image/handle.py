"""The handle of a text-to-image diffusion model: images from a written prompt (classifier-free guidance,
negative prompts, image-to-image, inpainting), GenEval-style scores, and a personalised concept's score."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..core.config import RunConfig
from ..core.errors import GenloomError
from ..handle import EvalRequest
from ..images.eval import ImageEvalResult
from ..images.handle import (ImageModel, attach_checkpoint_autoencoder, image_watermark, picture, progress_bar,
                             watermark_images)
from .bias import ColourBiasResult
from .concept import ConceptEvalResult
from .data import load_caption_tokenizer

__all__ = ["TextToImageModel", "ConceptReport", "open_checkpoint", "score"]
from .eval import SceneEvalResult


class TextToImageModel(ImageModel):
    """A trained text-to-image diffusion model: images from a written prompt, with classifier-free guidance,
    negative prompts, image-to-image and inpainting."""

    serves = "text-to-image"   # `genloom serve`: image generations from a written prompt
    described = "a text-to-image model"
    prompted = True

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

        from ..media.image import conform_image

        image = picture(source, what)
        size, channels = self.image_size, self.image_channels                            # pixels (latent models too)
        pixels = conform_image(image, size, 1 if mode == "mask" else channels)          # (S, S, C) uint8
        tensor = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float()
        if mode == "mask":
            return (tensor >= 128).float(), image.size
        return tensor / 127.5 - 1, image.size

    def generate(self, prompts: str | Sequence[str], *, num_samples: int = 1, steps: int | None = None,
                 sampler: str | None = None, guidance: float | None = None, seed: int | None = None,
                 spacing: str = "leading", eta: float = 0.0, progress: bool = False,
                 negative_prompt: str | None = None, init_image=None, strength: float | None = None,
                 mask=None, callback: Callable[[int, int], None] | None = None, watermark=None) -> torch.Tensor:
        """`num_samples` images (N, C, H, W) in [-1, 1] for each prompt (prompt-major order); sample i uses
        seed + i. `watermark`: a key: the images come back marked (`genloom.images.handle.watermark_images`).

        `negative_prompt`: what guidance steers away from (instead of "no caption"). `init_image` (a path,
        PIL image or tensor; resized and centre-cropped to the model's size): start from it, noised to
        `strength` (default 0.6: keep its layout, redraw the details; 0 returns it, 1 ignores it).
        `mask` (same size as the init image; white = redraw, black = keep): inpainting, strength default 1.
        Steps, sampler and guidance default to the recipe's settings.
        """
        from ..diffusion.sampling import generate_images

        mark = image_watermark(watermark)
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
        steps, sampler, guidance = self.sampling(steps, sampler, guidance)
        if guidance < 0:
            raise GenloomError(f"guidance={guidance}: must be 0 (unconditional) or more (1 = no guidance)")
        seed = self.draw_seed(seed)
        report = progress_bar(steps, total, "sampling", progress, callback)
        try:
            images = generate_images(self.model, self.schedule, ids, total, seed, sampler, steps, guidance, spacing,
                                     eta, callback=report, negative=negative, init=init, strength=strength,
                                     mask=mask_tensor)
        finally:
            report.close()
        return images if mark is None else watermark_images(images, mark)

    def evaluate(self, *, num_samples: int = 200, steps: int | None = None, sampler: str | None = None,
                 guidance: float | Sequence[float] | None = None, seed: int = 0, data_path: str | None = None,
                 inception: str | Path | None = None, progress: bool = True,
                 sets: Sequence[str] | None = None) -> "SceneEvalResult":
        """GenEval-style scores on builtin:scenes prompts: `num_samples` prompts per set (single objects,
        two objects, held-out combinations, paraphrases) at each guidance scale; see genloom.eval.scenes."""
        from .eval import PROMPT_SETS, evaluate_scenes

        guidances = [self.config.objective.guidance] if guidance is None else \
            [guidance] if isinstance(guidance, (int, float)) else list(guidance)
        source = self.config.data.path
        if source == "builtin:digits" and data_path is None:
            return self._evaluate_digits(num_samples, steps, sampler, guidances[0], seed, inception, progress)
        if source not in ("builtin:scenes", "builtin:stars") or data_path is not None or inception is not None:
            raise GenloomError(f"{self.path}: text-to-image scoring works on models of builtin:scenes (each "
                               "prompted attribute is checked by a classifier of rendered scenes) and "
                               f"builtin:digits; this model was trained on {source}")
        if (self.image_channels, self.image_size) != (3, 32):
            raise GenloomError(f"{self.path}: scene scoring needs 3x32x32 images")

        def generate(prompts: list[str], scale: float) -> torch.Tensor:
            return self.generate(prompts, num_samples=1, steps=steps, sampler=sampler, guidance=scale, seed=seed,
                                 progress=progress)

        return evaluate_scenes(generate, num_samples, guidances, tuple(sets or PROMPT_SETS), progress=progress)

    def evaluate_concept(self, word: str | None = None, *, num_samples: int = 100, guidance: float | None = None,
                         seed: int = 0, steps: int | None = None, progress: bool = True) -> "ConceptEvalResult":
        """How often images from prompts naming the new word (an adapter's finetune.new_words, trained on
        builtin:stars) show the concept, by a star detector trained on rendered pictures."""
        from .concept import evaluate_concept

        words = [w for w in self.tokenizer.vocab[3:] if w not in self._base_words] if word is None else [word]
        if not words:
            raise GenloomError(f"{self.path}: no new word is loaded; load the adapter that taught one "
                               "(--adapter DIR) or name the word")
        scale = self.config.objective.guidance if guidance is None else guidance
        return evaluate_concept(lambda prompts, g: self.generate(prompts, steps=steps, guidance=g, seed=seed,
                                                                 progress=progress),
                                words[0], num_samples, scale, progress=progress)

    def evaluate_bias(self, *, num_samples: int = 200, guidance: float | Sequence[float] | None = None,
                      steps: int | None = None, sampler: str | None = None, seed: int = 0,
                      progress: bool = True) -> "ColourBiasResult":
        """The colours of images for prompts that name an object but no colour, beside the training data's colours
        of that object (a planted bias: data.bias_object; see bias.py). `genloom eval --task bias`."""
        from .bias import evaluate_colour_bias

        data = self.config.data
        if data.path != "builtin:scenes":
            raise GenloomError(f"--task bias: {self.path} was trained on {data.path}; the text-to-image bias task "
                               "needs a builtin:scenes model (train e.g. the recipe scenes-colour-bias)")
        if (self.image_channels, self.image_size) != (3, 32):
            raise GenloomError(f"--task bias: {self.path} makes {self.image_channels}x{self.image_size}x"
                               f"{self.image_size} images; the colour measure reads 3x32x32 scenes")
        guidances = [self.config.objective.guidance] if guidance is None else \
            [guidance] if isinstance(guidance, (int, float)) else list(guidance)

        def generate(prompts: list[str], scale: float) -> torch.Tensor:
            return self.generate(prompts, num_samples=1, steps=steps, sampler=sampler, guidance=scale, seed=seed,
                                 progress=progress)

        return evaluate_colour_bias(generate, data, num_samples=num_samples, guidances=guidances, seed=seed,
                                    progress=progress)

    def _evaluate_digits(self, num_samples: int, steps: int | None, sampler: str | None, guidance: float, seed: int,
                         inception: str | Path | None, progress: bool) -> "ImageEvalResult":
        """Captioned digits: prompts such as "a handwritten seven" for each digit in turn, scored like the
        class-conditional digits models (FID-digits, recall, how often the asked-for digit is recognised)."""
        import numpy as np

        from ..images.data import ImageData, ImageDataConfig
        from ..images.eval import (
            data_feature_classifier,
            evaluate_images,
            training_images,
        )
        from ..images.inception import load_inception
        from .scenes import digit_caption

        inception_network = load_inception(inception) if inception else None
        data = ImageData(ImageDataConfig(path="builtin:digits", image_size=self.config.data.image_size,
                                         channels=self.config.data.channels))
        data.prepare()
        real_images, real_labels = training_images(data)
        classifier = data_feature_classifier(data, (real_images, real_labels), progress=progress)
        rng = np.random.default_rng(seed)
        labels = [i % 10 for i in range(num_samples)]
        fake = self.generate([digit_caption(d, rng) for d in labels], steps=steps, sampler=sampler,
                             guidance=guidance, seed=seed, progress=progress)
        if fake.shape[1:] != real_images.shape[1:]:
            raise GenloomError(f"{self.path} makes {tuple(fake.shape[1:])} images, the digits are "
                               f"{tuple(real_images.shape[1:])}")
        return evaluate_images(fake, torch.tensor(labels), real_images, real_labels, classifier, 10,
                               inception_network, data_name="digits")


@dataclass
class ConceptReport:
    """`genloom eval --task concept`: the new word's score, and single-object scores of prompts without it, with
    and without the adapter (does the adapter keep what the base model could do?)."""

    concept: ConceptEvalResult
    single: dict[str, SceneEvalResult]           # "with the adapter" / "base model" -> scores

    def summary(self) -> str:
        return "\n".join([self.concept.summary()] + [f"prompts without the new word, {name}:\n{result.summary()}"
                                                      for name, result in self.single.items()])

    def to_json(self) -> dict:
        return {"concept": self.concept.to_json(), **{name: r.to_json() for name, r in self.single.items()}}


def open_checkpoint(checkpoint) -> TextToImageModel:
    """The handle of an opened text-to-image checkpoint: its caption tokenizer, with the new words of any adapter."""
    tokenizer = load_caption_tokenizer(checkpoint.path)
    attach_checkpoint_autoencoder(checkpoint.model, checkpoint.path)
    base_words = list(tokenizer.vocab)
    new_words = [w for meta in checkpoint.adapter_metas.values() for w in meta.get("new_words", [])]
    if new_words:
        tokenizer = tokenizer.with_words(new_words)
    return TextToImageModel(checkpoint.path, checkpoint.config, checkpoint.model, tokenizer, base_words)


def score(handle: TextToImageModel, request: EvalRequest):
    """`genloom eval` of a text-to-image model: GenEval-style scores per prompt set (builtin:scenes), FID-digits
    and the like for captioned digits, or `--task concept` for a personalisation adapter."""
    options = dict(steps=request.steps, seed=request.get("seed", 0), progress=request.progress)
    if request.task == "concept":
        request.check({"task", "num_samples", "guidance", "seed", "steps"}, "--task concept")
        count = request.get("num_samples", 100)
        concept = handle.evaluate_concept(num_samples=count, guidance=request.guidance, **options)
        single = {}
        for name in [handle.adapter, None] if handle.adapter else [None]:
            handle.use_adapter(name)
            single["with the adapter" if name else "base model"] = handle.evaluate(
                num_samples=count, guidance=request.guidance, sets=["single"], **options)
        return ConceptReport(concept, single)
    if request.task == "bias":
        request.check({"task", "num_samples", "guidance", "guidances", "seed", "steps", "sampler"}, "--task bias")
        scales = list(request.guidances) if request.guidances else [request.guidance] if request.guidance is not None \
            else None
        return handle.evaluate_bias(num_samples=request.get("num_samples", 200), guidance=scales,
                                    sampler=request.sampler, **options)
    if request.task is not None:
        raise GenloomError(f"--task {request.task!r}: text-to-image models have the tasks 'concept' and 'bias'")
    request.check({"num_samples", "steps", "sampler", "guidance", "guidances", "seed", "data", "inception"},
                  "a text-to-image model")
    if request.guidance is not None and request.guidances is not None:
        raise GenloomError("give --guidance (one scale) or --guidances (several), not both")
    return handle.evaluate(num_samples=request.get("num_samples", 200), sampler=request.sampler,
                           guidance=list(request.guidances) if request.guidances else request.guidance,
                           data_path=request.data, inception=request.inception, **options)
