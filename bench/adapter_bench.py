"""What serving LoRA adapters per row costs inside continuous batching (issue 24, part 7).

    python bench/adapter_bench.py [--rows 8] [--steps 40] [--rank 4] [--threads 1]

One batch of `rows` rows (a 32-token prompt each) per case through `genloom.lm.batching.ContinuousBatch`,
on the shakespeare-char recipe's architecture (6 layers, d_model 384, random weights: speed does not depend
on them), adapters of rank `rank` on every attention projection (qkv and proj, as the shakespeare-char-lora
recipe). The cases take decoding steps in turn (one step of each, `steps` rounds), so a busy machine slows
them alike; each case's figure is its median step time. Cases:
  plain        no adapter layers at all
  base rows    adapter layers present, every row on the base (what a server with adapters pays for requests
               that name none)
  one adapter  every row on the same adapter (routed as a whole batch: one extra low-rank matmul per layer)
  4 adapters   rows split evenly over 4 adapters (each layer gathers each adapter's rows)
  per row      every row its own adapter
Prints decoding tokens/s and the ratio to `plain`; writes bench/out/adapters.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from genloom.lm.batching import ContinuousBatch, Sequence  # noqa: E402
from genloom.lm.decoding import Sampling  # noqa: E402
from genloom.lm.transformer import Transformer, TransformerConfig  # noqa: E402
from genloom.nn.lora import add_adapter  # noqa: E402


def batch_of(model, routes: list[str | None]) -> ContinuousBatch:
    """A prefilled batch whose row i uses adapter routes[i]."""
    rows = [Sequence(list(range(1 + i, 33 + i)), Sampling(temperature=0.0), torch.Generator().manual_seed(i),
                     adapter=route) for i, route in enumerate(routes)]
    batch = ContinuousBatch(model)
    batch.add(rows)
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=65, block_size=256)
    plain = Transformer(config).eval()
    adapted = Transformer(config).eval()
    adapted.load_state_dict(plain.state_dict())
    names = [f"a{i}" for i in range(args.rows)]
    for name in names:
        add_adapter(adapted, name, ["*.attn.qkv", "*.attn.proj"], args.rank, 2.0 * args.rank)
    with torch.no_grad():                      # B starts at zero: give the adapters real updates
        for p in adapted.parameters():
            if p.shape and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    n = args.rows
    cases = {"plain": (plain, [None] * n), "base rows": (adapted, [None] * n), "one adapter": (adapted, ["a0"] * n),
             "4 adapters": (adapted, [names[i % 4] for i in range(n)]), "per row": (adapted, names[:n])}
    batches = {case: batch_of(model, routes) for case, (model, routes) in cases.items()}
    timings: dict[str, list[float]] = {case: [] for case in cases}
    for round_ in range(args.steps + 2):                                   # two rounds to warm up
        for case, batch in batches.items():
            start = time.perf_counter()
            with torch.no_grad():
                batch.step()
            if round_ >= 2:
                timings[case].append(time.perf_counter() - start)
    base = statistics.median(timings["plain"])
    rows = [{"case": case, "tokens/s": round(n / statistics.median(t), 1),
             "vs plain": round(base / statistics.median(t), 3)} for case, t in timings.items()]
    print(f"| case ({n} rows, rank {args.rank}, torch threads {torch.get_num_threads()}) | tokens/s | vs plain |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row['tokens/s']} | {row['vs plain']} |")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapters.json").write_text(json.dumps({"args": vars(args), "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
