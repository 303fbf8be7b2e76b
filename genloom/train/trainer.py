"""The one training loop. Every family plugs in through a data module, a model and an `Objective`.

Per optimizer step the loop draws a *global* batch of example indices from one generator shared by
all ranks; each rank takes its slice and splits it into micro-batches. So the same recipe gives the
same batches, and the same losses, on one process or under `torchrun --nproc-per-node N`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..core import io as ckpt
from ..core import registry
from ..core.config import RunConfig, read_json
from ..core.errors import CheckpointError, ConfigError, TrainingError
from ..core.fit import lr_schedule
from ..core.machine import cpu_summary, machine_profile
from .ema import EMA
from .finetune import (
    ADAPTER_FILE,
    ADAPTER_JSON,
    adapter_metadata,
    adapter_payload,
    start_from_base,
)
from .checkpoint import (
    StateReader,
    decode_rng,
    load_weights_sharded,
    shard_name,
    stale_state_files,
    state_json,
    write_gathered,
    write_state_shard,
)
from .memory import check_training_fits, estimate_training, training_bytes
from .metrics import MetricsLog, plot_losses
from .optim import build_optimizer, optimizer_from_tensors, optimizer_to_tensors
from .compiling import AutoCompile, compile_for_training, use_persistent_cache
from .parallel import (
    apply_activation_checkpointing,
    apply_fsdp,
    choose_parallel,
    full_tensor,
    is_sharded,
    local_rows,
    set_gradient_sync,
)
from .runtime import Runtime, autocast, choose_precision, setup_runtime

__all__ = ["Trainer", "TrainResult", "lr_factor", "resolve_config"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    step: int
    val_loss: float | None
    elapsed: float
    items_per_second: float
    stopped_early: bool
    sample: str

    def summary(self) -> str:
        val = f", validation loss {self.val_loss:.4f}" if self.val_loss is not None else ""
        stopped = " (stopped early; continue with --resume)" if self.stopped_early else ""
        return f"{self.step} steps in {self.elapsed:.0f} s{val}{stopped}; checkpoint: {self.out_dir}"

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "out_dir": str(self.out_dir)}


def lr_factor(cfg, step: int, time_fraction: float = 0.0) -> float:
    """The learning rate as a fraction of its peak: linear warmup over `warmup_steps`, then decay (`schedule`:
    cosine, linear or constant) to `min_lr_ratio` over the rest of the budget (steps, or wall time when
    `max_time` is set, whichever runs out first). The one schedule of genloom, `core.fit.lr_schedule`."""
    return lr_schedule(step, cfg.max_steps, cfg.warmup_steps, cfg.min_lr_ratio, time_fraction, cfg.schedule)


def read_train_state(path: Path, phases: list[str]) -> dict[str, Any]:
    """train_state.json, checked: a one-line CheckpointError for a truncated file or missing keys."""
    state = read_json(path, "the checkpoint's train state")
    wanted = {"step": int, "tokens": int, "elapsed": (int, float), "optimizers": dict}
    problems = [key for key, kind in wanted.items() if not isinstance(state, dict) or not isinstance(state.get(key), kind)]
    if not problems:
        problems = [f"optimizers.{phase}" for phase in phases if not isinstance(state["optimizers"].get(phase), dict)]
    if problems:
        raise CheckpointError(f"--resume: {path} is not a genloom train state (missing or wrong: "
                              f"{', '.join(problems)}); the checkpoint cannot be continued")
    return state


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def resolve_config(config: RunConfig, data) -> RunConfig:
    """Fill the model values the data decides (vocab_size from the tokenizer)."""
    settings = data.model_settings()
    changes = {}
    for key, value in settings.items():
        current = getattr(config.model, key)
        if current == 0 or current == ():
            changes[key] = value
        elif key == "vocab_size" and current < value:
            raise ConfigError(f"model.vocab_size={current} is smaller than the tokenizer's {value} tokens")
    return config.replace("model", **changes) if changes else config


def _config_differences(saved: dict, current: dict) -> list[str]:
    out = []
    for section in ("data", "model", "objective"):
        for key in sorted(set(saved.get(section, {})) | set(current.get(section, {}))):
            a, b = saved.get(section, {}).get(key), current.get(section, {}).get(key)
            if a != b:
                out.append(f"{section}.{key}: checkpoint {a!r}, now {b!r}")
    return out


class Trainer:
    """Trains `config` into `out_dir` (a checkpoint directory); `resume=True` continues it exactly."""

    def __init__(self, config: RunConfig, out_dir: Path, resume: bool = False, started_at: float | None = None):
        self.config = config
        self.started_at = started_at if started_at is not None else time.time()   # when train.max_time began
        self.out_dir = Path(out_dir)
        self.resume = resume
        self._stop_signal: int | None = None
        self.finetune_info: dict[str, Any] | None = None   # set for runs that start from a checkpoint

    # -- setting up --------------------------------------------------------------------------
    @property
    def lora(self) -> bool:
        return self.config.finetune is not None and self.config.finetune.method == "lora"

    def _check_out_dir(self) -> None:
        if self.config.finetune is not None and not self.config.finetune.base:
            raise ConfigError("this run has a [finetune] section but no base checkpoint: use "
                              "genloom finetune RECIPE --from CHECKPOINT_DIR")
        if self.lora and self.config.train.ema_decay > 0:
            raise ConfigError("train.ema_decay: LoRA runs keep no weight average (set train.ema_decay=0, or use "
                              "finetune.method=full)")
        ckpt.recover(self.out_dir)
        has_checkpoint = (self.out_dir / ckpt.STATE_JSON).is_file()
        if self.resume and not has_checkpoint:
            raise CheckpointError(f"--resume: {self.out_dir} holds no checkpoint to resume "
                                  f"(expected {ckpt.STATE_JSON}, {ckpt.MODEL_FILE} and {ckpt.CONFIG_FILE})")
        if not self.resume and has_checkpoint:
            raise CheckpointError(f"{self.out_dir} already holds a checkpoint; add --resume to continue it, "
                                  "or choose another --out so nothing is overwritten")

    def _build(self, rt: Runtime) -> None:
        cfg = self.config
        torch.manual_seed(cfg.train.seed)
        assets = {}
        if cfg.finetune is not None:          # new inputs are read the way the base model reads them
            from .finetune import data_assets
            assets = data_assets(Path(cfg.finetune.base), cfg.data, cfg.finetune)
        self.data = registry.lookup("data", cfg.data.kind).build(cfg.data, cfg, **assets)
        if rt.is_main:
            self.data.prepare()
        rt.barrier()
        if not rt.is_main:
            self.data.prepare()
        self.config = cfg = resolve_config(cfg, self.data)
        if self.resume:
            saved = read_json(self.out_dir / ckpt.CONFIG_FILE, "the checkpoint's config")
            if not isinstance(saved, dict):
                raise CheckpointError(f"--resume: {self.out_dir / ckpt.CONFIG_FILE} is not a config (a JSON table)")
            differences = _config_differences(saved, json.loads(cfg.to_json()))   # tuples as JSON lists
            if differences:
                raise ConfigError(f"--resume: the recipe differs from the checkpoint in {self.out_dir}: "
                                  + "; ".join(differences))
        build_model = registry.lookup("model", cfg.model.kind).build
        build_objective = registry.lookup("objective", cfg.objective.kind).build
        per_rank = max(1, cfg.train.batch_size // rt.world_size)
        model_fn, objective_fn = lambda: build_model(cfg.model, cfg), lambda: build_objective(cfg.objective, cfg)
        micro_batch = cfg.train.micro_batch_size or per_rank
        estimate = estimate_training(cfg, self.data, model_fn, objective_fn, micro_batch)
        self.parallel, why = self._choose_parallel(rt, estimate)
        check_training_fits(cfg, self.data, model_fn, objective_fn, micro_batch, str(rt.device),
                            shards=rt.world_size if self.parallel == "fsdp" else 1, estimate=estimate)
        self.model = build_model(cfg.model, cfg)
        if cfg.finetune is not None:
            self.finetune_info = start_from_base(self.model, cfg)
        if self.parallel != "fsdp":          # (FSDP moves each rank's shards to the device itself)
            self.model.to(rt.device)
        self.objective = registry.lookup("objective", cfg.objective.kind).build(cfg.objective, cfg)
        if hasattr(self.objective, "setup"):     # e.g. DPO keeps the starting model as its reference
            if self.parallel == "fsdp":
                raise ConfigError(f"train.parallel=fsdp: objective.kind={cfg.objective.kind!r} keeps a whole reference "
                                  "copy of the model, which genloom does not shard; use train.parallel=ddp")
            self.objective.setup(self.model)
        if hasattr(self.objective, "setup_data"):   # e.g. an autoencoder's perceptual network comes from the data
            self.objective.setup_data(self.data)
        self.dtype = choose_precision(cfg.train.precision, rt.device)
        t = cfg.train
        if self.parallel == "fsdp" and t.compile:
            raise ConfigError(f"train.compile={str(t.compile).lower()}: genloom does not compile FSDP-sharded models "
                              "yet; set train.compile=false (or train.parallel=ddp)")
        if t.fsdp_offload and self.parallel != "fsdp":
            kind = "a single process" if self.parallel == "none" else f"{self.parallel} ({why})"
            raise ConfigError(f"train.fsdp_offload=true applies to sharded runs, and this one is {kind}; set "
                              "train.parallel=fsdp under torchrun, or train.fsdp_offload=false")
        if rt.is_main and rt.distributed:
            log.info("parallel: %s (%s)", self.parallel, why)
        self.parallel_reason = why
        # The weight average is copied from the whole model, then sharded like it.
        self.ema = EMA(self.model, t.ema_decay) if t.ema_decay > 0 else None
        if self.parallel == "fsdp":
            for module in [self.model] + ([self.ema.model] if self.ema is not None else []):
                apply_fsdp(module, rt.device, self.dtype, t.fsdp_reshard_after_forward, t.fsdp_offload)
        if t.activation_checkpointing:
            count = apply_activation_checkpointing(self.model)
            if rt.is_main:
                log.info("activation checkpointing: %d blocks recompute their forward pass in the backward pass", count)
        self.optimizers = {phase: build_optimizer(self.model, [p for p in self.objective.phase_parameters(phase, self.model)
                                                               if p.requires_grad], cfg.train, self.dtype)
                           for phase in self.objective.phases}
        for phase, scale in getattr(self.objective, "lr_scales", {}).items():   # e.g. a GAN's two time-scale LRs
            for group in self.optimizers[phase].param_groups:
                group["base_lr"] *= scale
                group["lr"] = group["base_lr"]

        per_rank, remainder = divmod(t.batch_size, rt.world_size)
        micro = t.micro_batch_size or per_rank
        if remainder or per_rank % micro:
            raise ConfigError(f"train.batch_size={t.batch_size} must split evenly into {rt.world_size} process(es) "
                              f"x micro-batches of train.micro_batch_size={micro}")
        self.per_rank, self.micro, self.accumulation = per_rank, micro, per_rank // micro
        self.config = cfg = dataclasses.replace(cfg, machine=self._machine_record(rt, cfg))

    def _machine_record(self, rt: Runtime, cfg: RunConfig) -> dict[str, Any]:
        """What the run measured of its machine and chose from it (kept in config.json)."""
        record: dict[str, Any] = {"precision": "bf16" if self.dtype is not None else "fp32"}
        if rt.distributed:
            record.update(parallel=self.parallel, parallel_reason=self.parallel_reason, world_size=rt.world_size)
        if rt.device.type == "cuda":
            record["gpu"] = torch.cuda.get_device_name(rt.device)
        else:
            record["cpu"] = cpu_summary()
            record["threads"] = torch.get_num_threads()
        if cfg.train.precision == "auto":   # the probe ran (it is kept per machine)
            profile = machine_profile(rt.device)
            record.update({k: profile[k] for k in ("fp32_gflops", "bf16_gflops") if k in profile})
        return record

    def _compile_identity(self, rt: Runtime) -> dict[str, Any]:
        """What a compile's cost and speed-up depend on (the key of compile=auto's records)."""
        use_persistent_cache()
        return {"model": dataclasses.asdict(self.config.model), "objective": self.config.objective.kind,
                "batch": [self.micro, self.data.items_per_example], "dtype": str(self.dtype),
                "device": str(rt.device), "machine": self.config.machine, "torch": torch.__version__,
                "cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")}

    def _choose_parallel(self, rt: Runtime, estimate: tuple[int, int | None] | None) -> tuple[str, str]:
        """DDP or FSDP (`train.parallel`); auto compares a whole copy's memory with what one process may use,
        and every rank takes rank 0's answer."""
        from ..core.memory import limit

        t = self.config.train
        need = training_bytes(estimate[0], estimate[0], estimate[1], t.ema_decay > 0) if estimate else 0
        available = None
        if rt.distributed and t.parallel == "auto":
            available = limit(t.max_memory, str(rt.device))
            if available is not None and rt.device.type == "cpu" and not t.max_memory:   # the local ranks share it
                available //= int(os.environ.get("LOCAL_WORLD_SIZE", rt.world_size))
        choice = choose_parallel(t.parallel, rt.world_size, need, available)
        return tuple(rt.broadcast(list(choice))) if rt.distributed and t.parallel == "auto" else choice

    def _save(self, rt: Runtime, step: int, tokens: int, elapsed: float, data_rng: torch.Generator) -> None:
        """Write a checkpoint with every rank (`train.checkpoint`): rank 0 prepares the staging folder, every rank
        writes its part (its optimizer shard; its share of the gathers of the whole weights), and rank 0 commits
        once all have finished (the marker last)."""
        sharded = self.parallel == "fsdp"
        rng_states = rt.gather(torch.get_rng_state())
        tensors: dict[str, torch.Tensor] = {}
        optimizer_meta = {}
        for phase, optimizer in self.optimizers.items():
            opt_tensors, optimizer_meta[phase] = optimizer_to_tensors(optimizer.state_dict(), f"optimizer.{phase}")
            tensors.update(opt_tensors)
        files = [shard_name(r, rt.world_size) for r in range(rt.world_size)] if sharded else [ckpt.STATE_FILE]
        staging = self.out_dir / ckpt.STAGING
        if rt.is_main:
            ckpt.begin_commit(self.out_dir)
        rt.barrier()
        own_sum = None
        if sharded:
            path = staging / files[rt.rank]
            write_state_shard(tensors, path, rt.is_main)
            ckpt.fsync(path)
            own_sum = ckpt.sha256_file(path)
        elif rt.is_main:
            ckpt.save_tensors(tensors, staging / ckpt.STATE_FILE)
            ckpt.fsync(staging / ckpt.STATE_FILE)
        names = list(files)

        def whole(name: str, values: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
            write_gathered(values, staging / name if rt.is_main else None, metadata)
            names.append(name)

        weights_meta = {"format": "genloom", "step": str(step)}
        if self.lora:     # the adapter alone: the base weights stay where they are
            whole(ADAPTER_FILE, adapter_payload(self.model, self.finetune_info), {"format": "genloom-adapter"})
        else:
            whole(ckpt.MODEL_FILE, self.model.state_dict(), weights_meta)
        if self.ema is not None:
            whole(ckpt.EMA_FILE, self.ema.model.state_dict(), weights_meta)
        sums = rt.gather(own_sum)
        if rt.is_main:
            state = state_json(step, tokens, elapsed, rt.world_size, self.parallel, optimizer_meta, str(self.dtype),
                               data_rng.get_state(), rng_states, files)
            ckpt.write_json_atomic(staging / ckpt.STATE_JSON, state)
            names.append(ckpt.STATE_JSON)
            if self.lora:
                meta = adapter_metadata(self.config, self.finetune_info, step)
                ckpt.write_json_atomic(staging / ADAPTER_JSON, meta)
                names.append(ADAPTER_JSON)
            ckpt.finish_commit(self.out_dir, names, {files[r]: digest for r, digest in enumerate(sums) if digest})
            for stale in stale_state_files(self.out_dir, files):     # an earlier checkpoint's, on another world size
                stale.unlink(missing_ok=True)
        rt.barrier()

    def _restore(self, rt: Runtime, data_rng: torch.Generator) -> tuple[int, int, float]:
        sharded = self.parallel == "fsdp"
        load = load_weights_sharded if sharded else ckpt.load_weights
        if self.lora:
            saved = ckpt.load_tensors(self.out_dir / ADAPTER_FILE)
            current = adapter_payload(self.model, self.finetune_info)
            if set(saved) != set(current):
                raise CheckpointError(f"--resume: {self.out_dir / ADAPTER_FILE} does not hold this run's adapter")
            with torch.no_grad():
                for key, value in current.items():
                    if is_sharded(value):
                        local, begin = local_rows(value)
                        local.copy_(saved[key][begin:begin + local.shape[0]])
                    else:
                        value.copy_(saved[key])
        else:
            load(self.model, self.out_dir / ckpt.MODEL_FILE)
        if self.ema is not None:
            load(self.ema.model, self.out_dir / ckpt.EMA_FILE)
        state = read_train_state(self.out_dir / ckpt.STATE_JSON, list(self.optimizers))
        files = state.get("state_files") or [ckpt.STATE_FILE]
        try:
            with StateReader(self.out_dir, files) as reader:
                keys = reader.keys()
                for phase, optimizer in self.optimizers.items():
                    params = [p for group in optimizer.param_groups for p in group["params"]]
                    prefix = f"optimizer.{phase}."
                    tensors = {}
                    for key in keys:
                        if key.startswith(prefix):
                            param = params[int(key[len(prefix):].split(".", 1)[0])]
                            like = param if reader.shape(key) == tuple(param.shape) else None
                            tensors[key] = reader.read(key, like)
                    optimizer.load_state_dict(optimizer_from_tensors(tensors, state["optimizers"][phase],
                                                                     f"optimizer.{phase}"))
                rng = state.get("rng")
                if isinstance(rng, dict):
                    data_rng.set_state(decode_rng(rng["data"]))
                    own = rng["torch"][rt.rank] if rt.rank < len(rng["torch"]) else None
                    own = decode_rng(own) if own is not None else None
                else:                      # checkpoints written before the random state moved to JSON
                    data_rng.set_state(reader.read("rng.data"))
                    own = reader.read(f"rng.torch.{rt.rank}") if f"rng.torch.{rt.rank}" in keys else None
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as error:
            raise CheckpointError(f"--resume: {self.out_dir / ckpt.STATE_FILE} and {ckpt.STATE_JSON} do not hold "
                                  f"this run's optimizer and random state ({type(error).__name__}: "
                                  f"{str(error)[:120]})") from None
        if own is not None:
            torch.set_rng_state(own)
        if rt.is_main:
            saved_world = state.get("world_size", 1)
            log.info("resumed %s at step %d%s", self.out_dir, state["step"],
                     f" (saved by {saved_world} process(es), continued on {rt.world_size})"
                     if saved_world != rt.world_size else "")
        return state["step"], state["tokens"], state["elapsed"]

    # -- the loop ------------------------------------------------------------------------------
    def _request_stop(self, signum, frame) -> None:
        if self._stop_signal is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self._stop_signal = signum
        log.warning("stopping: the checkpoint will be saved after this step (press Ctrl-C again to abort)")

    @torch.no_grad()
    def _evaluate(self, rt: Runtime, model: nn.Module) -> float:
        t = self.config.train
        indices = self.data.val_indices(t.eval_batches * self.micro)
        total = torch.zeros(2, dtype=torch.float64)
        mine = list(range(rt.rank, t.eval_batches, rt.world_size))
        if self.parallel == "fsdp":    # every rank makes as many passes (they gather the weights together)
            mine += [None] * (math.ceil(t.eval_batches / rt.world_size) - len(mine))
        for b in mine:
            first = b if b is not None else 0            # a pass that only takes part: its loss is not counted
            batch = _to_device(self.data.batch(indices[first * self.micro:(first + 1) * self.micro], "val"), rt.device)
            with autocast(rt.device, self.dtype):
                loss = float(self.objective.eval_loss(model, batch))
            if b is not None:
                total[0] += loss
                total[1] += 1
        rt.all_reduce_sum(total)
        return float(total[0] / total[1])

    def _sample_sharded(self, rt: Runtime, model: nn.Module, step: int) -> str:
        """Samples from a sharded model: every rank runs the same generation from the same random state (so all
        make the same forward passes); rank 0's files are kept, the others' go to a scratch folder."""
        import tempfile

        t = self.config.train
        # (autocast: with bf16 gathered weights, state made from the fp32 shards, a KV cache, follows the passes)
        with torch.random.fork_rng(devices=[rt.device] if rt.device.type == "cuda" else []), \
                tempfile.TemporaryDirectory(prefix="genloom-samples-") as scratch, autocast(rt.device, self.dtype):
            torch.manual_seed(t.seed + 3 + step)
            folder = self.out_dir / "samples" if rt.is_main else Path(scratch)
            return self.objective.write_samples(model, self.data, folder, step, t.sample_length, t.sample_prompt)

    def fit(self) -> TrainResult:
        t = self.config.train
        if t.parallel == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            choose_parallel(t.parallel, 1, 0, None)       # the one-line refusal, before any work
        rt = setup_runtime(t.device, t.dist_timeout)
        previous_handlers = {}
        try:
            if rt.is_main:
                self._check_out_dir()
            rt.barrier()
            self._build(rt)
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous_handlers[sig] = signal.signal(sig, self._request_stop)
            return self._loop(rt)
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            rt.close()

    def _loop(self, rt: Runtime) -> TrainResult:
        cfg, t = self.config, self.config.train
        out = self.out_dir
        data_rng = torch.Generator().manual_seed(t.seed + 1)   # the same on every rank
        torch.manual_seed(t.seed + 2 + rt.rank)                # dropout and other randomness, per rank
        step, tokens, elapsed_before = 0, 0, 0.0
        if self.resume:
            step, tokens, elapsed_before = self._restore(rt, data_rng)
        if rt.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / ckpt.CONFIG_FILE).write_text(cfg.to_json())
            self.data.save_assets(out)
        metrics = MetricsLog(out / "metrics.csv", resume_step=step if self.resume else None) if rt.is_main else None
        writer = self._tensorboard(out) if rt.is_main and t.tensorboard else None

        model = self.model
        # With several optimizer phases (a GAN) each backward pass touches one network only, which DDP's
        # bucketed reducer does not allow; there the loop averages each phase's gradients itself.
        fsdp = self.parallel == "fsdp"     # the model is sharded: no wrapper, FSDP syncs in its own hooks
        manual_sync = self.parallel == "ddp" and len(self.objective.phases) > 1
        if self.parallel == "ddp" and not manual_sync:
            model = DistributedDataParallel(self.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        auto_compile = None
        if t.compile == "auto" and t.max_time:
            auto_compile = AutoCompile(self._compile_identity(rt))   # decided after a few eager steps
        elif t.compile:
            model = compile_for_training(model)     # compiled on the first step; validation and samples stay eager
        model.train()
        n_params = sum(p.numel() for p in self.model.parameters())
        n_trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        items_per_step = t.batch_size * self.data.items_per_example
        if rt.is_main:
            if n_trainable != n_params:
                log.info("fine-tuning %s parameters of %s (%.2f%%)", f"{n_trainable:,}", f"{n_params:,}",
                         100 * n_trainable / n_params)
            log.info("model: %.2fM parameters; batch %d x %d %s per step (%d process(es) x %d micro-batch(es) of %d); "
                     "precision %s", n_params / 1e6, t.batch_size, self.data.items_per_example, self.data.item_name,
                     rt.world_size, self.accumulation, self.micro, "bf16 autocast" if self.dtype else "fp32")
            if fsdp:
                log.info("fsdp: each of the %d processes holds 1/%d of the weights, gradients and optimizer state%s",
                         rt.world_size, rt.world_size, "; bf16 weights in the passes, fp32 reductions"
                         if self.dtype else "")

        start = time.perf_counter()
        bar = tqdm(total=int(t.max_time) if t.max_time else t.max_steps, initial=0 if t.max_time else step,
                   unit="s" if t.max_time else "step", disable=not (rt.is_main and t.progress), dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 10,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")
        last_val: float | None = None
        sample = ""
        stopped_early = False
        window_items, window_time = 0, 0.0
        items_per_second = 0.0
        last_saved = step if self.resume else -1

        # The budget counts from the command (process start for the CLI), so start-up is part of it.
        before_loop = max(0.0, time.time() - self.started_at)

        def elapsed() -> float:
            return elapsed_before + before_loop + time.perf_counter() - start

        eval_cost = 0.0   # seconds the last evaluate + save took: kept back at the end of a --max-time budget

        def evaluate_and_save() -> None:
            nonlocal last_val, sample, last_saved, eval_cost
            began = time.perf_counter()
            sampled = self.ema.model if self.ema is not None else self.model   # what users will sample from
            sampled.eval()
            last_val = self._evaluate(rt, sampled)
            if fsdp and t.sample_length:    # a sharded model samples on every rank (they gather its weights together)
                sample = self._sample_sharded(rt, sampled, step)
            if rt.is_main:
                metrics.write(step=step, time_s=elapsed(), tokens=tokens, val_loss=last_val)
                if writer:
                    writer.add_scalar("val/loss", last_val, step)
                if t.sample_length and not fsdp:
                    sample = self.objective.write_samples(sampled, self.data, out / "samples", step,
                                                          t.sample_length, t.sample_prompt)
                plot_losses(out / "metrics.csv", out / "loss.png", title=f"{cfg.recipe or 'run'}: loss")
                bar.set_postfix_str(f"loss {last_loss:.3f} val {last_val:.3f} {items_per_second:,.0f} {self.data.item_name}/s")
            self.model.train()   # (the compiled / DDP wrapper shares this module)
            self._save(rt, step, tokens, elapsed(), data_rng)
            last_saved = step
            eval_cost = time.perf_counter() - began

        last_loss = float("nan")
        while step < t.max_steps:
            out_of_time = bool(t.max_time) and elapsed() + eval_cost >= t.max_time   # the last evaluation fits too
            if rt.distributed:   # every process stops at the same step, whatever its own clock says
                out_of_time = bool(rt.all_reduce_sum(torch.tensor([float(out_of_time)])).item())
            if out_of_time:
                break
            if self._stop_signal is not None:
                stopped_early = True
                break
            step_start = time.perf_counter()
            factor = lr_factor(t, step, elapsed() / t.max_time if t.max_time else 0.0)
            lr = t.lr * factor
            indices = self.data.sample_indices(data_rng, t.batch_size)[rt.rank * self.per_rank:(rt.rank + 1) * self.per_rank]
            micro_batches = [indices[i * self.micro:(i + 1) * self.micro] for i in range(self.accumulation)]
            if hasattr(self.objective, "begin_step"):
                self.objective.begin_step(step)
            for phase in self.objective.phases:
                loss_sum = torch.zeros(2, dtype=torch.float64)  # (sum of micro-batch losses, non-finite gradients)
                optimizer = self.optimizers[phase]
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                optimizer.zero_grad(set_to_none=True)
                for i, micro_indices in enumerate(micro_batches):
                    batch = _to_device(self.data.batch(micro_indices), rt.device)
                    sync = not rt.distributed or manual_sync or i == self.accumulation - 1
                    if fsdp:
                        set_gradient_sync(self.model, sync)
                    with (contextlib.nullcontext() if sync or fsdp else model.no_sync()):
                        with autocast(rt.device, self.dtype):
                            loss = self.objective.loss(phase, model, batch)
                        (loss / self.accumulation).backward()
                    loss_sum[0] += float(loss.detach())
                params = [p for group in optimizer.param_groups for p in group["params"]]
                if manual_sync:
                    rt.average_gradients(params)
                grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else math.inf))
                loss_sum[1] += 0 if math.isfinite(float(grad_norm)) else 1
                rt.all_reduce_sum(loss_sum)
                mean_loss = float(loss_sum[0]) / (self.accumulation * rt.world_size)
                if not math.isfinite(mean_loss) or loss_sum[1] > 0:
                    kept = f"the last good checkpoint (step {last_saved}) in {out} is kept" if last_saved >= 0 \
                        else "no checkpoint had been saved yet"
                    raise TrainingError(f"the {phase} loss became {mean_loss} at step {step + 1}; training stopped and "
                                        f"{kept}. Try a lower train.lr, a smaller model or train.precision=fp32")
                optimizer.step()
                last_loss = mean_loss
            if self.ema is not None:
                self.ema.update(self.model, step)
            if auto_compile is not None:
                took = time.perf_counter() - step_start
                if not auto_compile.decided:
                    auto_compile.observe_eager(step, took)
                    if auto_compile.ready(step) and rt.broadcast(auto_compile.decide(t.max_time - elapsed())):
                        model = compile_for_training(model)
                elif auto_compile.compiled:
                    auto_compile.observe_compiled(took)
            step += 1
            tokens += items_per_step
            window_items += items_per_step
            window_time += time.perf_counter() - step_start
            bar.update(min(int(elapsed()), int(t.max_time)) - bar.n if t.max_time else 1)
            if step % t.log_interval == 0 or step == t.max_steps:
                items_per_second = window_items / max(window_time, 1e-9)
                window_items, window_time = 0, 0.0
                if rt.is_main:
                    metrics.write(step=step, time_s=elapsed(), tokens=tokens, lr=lr, loss=last_loss,
                                  tokens_per_s=items_per_second)
                    if writer:
                        writer.add_scalar("train/loss", last_loss, step)
                        writer.add_scalar("train/lr", lr, step)
                    val_text = f" val {last_val:.3f}" if last_val is not None else ""
                    bar.set_postfix_str(f"loss {last_loss:.3f}{val_text} {items_per_second:,.0f} {self.data.item_name}/s")
            if step % t.eval_interval == 0:
                evaluate_and_save()
            elif t.checkpoint_interval and step % t.checkpoint_interval == 0:
                self._save(rt, step, tokens, elapsed(), data_rng)
                last_saved = step
        if last_saved != step:
            evaluate_and_save()
        bar.close()
        if writer:
            writer.close()
        if stopped_early and rt.is_main:
            log.warning("stopped by signal at step %d; checkpoint saved in %s (continue with --resume)", step, out)
        return TrainResult(out_dir=out, step=step, val_loss=last_val, elapsed=elapsed(),
                           items_per_second=items_per_second, stopped_early=stopped_early, sample=sample)

    @staticmethod
    def _tensorboard(out: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard=true needs TensorBoard: pip install 'genloom[tensorboard]'") from None
        return SummaryWriter(log_dir=str(out / "tensorboard"))
