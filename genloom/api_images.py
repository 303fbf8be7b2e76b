"""The Python API's handles for image models: diffusion (ImageModel), text-to-image (TextToImageModel) and
GANs (GANModel). `genloom.load` returns them; `genloom.api` re-exports them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from .config import RunConfig
from .errors import GenloomError
from .generate.seeding import Seeded
from .train.finetune import AdapterChoice

if TYPE_CHECKING:
    from PIL import Image

    from .eval.concept import ConceptEvalResult
    from .eval.image import ImageEvalResult
    from .eval.scenes import SceneEvalResult

__all__ = ["ImageModel", "TextToImageModel", "GANModel"]


class ImageModel(AdapterChoice, Seeded):
    """A trained diffusion model: images of a class (or of anything), by any sampler, from a seed."""

    def __init__(self, path: Path, config: RunConfig, model: torch.nn.Module, labels: list[str]):
        self.path, self.config, self.model, self.labels = path, config, model, labels
        self.schedule = config.objective.noise_schedule()

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
