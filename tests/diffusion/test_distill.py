"""Few-step distillation: a 2-step student follows its teacher's many-step samples far better than the teacher
itself does in 2 steps; the distilled checkpoint opens and samples in its steps by default; bad input."""

import pytest
import torch
from conftest import one_line_error, run_cli

from genloom import api, load
from genloom.core.errors import GenloomError
from genloom.diffusion.sampling import generate_images

pytest.importorskip("sklearn")

TINY = [
    "model.base_channels=16", "model.channel_mults=1,2", "model.blocks_per_level=1", "model.attention_resolutions=4",
    "train.batch_size=32", "train.max_steps=80", "train.warmup_steps=5", "train.eval_interval=1000",
    "train.eval_batches=1", "train.log_interval=10", "train.progress=false", "train.compile=false",
    "train.precision=fp32", "train.lr=2e-3", "objective.samples_per_class=1", "objective.sample_steps=8",
]
HELD_OUT = 10 ** 6                    # seeds of the comparison, far from the pairs' seeds 0 .. pairs - 1
LABELS = [i % 10 for i in range(40)]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow") / "teacher"
    api.train("digits-flow", out=out, overrides=TINY)
    return out


def draw(model_dir, steps: int) -> torch.Tensor:
    handle = load(model_dir)
    return generate_images(handle.model, handle.schedule, LABELS, len(LABELS), HELD_OUT, "euler", steps, 1.0)


# (method, its options, the largest mean squared distance to the teacher's 8-step samples, as a fraction of the
# teacher's own at 2 steps). Measured here: reflow 0.70, progressive 0.19 (this tiny budget favours
# progressive distillation; bench/flow_bench.py compares them at full size).
@pytest.mark.parametrize("method, options, largest", [
    ("reflow", dict(pairs=512, train_steps=120), 0.85),
    ("progressive", dict(pairs=256, train_steps=40, rounds=2), 0.4),
])
def test_a_two_step_student_follows_the_teachers_many_step_samples(teacher, tmp_path, method, options, largest):
    out = api.distill(teacher, tmp_path / method, steps=2, method=method, batch_size=64, progress=False, **options)
    reference = draw(teacher, 8)                                    # the teacher's own sampler, 8 steps
    undistilled = (draw(teacher, 2) - reference).pow(2).mean().item()
    distilled = (draw(out, 2) - reference).pow(2).mean().item()
    assert distilled < largest * undistilled, (distilled, undistilled)


def test_the_cli_writes_a_checkpoint_that_samples_in_its_steps(teacher, tmp_path):
    out = tmp_path / "two"
    result = run_cli("distill", "--from", str(teacher), "--steps", "2", "--out", str(out), "--pairs", "128",
                     "--train-steps", "5", "--batch-size", "32")
    assert result.returncode == 0, result.stderr
    handle = load(out)
    objective = handle.config.objective
    assert (objective.kind, objective.sampler, objective.sample_steps, objective.guidance) == ("flow", "euler", 2, 1.0)
    assert objective.distilled.startswith(f"progressive to 2 Euler steps from {teacher}")   # the default method
    assert handle.labels == load(teacher).labels                     # labels.json came along
    assert handle.samplers == ("euler", "heun")                      # what serve and the CLI accept for it
    calls = []
    handle.generate("3", num_samples=2, seed=0, callback=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 2), (2, 2)]                                 # its 2 steps by default
    wrong = run_cli("generate", "image", "--checkpoint", str(out), "--sampler", "ddpm", "--out", str(tmp_path / "x"))
    one_line_error(wrong, "sampler: 'ddpm' does not work with a flow-matching model", "euler, heun")


def test_distilling_a_diffusion_teacher_by_reflow_gives_a_flow_student(tmp_path):
    api.train("digits-diffusion", out=tmp_path / "eps", overrides=TINY[:-1] + ["train.max_steps=5",
                                                                            "objective.sample_steps=4"])
    out = api.distill(tmp_path / "eps", tmp_path / "student", steps=1, method="reflow", pairs=64, train_steps=3,
                      batch_size=32, progress=False)
    objective = load(out).config.objective
    assert (objective.kind, objective.sample_steps) == ("flow", 1)
    assert "(diffusion, dpmpp_2m 4 steps" in objective.distilled
    with pytest.raises(GenloomError, match="is a diffusion model: progressive distillation here takes flow"):
        api.distill(tmp_path / "eps", tmp_path / "p", method="progressive", pairs=64, train_steps=1, batch_size=32,
                    progress=False)


def test_bad_input_is_one_clear_line(teacher, tmp_path):
    api.train("digits-gan", out=tmp_path / "gan", overrides=[
        "model.generator_channels=16", "model.discriminator_channels=16", "model.mapping_layers=1",
        "train.batch_size=16", "train.max_steps=1", "train.eval_interval=1000", "train.progress=false",
        "train.precision=fp32", "objective.samples_per_class=1"])
    gan = run_cli("distill", "--from", str(tmp_path / "gan"), "--out", str(tmp_path / "x"))
    one_line_error(gan, "objective.kind = 'gan'", "diffusion and flow-matching image models")
    assert not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for options, message in [
        (dict(out=tmp_path / "full"), "already exists and is not empty"),
        (dict(method="lcm"), "distill.method"),
        (dict(teacher_sampler="ddpm"), "teacher must sample deterministically"),
        (dict(source=tmp_path / "nowhere"), "nowhere"),
        (dict(method="progressive", rounds=0), "distill.rounds: must be between 1 and 8"),
    ]:
        with pytest.raises(GenloomError, match=message):
            api.distill(**{"source": teacher, "out": tmp_path / "y", "progress": False, **options})
    assert not (tmp_path / "y").exists()
