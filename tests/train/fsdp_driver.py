"""Run several trainings in one torchrun job (one process group, joined once), for tests/train/test_fsdp.py.

    torchrun ... tests/train/fsdp_driver.py PLAN.json

PLAN.json: {"cases": [{"recipe", "out", "overrides", "resume", "base"?, "max_time"?, "kill"?: {"rank", "save"},
"measure"?, "expect_error"?}]}. With "expect_error", the case's one-line error is written to OUT.error-RANK.txt and
the next case runs. With "measure", each rank writes the peak of its live tensor memory during the run to
OUT.peak-RANK.json (`genloom.train.plan.LiveTensorMemory`).
With "kill", rank `rank` SIGKILLs itself in the middle of the case's `save`-th checkpoint (its shard of the
optimizer state written, the commit marker not yet), as a crash during a sharded save would.
"""

import contextlib
import json
import os
import signal
import sys

import torch
import torch.distributed as dist

from genloom import api
from genloom.core.errors import GenloomError
from genloom.train import trainer
from genloom.train.plan import LiveTensorMemory


def main() -> None:
    plan = json.loads(open(sys.argv[1]).read())
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    original, saves = trainer.write_state_shard, [0, None]

    def write_then_die(tensors, path, is_main):
        original(tensors, path, is_main)
        saves[0] += 1
        kill = saves[1]
        if kill and dist.get_rank() == kill["rank"] and saves[0] == kill["save"]:
            os.kill(os.getpid(), signal.SIGKILL)

    trainer.write_state_shard = write_then_die
    for case in plan["cases"]:
        saves[0], saves[1] = 0, case.get("kill")
        memory = LiveTensorMemory() if case.get("measure") else contextlib.nullcontext()
        with memory, (contextlib.suppress(GenloomError) if case.get("expect_error") else contextlib.nullcontext()):
            error_file = f"{case['out']}.error-{dist.get_rank()}.txt"
            if case.get("expect_error"):
                with open(error_file, "w") as f:
                    f.write("no error\n")
            if case.get("base"):
                api.finetune(case["recipe"], case["base"], out=case["out"], overrides=case["overrides"],
                             resume=case.get("resume", False))
            else:
                try:
                    api.train(case["recipe"], out=case["out"], overrides=case["overrides"],
                              resume=case.get("resume", False), max_time=case.get("max_time"))
                except GenloomError as error:
                    with open(error_file, "w") as f:
                        f.write(f"{type(error).__name__}: {error}\n")
                    raise
        if case.get("measure"):
            with open(f"{case['out']}.peak-{dist.get_rank()}.json", "w") as f:
                json.dump({"peak": memory.peak}, f)
    dist.barrier()                 # leave together (gloo aborts a process whose peer closed the connection first)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
