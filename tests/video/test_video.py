"""Video: the moving-digits generator, the space-time denoiser's temporal layers, clips in and out, bad input,
and a tiny model trained, sampled and extended end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import genloom
from genloom.cli import app
from genloom.core.errors import DataError, GenloomError
from genloom.media.video import read_clip, save_clip
from genloom.video.data import (
    DIRECTION_NAMES,
    DIRECTIONS,
    _digit_images,
    moving_digits,
    moving_glyphs,
    parse_video_prompt,
)
from genloom.video.eval import motion_directions
from genloom.video.model import VideoDiT, VideoDiTConfig


def test_moving_digits_stay_in_frame_and_move_as_labelled():
    sprites, sprite_labels = _digit_images()
    for frames, size in ((8, 16), (16, 16), (8, 24)):
        clips, classes, attributes = moving_digits(200, frames, size, seed=1)
        assert clips.shape == (200, frames, size, size) and clips.dtype == np.uint8
        for clip, label, a in zip(clips, classes, attributes):
            assert label == a["digit"] * 4 + DIRECTION_NAMES.index(a["direction"])
            assert a["digit"] == sprite_labels[a["sprite"]]
            first_step = np.subtract(a["path"][1], a["path"][0])
            assert tuple(np.sign(first_step)) == DIRECTIONS[a["direction"]]        # moves as labelled
            for f, (r, c) in enumerate(a["path"]):
                assert 0 <= r <= size - 8 and 0 <= c <= size - 8                    # inside the frame
                assert (clip[f, r:r + 8, c:c + 8] == sprites[a["sprite"]]).all()   # the digit is drawn there
                assert clip[f].sum() == sprites[a["sprite"]].sum()                 # and nothing else
    _, _, attributes = moving_digits(50, 16, 16, seed=2)                           # long clips bounce
    assert any(len({p[0] for p in a["path"]}) < len(a["path"]) and a["direction"] in ("up", "down") or
               len({p[1] for p in a["path"]}) < len(a["path"]) for a in attributes)


def test_moving_glyphs_move_turn_and_resize_as_labelled():
    from genloom.images.data import GLYPH_CHARACTERS

    clips, classes, attributes = moving_glyphs(60, 8, 32, seed=4)
    assert clips.shape == (60, 8, 32, 32, 3)
    gray = torch.from_numpy(clips.max(-1)).float()[:, None] / 127.5 - 1
    assert motion_directions(gray) == [a["direction"] for a in attributes]
    for clip, label, a in zip(clips, classes, attributes):
        assert label == GLYPH_CHARACTERS.index(a["char"]) * 4 + DIRECTION_NAMES.index(a["direction"])
        assert a["char"] in a["caption"] and a["direction"] in a["caption"] and a["colour"] in a["caption"]
        assert all(frame.any() for frame in clip)                                # the glyph is in every frame
        assert all(0 <= r < 32 and 0 <= c < 32 for r, c in a["path"])           # its centre stays inside


def test_motion_directions_read_real_clips_right():
    clips, classes, attributes = moving_digits(100, 8, 16, seed=3)
    tensor = torch.from_numpy(clips).float()[:, None] / 127.5 - 1
    assert motion_directions(tensor) == [a["direction"] for a in attributes]


def test_prompts_name_a_digit_and_a_direction():
    classes = [f"{d} {direction}" for d in range(10) for direction in DIRECTIONS]
    assert parse_video_prompt("the digit 3 moving right", classes) == classes.index("3 right")
    assert parse_video_prompt("7 up", classes) == classes.index("7 up")
    with pytest.raises(DataError, match="a digit \\(or letter\\) and a direction"):
        parse_video_prompt("a cat", classes)
    letters = ["K left", "K right", "A up"]
    assert parse_video_prompt("a red letter K moving right, turning", letters) == 1


def _randomise(module, prefix_skip=None):
    for name, p in module.named_parameters():
        if prefix_skip is None or not name.startswith(prefix_skip):
            torch.nn.init.normal_(p, std=0.05)


def test_temporal_layers_start_as_the_identity():
    torch.manual_seed(0)
    model = VideoDiT(VideoDiTConfig(image_size=16, channels=1, frames=8, num_classes=40, d_model=64, n_layer=2,
                                    n_head=4, patch_size=2))
    _randomise(model, prefix_skip="temporal")               # spatial blocks trained, temporal ones fresh
    frame = torch.randn(2, 1, 1, 16, 16)
    clip = frame.expand(2, 1, 8, 16, 16).contiguous()
    t, y = torch.tensor([10.0, 500.0]), torch.tensor([3, 40])
    out = model(clip, t, y)
    assert out.abs().mean() > 0.01
    assert torch.allclose(out, out[:, :, :1].expand_as(out), atol=1e-5)     # identical frames stay identical
    mixed = torch.randn(2, 1, 8, 16, 16)                                      # and each frame is its own
    alone = torch.cat([model(mixed[:, :, f:f + 1].expand(2, 1, 8, 16, 16), t, y)[:, :, :1] for f in range(8)], 2)
    assert torch.allclose(model(mixed, t, y), alone, atol=1e-5)
    _randomise(model.temporal)                                                # trained temporal layers mix frames
    assert not torch.allclose(model(clip, t, y), model(clip, t, y)[:, :, :1].expand_as(out), atol=1e-3)


def test_clips_are_written_as_gif_and_strip_and_read_back(tmp_path):
    clip = torch.linspace(-1, 1, 8)[None, :, None, None].expand(1, 8, 16, 16).clone()
    paths = save_clip(clip, tmp_path / "ramp", scale=2)
    gif, strip = paths[0], paths[1]
    with Image.open(gif) as image:
        assert image.n_frames == 8 and image.size == (32, 32)
    assert Image.open(strip).size[0] > 8 * 32
    back = read_clip(gif, 8, 16, 1)
    assert back.shape == (8, 16, 16, 1)
    assert np.abs(back[:, :, :, 0].mean((1, 2)) - ((clip[0, :, 0, 0].numpy() + 1) * 127.5)).max() < 3


def test_bad_clips_are_reported(tmp_path):
    bad = tmp_path / "broken.gif"
    bad.write_bytes(b"GIF89a" + bytes(50))
    with pytest.raises(DataError, match="broken.gif: cannot be read as a video"):
        read_clip(bad, 8, 16, 1)
    short = tmp_path / "short.gif"
    save_clip(torch.stack([torch.zeros(1, 16, 16), torch.ones(1, 16, 16)], 1), tmp_path / "short")
    with pytest.raises(DataError, match="2 frame\\(s\\); at least 8"):
        read_clip(short, 8, 16, 1)
    with pytest.raises(DataError, match="not a clip"):
        read_clip(tmp_path / "notes.txt", 8, 16, 1)


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("video") / "run"
    genloom.train("moving-digits", out=out, overrides=[
        "data.count=120", "model.d_model=32", "model.n_layer=1", "model.n_head=2", "train.max_steps=4",
        "train.batch_size=4", "train.compile=false", "train.eval_interval=4", "objective.sample_steps=2"])
    return out


def test_a_video_model_generates_and_extends_clips(video_run, tmp_path):
    model = genloom.load(video_run)
    assert isinstance(model, genloom.VideoModel)
    clips = model.generate(["the digit 3 moving right", "the digit 5 moving up"], num_samples=2, seed=0, steps=2)
    assert clips.shape == (4, 1, 8, 16, 16) and clips.min() >= -1 and clips.max() <= 1
    again = model.generate("the digit 3 moving right", num_samples=2, seed=0, steps=2)
    assert torch.allclose(again, clips[:2])
    given, _ = moving_digits(1, 8, 16, seed=5)[:2]
    footage = torch.from_numpy(given).float()[:, None] / 127.5 - 1
    extended = model.generate("the digit 3 moving right", seed=0, steps=2, init_video=footage[0], context_frames=3)
    assert torch.equal(extended[0, :, :3], footage[0, :, :3])                  # the given frames are kept
    longer = model.generate("the digit 3 moving right", seed=0, steps=2, frames=12)
    assert longer.shape[2] == 12
    with pytest.raises(GenloomError, match="fewer than --context-frames"):
        model.generate("3 right", init_video=footage[0, :, :2], context_frames=3, steps=2)
    with pytest.raises(GenloomError, match="this model makes 16x16"):
        model.generate("3 right", init_video=torch.zeros(1, 8, 24, 24), context_frames=2, steps=2)
    with pytest.raises(GenloomError, match="needs --init-video"):
        model.generate("3 right", context_frames=2, steps=2)
    between = model.generate("3 right", seed=0, steps=2, init_video=footage[0], context_frames=2,
                             end_video=footage[0], end_frames=2)                 # the frames between two given ones
    assert torch.equal(between[0, :, :2], footage[0, :, :2]) and torch.equal(between[0, :, 6:], footage[0, :, 6:])
    assert not torch.equal(between[0, :, 2:6], footage[0, :, 2:6])
    with pytest.raises(GenloomError, match="at least one frame"):
        model.generate("3 right", init_video=footage[0], context_frames=4, end_video=footage[0], end_frames=4, steps=2)
    with pytest.raises(GenloomError, match="leave out --frames"):
        model.generate("3 right", end_video=footage[0], frames=12, steps=2)


def test_generate_video_cli_writes_gifs_and_strips(video_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["generate", "video", "--checkpoint", str(video_run), "--prompt",
                                 "the digit 3 moving right", "--num-samples", "2", "--seed", "4", "--steps", "2",
                                 "--out", str(tmp_path / "v")])
    assert result.exit_code == 0, result.output
    for seed in (4, 5):
        for suffix in ("gif", "png"):
            assert (tmp_path / "v" / f"the-digit-3-moving-right-{seed}.{suffix}").is_file()
    clip = tmp_path / "given.gif"
    save_clip(torch.from_numpy(moving_digits(1, 8, 16, seed=0)[0][0]).float()[None] / 127.5 - 1, clip.with_suffix(""))
    extended = runner.invoke(app, ["generate", "video", "--checkpoint", str(video_run), "--prompt", "3 right",
                                   "--init-video", str(clip), "--context-frames", "2", "--steps", "2", "--seed", "0",
                                   "--out", str(tmp_path / "e")])
    assert extended.exit_code == 0, extended.output
    end = tmp_path / "end.png"                                                 # a single picture ends the clip
    Image.fromarray(moving_digits(1, 8, 16, seed=1)[0][0, -1]).save(end)
    between = runner.invoke(app, ["generate", "video", "--checkpoint", str(video_run), "--prompt", "3 right",
                                  "--init-video", str(clip), "--context-frames", "2", "--end-video", str(end),
                                  "--steps", "2", "--seed", "0", "--out", str(tmp_path / "b")])
    assert between.exit_code == 0, between.output
    assert (tmp_path / "b" / "3-right-0.gif").is_file()
    bad = runner.invoke(app, ["generate", "video", "--checkpoint", str(video_run), "--prompt", "a cat"])
    assert bad.exit_code != 0 and "and a direction" in bad.output


def test_frames_trained_as_separate_images_do_not_see_each_other():
    torch.manual_seed(0)
    model = VideoDiT(VideoDiTConfig(image_size=8, channels=1, frames=4, num_classes=0, patch_size=4, d_model=32,
                                    n_layer=2, n_head=2))
    for p in model.parameters():                                       # wake the zero-initialised gates
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 1, 4, 8, 8), torch.tensor([300.0, 300.0])
    changed = x.clone()
    changed[:, :, 3] += 1.0                                            # only the last frame differs
    independent = torch.tensor([True, False])
    a, b = model(x, t, independent=independent), model(changed, t, independent=independent)
    assert torch.allclose(a[0, :, :3], b[0, :, :3], atol=1e-6)         # separate images: frames 0-2 unchanged
    assert not torch.allclose(a[1, :, :3], b[1, :, :3], atol=1e-4)     # a clip: the temporal blocks mix frames
