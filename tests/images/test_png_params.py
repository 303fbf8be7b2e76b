"""Images keep their recipe: PNGs from `genloom generate image` and from the server carry their generation
parameters in text chunks, and `genloom generate image --like FILE.png` redraws the identical pixels (also
with ddpm, whose per-step noise belongs to the whole batch); options given with --like override the PNG's;
a PNG without parameters is one clear error naming the file."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from genloom import api, load
from genloom.cli import app
from genloom.media.image import read_generation_params

T2I = ["data.scenes_count=200", "data.caption_variants=1", "model.base_channels=16", "model.channel_mults=1,2",
       "model.attention_resolutions=8", "model.text_dim=32", "model.text_layers=1", "model.text_heads=2",
       "train.batch_size=8", "train.max_steps=3", "train.eval_interval=3", "train.eval_batches=1",
       "train.progress=false", "train.compile=false", "train.precision=fp32", "objective.sample_steps=2"]
DIGITS = ["model.base_channels=8", "model.channel_mults=1,2", "model.blocks_per_level=1",
          "model.attention_resolutions=4", "train.batch_size=16", "train.max_steps=3", "train.warmup_steps=1",
          "train.eval_interval=3", "train.eval_batches=1", "train.progress=false", "train.compile=false",
          "train.precision=fp32", "objective.samples_per_class=1", "objective.sample_steps=2"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("png")
    api.train("glyphs-text-to-image-unet", out=root / "t2i", overrides=T2I)
    api.train("digits-diffusion", out=root / "digits", overrides=DIGITS)
    return root


def _generate(*args: str) -> str:
    result = CliRunner().invoke(app, ["generate", "image", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


def test_cli_pngs_carry_their_recipe_and_like_redraws_them_pixel_for_pixel(checkpoints, tmp_path):
    digits = checkpoints / "digits"
    _generate("--checkpoint", str(digits), "--label", "3", "--label", "7", "--num-samples", "3", "--steps", "2",
              "--sampler", "ddpm", "--seed", "40", "--out", str(tmp_path / "a"))
    original = tmp_path / "a" / "7_44.png"                     # label-major: 7's second sample, seed 40 + 4
    params = read_generation_params(original)
    assert (params["label"], params["seed"], params["steps"], params["sampler"]) == ("7", 44, 2, "ddpm")
    assert params["checkpoint"] == str(digits.resolve()) and params["kind"] == "image"
    assert params["batch"] == {"labels": ["3", "7"], "num_samples": 3, "seed": 40, "index": 4}
    with Image.open(original) as image:                       # readable chunks beside the JSON
        assert image.text["seed"] == "44" and image.text["sampler"] == "ddpm" and "genloom" in image.text["Software"]
    _generate("--like", str(original), "--out", str(tmp_path / "b"))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["7_44.png"]
    assert np.array_equal(_pixels(tmp_path / "b" / "7_44.png"), _pixels(original))
    assert read_generation_params(tmp_path / "b" / "7_44.png")["batch"] == params["batch"]
    # Overrides: more steps change the pixels; a new seed draws that one image alone.
    _generate("--like", str(original), "--steps", "3", "--out", str(tmp_path / "c"))
    assert not np.array_equal(_pixels(tmp_path / "c" / "7_44.png"), _pixels(original))
    assert read_generation_params(tmp_path / "c" / "7_44.png")["steps"] == 3
    _generate("--like", str(original), "--seed", "9", "--out", str(tmp_path / "d"))
    assert [p.name for p in (tmp_path / "d").glob("*.png") if p.name != "grid.png"] == ["7_9.png"]
    assert read_generation_params(tmp_path / "d" / "7_9.png")["sampler"] == "ddpm"


def test_text_to_image_pngs_and_a_png_without_a_recipe(checkpoints, tmp_path):
    t2i = checkpoints / "t2i"
    _generate("--checkpoint", str(t2i), "--prompt", "a red letter A on the left", "--prompt", "a blue letter B",
              "--negative-prompt", "green", "--num-samples", "2", "--sampler", "ddpm", "--seed", "3",
              "--out", str(tmp_path / "a"))
    original = tmp_path / "a" / "a-blue-letter-B_5.png"
    params = read_generation_params(original)
    assert (params["prompt"], params["negative_prompt"], params["seed"]) == ("a blue letter B", "green", 5)
    _generate("--like", str(original), "--out", str(tmp_path / "b"))
    assert np.array_equal(_pixels(tmp_path / "b" / original.name), _pixels(original))
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    result = CliRunner().invoke(app, ["generate", "image", "--like", str(plain)])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("genloom: error:")]
    assert len(errors) == 1 and str(plain) in errors[0] and "no genloom generation parameters" in errors[0]


def test_a_server_png_redraws_identically_from_the_cli(checkpoints, tmp_path):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from test_serve import Server

    t2i = checkpoints / "t2i"
    server = Server({"scenes": load(t2i)})
    try:
        answer = httpx.post(f"{server.url}/v1/images/generations", timeout=120, json={
            "model": "scenes", "prompt": "a red letter A", "n": 2, "seed": 11, "sampler": "ddpm",
            "negative_prompt": "blue"}).json()
    finally:
        server.stop()
    served = tmp_path / "served.png"
    served.write_bytes(base64.b64decode(answer["data"][1]["b64_json"]))
    params = read_generation_params(served)
    assert (params["model"], params["checkpoint"], params["seed"], params["prompt"]) == ("scenes", "t2i", 12,
                                                                                         "a red letter A")
    result = CliRunner().invoke(app, ["generate", "image", "--like", str(served)])
    assert result.exit_code == 2 and "give --checkpoint DIR" in result.output     # the server names no path
    _generate("--like", str(served), "--checkpoint", str(t2i), "--out", str(tmp_path / "b"))
    redrawn = list((tmp_path / "b").glob("*.png"))
    assert [p.name for p in redrawn] == ["a-red-letter-A_12.png"]
    assert np.array_equal(_pixels(redrawn[0]), np.asarray(Image.open(io.BytesIO(served.read_bytes()))))
