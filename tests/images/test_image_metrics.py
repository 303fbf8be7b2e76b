"""Image metrics against closed forms, hand-counted cases, scipy, and pytorch-fid's Inception on the same weights."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import genloom.images.eval as image_eval
from genloom.core.errors import CheckpointError, GenloomError
from genloom.images.eval import (
    FeatureClassifier,
    FeatureClassifierConfig,
    class_accuracy,
    evaluate_images,
    feature_classifier,
    train_feature_classifier,
)
from genloom.images.inception import InceptionFeatures, load_inception
from genloom.metrics import (
    frechet_distance,
    kernel_inception_distance,
    precision_recall,
)


def gaussian(n: int, mean, std, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(mean), generator=g, dtype=torch.float64) * torch.tensor(std) + torch.tensor(mean)


# -- Fréchet distance --------------------------------------------------------------------------

def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    mean_a, std_a = [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]
    mean_b, std_b = [1.0, 0.5, 0.0, -0.5], [0.5, 1.0, 2.0, 1.0]
    expected = sum((a - b) ** 2 for a, b in zip(mean_a, mean_b)) + sum((a - b) ** 2 for a, b in zip(std_a, std_b))
    measured = frechet_distance(gaussian(40_000, mean_a, std_a, 0), gaussian(40_000, mean_b, std_b, 1))
    assert expected == pytest.approx(2.75)
    assert measured == pytest.approx(expected, abs=0.05)


def test_frechet_distance_agrees_with_scipy_sqrtm_for_correlated_features():
    linalg = pytest.importorskip("scipy.linalg")
    randn = partial(torch.randn, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # Covariances that do not commute, so Tr (S1 S2)^½ differs from Tr S1^½ S2^½.
    real = randn(300, 6) @ randn(6, 6)
    fake = randn(200, 6) @ randn(6, 6) + 0.3
    a, b = real.numpy(), fake.numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(real, fake) == pytest.approx(reference, rel=1e-8)


def test_frechet_distance_is_zero_for_identical_sets_and_ignores_order():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(50, 64, generator=g).exp()   # fewer samples than dimensions: singular covariance
    other = torch.randn(80, 64, generator=g)
    assert abs(frechet_distance(features, features)) < 1e-6
    assert abs(frechet_distance(features, features[torch.randperm(50, generator=g)])) < 1e-6
    shuffled = other[torch.randperm(80, generator=g)]
    assert frechet_distance(features, shuffled) == pytest.approx(frechet_distance(features, other), rel=1e-9)
    assert frechet_distance(features, other) > 1.0


# -- KID ---------------------------------------------------------------------------------------

def test_kid_equals_the_unbiased_mmd_written_out_pair_by_pair():
    randn = partial(torch.randn, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, y = randn(12, 3), randn(12, 3) + 1
    k = lambda a, b: (float(a @ b) / 3 + 1) ** 3
    m = 12
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    kid, std = kernel_inception_distance(x, y, subsets=1, subset_size=m)   # one subset holding every sample
    assert kid == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    assert std == 0.0


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shifted_one():
    real = gaussian(2000, [0.0] * 16, [1.0] * 16, 0)
    same = gaussian(2000, [0.0] * 16, [1.0] * 16, 1)
    shifted = gaussian(2000, [0.5] * 16, [1.0] * 16, 2)
    kid_same, _ = kernel_inception_distance(real, same, subsets=20, subset_size=500)
    kid_shifted, std_shifted = kernel_inception_distance(real, shifted, subsets=20, subset_size=500)
    assert kid_shifted > 0.5 and kid_shifted > 10 * std_shifted
    assert abs(kid_same) < 0.01 * kid_shifted


# -- precision and recall ----------------------------------------------------------------------

def test_precision_recall_on_a_hand_counted_line():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])   # k=1: every real ball has radius 1
    fake = torch.tensor([[0.5], [10.0]])                        # one inside; each fake ball has radius 9.5
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == 0.5
    assert recall == 1.0        # the ball around 0.5 (radius 9.5) covers all five real points


def test_precision_recall_are_one_for_identical_sets_and_zero_for_far_away_fakes():
    real = gaussian(300, [0.0] * 8, [1.0] * 8, 0)
    assert precision_recall(real, real.clone(), k=3) == (1.0, 1.0)
    assert precision_recall(real, gaussian(300, [100.0] * 8, [1.0] * 8, 1), k=3) == (0.0, 0.0)


# -- class accuracy ----------------------------------------------------------------------------

class BrightnessClassifier(nn.Module):
    """Class 1 for images brighter than mid-grey on average, class 0 otherwise."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        brightness = images.mean(dim=(1, 2, 3))
        return torch.stack([-brightness, brightness], dim=1)


def test_class_accuracy_counts_requested_classes():
    bright, dark = torch.full((3, 1, 8, 8), 0.8), torch.full((3, 1, 8, 8), -0.8)
    images = torch.cat([bright, dark])
    requested = torch.tensor([1, 1, 0, 0, 0, 1])
    assert class_accuracy(BrightnessClassifier(), images, requested) == pytest.approx(4 / 6)
    assert class_accuracy(lambda x: BrightnessClassifier()(x), images, torch.tensor([1, 1, 1, 0, 0, 0])) == 1.0


def test_metrics_name_wrong_inputs():
    with pytest.raises(GenloomError, match="same D"):
        frechet_distance(torch.randn(10, 4), torch.randn(10, 5))
    with pytest.raises(GenloomError, match="at least 2"):
        kernel_inception_distance(torch.randn(10, 4), torch.randn(1, 4))
    with pytest.raises(GenloomError, match="int64"):
        class_accuracy(BrightnessClassifier(), torch.zeros(2, 1, 8, 8), torch.tensor([0.0, 1.0]))
    with pytest.raises(GenloomError, match=r"labels must lie in \[0, 2\), got values from 0 to 5"):
        train_feature_classifier(torch.zeros(6, 1, 8, 8), torch.arange(6), 2, steps=1, progress=False)
    with pytest.raises(GenloomError, match="plain folder name"):
        feature_classifier("../escape", torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64), 2)


# -- the feature classifier --------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 8 - 1     # (1797, 1, 8, 8) in [-1, 1]
    return images, torch.tensor(data.target, dtype=torch.int64)


@pytest.fixture(scope="module")
def digits_classifier(digits, tmp_path_factory):
    images, labels = digits
    cache = tmp_path_factory.mktemp("features")
    model = feature_classifier("digits-test", images, labels, 10, cache_dir=cache, steps=120, progress=False)
    return model, cache


def test_feature_classifier_learns_digits(digits_classifier):
    model, _ = digits_classifier
    assert model.config.widths == (32, 64, 128)
    assert model.holdout_accuracy > 0.95     # measured on 180 digits that training never saw


def test_feature_classifier_cache_round_trips(digits, digits_classifier, monkeypatch):
    images, labels = digits
    model, cache = digits_classifier
    folder = cache / "image-features" / "digits-test"
    info = json.loads((folder / "model.json").read_text())
    assert info["holdout_accuracy"] == model.holdout_accuracy and "conv3x3" in info["architecture"]
    assert (folder / "model.safetensors").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded")
    monkeypatch.setattr(image_eval, "train_feature_classifier", no_training)
    again = feature_classifier("digits-test", images, labels, 10, cache_dir=cache)
    assert again.holdout_accuracy == model.holdout_accuracy
    assert torch.equal(again.features(images[:64]), model.features(images[:64]))
    with pytest.raises(CheckpointError, match="cache key"):
        feature_classifier("digits-test", images, labels, 12, cache_dir=cache)


def test_evaluate_images_separates_real_digits_from_noise(digits, digits_classifier):
    images, labels = digits
    model, _ = digits_classifier
    real, real_labels, held, held_labels = images[:1000], labels[:1000], images[1000:1400], labels[1000:1400]
    good = evaluate_images(held, held_labels, real, real_labels, model, 10, data_name="digits", kid_subsets=5)
    noise = torch.rand(400, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bad = evaluate_images(noise, held_labels, real, real_labels, model, 10, data_name="digits", kid_subsets=5)
    assert good.fid < bad.fid / 10 and good.kid < bad.kid / 10
    assert good.precision > 0.8 > bad.precision and good.accuracy > 0.9 > bad.accuracy
    summary = good.summary()
    assert good.fid_name == "FID-digits" and "FID-digits" in summary and "not the standard FID" in summary
    assert good.fid_inception is None and "standard" not in summary.splitlines()[-1]

    class PixelFeatures(nn.Module):   # stands in for the Inception: evaluate_images only calls .features
        def __init__(self):
            super().__init__()
            self.unused = nn.Parameter(torch.zeros(1))

        def features(self, images):
            return images.flatten(1)
    unconditional = evaluate_images(held, None, real, None, model, 10, inception=PixelFeatures(), kid_subsets=2)
    assert unconditional.accuracy is None and unconditional.real_accuracy is None
    assert unconditional.fid_inception == pytest.approx(frechet_distance(real.flatten(1), held.flatten(1)))
    assert "FID: " in unconditional.summary() and "class accuracy" not in unconditional.summary()


def test_feature_classifier_handles_32x32_rgb():
    config = FeatureClassifierConfig.for_images(3, 32, 36)
    assert config.widths == (16, 32, 64, 128)
    images = torch.rand(72, 3, 32, 32) * 2 - 1
    model = train_feature_classifier(images, torch.arange(72) % 36, 36, steps=3, progress=False)
    assert model.features(images[:5]).shape == (5, 128) and model(images[:5]).shape == (5, 36)
    with pytest.raises(GenloomError, match=r"\(N, 3, 32, 32\)"):
        model.features(torch.zeros(2, 1, 8, 8))
    assert FeatureClassifier(FeatureClassifierConfig.for_images(1, 16, 10)).feature_dim == 128


# -- the standard FID Inception ----------------------------------------------------------------

def test_inception_matches_pytorch_fid_on_the_same_weights(tmp_path, monkeypatch):
    try:
        fid_inception = pytest.importorskip("pytorch_fid.inception")
    except RuntimeError as e:  # a torchvision built for another torch fails to import this way
        pytest.skip(f"pytorch-fid's torchvision does not import: {e}")
    # The only download in pytorch-fid: replace the weights URL by random weights of the same network.
    monkeypatch.setattr(fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: fid_inception._inception_v3(
        num_classes=1008, aux_logits=False, weights=None).state_dict())
    torch.manual_seed(0)
    reference = fid_inception.InceptionV3([3], resize_input=True, normalize_input=False, use_fid_inception=True)
    # Random batch-norm parameters and statistics from real activations, so every layer matters.
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
            nn.init.normal_(module.weight, 1.0, 0.2)
            nn.init.normal_(module.bias, 0.0, 0.2)
    with torch.no_grad():
        reference.train()(torch.rand(2, 3, 32, 32) * 2 - 1)
    reference.eval()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "wrapper.safetensors"))
    ours = load_inception(tmp_path / "wrapper.safetensors")

    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = reference(images)[0].flatten(1)                     # (2, 2048)
        gray = torch.rand(1, 1, 32, 32) * 2 - 1
        expected_gray = reference(gray.repeat(1, 3, 1, 1))[0].flatten(1)
    assert expected.std() > 0.05
    torch.testing.assert_close(ours.features(images), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.features(gray), expected_gray, atol=1e-4, rtol=1e-4)

    # pytorch-fid's unwrapped `fid_inception_v3()` names (with its 1008-class head) load as well.
    unwrapped = fid_inception.fid_inception_v3().state_dict()
    save_file({k: v.contiguous() for k, v in unwrapped.items()}, str(tmp_path / "plain.safetensors"))
    loaded = load_inception(tmp_path / "plain.safetensors").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in unwrapped.items() if k in loaded)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inception")
    weights = {k: v.contiguous() for k, v in InceptionFeatures().state_dict().items()}
    save_file(weights, str(folder / "good.safetensors"))
    return folder, weights


def test_load_inception_explains_bad_files(inception_weights):
    folder, weights = inception_weights
    assert isinstance(load_inception(folder / "good.safetensors"), InceptionFeatures)
    with pytest.raises(CheckpointError, match="not found"):
        load_inception(folder / "absent.safetensors")
    (folder / "pt_inception.pth").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="never loads"):
        load_inception(folder / "pt_inception.pth")
    (folder / "garbage.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_inception(folder / "garbage.safetensors")
    broken = {k: v for k, v in weights.items() if not k.startswith("Mixed_7c.")}
    broken["Mixed_5b.branch1x1.conv.weight"] = torch.zeros(3, 3, 1, 1)
    save_file(broken, str(folder / "broken.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensors: Mixed_7c\.branch1x1\.conv\.weight.*"
                                              r"wrong shapes: Mixed_5b\.branch1x1\.conv\.weight \(3, 3, 1, 1\)"):
        load_inception(folder / "broken.safetensors")
    save_file({**weights, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)},
              str(folder / "imagenet.safetensors"))
    with pytest.raises(CheckpointError, match="torchvision's ImageNet"):
        load_inception(folder / "imagenet.safetensors")
