"""Latent diffusion plumbing: the latent cache resumes exactly, images data serves latents, sampling decodes to
the images' size (inpainting keeps the kept pixels), and a denoiser or mask that does not fit is one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from genloom.core.errors import ConfigError, GenloomError
from genloom.diffusion.autoencoder import Autoencoder, AutoencoderConfig
from genloom.diffusion.latents import cached_latents, open_autoencoder, save_autoencoder_copy
from genloom.diffusion.sampling import generate_images
from genloom.diffusion.schedules import NoiseSchedule
from genloom.diffusion.unet import UNet, UNetConfig
from genloom.images.data import ImageData, ImageDataConfig


@pytest.fixture()
def autoencoder_dir(tmp_path, monkeypatch):
    """A random 4x autoencoder (3 -> 4 channels) kept as a checkpoint's copy; the cache in tmp_path."""
    monkeypatch.setenv("GENLOOM_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(channels=3, base_channels=8, channel_mults=(1, 2, 2), latent_channels=4,
                                          norm_groups=4, mid_attention=False, scaling_factor=0.5)).eval()
    folder = tmp_path / "ae"
    folder.mkdir()
    save_autoencoder_copy(model, folder)
    return folder


def test_an_interrupted_latent_cache_resumes_to_the_same_bytes(tmp_path, autoencoder_dir):
    net = open_autoencoder(autoencoder_dir)
    pixels = torch.rand(10, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    calls = []

    def encode(start, stop):
        calls.append(start)
        if len(calls) == 3 and "fail" in str(folder):
            raise KeyboardInterrupt                               # the run is stopped in its third chunk
        with torch.no_grad():
            return net.encode(pixels[start:stop])[0]

    folder = tmp_path / "fail"
    with pytest.raises(KeyboardInterrupt):
        cached_latents(folder, 10, (4, 4, 4), encode, {"k": 1}, chunk=3, progress=False)
    assert (folder / "progress.json").read_text().count('"done": 6') == 1
    calls.clear()
    resumed = cached_latents(folder, 10, (4, 4, 4), encode, {"k": 1}, chunk=3, progress=False)
    assert calls == [6, 9]                                       # only the unfinished chunks are encoded
    folder = tmp_path / "whole"
    whole = cached_latents(folder, 10, (4, 4, 4), encode, {"k": 1}, chunk=3, progress=False)
    assert isinstance(resumed, np.memmap) and np.array_equal(np.asarray(resumed), np.asarray(whole))
    calls.clear()
    cached_latents(folder, 10, (4, 4, 4), encode, {"k": 1}, chunk=3, progress=False)
    assert calls == []                                            # complete: nothing encoded again
    cached_latents(folder, 10, (4, 4, 4), encode, {"k": 2}, chunk=3, progress=False)
    assert calls == [0, 3, 6, 9]                                  # other settings: made again


def test_image_data_serves_scaled_latents(autoencoder_dir):
    model_config = UNetConfig(autoencoder=str(autoencoder_dir))
    data = ImageData(ImageDataConfig(path="builtin:glyphs64", glyphs_count=36, flip=True, image_size=16),
                     model_config, progress=False)
    assert data.model_settings() == {"image_size": 4, "channels": 4, "num_classes": 36}
    indices = torch.tensor([0, 1, 32, 33])                        # 32 training images: 32, 33 are mirrored 0, 1
    latents, labels = data.batch(indices)
    assert latents.shape == (4, 4, 4, 4)
    images = data.pixel_batch(indices)[0]
    net = open_autoencoder(autoencoder_dir)
    with torch.no_grad():
        expected = net.encode(images)[0] * 0.5
    assert torch.allclose(latents, expected, atol=1e-5)
    assert torch.equal(labels, data.pixel_batch(indices)[1])


def test_a_denoiser_that_does_not_fit_the_autoencoder_is_one_line(autoencoder_dir):
    wrong = UNetConfig(autoencoder=str(autoencoder_dir), channels=3)
    with pytest.raises(ConfigError) as error:
        ImageData(ImageDataConfig(path="builtin:glyphs64", glyphs_count=36, image_size=16), wrong,
                  progress=False).prepare()
    assert "model.channels=3" in str(error.value) and "4 channels" in str(error.value)
    with pytest.raises(ConfigError, match="downsamples 4x"):
        ImageData(ImageDataConfig(path="builtin:glyphs64", glyphs_count=36, image_size=18),
                  UNetConfig(autoencoder=str(autoencoder_dir)), progress=False).prepare()
    with pytest.raises(ConfigError, match="not a folder"):
        open_autoencoder(autoencoder_dir / "missing")


def _latent_unet(autoencoder_dir) -> UNet:
    torch.manual_seed(0)
    unet = UNet(UNetConfig(image_size=4, channels=4, num_classes=0, base_channels=8, channel_mults=(1,),
                           blocks_per_level=1, attention_resolutions=(), autoencoder=str(autoencoder_dir)))
    with torch.no_grad():
        unet.output[-1].weight.normal_(0, 0.1)                   # not the zero-initialised identity
    return unet.eval()


def test_latent_sampling_decodes_to_the_image_size_and_inpaints(autoencoder_dir):
    unet = _latent_unet(autoencoder_dir)
    schedule = NoiseSchedule(kind="cosine", timesteps=100, prediction="v")
    images = generate_images(unet, schedule, None, 2, seed=0, sampler="ddim", steps=3)
    assert images.shape == (2, 3, 16, 16) and images.abs().max() <= 1
    init = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, :8] = 1                                           # redraw the top half
    painted = generate_images(unet, schedule, None, 2, seed=0, sampler="ddim", steps=3, init=init, mask=mask)
    assert torch.equal(painted[:, :, 8:], init[:, :, 8:])        # the kept pixels are the init image's
    assert not torch.allclose(painted[:, :, :8], init[:, :, :8])
    with pytest.raises(GenloomError, match="mask"):
        generate_images(unet, schedule, None, 2, seed=0, steps=3, init=init, mask=torch.zeros(2, 1, 8, 8))
    with pytest.raises(GenloomError, match="16-pixel"):
        generate_images(unet, schedule, None, 2, seed=0, steps=3, init=torch.zeros(2, 3, 8, 8))


def test_a_diffusers_folder_of_another_class_as_the_autoencoder_is_one_line(tmp_path):
    from conftest import one_line_error

    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    result = subprocess.run([sys.executable, "-m", "genloom", "train", "glyphs64-latent", "--out", str(tmp_path / "run"),
                             "--set", f"model.autoencoder=\"{folder}\"", "--set", "data.glyphs_count=36"],
                            capture_output=True, text=True, env={**__import__("os").environ,
                                                                 "GENLOOM_CACHE": str(tmp_path / "cache")})
    one_line_error(result, "UNet2DModel", "AutoencoderKL")


def test_a_folder_of_large_images_trains_at_its_size_and_mixed_sizes_are_one_line(tmp_path):
    from PIL import Image

    from genloom.core.errors import DataError

    for name, colour in (("a", (200, 0, 0)), ("b", (0, 200, 0)), ("c", (0, 0, 200))):
        Image.new("RGB", (160, 160), colour).save(tmp_path / f"{name}.png")
    data = ImageData(ImageDataConfig(path=str(tmp_path)), progress=False)
    assert data.model_settings() == {"image_size": 160, "channels": 3, "num_classes": 0}
    Image.new("RGB", (256, 192), (9, 9, 9)).save(tmp_path / "d.png")
    with pytest.raises(DataError) as error:
        ImageData(ImageDataConfig(path=str(tmp_path)), progress=False).prepare()
    assert "differ in size" in str(error.value) and "centre-cropped" in str(error.value)
    assert "\n" not in str(error.value)
    data = ImageData(ImageDataConfig(path=str(tmp_path), image_size=64), progress=False)
    assert data.pixel_batch(torch.arange(2))[0].shape == (2, 3, 64, 64)
