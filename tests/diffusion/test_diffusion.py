"""Diffusion models end to end: denoisers, guidance, the loss falls, exact resume with EMA, sampling CLI/API."""

import pytest
import torch
from conftest import run_cli

from genloom import api, load
from genloom.core import io as ckpt
from genloom.core.errors import GenloomError
from genloom.diffusion.dit import DiT, DiTConfig
from genloom.diffusion.sampling import guided_denoiser
from genloom.diffusion.unet import UNet, UNetConfig
from genloom.train.metrics import MetricsLog

pytest.importorskip("sklearn")

TINY_DIGITS = [
    "model.base_channels=16", "model.channel_mults=1,2", "model.blocks_per_level=1", "model.attention_resolutions=4",
    "train.batch_size=32", "train.max_steps=60", "train.warmup_steps=5", "train.eval_interval=30",
    "train.eval_batches=2", "train.log_interval=1", "train.progress=false", "train.compile=false",
    "train.precision=fp32", "train.lr=2e-3", "objective.samples_per_class=1", "objective.sample_steps=4",
]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "run"
    api.train("digits-diffusion", out=out, overrides=TINY_DIGITS + ["train.max_steps=150", "train.eval_interval=75"])
    return out


@pytest.mark.parametrize("make", [
    lambda: UNet(UNetConfig(image_size=8, channels=1, num_classes=10, base_channels=16, channel_mults=(1, 2),
                            attention_resolutions=(4,))),
    lambda: UNet(UNetConfig(image_size=8, channels=3, num_classes=10, base_channels=16, channel_mults=(1, 2),
                            attention_resolutions=(2,), patch_size=2)),
    lambda: DiT(DiTConfig(image_size=8, channels=3, num_classes=10, patch_size=2, d_model=32, n_layer=2, n_head=2)),
], ids=["unet", "unet-patches", "dit"])
def test_denoisers_start_as_zero_and_learn_to_use_the_label(make):
    torch.manual_seed(0)
    model = make()
    c, s = model.config.channels, model.config.image_size
    x, t = torch.randn(4, c, s, s), torch.tensor([0.0, 10.0, 500.0, 999.0])
    labels = torch.tensor([0, 1, 2, 10])
    assert torch.equal(model(x, t, labels), torch.zeros_like(x))      # zero-initialised output layers
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = torch.randn(4, c, s, s)
    for _ in range(30):                                              # fit a label-dependent target
        loss = (model(x, t, labels) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5
    out_a = model(x[:1], t[:1], torch.tensor([0]))
    out_b = model(x[:1], t[:1], torch.tensor([1]))
    assert not torch.allclose(out_a, out_b)


def test_guidance_is_the_classifier_free_combination():
    class Fake(torch.nn.Module):
        def forward(self, x, t, labels):
            return x * 0 + labels.float().view(-1, 1, 1, 1)          # output = the label

    labels = torch.tensor([2, 5])
    denoise = guided_denoiser(Fake(), labels, guidance=3.0, num_classes=10)
    out = denoise(torch.zeros(2, 1, 2, 2), torch.zeros(2))
    # unconditional (label 10) + 3 * (conditional - unconditional)
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor([10 + 3 * (2 - 10), 10 + 3 * (5 - 10)], dtype=torch.float32))


def test_loss_falls_and_the_run_folder_has_ema_samples_and_labels(digits_run):
    rows = MetricsLog.read(digits_run / "metrics.csv")
    train = [float(r["loss"]) for r in rows if r["loss"]]
    val = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert sum(train[-10:]) / 10 < 0.6 * sum(train[:10]) / 10, train
    assert val[-1] < val[0], val
    for name in ("model.safetensors", "ema.safetensors", "labels.json", "config.json", "loss.png"):
        assert (digits_run / name).is_file(), name
    assert (digits_run / "samples" / "step_0000150.png").is_file()


def test_resume_continues_exactly_with_ema(tmp_path):
    constant = TINY_DIGITS + ["train.schedule=constant", "train.warmup_steps=0", "train.ema_decay=0.9",
                              "train.eval_interval=10", "train.sample_length=0"]
    api.train("digits-diffusion", out=tmp_path / "whole", overrides=constant + ["train.max_steps=20"])
    api.train("digits-diffusion", out=tmp_path / "split", overrides=constant + ["train.max_steps=10"])
    api.train("digits-diffusion", out=tmp_path / "split", overrides=constant + ["train.max_steps=20"], resume=True)
    for name in (ckpt.MODEL_FILE, ckpt.EMA_FILE):
        whole, split = ckpt.load_tensors(tmp_path / "whole" / name), ckpt.load_tensors(tmp_path / "split" / name)
        assert whole.keys() == split.keys()
        for key in whole:
            assert torch.equal(whole[key], split[key]), (name, key)


def test_seeds_reproduce_each_sample_alone(digits_run):
    model = load(digits_run)
    assert model.labels == [str(d) for d in range(10)]
    a = model.generate(["3", "7"], num_samples=2, steps=4, seed=11)
    assert a.shape == (4, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, model.generate(["3", "7"], num_samples=2, steps=4, seed=11))
    alone = model.generate("3", num_samples=1, steps=4, seed=12)              # sample 1 of label 3 above
    assert torch.allclose(alone[0], a[1], atol=1e-5)
    heun = model.generate("3", num_samples=1, steps=3, sampler="heun", seed=12)
    assert not torch.allclose(heun[0], a[1])


def test_generate_image_cli_writes_pngs_and_a_grid(digits_run, tmp_path):
    out = tmp_path / "samples"
    result = run_cli("generate", "image", "--checkpoint", str(digits_run), "--label", "3", "--label", "8",
                     "--num-samples", "2", "--steps", "4", "--sampler", "ddim", "--seed", "5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["3_5.png", "3_6.png", "8_7.png", "8_8.png", "grid.png"]
    from PIL import Image

    assert Image.open(out / "3_5.png").size == (64, 64)                          # 8x8 enlarged 8 times


@pytest.mark.parametrize("args, message", [
    (["--label", "Z"], "label 'Z' is not one the model was trained on; valid labels: 0, 1"),
    (["--steps", "0"], "steps: must be at least 1"),
    (["--sampler", "plms"], "valid samplers: ddpm, ddim, dpmpp_2m, euler, heun"),
    (["--eta", "0.5", "--sampler", "euler"], "only the ddim sampler takes eta"),
])
def test_generate_image_bad_input_is_one_clear_line(digits_run, tmp_path, args, message):
    result = run_cli("generate", "image", "--checkpoint", str(digits_run), "--out", str(tmp_path / "x"), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_text_handle_errors_for_image_checkpoints(digits_run):
    with pytest.raises(GenloomError, match="unconditional|not one the model"):
        load(digits_run).label_index("dog")


def test_eval_reports_fid_digits_and_class_accuracy(digits_run):
    result = run_cli("eval", "--checkpoint", str(digits_run), "--num-samples", "40", "--steps", "4")
    assert result.returncode == 0, result.stderr
    assert "FID-digits:" in result.stdout and "class accuracy:" in result.stdout, result.stdout
    assert "not the standard FID" in result.stdout
    missing = run_cli("eval", "--checkpoint", str(digits_run), "--inception", "/nonexistent/pt_inception.safetensors",
                      "--num-samples", "8", "--steps", "2")
    assert missing.returncode == 2 and "pt_inception.safetensors" in missing.stderr, missing.stderr
