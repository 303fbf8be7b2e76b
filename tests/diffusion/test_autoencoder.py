"""The KL autoencoder: shapes at 4x and 8x, the closed-form KL, a loss that falls, and diffusers AutoencoderKL
parity (the same random weights give the same latent mean/std and decodings to 1e-4)."""

from __future__ import annotations

import json

import pytest
import torch

from genloom.core.errors import CheckpointError, GenloomError
from genloom.diffusion.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    AutoencoderObjective,
    AutoencoderObjectiveConfig,
    kl_divergence,
)
from genloom.diffusion.autoencoder_hf import load_diffusers_autoencoder


def tiny(**changes) -> Autoencoder:
    values = dict(channels=3, base_channels=8, channel_mults=(1, 2, 2), latent_channels=4, norm_groups=4)
    return Autoencoder(AutoencoderConfig(**{**values, **changes}))


@pytest.mark.parametrize("mults, factor", [((1, 2, 2), 4), ((1, 2, 2, 2), 8)])
def test_shapes_at_4x_and_8x(mults, factor):
    torch.manual_seed(0)
    model = tiny(channel_mults=mults).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, logvar = model.encode(images)
    assert mean.shape == logvar.shape == (2, 4, 32 // factor, 32 // factor)
    assert model.config.downsampling == factor
    assert model.decode(mean).shape == (2, 3, 32, 32)
    reconstruction, m, lv = model("autoencode", images)
    assert reconstruction.shape == images.shape and m.shape == mean.shape
    with pytest.raises(GenloomError, match="model.image_size"):
        AutoencoderConfig(channels=3, image_size=34, channel_mults=mults, norm_groups=4, base_channels=8)


def test_kl_matches_torch_distributions():
    torch.manual_seed(1)
    mean, logvar = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, torch.exp(0.5 * logvar)), torch.distributions.Normal(0.0, 1.0))
    assert torch.allclose(kl_divergence(mean, logvar), reference.flatten(1).sum(1), rtol=1e-5, atol=1e-5)
    assert float(kl_divergence(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))) == 0.0


def test_training_lowers_the_loss_and_measures_the_latent_scale():
    torch.manual_seed(0)
    model = tiny(mid_attention=False)
    objective = AutoencoderObjective(AutoencoderObjectiveConfig(perceptual_weight=0.0, latent_std_momentum=0.5), False)
    optimizer = torch.optim.Adam(model.autoencoder_parameters(), lr=3e-3)
    images = (torch.rand(8, 3, 16, 16) > 0.5).float() * 2 - 1
    batch = (images, torch.zeros(8, dtype=torch.long))
    first = float(objective.eval_loss(model, batch))
    for _ in range(40):
        loss = objective.loss("autoencoder", model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(objective.eval_loss(model, batch)) < 0.8 * first
    with torch.no_grad():
        mean = model.encode(images)[0]
    assert abs(model.scale * float(mean.std()) - 1) < 0.5          # the running std tracks the latents'


def _tiny_diffusers_vae(tmp_path, **changes):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    settings = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
                    up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[8, 16, 16], layers_per_block=1,
                    latent_channels=4, norm_num_groups=4, sample_size=16)
    vae = diffusers.AutoencoderKL(**{**settings, **changes}).eval()
    with torch.no_grad():                  # random, non-trivial norms and biases too
        for parameter in vae.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    vae.save_pretrained(tmp_path)
    return vae


@pytest.mark.parametrize("changes", [{}, {"use_quant_conv": False, "use_post_quant_conv": False,
                                          "shift_factor": 0.1, "scaling_factor": 1.5, "latent_channels": 2}])
def test_diffusers_autoencoder_parity(tmp_path, changes):
    vae = _tiny_diffusers_vae(tmp_path, **changes)
    ours = load_diffusers_autoencoder(tmp_path)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        theirs = vae.encode(images).latent_dist
        mean, logvar = ours.encode(images)
        assert torch.allclose(mean, theirs.mean, atol=1e-4)
        assert torch.allclose(torch.exp(0.5 * logvar), theirs.std, atol=1e-4)
        latents = torch.randn(2, vae.config.latent_channels, 4, 4)
        assert torch.allclose(ours.decode(latents), vae.decode(latents).sample, atol=1e-4)
    assert ours.scale == pytest.approx(vae.config.scaling_factor)
    assert ours.config.shift_factor == pytest.approx(vae.config.shift_factor or 0.0)


def test_old_diffusers_attention_names_are_mapped(tmp_path):
    from safetensors.torch import load_file, save_file

    vae = _tiny_diffusers_vae(tmp_path)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    renamed = {}
    for name, tensor in load_file(path).items():        # as saved by diffusers before 0.14: 1x1 convs, old names
        for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")):
            if new in name:
                name = name.replace(new, old)
                tensor = tensor[:, :, None, None] if tensor.dim() == 2 else tensor
        renamed[name] = tensor
    save_file(renamed, path)
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(load_diffusers_autoencoder(tmp_path).encode(images)[0],
                              vae.encode(images).latent_dist.mean, atol=1e-4)


def test_a_diffusers_folder_of_another_class_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "in_channels": 3}))
    with pytest.raises(CheckpointError) as error:
        load_diffusers_autoencoder(tmp_path)
    assert "UNet2DModel" in str(error.value) and "AutoencoderKL" in str(error.value)
    assert "\n" not in str(error.value)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "act_fn": "relu"}))
    with pytest.raises(CheckpointError, match="act_fn"):
        load_diffusers_autoencoder(tmp_path)
