"""The handles of image models: diffusion (ImageModel, in pixel or latent space) and GANs (GANModel), both
drawing images of a class (or unconditional ones) from a seed, and autoencoders (AutoencoderModel: encode,
decode, reconstruct); `open_checkpoint` makes them and `score` is `genloom eval` for them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ..core.config import RunConfig
from ..core.errors import GenloomError
from ..handle import EvalRequest, Handle, score_with
from .data import load_labels

if TYPE_CHECKING:
    from PIL import Image

    from .eval import AutoencoderEvalResult, ImageEvalResult

__all__ = ["ImageHandle", "ImageModel", "GANModel", "AutoencoderModel", "picture", "open_checkpoint", "score",
           "progress_bar", "attach_checkpoint_autoencoder", "image_watermark", "watermark_images"]


def progress_bar(steps: int, total: int, desc: str, progress: bool, callback=None):
    """A sampler-step callback that moves a tqdm bar (when `progress`) and calls `callback(i, n)`; close it with
    `.close()`. Sampling runs in chunks of 256 images, each taking `steps` steps."""
    from tqdm.auto import tqdm

    bar = tqdm(total=max(steps, 0) * -(-total // 256), unit="step", desc=desc, leave=False, disable=not progress)

    def report(i: int, n: int) -> None:
        bar.update(1)
        if callback is not None:
            callback(i, n)

    report.close = bar.close
    return report


def image_watermark(watermark, where: str = "watermark"):
    """The ImageWatermark a `watermark` argument asks for (a key, checked before anything is drawn, or an
    ImageWatermark), or None."""
    if watermark is None:
        return None
    from ..watermark.image import ImageWatermark

    return watermark if isinstance(watermark, ImageWatermark) else ImageWatermark(watermark, where=where)


def watermark_images(images: torch.Tensor, watermark, scale: int = 0) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] as genloom saves them, marked: enlarged `scale` times (nearest neighbour;
    0 = to at least 64 pixels, as `genloom generate image` does), on the 8-bit grid, with `watermark` (a key or
    an ImageWatermark) added; back in [-1, 1]. `to_pil_image` (and so `save_image`) of each gives exactly the
    marked picture, which `genloom detect` finds."""
    import numpy as np

    from ..media.image import to_pil_image

    mark = image_watermark(watermark)
    scale = scale or max(1, 64 // images.shape[-1])
    marked = [np.asarray(mark.mark(to_pil_image(image, scale), where=f"image {i}")) for i, image in enumerate(images)]
    pixels = torch.from_numpy(np.stack(marked)).float()                       # (N, H, W) or (N, H, W, 3)
    pixels = pixels[:, None] if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
    return pixels / 127.5 - 1


class ImageHandle(Handle):
    """What the image models share: their class labels, and the comparison with the training images."""

    prompted = False      # True for models that draw from a written prompt instead of a label

    def __init__(self, path: Path, config: RunConfig, model: torch.nn.Module, labels: list[str]):
        super().__init__(path, config, model)
        self.labels = labels

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    @property
    def image_size(self) -> int:
        """The side in pixels of the images the model makes (for a latent model: its latents' side x the
        autoencoder's downsampling)."""
        from ..diffusion.latents import latent_codec

        codec = latent_codec(self.model)
        return self.model.config.image_size * (codec.factor if codec is not None else 1)

    @property
    def image_channels(self) -> int:
        from ..diffusion.latents import latent_codec

        codec = latent_codec(self.model)
        return codec.channels if codec is not None else self.model.config.channels

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

    def _requests(self, labels, num_samples: int) -> tuple[list[int] | None, int]:
        """(class index of every sample in label-major order, or None; how many samples)."""
        if num_samples < 1:
            raise GenloomError(f"num_samples={num_samples}: must be at least 1")
        if labels is None or (self.num_classes == 0 and labels == []):
            return None, num_samples
        names = [labels] if isinstance(labels, (str, int)) else list(labels)
        indices = [self.label_index(name) for name in names for _ in range(num_samples)]
        return indices, len(indices)

    def _images_for_eval(self, labels: list[int] | None, num_samples: int, seed: int, progress: bool,
                         **sampling) -> torch.Tensor:
        raise NotImplementedError

    def _compare(self, num_samples: int, seed: int, data_path: str | None, inception: str | Path | None,
                 progress: bool, **sampling) -> "ImageEvalResult":
        """Compare `num_samples` generated images (classes in turn) with the training images.

        Reports FID-<data> and KID on the features of a small classifier genloom trains once on the
        reference images (cached), k-NN precision/recall, how often that classifier recognises the
        requested class, and the standard FID when `inception` names FID Inception weights (.safetensors).
        """
        import dataclasses

        from .data import ImageData
        from .eval import (
            data_feature_classifier,
            data_name,
            evaluate_images,
            training_images,
        )
        from .inception import load_inception

        if num_samples < 4:
            raise GenloomError(f"num_samples={num_samples}: image metrics need at least 4 samples (1000 is usual)")
        inception_network = load_inception(inception) if inception else None      # fail early on a bad path
        data_config = self.config.data if data_path is None else dataclasses.replace(self.config.data, path=data_path)
        data = ImageData(data_config)
        data.prepare()
        settings = data.model_settings()
        size, channels = self.image_size, self.image_channels
        if (settings["image_size"], settings["channels"]) != (size, channels):
            raise GenloomError(f"{data_config.path} has {settings['channels']}x{settings['image_size']}x"
                               f"{settings['image_size']} images but the model makes {channels}x"
                               f"{size}x{size}; set --data to matching images")
        real_images, real_labels = training_images(data)
        name = data_name(data_config)
        classes = settings["num_classes"]
        classifier = data_feature_classifier(data, (real_images, real_labels), progress=progress)
        labels = [i % self.num_classes for i in range(num_samples)] if self.num_classes else None
        fake = self._images_for_eval(labels, num_samples, seed, progress, **sampling)
        fake_labels = torch.tensor(labels) if labels is not None and classes == self.num_classes else None
        return evaluate_images(fake, fake_labels, real_images, real_labels if classes else None, classifier,
                               max(classes, 1), inception_network, data_name=name)


class ImageModel(ImageHandle):
    """A trained diffusion model: images of a class (or of anything), by any sampler, from a seed."""

    serves = "image"       # `genloom serve`: image generations from a class label, by a diffusion sampler
    described = "a diffusion image model"
    eval_options = ("num_samples", "steps", "sampler", "guidance", "seed", "data", "inception")

    def __init__(self, path: Path, config: RunConfig, model: torch.nn.Module, labels: list[str]):
        super().__init__(path, config, model, labels)
        self.schedule = config.objective.noise_schedule()

    @property
    def samplers(self) -> tuple[str, ...]:
        """The samplers that work on this model: the flow ODE's (euler, heun) for a flow-matching model."""
        from ..diffusion.samplers import FLOW_SAMPLERS, SAMPLERS

        return FLOW_SAMPLERS if self.config.objective.kind == "flow" else SAMPLERS

    def sampling(self, steps: int | None, sampler: str | None, guidance: float | None) -> tuple[int, str, float]:
        """(steps, sampler, guidance), each the recipe's where it is None."""
        objective = self.config.objective
        return (objective.sample_steps if steps is None else steps, objective.sampler if sampler is None else sampler,
                objective.guidance if guidance is None else guidance)

    def generate(self, labels: str | int | Sequence[str | int] | None = None, *, num_samples: int = 1,
                 steps: int | None = None, sampler: str | None = None, guidance: float | None = None,
                 seed: int | None = None, spacing: str = "leading", eta: float = 0.0,
                 progress: bool = False, callback: Callable[[int, int], None] | None = None,
                 watermark=None) -> torch.Tensor:
        """`num_samples` images (N, C, H, W) in [-1, 1] for each label (label-major order), or unconditional.

        Sample i uses seed + i. Steps, sampler and guidance default to the recipe's objective settings.
        `callback(i, n)` runs after each sampler step (the server reports progress with it). `watermark`: a
        key (or a `genloom.watermark.image.ImageWatermark`): the images come back marked, as `watermark_images`
        makes them (enlarged to at least 64 pixels, 8-bit; `genloom detect` finds the mark in their PNG).
        """
        from ..diffusion.sampling import generate_images

        mark = image_watermark(watermark)
        steps, sampler, guidance = self.sampling(steps, sampler, guidance)
        seed = self.draw_seed(seed)
        indices, total = self._requests(labels, num_samples)
        report = progress_bar(steps, total, "sampling", progress, callback)
        try:
            images = generate_images(self.model, self.schedule, indices, total, seed, sampler, steps, guidance,
                                     spacing, eta, callback=report)
        finally:
            report.close()
        return images if mark is None else watermark_images(images, mark)

    def _images_for_eval(self, labels, num_samples, seed, progress, steps=None, sampler=None,
                         guidance=None) -> torch.Tensor:
        from ..diffusion.sampling import generate_images

        steps, sampler, guidance = self.sampling(steps, sampler, guidance)
        report = progress_bar(steps, num_samples, f"sampling {num_samples} images", progress)
        try:
            return generate_images(self.model, self.schedule, labels, num_samples, seed, sampler, steps, guidance,
                                   callback=report)
        finally:
            report.close()

    def evaluate(self, *, num_samples: int = 1000, steps: int | None = None, sampler: str | None = None,
                 guidance: float | None = None, seed: int = 0, data_path: str | None = None,
                 inception: str | Path | None = None, progress: bool = True) -> "ImageEvalResult":
        """Compare `num_samples` generated images (classes in turn) with the training images.

        Reports FID-<data> and KID on the features of a small classifier genloom trains once on the
        reference images (cached), k-NN precision/recall, how often that classifier recognises the
        requested class, and the standard FID when `inception` names FID Inception weights (.safetensors).
        """
        return self._compare(num_samples, seed, data_path, inception, progress, steps=steps, sampler=sampler,
                             guidance=guidance)


def picture(source, what: str) -> "Image.Image":
    """A PIL image from a path, a PIL image, an (H, W[, C]) uint8 array or a (C, H, W) tensor in [-1, 1]."""
    import numpy as np
    from PIL import Image

    from ..media.image import PICTURE_FORMATS

    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise GenloomError(f"{what}: {path} does not exist (expected an image file such as a PNG)")
        try:
            with Image.open(path, formats=PICTURE_FORMATS) as image:
                return image.copy()
        except (OSError, SyntaxError, ValueError) as error:
            raise GenloomError(f"{what}: cannot read {path} as an image ({error})") from None
    if isinstance(source, torch.Tensor):
        from ..media.image import to_pil_image

        return to_pil_image(source.detach().cpu().float())
    if isinstance(source, np.ndarray):
        return Image.fromarray(source)
    raise GenloomError(f"{what}: expected a path, a PIL image, an array or a tensor, got {type(source).__name__}")




class GANModel(ImageHandle):
    """A trained GAN: one generator pass per image, from a seed; latent walks between seeds."""

    serves = "gan"         # `genloom serve`: image generations in one generator pass
    described = "a GAN (it makes each image in one pass)"
    eval_options = ("num_samples", "seed", "data", "inception")

    def generate(self, labels: str | int | Sequence[str | int] | None = None, *, num_samples: int = 1,
                 seed: int | None = None, truncation: float = 1.0, progress: bool = False,
                 callback: Callable[[int, int], None] | None = None, watermark=None) -> torch.Tensor:
        """`num_samples` images (N, C, H, W) in [-1, 1] for each label (label-major order), or unconditional.
        Sample i comes from the latent of seed + i; `truncation` < 1 shrinks the latents (less varied,
        more typical). (`progress` is accepted for symmetry with the diffusion models: there is one pass.)
        `watermark`: a key: the images come back marked, as `watermark_images` makes them."""
        from ..gan.objective import generate_gan_images

        mark = image_watermark(watermark)
        if not 0 < truncation <= 2:
            raise GenloomError(f"truncation={truncation}: must be in (0, 2] (1 = the training distribution)")
        seed = self.draw_seed(seed)
        indices, total = self._requests(labels, num_samples)
        images = generate_gan_images(self.model, indices, total, seed, truncation=truncation)
        if callback is not None:
            callback(1, 1)                                               # one pass: done
        return images if mark is None else watermark_images(images, mark)

    def _images_for_eval(self, labels, num_samples, seed, progress) -> torch.Tensor:
        from ..gan.objective import generate_gan_images

        return generate_gan_images(self.model, labels, num_samples, seed)

    def evaluate(self, *, num_samples: int = 1000, seed: int = 0, data_path: str | None = None,
                 inception: str | Path | None = None, progress: bool = True) -> "ImageEvalResult":
        """Compare `num_samples` generated images (classes in turn) with the training images (as for diffusion
        models: FID-<data>, KID, precision/recall, class accuracy; the standard FID with `inception`)."""
        return self._compare(num_samples, seed, data_path, inception, progress)

    @torch.no_grad()
    def interpolate(self, label: str | int | None = None, *, seed: int = 0, to_seed: int = 1,
                    frames: int = 16, watermark=None, scale: int = 0) -> torch.Tensor:
        """Images (frames, C, H, W) along the great circle from the latent of `seed` to that of `to_seed`
        (spherical interpolation keeps every intermediate latent as likely as the ends). `watermark`: a key:
        the frames come back marked, enlarged `scale` times (0: to at least 64 pixels; `watermark_images`)."""
        mark = image_watermark(watermark)
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
        images = gan.generator(z, labels).float().clamp(-1, 1).cpu()
        return images if mark is None else watermark_images(images, mark, scale)


class AutoencoderModel(ImageHandle):
    """A trained autoencoder: images <-> latents, reconstructions, and their quality (`genloom eval`)."""

    serves = ""            # nothing to serve: it makes no new images on its own
    described = "an autoencoder"
    eval_options = ("num_samples", "seed", "data")

    @property
    def num_classes(self) -> int:
        return 0

    @torch.no_grad()
    def encode(self, images: torch.Tensor, *, sample: bool = False, seed: int = 0) -> torch.Tensor:
        """Images (N, C, H, W) in [-1, 1] -> latents (N, L, H/f, W/f), unscaled: the mean, or with `sample`
        a draw from the latent Gaussian (seeded)."""
        self._check(images)
        mean, logvar = self.model.encode(images.to(self.device).float())
        if not sample:
            return mean.cpu()
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed)).to(mean)
        return (mean + torch.exp(0.5 * logvar) * noise).cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents -> images in [-1, 1]."""
        L = self.model.config.latent_channels
        if latents.dim() != 4 or latents.shape[1] != L:
            raise GenloomError(f"latents must be (N, {L}, h, w), got {tuple(latents.shape)}")
        return self.model.decode(latents.to(self.device).float()).clamp(-1, 1).cpu()

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))

    def _check(self, images: torch.Tensor) -> None:
        cfg = self.model.config
        if images.dim() != 4 or images.shape[1] != cfg.channels or images.shape[-1] % cfg.downsampling \
                or images.shape[-2] % cfg.downsampling:
            raise GenloomError(f"images must be (N, {cfg.channels}, H, W) with H and W multiples of "
                               f"{cfg.downsampling}, got {tuple(images.shape)}")

    def evaluate(self, *, num_samples: int = 1000, seed: int = 0, data_path: str | None = None,
                 progress: bool = True) -> "AutoencoderEvalResult":
        """Reconstruct up to `num_samples` validation images (all of them when fewer): PSNR, and FID-<data>
        (with KID, precision/recall, class accuracy) of the reconstructions against the training images."""
        import dataclasses

        from .data import ImageData
        from .eval import evaluate_reconstructions

        if num_samples < 4:
            raise GenloomError(f"num_samples={num_samples}: reconstruction metrics need at least 4 images")
        data_config = self.config.data if data_path is None else dataclasses.replace(self.config.data, path=data_path)
        data = ImageData(data_config, progress=progress)
        data.prepare()
        count = min(num_samples, data.num_examples("val"))
        images, labels = data.pixel_batch(torch.arange(count), "val")
        self._check(images)
        reconstructions = torch.cat([self.reconstruct(images[i:i + 64]) for i in range(0, count, 64)])
        return evaluate_reconstructions(data, images, labels, reconstructions, progress=progress)


def open_checkpoint(checkpoint) -> ImageHandle:
    """The handle of an opened image checkpoint: a GANModel for a GAN, an AutoencoderModel for an autoencoder,
    else an ImageModel (a latent one gets the autoencoder copy kept beside its weights)."""
    kind = checkpoint.base_config.objective.kind
    handle_class = {"gan": GANModel, "autoencoder": AutoencoderModel}.get(kind, ImageModel)
    attach_checkpoint_autoencoder(checkpoint.model, checkpoint.path)
    return handle_class(checkpoint.path, checkpoint.config, checkpoint.model, load_labels(checkpoint.path))


def attach_checkpoint_autoencoder(model: torch.nn.Module, path: Path) -> None:
    """A latent denoiser decodes with the autoencoder copy in its checkpoint folder (where the run wrote one)."""
    from ..diffusion.latents import COPY_CONFIG, attach_autoencoder, open_autoencoder

    if getattr(model.config, "autoencoder", "") and (Path(path) / COPY_CONFIG).is_file():
        attach_autoencoder(model, open_autoencoder(path))


def score(handle: ImageHandle, request: EvalRequest) -> "ImageEvalResult":
    """`genloom eval` of an image model: FID-<data>, KID, precision/recall and class accuracy of generated images."""
    return score_with(handle, request, handle.described, {name: None for name in handle.eval_options})
