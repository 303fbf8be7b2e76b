"""Issue 27's context figures: passkey retrieval and perplexity by position up to 8x the training context for a
model that learned retrieval at 128 tokens (the passkey recipe), with each rotary scaling applied at eval time
(no fine-tune) and after a short fine-tune at 4x the context with that scaling (the passkey-yarn recipe with
model.rope_scaling set).

It does the pieces missing under --out (of one --stage, or all): train the base (train), fine-tune it with none
/ linear / ntk / yarn (finetune), evaluate each with --task context (eval); then it writes OUT/context.json and
the Markdown table OUT/context.md from the reports there. On a shared machine, one stage per lock (each < 15 min):

    flock /tmp/genloom-heavy.lock nice -n 10 env OMP_NUM_THREADS=1 python bench/passkey_bench.py --stage train
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from genloom import api, load  # noqa: E402
from genloom.text.limits import write_report  # noqa: E402

SCALINGS = ("none", "linear", "ntk", "yarn")


def steps_of(run: Path) -> int:
    state = run / "train_state.json"
    return json.loads(state.read_text()).get("step", 0) if state.is_file() else 0


def pieces(out: Path, args) -> list[tuple[str, str, Path, callable]]:
    """(stage, what, the file it leaves, how) for every piece, in order."""
    base = out / "base"
    todo = [("train", "train passkey", base / "model.safetensors",
             lambda: api.train("passkey", out=base, max_time=args.max_time,
                               overrides=[f"train.batch_size={args.batch_size}", f"train.max_steps={args.steps}"]))]
    for kind in SCALINGS:
        run = out / f"ft-{kind}"
        todo.append(("finetune", f"finetune passkey-yarn, rope_scaling={kind}", run / "model.safetensors",
                     lambda run=run, kind=kind: api.finetune(
                         "passkey-yarn", base, out=run, max_time=args.ft_time,
                         overrides=[f"model.rope_scaling={kind}", f"train.max_steps={args.ft_steps}"])))
    for run in (base, *(out / f"ft-{kind}" for kind in SCALINGS)):
        report = out / f"context-{run.name}.json"
        todo.append(("eval", f"eval --task context {run.name}", report,
                     lambda run=run, report=report: write_report(
                         api.evaluate(load(run), task="context", num_samples=args.keys, progress=False), report)))
    return todo


def table(out: Path) -> str:
    """The Markdown table of every report in `out`: one row per (model, rotary setting)."""
    rows = ["| model | rotary frequencies | ppl block 1 | 2 | 4 | 8 | passkey 1x | 2x | 4x | 8x |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    summary = {}
    for name in ["base", *(f"ft-{k}" for k in SCALINGS)]:
        path = out / f"context-{name}.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        summary[name] = report
        run = out / name
        label = (f"trained at 128 ({steps_of(run)} steps)" if name == "base" else
                 f"+ {steps_of(run)} steps at 512, {name[3:]}")
        for setting, r in report["scalings"].items():
            ppl = r["perplexity_by_block"]
            keys = [r["passkey"].get(m) for m in ("1", "2", "4", "8")]
            rows.append(f"| {label} | {setting} | " + " | ".join(f"{ppl[i]:.2f}" for i in (0, 1, 3, 7)) + " | "
                        + " | ".join("n/a" if k is None else f"{100 * k:.0f}%" for k in keys) + " |")
    (out / "context.json").write_text(json.dumps(summary, indent=2) + "\n")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/out/passkey"))
    parser.add_argument("--stage", choices=("train", "finetune", "eval", "table", "all"), default="all",
                        help="which pieces to do (table: only write the table from the reports there)")
    parser.add_argument("--max-time", type=float, default=480, help="seconds of base training")
    parser.add_argument("--steps", type=int, default=3000, help="the base's step limit (the schedule follows --max-time)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ft-steps", type=int, default=200, help="fine-tuning steps at 4x the context")
    parser.add_argument("--ft-time", type=float, default=420, help="seconds per fine-tune at most")
    parser.add_argument("--keys", type=int, default=20, help="passkeys per length")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for stage, what, leaves, how in pieces(args.out, args):
        if leaves.is_file() or args.stage not in (stage, "all"):
            continue
        if stage == "eval" and not (leaves.parent / leaves.stem.removeprefix("context-") / "model.safetensors").is_file():
            continue                                  # its run is not there (yet)
        started = time.time()
        how()
        print(f"{what}: {time.time() - started:.0f} s", flush=True)
    markdown = table(args.out)
    (args.out / "context.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
