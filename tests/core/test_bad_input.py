"""Issue 29, point 6: bad checkpoints, bad data and absurd sizes give one clear line, fast, not a traceback
or gigabytes of allocation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import one_line_error

import genloom
from genloom.core.errors import GenloomError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pre-layout"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genloom", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def text_run(tmp_path):
    shutil.copytree(FIXTURES / "text", tmp_path / "text")
    return tmp_path / "text"


@pytest.fixture()
def digits_run(tmp_path):
    shutil.copytree(FIXTURES / "digits", tmp_path / "digits")
    return tmp_path / "digits"


@pytest.mark.parametrize("content", ["[1]", "null", "{\"data\": ", "\"text\""])
def test_a_config_json_that_is_not_a_table_is_one_line(text_run, content):
    (text_run / "config.json").write_text(content)
    one_line_error(run_cli("generate", "text", "--checkpoint", str(text_run), "--max-new-tokens", "2"),
                   "config.json")


def test_generate_text_on_an_image_checkpoint_is_one_line(digits_run):
    one_line_error(run_cli("generate", "text", "--checkpoint", str(digits_run)), "is not a text model",
                   "ImageModel")


def test_weights_that_are_not_finite_are_refused(text_run):
    tensors = load_file(text_run / "model.safetensors")
    tensors = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, text_run / "model.safetensors")
    with pytest.raises(GenloomError, match="not finite numbers"):
        genloom.load(text_run)


@pytest.mark.parametrize("key, value", [("d_model", 1_000_000), ("vocab_size", 10**12)])
def test_a_checkpoint_describing_an_enormous_model_is_refused_before_allocating(text_run, key, value):
    config = json.loads((text_run / "config.json").read_text())
    config["model"][key] = value
    if key == "d_model":
        config["model"]["n_head"] = 8
    (text_run / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(GenloomError, match="parameters") as error:
        genloom.load(text_run)
    assert time.perf_counter() - start < 20 and "GB" in str(error.value)


@pytest.mark.parametrize("override, expected", [
    ("model.n_layer=1000000", "model.n_layer: must be from 1 to 1024"),
    ("model.d_model=1000000", "needs about"),
    ("train.batch_size=1000000000", "needs about"),
])
def test_absurd_sizes_fail_fast_with_the_key_named(tmp_path, override, expected):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 200)
    extra = ["--set", "model.n_head=8"] if "d_model" in override else []
    start = time.perf_counter()
    result = run_cli("train", "shakespeare-char", "--out", str(tmp_path / "run"), "--set", f"data.path={corpus}",
                     "--set", "train.compile=false", "--set", override, *extra)
    one_line_error(result, expected)
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_max_memory_refuses_a_run_that_would_fit_the_machine(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 200)
    result = run_cli("train", "shakespeare-char", "--out", str(tmp_path / "run"), "--set", f"data.path={corpus}",
                     "--set", "train.compile=false", "--max-memory", "0.001")
    one_line_error(result, "--max-memory 0.001 GB")


def test_image_data_too_large_for_memory_is_refused(tmp_path):
    result = run_cli("train", "digits-diffusion", "--out", str(tmp_path / "run"), "--set", "data.image_size=100000")
    one_line_error(result, "data.image_size")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_as_data_path_is_refused_not_read(tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    one_line_error(run_cli("train", "shakespeare-char", "--out", str(tmp_path / "run"), "--set",
                           f"data.path={fifo}", timeout=60), "not a regular file")


def test_a_truncated_frame_in_a_clip_folder_names_the_frame(tmp_path):
    from genloom.media.video import read_clip

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((16, 16, 3)) * 255).astype("uint8")).save(folder / f"{i}.png")
    data = (folder / "1.png").read_bytes()
    (folder / "1.png").write_bytes(data[:len(data) // 2])
    with pytest.raises(GenloomError, match="1.png: a frame of"):
        read_clip(folder, 3, 16, 3)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    corpus = root / "tiny.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 200)
    overrides = [f"data.path={corpus}", "train.compile=false", "train.max_steps=2", "model.n_layer=1",
                 "model.d_model=32", "train.batch_size=4", "train.sample_length=0", "train.progress=false"]
    genloom.train("shakespeare-char", out=root / "run", overrides=overrides)
    return root / "run", overrides


@pytest.mark.parametrize("name, damage, expected", [
    ("config.json", lambda text: text[: len(text) // 2], "config.json: not valid JSON"),
    ("train_state.json", lambda text: text[: len(text) // 2], "train_state.json: not valid JSON"),
    ("train_state.json", lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "optimizers"}),
     "missing or wrong: optimizers"),
    ("train_state.json", lambda text: json.dumps({**json.loads(text), "optimizers": {"model": {"param_groups": 3}}}),
     "do not hold this run's optimizer"),
])
def test_resume_of_a_damaged_checkpoint_is_one_line(finished_run, tmp_path, name, damage, expected):
    run, overrides = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / name).write_text(damage((copy / name).read_text()))
    args = [a for o in overrides + ["train.max_steps=3"] for a in ("--set", o)]
    one_line_error(run_cli("train", "shakespeare-char", "--out", str(copy), "--resume", *args), expected)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke showpage\n"


def test_pictures_are_opened_only_in_the_formats_genloom_reads(tmp_path):
    """Pillow picks a decoder by content: an EPS file named .png must not reach Ghostscript."""
    from genloom.images.handle import picture

    (tmp_path / "x.png").write_bytes(EPS)
    with pytest.raises(GenloomError, match="cannot read"):
        picture(tmp_path / "x.png", "init image")
    folder = tmp_path / "images" / "a"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "3.png").write_bytes(EPS)
    from genloom.images.data import ImageData, ImageDataConfig

    data = ImageData(ImageDataConfig(path=str(tmp_path / "images")))
    try:
        data.prepare()
    except GenloomError as error:
        assert "3.png" in str(error)
    else:
        assert data.num_examples("train") + data.num_examples("val") == 3     # the EPS file left out


def test_a_shard_index_cannot_name_files_outside_the_model_folder(tmp_path):
    from genloom.text.convert import import_hf

    hf = tmp_path / "hf"
    hf.mkdir()
    (tmp_path / "outside.safetensors").write_bytes(b"")
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    shutil.copyfile(FIXTURES / "text" / "tokenizer.json", hf / "tokenizer.json")
    (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": "../outside.safetensors"}}))
    with pytest.raises(GenloomError, match="not a plain file name"):
        import_hf(hf, tmp_path / "out")


def test_a_playlist_named_mp4_is_refused_before_ffmpeg(tmp_path):
    from genloom.media.video import check_container

    playlist = tmp_path / "clip.mp4"
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n")
    with pytest.raises(GenloomError, match="not an MP4"):
        check_container(playlist)
    real = tmp_path / "real.mp4"
    real.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(16))
    check_container(real)
