"""Past one process: FSDP against DDP and one process, resume across world sizes, sharded checkpoints without
pickle, a crash during a sharded save, two "nodes" on loopback, activation checkpointing.

The multi-process runs are slow on 2 cores, so they are few: one 4-process torchrun job and one job of two
torchrun "nodes" (1 process each, c10d rendezvous on 127.0.0.1) that each run several trainings in one process
group (tests/train/fsdp_driver.py); the tests below read what those runs left.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny

from genloom import api, load
from genloom.core import io as ckpt
from genloom.core.errors import ConfigError
from genloom.train.metrics import MetricsLog
from genloom.train.parallel import apply_activation_checkpointing, row_range, shard_units

DRIVER = Path(__file__).with_name("fsdp_driver.py")
TIMEOUT = 240

STEADY = ["train.schedule=constant", "train.warmup_steps=0", "train.eval_interval=4", "train.eval_batches=3",
          "train.micro_batch_size=2"]
DIGITS = ["model.base_channels=16", "model.channel_mults=1,2", "model.blocks_per_level=1",
          "model.attention_resolutions=4", "train.batch_size=8", "train.max_steps=4", "train.eval_interval=4",
          "train.eval_batches=3", "train.log_interval=1", "train.progress=false", "train.compile=false",
          "train.precision=fp32", "objective.samples_per_class=1", "objective.sample_steps=2", "train.ema_decay=0.9"]
GAN = ["model.generator_channels=32", "model.discriminator_channels=16", "model.mapping_layers=1",
       "train.batch_size=8", "train.max_steps=4", "train.eval_interval=4", "train.eval_batches=3",
       "train.log_interval=1", "train.progress=false", "train.precision=fp32", "objective.samples_per_class=1",
       "objective.coverage_samples=0", "objective.r1_gamma=0.1", "objective.r1_interval=2"]


MEASURED = ["model.d_model=128", "model.n_layer=4", "train.batch_size=16", "model.block_size=64", "train.max_steps=2",
            "train.eval_interval=2", "train.eval_batches=1", "train.sample_length=0", "train.warmup_steps=0"]


def curve(run_dir, column="loss"):
    return {int(r["step"]): float(r[column]) for r in MetricsLog.read(Path(run_dir) / "metrics.csv") if r[column]}


def same_curve(a, b, tolerance=1e-5):
    a, b = curve(a), curve(b)
    assert sorted(a) == sorted(b) and a, (a, b)
    assert max(abs(a[s] - b[s]) for s in a) < tolerance, (a, b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plan_file(folder: Path, name: str, cases: list[dict]) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"cases": cases}))
    return path


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args, str(DRIVER)]


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    pytest.importorskip("sklearn")
    root = tmp_path_factory.mktemp("fsdp")
    text = tiny(corpus, *STEADY)
    fsdp = ["train.parallel=fsdp"]

    def case(name, overrides, recipe="shakespeare-char", **extra):
        return {"recipe": recipe, "out": str(root / name), "overrides": overrides, **extra}

    # One process: the references.
    api.train("shakespeare-char", out=root / "one", overrides=text + ["train.max_steps=8"])
    api.train("shakespeare-char", out=root / "one_half", overrides=text + ["train.max_steps=4"])
    adamw = ["train.optimizer=adamw", "train.ema_decay=0.9", "train.max_steps=8"]
    api.train("shakespeare-char", out=root / "one_adamw", overrides=text + adamw)
    lora = text + ["train.max_steps=4", "finetune.lora_rank=2"]
    api.finetune("shakespeare-char-lora", root / "one", out=root / "lora_one", overrides=lora)

    # Four processes: a checkpoint to resume on two; then a run whose rank 1 dies in its second sharded save.
    four = [case("four", text + fsdp + ["train.max_steps=4"]),
            case("uneven", text + fsdp + ["train.batch_size=6", "train.micro_batch_size=0"], expect_error=True),
            case("killed", text + fsdp + ["train.max_steps=8", "train.eval_interval=2"], kill={"rank": 1, "save": 2})]
    started = time.perf_counter()
    killed = subprocess.run(torchrun("--nproc-per-node", "4", "--master-port", str(free_port())) +
                            [str(plan_file(root, "four", four))],
                            capture_output=True, text=True, timeout=TIMEOUT, env=env())
    killed_after = time.perf_counter() - started

    measured = tiny(corpus, *MEASURED)
    # Two "nodes" of one process each, meeting on loopback: FSDP, DDP, resumes on another world size, other models.
    two = [case("fsdp", text + fsdp + ["train.max_steps=8"]),
           case("ddp", text + ["train.parallel=ddp", "train.max_steps=8"]),
           case("fsdp_adamw", text + fsdp + adamw + ["train.activation_checkpointing=true"]),
           case("four", text + fsdp + ["train.max_steps=8"], resume=True),
           case("one_half", text + fsdp + ["train.max_steps=8"], resume=True),
           case("two_half", text + fsdp + ["train.max_steps=4"]),
           case("diffusion_fsdp", DIGITS + fsdp, "digits-diffusion"),
           case("diffusion_ddp", DIGITS + ["train.parallel=ddp"], "digits-diffusion"),
           case("gan_fsdp", GAN + fsdp, "digits-gan"),
           case("gan_ddp", GAN + ["train.parallel=ddp"], "digits-gan"),
           case("lora_fsdp", lora + fsdp, "shakespeare-char-lora", base=str(root / "one")),
           case("fsdp_bf16", text + fsdp + ["train.max_steps=8", "train.precision=bf16", "train.ema_decay=0.9",
                                            "train.activation_checkpointing=true"]),
           case("timed", text + fsdp + ["train.max_steps=100000", "train.eval_interval=100000"], max_time=4),
           case("measured_fsdp", measured + fsdp, measure=True),
           case("measured_ddp", measured + ["train.parallel=ddp"], measure=True)]
    plan = plan_file(root, "two", two)
    port = free_port()
    nodes = [subprocess.Popen(torchrun("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                                       "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "genloom-test") + [str(plan)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()) for _ in range(2)]
    outputs = [node.communicate(timeout=TIMEOUT) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-4000:]

    # Two processes -> one.
    api.train("shakespeare-char", out=root / "two_half", overrides=text + ["train.max_steps=8"], resume=True)
    return {"root": root, "killed": killed, "killed_after": killed_after, "text": text, "measured": measured}


def test_fsdp_ddp_and_one_process_give_the_same_losses(runs):
    root = runs["root"]
    same_curve(root / "one", root / "fsdp")          # Muon (the recipe's optimizer), 2 micro-batches per rank
    same_curve(root / "one", root / "ddp")
    assert curve(root / "one", "val_loss") == pytest.approx(curve(root / "fsdp", "val_loss"), abs=1e-5)
    # AdamW, an EMA copy sharded like the model (validated on), and activation checkpointing under FSDP only
    same_curve(root / "one_adamw", root / "fsdp_adamw")
    assert curve(root / "one_adamw", "val_loss") == pytest.approx(curve(root / "fsdp_adamw", "val_loss"), abs=1e-5)
    # a diffusion model and the GAN's two phases: the same random streams per rank under DDP and FSDP
    same_curve(root / "diffusion_ddp", root / "diffusion_fsdp")
    same_curve(root / "gan_ddp", root / "gan_fsdp")
    # LoRA: only the adapter trains and is saved
    same_curve(root / "lora_one", root / "lora_fsdp")
    assert not (root / "lora_fsdp" / "model.safetensors").exists()
    assert set(ckpt.load_tensors(root / "lora_fsdp" / "adapter.safetensors")) == \
        set(ckpt.load_tensors(root / "lora_one" / "adapter.safetensors"))
    # bf16 gathered weights with fp32 reductions (and an EMA, activation checkpointing, samples with a KV cache)
    bf16 = curve(root / "fsdp_bf16")
    assert max(abs(bf16[s] - value) for s, value in curve(root / "one").items()) < 0.05, bf16
    with ckpt.TensorFile(root / "fsdp_bf16" / "model.safetensors") as file:
        assert {file.dtype(name) for name in file.names()} == {torch.float32}     # the sharded weights stay fp32
    state = json.loads((root / "fsdp" / "train_state.json").read_text())
    assert state["parallel"] == "fsdp" and state["world_size"] == 2
    assert json.loads((root / "fsdp" / "config.json").read_text())["machine"]["parallel"] == "fsdp"
    assert json.loads((root / "ddp" / "config.json").read_text())["machine"]["parallel"] == "ddp"


def test_resume_on_another_world_size_continues_exactly(runs):
    root = runs["root"]
    for resumed in ("four", "one_half", "two_half"):      # 4 -> 2, 1 -> 2, 2 -> 1
        same_curve(root / "one", root / resumed)
    assert [p.name for p in (root / "two_half").glob("train_state*.safetensors")] == ["train_state.safetensors"]
    assert sorted(p.name for p in (root / "four").glob("train_state*.safetensors")) == \
        ["train_state-00000-of-00002.safetensors", "train_state-00001-of-00002.safetensors"]


def test_sharded_runs_leave_a_whole_model_for_every_tool(runs):
    root = runs["root"]
    model = load(root / "fsdp")
    reference = load(root / "one")
    for key, value in reference.model.state_dict().items():
        assert torch.allclose(value, model.model.state_dict()[key], atol=1e-5), key
    assert model.generate("The ", max_new_tokens=8, seed=0) == reference.generate("The ", max_new_tokens=8, seed=0)
    assert (root / "fsdp" / "samples" / "step_0000008.txt").is_file()
    assert load(root / "gan_fsdp").generate("5", num_samples=2, seed=0).shape == (2, 1, 8, 8)
    timed = json.loads((root / "timed" / "train_state.json").read_text())
    assert 0 < timed["step"] < 100000          # --max-time: both ranks stopped at the same step (or it would hang)


def test_no_pickle_anywhere_in_a_sharded_checkpoint(runs):
    """Every file is JSON, text, PNG or a safetensors file whose header and tensors account for every byte."""
    for folder in ("fsdp", "four", "gan_fsdp", "lora_fsdp", "diffusion_fsdp"):
        for path in (runs["root"] / folder).rglob("*"):
            if not path.is_file():
                continue
            raw = path.read_bytes()
            assert not raw.startswith((b"\x80", b"PK\x03\x04")), path          # a pickle or torch.save's zip
            assert b"data.pkl" not in raw and not path.name.endswith((".distcp", ".metadata", ".pt", ".pth")), path
            if path.suffix == ".safetensors":
                with ckpt.TensorFile(path) as file:                             # tiles the file exactly
                    for value in file.metadata.values():
                        assert isinstance(value, str)
            elif path.suffix == ".json":
                json.loads(raw)
            else:
                assert path.suffix in (".csv", ".txt", ".png"), path


def test_a_world_size_that_does_not_divide_the_batch_is_refused_on_every_rank(runs):
    for rank in range(4):
        message = (runs["root"] / f"uneven.error-{rank}.txt").read_text()
        assert message.startswith("ConfigError: train.batch_size=6 must split evenly into 4 process(es)"), message


def test_a_rank_killed_during_a_sharded_save_stops_the_job_and_keeps_the_last_checkpoint(runs):
    killed, root = runs["killed"], runs["root"]
    assert killed.returncode != 0 and runs["killed_after"] < 120, killed.stderr[-3000:]
    assert "rank: 1" in killed.stderr and "Signal 9 (SIGKILL)" in killed.stderr, killed.stderr[-3000:]
    assert json.loads((root / "killed" / "train_state.json").read_text())["step"] == 2
    # the staged half of the second save is ignored; the step-2 checkpoint loads and resumes exactly
    load(root / "killed")
    api.train("shakespeare-char", out=root / "killed", overrides=runs["text"] + ["train.max_steps=8"], resume=True)
    same_curve(root / "one", root / "killed")


def test_activation_checkpointing_gives_the_same_gradients():
    from genloom.lm.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=32, dropout=0.1))
    tokens = torch.randint(0, 50, (3, 16))

    def gradients():
        torch.manual_seed(1)
        model.zero_grad()
        logits = model(tokens)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = gradients()
    names = [n for n, _ in model.named_parameters()]
    assert apply_activation_checkpointing(model) == 2
    assert [n for n, _ in model.named_parameters()] == names          # the checkpoint's names do not change
    checkpointed = gradients()                                         # (dropout replays the same masks)
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


def test_units_and_rows():
    from genloom.gan.model import GAN, GANConfig
    from genloom.lm.transformer import Transformer, TransformerConfig

    tied = Transformer(TransformerConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=32))
    names = [n for n, _ in shard_units(tied)]
    assert names == ["blocks.0", "blocks.1"]          # the tied table (used by the head too) stays with the root
    gan = GAN(GANConfig(image_size=8, channels=1, num_classes=10))
    names = [n for n, _ in shard_units(gan)]
    assert {"generator", "discriminator"} <= set(names) and names.index("generator.blocks.0.0") < names.index("generator")
    for rows in (0, 1, 5, 8):
        for world in (1, 2, 3, 4):
            chunks = list(torch.arange(rows).chunk(world)) if rows else []
            for rank in range(world):
                begin, end = row_range(rows, world, rank)
                expected = chunks[rank].tolist() if rank < len(chunks) else []
                assert list(range(begin, end)) == expected, (rows, world, rank)


def test_fsdp_without_torchrun_is_refused(corpus, tmp_path):
    with pytest.raises(ConfigError, match="train.parallel=fsdp shards the model over the processes of a torchrun job"):
        api.train("shakespeare-char", out=tmp_path / "x", overrides=tiny(corpus, "train.parallel=fsdp"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="train.fsdp_offload=true applies to sharded runs"):
        api.train("shakespeare-char", out=tmp_path / "y", overrides=tiny(corpus, "train.fsdp_offload=true"))


def test_planned_memory_per_process_is_within_15_percent_of_the_measured_peak(runs):
    """`genloom plan`'s figures for 2 processes against the peak of live tensor memory each rank measured."""
    from test_plan import planned

    for parallel in ("fsdp", "ddp"):
        peaks = [json.loads((runs["root"] / f"measured_{parallel}.peak-{rank}.json").read_text())["peak"]
                 for rank in (0, 1)]
        plan = planned("shakespeare-char", runs["measured"], processes=2, parallel=parallel)
        for peak in peaks:
            assert abs(plan - peak) <= 0.15 * peak, (parallel, plan, peaks)


def test_auto_takes_ddp_when_a_whole_copy_fits_and_fsdp_when_not():
    from genloom.train.parallel import choose_parallel

    assert choose_parallel("auto", 4, 10 * 2**30, 16 * 2**30)[0] == "ddp"
    choice, why = choose_parallel("auto", 4, 40 * 2**30, 16 * 2**30)
    assert choice == "fsdp" and "40.0 GB" in why and "16.0 GB" in why and "4 processes" in why
    assert choose_parallel("ddp", 4, 40 * 2**30, 16 * 2**30)[0] == "ddp"     # what the user asked for
    assert choose_parallel("auto", 1, 40 * 2**30, 16 * 2**30)[0] == "none"
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node N"):
        choose_parallel("fsdp", 1, 0, None)
