"""`genloom plan` against measured memory, and DDP against FSDP on two CPU processes, side by side.

    python bench/scaling_bench.py [--out bench/out/scaling]      # about 40 s of CPU on 2 cores

1. One process, several shakespeare-char shapes (state-heavy, activation-heavy, checkpointed, Llama-style), and
   digits-diffusion and digits-gan:
   the planned peak (`genloom.train.plan.plan_memory`, counted on the meta device) and the measured peak of
   live tensor memory over a whole 3-step run (`LiveTensorMemory`: every storage an operator returns, until
   its last tensor is freed).
2. Two processes (torchrun, gloo): the same for DDP and FSDP per rank, and their speed (tokens/s of the last
   logged steps) as a ratio, in one job (tests/train/fsdp_driver.py).
Results go to OUT/scaling.json and are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASE = ["train.max_steps=3", "train.eval_interval=3", "train.eval_batches=1", "train.sample_length=0",
        "train.warmup_steps=0", "train.log_interval=1", "train.progress=false", "train.precision=fp32",
        "train.compile=false"]
SHAPES = {
    "state (Muon, 3.2M params)": ["model.d_model=256", "model.n_layer=4", "train.batch_size=1", "model.block_size=16"],
    "state (AdamW, 3.2M params)": ["model.d_model=256", "model.n_layer=4", "train.batch_size=1", "model.block_size=16",
                                   "train.optimizer=adamw"],
    "activations (batch 32 x 128)": ["model.d_model=128", "model.n_layer=4", "train.batch_size=32",
                                     "model.block_size=128"],
    "activations, checkpointed": ["model.d_model=128", "model.n_layer=4", "train.batch_size=32",
                                  "model.block_size=128", "train.activation_checkpointing=true"],
    "Llama-style, AdamW + EMA": ["model.d_model=96", "model.n_layer=3", "train.batch_size=16", "model.block_size=256",
                                 "train.optimizer=adamw", "train.ema_decay=0.99", "model.mlp=swiglu",
                                 "model.norm=rmsnorm", "model.position=rope", "model.tie_embeddings=false"],
}
OTHERS = {     # other models: (recipe, overrides)
    "digits-diffusion (UNet), batch 64": ("digits-diffusion", ["train.batch_size=64"]),
    "digits-gan (two phases), batch 64": ("digits-gan", ["train.batch_size=64", "objective.coverage_samples=0"]),
}
TWO = ["model.d_model=128", "model.n_layer=4", "train.batch_size=16", "model.block_size=64", "train.max_steps=8",
       "train.eval_interval=8"]


def planned(overrides: list[str], processes: int, parallel: str, recipe: str = "shakespeare-char") -> int:
    import torch

    from genloom.core import registry
    from genloom.core.config import load_recipe
    from genloom.train.plan import plan_memory
    from genloom.train.trainer import resolve_config

    config = load_recipe(recipe, overrides)
    data = registry.lookup("data", config.data.kind).build(config.data, config)
    data.prepare()
    config = resolve_config(config, data)
    example = data.batch(data.sample_indices(torch.Generator().manual_seed(0), 1))
    model = registry.lookup("model", config.model.kind).build
    objective = registry.lookup("objective", config.objective.kind).build
    t = config.train
    plan = plan_memory(config, lambda: model(config.model, config), lambda: objective(config.objective, config),
                       example, processes, t.micro_batch_size or t.batch_size // processes)
    return plan.total(parallel, t.activation_checkpointing)


def tokens_per_second(run: Path) -> float:
    from genloom.train.metrics import MetricsLog

    rates = [float(r["tokens_per_s"]) for r in MetricsLog.read(run / "metrics.csv") if r.get("tokens_per_s")]
    tail = rates[len(rates) // 2:]
    return sorted(tail)[len(tail) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "scaling")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from genloom import api
    from genloom.train.plan import LiveTensorMemory

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, shape in SHAPES.items():
            overrides = BASE + shape
            with LiveTensorMemory() as memory:
                api.train("shakespeare-char", out=Path(scratch) / name.replace(" ", "_"), overrides=overrides)
            plan = planned(overrides, 1, "ddp")
            rows.append({"case": f"1 process: {name}", "planned": plan, "measured": memory.peak})
        for name, (recipe, extra) in OTHERS.items():
            overrides = BASE + extra
            with LiveTensorMemory() as memory:
                api.train(recipe, out=Path(scratch) / recipe, overrides=overrides)
            rows.append({"case": f"1 process: {name}", "planned": planned(overrides, 1, "ddp", recipe),
                         "measured": memory.peak})
        cases = [{"recipe": "shakespeare-char", "out": str(Path(scratch) / p), "measure": True,
                  "overrides": BASE + TWO + [f"train.parallel={p}"]} for p in ("ddp", "fsdp")]
        plan_path = Path(scratch) / "plan.json"
        plan_path.write_text(json.dumps({"cases": cases}))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(port), str(ROOT / "tests" / "train" / "fsdp_driver.py"), str(plan_path)], check=True, env=env)
        speed = {}
        for case in cases:
            parallel = case["overrides"][-1].split("=")[1]
            plan = planned(case["overrides"], 2, parallel)
            for rank in (0, 1):
                peak = json.loads(Path(f"{case['out']}.peak-{rank}.json").read_text())["peak"]
                rows.append({"case": f"2 processes, {parallel}, rank {rank}", "planned": plan, "measured": peak})
            speed[parallel] = tokens_per_second(Path(case["out"]))
    result = {"cpu": platform.processor() or platform.machine(), "rows": rows, "tokens_per_s": speed,
              "fsdp_over_ddp": speed["fsdp"] / speed["ddp"]}
    (args.out / "scaling.json").write_text(json.dumps(result, indent=2))
    print("| run | planned (MB) | measured peak (MB) | planned / measured |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row['planned'] / 1e6:.1f} | {row['measured'] / 1e6:.1f} | "
              f"{row['planned'] / row['measured']:.2f} |")
    print(f"\nTwo CPU processes (gloo): DDP {speed['ddp']:,.0f} tok/s, FSDP {speed['fsdp']:,.0f} tok/s, "
          f"FSDP/DDP {result['fsdp_over_ddp']:.2f}x")


if __name__ == "__main__":
    main()
