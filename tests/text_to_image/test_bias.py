"""The planted colour bias of builtin:scenes, the pixel colour measure, and `genloom eval --task bias` of a
text-to-image model."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import run_cli

from genloom import api
from genloom.core.errors import ConfigError, GenloomError
from genloom.handle import EvalRequest
from genloom.text_to_image.bias import (
    COLOURS,
    evaluate_colour_bias,
    object_colours,
    planted_scenes,
    training_distributions,
    unsaid_prompts,
)
from genloom.text_to_image.data import CaptionedImageDataConfig
from genloom.text_to_image.handle import TextToImageModel, score
from genloom.text_to_image.scenes import (
    Scene,
    SceneObject,
    parse_caption,
    random_scenes,
    render_scenes,
)

SHAPES = ("circle", "square", "triangle")


def planted(**changes) -> CaptionedImageDataConfig:
    values = dict(identities=SHAPES, scenes_count=3000, two_object_fraction=0.0, holdout=False, caption_variants=4,
                  colour_unsaid=0.5, bias_object="circle", bias_colour="red", bias_rate=0.8)
    return CaptionedImageDataConfig(**(values | changes))


def test_the_generator_plants_its_rates_and_balanced_captions_even_out_the_unsaid_colours():
    scenes, captions, unsaid = planted_scenes(planted())
    assert {o.identity for s in scenes for o in s.objects} == set(SHAPES)
    for scene, texts, flags in zip(scenes[:200], captions, unsaid):    # an unsaid colour is missing from the words
        for text, gone in zip(texts, flags):
            assert (parse_caption(text).objects[0].colour is None) == gone[0], text
    data = training_distributions(planted(), "circle")
    assert data["images"]["red"] == pytest.approx(0.8, abs=0.03)
    assert data["unsaid captions"]["red"] == pytest.approx(0.8, abs=0.03)
    assert data["counts"]["unsaid captions"] == pytest.approx(0.5 * 4 * data["counts"]["images"], rel=0.05)
    control = training_distributions(planted(), "square")
    assert all(control["images"][c] == pytest.approx(1 / 6, abs=0.04) for c in COLOURS)
    balanced = training_distributions(planted(bias_mitigation="balanced_captions"), "circle")
    assert balanced["images"] == data["images"]                     # the same images ...
    assert all(balanced["unsaid captions"][c] == pytest.approx(1 / 6, abs=0.06) for c in COLOURS)   # ... even words
    # The default config still draws the plain scenes, unchanged.
    plain = CaptionedImageDataConfig(scenes_count=50)
    assert planted_scenes(plain)[0] == random_scenes(50, 0, 0.5, holdout=False)


def test_bad_bias_options_are_named():
    for changes, key in [({"bias_colour": "pink"}, "data.bias_colour"), ({"holdout": True}, "data.holdout"),
                         ({"bias_object": "star"}, "data.bias_object"), ({"identities": ("circle", "hexagon")},
                                                                         "data.identities"),
                         ({"bias_rate": 1.5}, "data.bias_rate"), ({"path": "builtin:digits"}, "data.path")]:
        with pytest.raises(ConfigError, match=key):
            planted(**changes)
    with pytest.raises(ConfigError, match="data.bias_mitigation"):
        planted(colour_unsaid=0.0, bias_mitigation="balanced_captions")


def test_the_colour_measure_is_exact_on_rendered_scenes():
    scenes = random_scenes(1500, 3, 0.0, holdout=None)        # every object, size, place, colour and background
    pixels = render_scenes(scenes)
    truth = [s.objects[0].colour for s in scenes]
    assert object_colours(pixels) == truth
    assert object_colours(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1) == truth
    blank = np.full((2, 32, 32, 3), 120, np.uint8)             # a grey picture holds no object
    assert object_colours(blank) == [None, None]


def _render_prompts(colour_of):
    """A stand-in model that draws exactly what a prompt says, in `colour_of(identity)` where it says no colour."""
    def generate(prompts, guidance):
        scenes = []
        for p in prompts:
            asked = parse_caption(p)
            o = asked.objects[0]
            scenes.append(Scene((SceneObject(o.identity, o.colour or colour_of(o.identity), o.size or "large",
                                             o.position or "centre"),), asked.background or "white"))
        return torch.from_numpy(render_scenes(scenes)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return generate


def test_amplification_against_models_that_always_or_never_draw_the_planted_colour():
    config = planted(scenes_count=1500)
    prompts = unsaid_prompts("circle", 20, 0)
    assert all(parse_caption(p).objects[0] == SceneObject("circle", None, parse_caption(p).objects[0].size,
                                                          parse_caption(p).objects[0].position) for p in prompts)
    always = evaluate_colour_bias(_render_prompts(lambda i: "red"), config, num_samples=30, progress=False)
    rate = always.figures["planted"]["data_rate_images"]
    assert always.figures["planted"]["model_rate"] == 1
    assert always.figures["planted"]["amplification"] == pytest.approx(1 / rate)
    assert always.figures["planted"]["vs_parity"] == pytest.approx(6)
    assert [r["object"] for r in always.rows] == ["circle", "square", "triangle"]
    never = evaluate_colour_bias(_render_prompts(lambda i: "blue"), config, num_samples=30, guidances=(1.0, 3.0),
                                 progress=False)
    assert never.figures["planted"]["amplification"] == 0 and len(never.rows) == 6
    assert "amplification" in never.summary()


def test_bias_on_a_model_that_cannot_run_it_is_one_clear_line():
    with pytest.raises(GenloomError, match="--pairs"):
        score(SimpleNamespace(), EvalRequest(task="bias", pairs="pairs.csv"))
    digits = SimpleNamespace(config=SimpleNamespace(data=SimpleNamespace(path="builtin:digits")), path="run")
    with pytest.raises(GenloomError, match="needs a builtin:scenes model"):
        TextToImageModel.evaluate_bias(digits)
    with pytest.raises(GenloomError, match="'concept' and 'bias'"):
        score(SimpleNamespace(), EvalRequest(task="context"))


def test_eval_task_bias_writes_a_report_and_a_plot(tmp_path):
    out = tmp_path / "run"
    api.train("scenes-colour-bias", out=out, overrides=[
        "data.scenes_count=120", "model.d_model=32", "model.n_layer=1", "model.n_head=2", "model.text_dim=16",
        "train.max_steps=3", "train.batch_size=8", "train.warmup_steps=1", "train.eval_interval=3",
        "train.eval_batches=1", "train.progress=false", "train.compile=false", "train.precision=fp32",
        "objective.sample_steps=2"])
    report = tmp_path / "bias.json"
    done = run_cli("eval", "--checkpoint", str(out), "--task", "bias", "--num-samples", "3", "--steps", "2",
                   "--report", str(report))
    assert done.returncode == 0, done.stderr
    assert "| circle | 3 |" in done.stdout
    saved = json.loads(report.read_text())
    assert saved["planted"]["object"] == "circle" and len(saved["rows"]) == 3
    assert saved["planted"]["data_rate_images"] == pytest.approx(0.8, abs=0.2)
    assert report.with_suffix(".png").is_file()
