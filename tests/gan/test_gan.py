"""GANs: the two losses, R1 and spectral norm, exact resume of both networks and optimizers, labels,
the collapse watch, generation and variations through the CLI/API, and bad input."""

import json

import pytest
import torch
from conftest import run_cli

import genloom
from genloom import api, load
from genloom.core import io as ckpt
from genloom.gan.model import GAN, GANConfig
from genloom.gan.objective import (
    GANObjective,
    GANObjectiveConfig,
    class_coverage,
    diff_augment,
)

pytest.importorskip("sklearn")

TINY_GAN = [
    "model.generator_channels=32", "model.discriminator_channels=16", "model.mapping_layers=1",
    "train.batch_size=32", "train.max_steps=40", "train.eval_interval=20", "train.eval_batches=2",
    "train.log_interval=1", "train.progress=false", "train.precision=fp32", "objective.samples_per_class=1",
    "objective.coverage_samples=4",
]


def tiny_gan(num_classes=10, **options) -> GAN:
    torch.manual_seed(0)
    return GAN(GANConfig(image_size=8, channels=1, num_classes=num_classes, latent_dim=16, style_dim=32,
                         generator_channels=32, discriminator_channels=16, **options))


def toy_batch(n=32):
    """Bright squares in the top-left (class 0) or bottom-right (class 1) corner of an 8x8 black image."""
    images = -torch.ones(n, 1, 8, 8)
    labels = torch.arange(n) % 2
    images[labels == 0, :, :4, :4] = 1
    images[labels == 1, :, 4:, 4:] = 1
    return images, labels


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gan") / "run"
    api.train("digits-gan", out=out, overrides=TINY_GAN)
    return out


@pytest.mark.parametrize("loss, start", [("hinge", 2.0), ("nonsaturating", 2 * 0.6931)])
def test_each_player_learns_against_a_fixed_opponent(loss, start):
    model = tiny_gan(num_classes=2)
    objective = GANObjective(GANObjectiveConfig(loss=loss))
    batch = toy_batch()

    def learn(phase, network, steps=40):
        optimizer = torch.optim.Adam(network.parameters(), lr=2e-3, betas=(0.0, 0.99))
        history = []
        for _ in range(steps):
            loss = objective.loss(phase, model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append(loss.item())
        for p in network.parameters():
            p.grad = None
        return history

    d_losses = learn("discriminator", model.discriminator)
    assert abs(d_losses[0] - start) < 0.3, d_losses[0]              # scores near 0 at initialisation
    assert d_losses[-1] < 0.5 * d_losses[0], d_losses                # it learns to tell the squares from noise
    for p in model.generator.parameters():
        assert p.grad is None                                        # the discriminator phase leaves G alone
    g_losses = learn("generator", model.generator)
    assert min(g_losses[-5:]) < g_losses[0] - 0.5, g_losses          # the generator learns to fool the fixed D
    assert all(p.grad is None for p in model.discriminator.parameters())


def test_lazy_r1_penalty_is_added_on_its_steps_only():
    model = tiny_gan(num_classes=2, spectral_norm=False)
    batch = toy_batch(8)
    plain = GANObjective(GANObjectiveConfig(r1_gamma=0.0))
    r1 = GANObjective(GANObjectiveConfig(r1_gamma=10.0, r1_interval=4))

    def d_loss(objective, step):
        objective.begin_step(step)
        torch.manual_seed(3)
        return objective.loss("discriminator", model, batch)

    # The penalty by hand: gamma / 2 * interval * mean |grad_x D(x)|^2 at the real images.
    real = batch[0].clone().requires_grad_(True)
    gradient, = torch.autograd.grad(model.discriminator(real, batch[1]).sum(), real)
    expected = 10.0 / 2 * 4 * gradient.pow(2).sum(dim=(1, 2, 3)).mean()
    assert expected > 1e-4
    torch.testing.assert_close(d_loss(r1, 8) - d_loss(plain, 8), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(d_loss(r1, 9), d_loss(plain, 9))      # off-steps: no penalty
    d_loss(r1, 8).backward()                                         # and it is differentiable (double backward)


def test_spectral_norm_keeps_every_discriminator_layer_at_unit_norm():
    model = tiny_gan()
    layers = [m for m in model.discriminator.modules() if hasattr(m, "parametrizations")]
    assert len(layers) >= 6
    images, labels = torch.randn(4, 1, 8, 8), torch.arange(4)
    with torch.no_grad():
        for _ in range(30):                                          # power iterations run in training mode
            model.discriminator(images, labels)
    for layer in layers:
        weight = layer.weight.reshape(layer.weight.shape[0], -1)
        if isinstance(layer, torch.nn.Embedding):
            weight = layer.weight.T
        sigma = torch.linalg.matrix_norm(weight, ord=2)
        assert abs(sigma.item() - 1) < 0.05, (layer, sigma)
    plain = tiny_gan(spectral_norm=False)
    assert not any(hasattr(m, "parametrizations") for m in plain.discriminator.modules())


def test_diff_augment_is_differentiable_and_moves_content():
    torch.manual_seed(0)
    images = -torch.ones(16, 1, 8, 8)
    images[:, :, 3:5, 3:5] = 1
    images.requires_grad_(True)
    moved = diff_augment(images, ["translation"])
    assert moved.shape == images.shape
    assert (moved == 1).sum(dim=(1, 2, 3)).eq(4).all()               # a shift of <= 1 pixel keeps the square
    assert not torch.equal(moved, images.detach())
    moved.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    everything = diff_augment(images, ["color", "translation", "cutout"])
    assert torch.isfinite(everything).all()
    with pytest.raises(Exception, match="augment"):
        GANObjectiveConfig(augment=("rotate",))


def test_class_coverage_counts_missing_classes():
    predicted = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2])
    shares, missing = class_coverage(predicted, 4, None, threshold=0.25)
    assert shares == [1.0, 2.0, 1.0, 0.0] and missing == [3]
    requested = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    shares, missing = class_coverage(predicted, 4, requested, threshold=0.6)
    assert shares == [1.0, 1.0, 0.0, 0.0] and missing == [2, 3]


def test_run_folder_grid_coverage_and_eval_loss(gan_run):
    for name in ("model.safetensors", "ema.safetensors", "labels.json", "loss.png", "train_state.safetensors"):
        assert (gan_run / name).is_file(), name
    assert (gan_run / "samples" / "step_0000040.png").is_file()
    records = [json.loads(line) for line in (gan_run / "samples" / "coverage.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [20, 40]
    assert records[-1]["classes"] == 10 and set(records[-1]["shares"]) == {str(d) for d in range(10)}
    state = ckpt.load_tensors(gan_run / ckpt.STATE_FILE)
    assert any(k.startswith("optimizer.discriminator.") for k in state)
    assert any(k.startswith("optimizer.generator.") for k in state)


def test_two_time_scale_learning_rates(tmp_path):
    from genloom.core.config import load_recipe
    from genloom.train.trainer import Trainer

    config = load_recipe("digits-gan", TINY_GAN + ["objective.discriminator_lr_scale=4", "train.lr=1e-4"])
    trainer = Trainer(config, tmp_path / "x")
    from genloom.train.runtime import setup_runtime

    trainer._build(setup_runtime("cpu"))
    assert {g["lr"] for g in trainer.optimizers["generator"].param_groups} == {1e-4}
    assert {g["lr"] for g in trainer.optimizers["discriminator"].param_groups} == {4e-4}


def test_resume_continues_both_networks_and_optimizers_exactly(tmp_path):
    overrides = TINY_GAN + ["train.eval_interval=6", "train.sample_length=0", "objective.r1_gamma=0.5",
                            "objective.r1_interval=4", "objective.augment=translation,cutout"]
    api.train("digits-gan", out=tmp_path / "whole", overrides=overrides + ["train.max_steps=12"])
    api.train("digits-gan", out=tmp_path / "split", overrides=overrides + ["train.max_steps=6"])
    api.train("digits-gan", out=tmp_path / "split", overrides=overrides + ["train.max_steps=12"], resume=True)
    for name in (ckpt.MODEL_FILE, ckpt.EMA_FILE, ckpt.STATE_FILE):
        whole, split = ckpt.load_tensors(tmp_path / "whole" / name), ckpt.load_tensors(tmp_path / "split" / name)
        assert whole.keys() == split.keys()
        for key in whole:
            assert torch.equal(whole[key], split[key]), (name, key)


def test_generation_honours_labels_and_seeds(gan_run):
    model = load(gan_run)
    assert isinstance(model, genloom.GANModel) and model.labels == [str(d) for d in range(10)]
    images = model.generate(["3", "7"], num_samples=2, seed=5)
    assert images.shape == (4, 1, 8, 8) and images.min() >= -1 and images.max() <= 1
    z = model.model.latents(4, 5)                                     # sample i (label-major) uses seed + i
    expected = model.model.generator(z, torch.tensor([3, 3, 7, 7])).clamp(-1, 1)
    torch.testing.assert_close(images, expected)
    torch.testing.assert_close(model.generate("7", num_samples=1, seed=8)[0], images[3])
    same_latent = model.model.generator(model.model.latents(1, 5).repeat(2, 1), torch.tensor([3, 7]))
    assert not torch.allclose(same_latent[0], same_latent[1])         # the label changes the image


def test_a_trained_gan_draws_the_requested_digit(tmp_path):
    """A short real run (~20 s): the class-conditional generator's samples are recognised as their
    labels far above chance by the independent feature classifier."""
    out = tmp_path / "run"
    api.train("digits-gan", out=out, overrides=TINY_GAN + [
        "model.generator_channels=64", "model.discriminator_channels=32", "train.max_steps=500",
        "train.eval_interval=500", "train.lr=1e-3", "train.batch_size=64", "objective.coverage_samples=0"])
    result = load(out).evaluate(num_samples=200, progress=False)
    assert result.accuracy > 0.5, result.summary()                   # chance is 0.1


def test_cli_generate_and_variations(gan_run, tmp_path):
    out = tmp_path / "samples"
    result = run_cli("generate", "image", "--checkpoint", str(gan_run), "--label", "4", "--num-samples", "3",
                     "--seed", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["4_2.png", "4_3.png", "4_4.png", "grid.png"]
    gif = tmp_path / "walk.gif"
    result = run_cli("generate", "variations", "--checkpoint", str(gan_run), "--label", "4", "--seed", "0",
                     "--to-seed", "9", "--frames", "6", "--out", str(gif))
    assert result.returncode == 0, result.stderr
    from PIL import Image

    animation = Image.open(gif)
    assert animation.n_frames == 10 and animation.size == (64, 64)  # 6 frames there and 4 back
    frames = load(gan_run).interpolate("4", seed=0, to_seed=9, frames=6)
    ends = load(gan_run).generate("4", num_samples=1, seed=0)[0], load(gan_run).generate("4", num_samples=1, seed=9)[0]
    torch.testing.assert_close(frames[0], ends[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(frames[-1], ends[1], atol=1e-5, rtol=0)
    evaluation = run_cli("eval", "--checkpoint", str(gan_run), "--num-samples", "20")
    assert evaluation.returncode == 0 and "FID-digits:" in evaluation.stdout, evaluation.stderr


@pytest.mark.parametrize("args, message", [
    (["image", "--label", "Z"], "label 'Z' is not one the model was trained on"),
    (["image", "--steps", "20"], "is a GAN: it makes each image in one pass, so --steps"),
    (["image", "--sampler", "ddim"], "so --sampler do(es) not apply"),
    (["image", "--truncation", "0"], "truncation=0.0: must be in (0, 2]"),
    (["variations", "--label", "Z"], "label 'Z' is not one the model was trained on"),
    (["variations"], "is class-conditional: give the label"),
    (["variations", "--label", "3", "--out", "walk.png"], "give a name ending in .gif"),
])
def test_bad_generation_requests_get_one_clear_line(gan_run, tmp_path, args, message):
    kind, *rest = args
    out = ["--out", str(tmp_path / "x")] if kind == "image" else ([] if "--out" in rest else
                                                                   ["--out", str(tmp_path / "x.gif")])
    result = run_cli("generate", kind, "--checkpoint", str(gan_run), *out, *rest)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_corrupt_images_are_skipped_with_a_count(tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), 40 * i if label == "a" else 255 - 40 * i).save(tmp_path / "data" / label / f"{i}.png")
    (tmp_path / "data" / "a" / "broken.png").write_bytes(b"not a png")
    result = run_cli("train", "digits-gan", "--out", str(tmp_path / "run"), "--set", "data.path=" + str(tmp_path / "data"),
                     "--set", "data.val_fraction=0.2", *[x for o in TINY_GAN + ["train.max_steps=2",
                                                                                 "train.batch_size=4",
                                                                                 "train.eval_interval=2"]
                                                         for x in ("--set", o)])
    assert result.returncode == 0, result.stderr
    assert "skipped 1" in result.stderr, result.stderr
    assert load(tmp_path / "run").labels == ["a", "b"]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("train", "digits-gan", "--out", str(tmp_path / "run2"), "--set", f"data.path={empty}")
    assert result.returncode == 2 and "no images" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_torchrun_two_processes_train_a_gan(tmp_path):
    """Two optimizer phases under torchrun: the loop averages each phase's gradients across ranks."""
    import os
    import subprocess
    import sys

    sets = [x for o in TINY_GAN + ["train.max_steps=4", "train.eval_interval=4", "objective.r1_gamma=0.1",
                                   "objective.r1_interval=2"] for x in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "29519", "-m", "genloom", "train", "digits-gan", *sets, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr
    assert json.loads((tmp_path / "two" / "train_state.json").read_text())["world_size"] == 2
    assert load(tmp_path / "two").generate("5", num_samples=2, seed=0).shape == (2, 1, 8, 8)


def test_minibatch_std_lets_the_discriminator_see_variety_within_groups_only():
    images, labels = torch.randn(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)
    changed = images.clone()
    changed[1] += 1.0                                                 # same group of 4 as image 0, not as image 4
    with_std, without = tiny_gan(minibatch_std=True).eval(), tiny_gan(minibatch_std=False).eval()
    with torch.no_grad():
        a, b = with_std.discriminator(images, labels), with_std.discriminator(changed, labels)
        assert a[0] != b[0] and torch.equal(a[4:], b[4:])
        a, b = without.discriminator(images, labels), without.discriminator(changed, labels)
        assert torch.equal(a[0], b[0])


def test_class_diversity_is_the_mean_pairwise_distance():
    from genloom.gan.objective import class_diversity

    features = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    classes = torch.tensor([0, 0, 1, 1, 2])
    assert class_diversity(features, classes, 4) == [5.0, 0.0, None, None]


def test_the_watch_flags_a_generator_that_draws_one_image_per_class(gan_run, tmp_path, caplog):
    from genloom.images.data import ImageData

    model = load(gan_run)
    data = ImageData(model.config.data)
    data.prepare()
    objective = GANObjective(GANObjectiveConfig(coverage_samples=5))
    gan = model.model
    gan.latents = lambda n, seed, device="cpu": torch.zeros(n, gan.config.latent_dim)   # every z the same
    with caplog.at_level("WARNING"):
        text = objective._watch_collapse(gan, data, tmp_path, step=7)
    record = json.loads((tmp_path / "coverage.jsonl").read_text())
    assert set(record["diversity"].values()) == {0.0} and len(record["alike"]) == 10
    assert "10 class(es) with near-copies" in text and "near copies" in caplog.text
    healthy = json.loads((gan_run / "samples" / "coverage.jsonl").read_text().splitlines()[-1])
    assert min(healthy["diversity"].values()) > 0


def test_patch_size_folds_pixels_into_channels_for_both_networks():
    torch.manual_seed(0)
    gan = GAN(GANConfig(image_size=16, channels=3, num_classes=5, latent_dim=8, style_dim=16, generator_channels=32,
                        discriminator_channels=16, patch_size=2))
    assert gan.config.doublings == 1                                   # 4x4 -> 8x8 patches of 2x2 = 16x16 pixels
    images = gan.generator(torch.randn(4, 8), torch.arange(4))
    assert images.shape == (4, 3, 16, 16)
    assert gan.discriminator(images, torch.arange(4)).shape == (4,)
    with pytest.raises(Exception, match="patch_size"):
        GANConfig(image_size=8, channels=1, patch_size=4)
