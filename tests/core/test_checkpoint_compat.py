"""Checkpoints written before the layout change (by commit cfaa937) still load and generate the same."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import genloom

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pre-layout"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.fixture()
def old(tmp_path):
    shutil.copytree(FIXTURES, tmp_path / "pre-layout")
    return tmp_path / "pre-layout"


def test_a_text_checkpoint_of_the_old_layout_generates_as_it_did(old):
    model = genloom.load(old / "text")
    assert isinstance(model, genloom.TextModel)
    assert model.generate("ROMEO:", max_new_tokens=40, temperature=0.8, seed=3)[0] == EXPECTED["text_sample"]
    logprobs = model.complete("ROMEO:", max_new_tokens=10, temperature=0.0)[0].logprobs
    assert logprobs == pytest.approx(EXPECTED["text_logprobs"], abs=1e-5)


def test_an_image_checkpoint_of_the_old_layout_generates_as_it_did(old):
    model = genloom.load(old / "digits", ema=False)
    assert isinstance(model, genloom.ImageModel) and model.labels == [str(d) for d in range(10)]
    images = model.generate(["3", "7"], num_samples=2, steps=4, seed=5)
    assert list(images.shape) == EXPECTED["image_shape"]
    assert images.flatten()[:8].tolist() == pytest.approx(EXPECTED["image_first"], abs=1e-5)
    assert float(images.double().sum()) == pytest.approx(EXPECTED["image_sum"], abs=1e-4)
