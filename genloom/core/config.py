"""Run configuration: frozen dataclasses loaded from TOML recipes, overridden with `--set`.

A run is `{data, model, objective, train}`. The `data`, `model` and `objective` sections name a
`kind` that the registry maps to a dataclass; `train` is always `TrainConfig`. Every value is
checked when the config is built, so a typo fails before any work starts, with the key named
and the valid choices listed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from . import registry
from .errors import ConfigError

__all__ = [
    "TrainConfig",
    "FinetuneConfig",
    "RunConfig",
    "validate",
    "build_section",
    "load_recipe",
    "builtin_recipes",
    "builtin_recipe_files",
    "apply_overrides",
]


# ----------------------------------------------------------------------------------------------
# Field validation shared by every config dataclass
# ----------------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin in (tuple, list):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (from TOML or a `--set` string) to the field type `tp`, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            try:
                candidate = coerce(value, type(choice), key)
            except ConfigError:
                continue
            if candidate == choice:
                return choice
        raise ConfigError(f"{key}: {value!r} is not allowed; valid choices: {', '.join(map(repr, choices))}")
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not {' or '.join(_type_name(a) for a in typing.get_args(tp))}")
    if origin in (tuple, list):
        (item_type, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return tuple(coerce(v, item_type, key) for v in value)
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        raise ConfigError(f"{key}: expected none, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def validate(config: Any, section: str) -> None:
    """Check every field of a config against its annotation. Call from `__post_init__`."""
    for name, tp in _field_types(type(config)).items():
        value = getattr(config, name)
        checked = coerce(value, tp, f"{section}.{name}")
        if checked != value or type(checked) is not type(value):
            object.__setattr__(config, name, checked)


def require(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError naming `key` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def build_section(cls: type, values: dict[str, Any], section: str) -> Any:
    """Make `cls(**values)`, naming unknown keys (with close matches) and converting types."""
    types_ = _field_types(cls)
    unknown = [k for k in values if k not in types_]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, types_, n=1)
        hint = f" Did you mean {section}.{close[0]}?" if close else ""
        raise ConfigError(
            f"unknown key {section}.{key}.{hint} Valid keys for {section}: {', '.join(sorted(types_))}"
        )
    converted = {k: coerce(v, types_[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**converted)


# ----------------------------------------------------------------------------------------------
# The training section (shared by every family)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1337                 # seeds initialisation, data order and dropout
    batch_size: int = 64             # examples per optimizer step, summed over all processes
    micro_batch_size: int = 0        # examples per forward pass per process; 0 = batch_size / processes
    max_steps: int = 2000            # optimizer steps (an upper bound when max_time is set)
    max_time: float = 0.0            # wall-clock budget in seconds; 0 = none. The LR schedule follows it
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: Muon for hidden matrices, AdamW for the rest
    lr: float = 1e-3                 # peak learning rate (AdamW)
    muon_lr: float = 0.02            # peak learning rate of Muon's matrices
    muon_momentum: float = 0.95
    min_lr_ratio: float = 0.1        # final LR as a fraction of the peak
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # decay after warmup
    warmup_steps: int = 100
    weight_decay: float = 0.1        # applied to matrices only, not to norms, biases or embeddings
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0           # max global gradient norm; 0 = off
    ema_decay: float = 0.0           # keep an average of the weights (ema.safetensors), used for samples; 0 = off
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast where it is faster
    device: str = "auto"             # auto, cpu, cuda, cuda:N
    compile: Literal[False, True, "auto"] = False  # torch.compile: faster steps after a one-time compile; auto: only
    #                                when it pays within train.max_time (measured: genloom/train/compiling.py)
    eval_interval: int = 250         # steps between validations (and checkpoints and samples)
    eval_batches: int = 20           # validation batches per evaluation
    log_interval: int = 10           # steps between rows of metrics.csv
    checkpoint_interval: int = 0     # steps between checkpoints; 0 = at every evaluation
    sample_length: int = 300         # size of the samples written at each evaluation (text: tokens); 0 = none
    sample_prompt: str = ""          # prompt for those samples
    tensorboard: bool = False        # also log to TensorBoard (needs the `tensorboard` extra)
    progress: bool = True            # show a progress bar
    max_memory: float = 0.0          # GB the run may use, checked before allocating; 0 = what is available at start
    parallel: Literal["auto", "ddp", "fsdp"] = "auto"  # under torchrun: ddp (a whole copy per process), fsdp (the
    #                                weights, gradients and optimizer state sharded over the processes); auto: ddp
    #                                when a whole copy fits the device, else fsdp (docs/scaling.md)
    fsdp_reshard_after_forward: bool = True  # fsdp: free a block's gathered weights after its forward (gather
    #                                again for the backward); false: keep them (less communication, more memory)
    fsdp_offload: bool = False       # fsdp on GPUs: keep the sharded weights, gradients and optimizer state in CPU memory
    activation_checkpointing: bool = False  # keep only each block's input and recompute the block in the backward
    #                                pass: much less activation memory for about one more forward pass
    dist_timeout: float = 600.0      # under torchrun: seconds a process waits for the others before the run stops

    def __post_init__(self) -> None:
        validate(self, "train")
        require(self.batch_size >= 1, "train.batch_size", "must be at least 1")
        require(self.micro_batch_size >= 0, "train.micro_batch_size", "must be 0 (auto) or positive")
        require(self.max_steps >= 1, "train.max_steps", "must be at least 1")
        require(self.max_time >= 0, "train.max_time", "must be 0 (no limit) or a number of seconds")
        require(self.lr > 0, "train.lr", "must be positive")
        require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be between 0 and 1")
        require(0 <= self.ema_decay < 1, "train.ema_decay", "must be in [0, 1), e.g. 0.999; 0 turns it off")
        require(self.warmup_steps >= 0, "train.warmup_steps", "must be 0 or more")
        require(self.eval_interval >= 1, "train.eval_interval", "must be at least 1")
        require(self.eval_batches >= 1, "train.eval_batches", "must be at least 1")
        require(self.log_interval >= 1, "train.log_interval", "must be at least 1")
        require(self.max_memory >= 0, "train.max_memory", "must be 0 (what is available) or a number of GB")
        require(self.dist_timeout > 0, "train.dist_timeout", "must be a positive number of seconds")
        require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                "train.device", f"expected auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class FinetuneConfig:
    """How a run starts from a trained checkpoint (`genloom finetune RECIPE --from DIR`)."""

    base: str = ""                   # the checkpoint directory to start from (set by --from)
    method: Literal["full", "lora"] = "full"  # full: every weight not frozen trains; lora: low-rank adapters only
    freeze: tuple[str, ...] = ()     # full: parameter-name patterns that stay fixed, e.g. ["embed.*", "blocks.0.*"]
    lora_rank: int = 4               # rank r of each adapter (A: r x in, B: out x r)
    lora_alpha: float = 8.0          # the adapter's update is scaled by alpha / r
    lora_dropout: float = 0.0        # dropout on the adapter's input
    lora_targets: tuple[str, ...] = ("*.attn.qkv", "*.attn.proj")  # module-name patterns of the adapted layers
    train_also: tuple[str, ...] = ()  # lora: parameter-name patterns trained in full and saved in the adapter
    new_words: tuple[str, ...] = ()  # text-to-image: words added to the caption vocabulary, each with a trained
                                     # embedding saved in the adapter (a new concept bound to a new word)
    weights: Literal["ema", "model"] = "ema"  # which base weights to start from, where the base kept an average

    def __post_init__(self) -> None:
        validate(self, "finetune")
        require(self.lora_rank >= 1, "finetune.lora_rank", "must be at least 1")
        require(self.lora_alpha > 0, "finetune.lora_alpha", "must be positive")
        require(0 <= self.lora_dropout < 1, "finetune.lora_dropout", "must be in [0, 1)")
        require(self.method == "lora" or not self.train_also, "finetune.train_also",
                "applies to method = \"lora\" (full fine-tuning trains everything not frozen)")


# ----------------------------------------------------------------------------------------------
# The whole run
# ----------------------------------------------------------------------------------------------

SECTIONS = ("data", "model", "objective", "train")
OPTIONAL_SECTIONS = ("finetune",)
ALL_SECTIONS = SECTIONS + OPTIONAL_SECTIONS


def read_json(path: Path, what: str) -> Any:
    """The JSON in `path`, or a ConfigError naming the file (`what` says what it should be)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


@dataclass(frozen=True)
class RunConfig:
    data: Any
    model: Any
    objective: Any
    train: TrainConfig = field(default_factory=TrainConfig)
    recipe: str = ""        # the recipe name or file this run came from
    description: str = ""   # one line from the recipe
    finetune: FinetuneConfig | None = None   # set for runs that start from a trained checkpoint
    machine: dict[str, Any] | None = None    # what the run measured of its machine (core.machine) and chose from it

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"recipe": self.recipe, "description": self.description}
        for section in SECTIONS:
            out[section] = dataclasses.asdict(getattr(self, section))
        if self.finetune is not None:
            out["finetune"] = dataclasses.asdict(self.finetune)
        if self.machine is not None:
            out["machine"] = dict(self.machine)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> "RunConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a table of sections (data, model, objective, train), got "
                              f"{type(raw).__name__} {str(raw)[:40]}")
        raw = dict(raw)
        recipe = raw.pop("recipe", "")
        description = raw.pop("description", "")
        machine = raw.pop("machine", None)
        if machine is not None and not isinstance(machine, dict):
            raise ConfigError(f"{source}: [machine] must be a table (what a run measured of its machine)")
        unknown = [k for k in raw if k not in ALL_SECTIONS]
        if unknown:
            close = difflib.get_close_matches(unknown[0], ALL_SECTIONS, n=1)
            hint = f" Did you mean [{close[0]}]?" if close else ""
            raise ConfigError(f"{source}: unknown section [{unknown[0]}].{hint} Valid sections: "
                              f"{', '.join(ALL_SECTIONS)}")
        sections: dict[str, Any] = {}
        if "finetune" in raw:
            if not isinstance(raw["finetune"], dict):
                raise ConfigError(f"{source}: [finetune] must be a table of key = value pairs")
            sections["finetune"] = build_section(FinetuneConfig, dict(raw["finetune"]), "finetune")
        for section in SECTIONS:
            values = raw.get(section, {})
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: [{section}] must be a table of key = value pairs")
            values = dict(values)
            if section == "train":
                sections[section] = build_section(TrainConfig, values, section)
                continue
            kind = values.get("kind", registry.DEFAULT_KINDS[section])
            component = registry.lookup(section, kind)
            values["kind"] = kind
            sections[section] = build_section(component.config_class, values, section)
        return cls(recipe=str(recipe), description=str(description), machine=machine, **sections)

    @classmethod
    def from_json_file(cls, path: Path) -> "RunConfig":
        return cls.from_dict(read_json(path, "config file"), source=str(path))

    def replace(self, section: str, **changes: Any) -> "RunConfig":
        """A copy with some keys of one section changed (values are checked again)."""
        current = getattr(self, section)
        values = {**dataclasses.asdict(current), **changes}
        new = build_section(type(current), values, section)
        return dataclasses.replace(self, **{section: new})


# ----------------------------------------------------------------------------------------------
# Recipes and overrides
# ----------------------------------------------------------------------------------------------

def builtin_recipe_files() -> dict[str, Path]:
    """Built-in recipe names -> their TOML files (each content package's `recipes/` folder), sorted by name."""
    files = {entry.stem: entry for folder in registry.recipe_folders() for entry in folder.glob("*.toml")}
    return dict(sorted(files.items()))


def builtin_recipes() -> dict[str, str]:
    """Built-in recipe names -> their one-line description."""
    return {name: str(tomllib.loads(path.read_text(encoding="utf-8")).get("description", ""))
            for name, path in builtin_recipe_files().items()}


def _read_recipe(name_or_path: str) -> tuple[dict[str, Any], str]:
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"recipe file {name_or_path} does not exist")
        text, label = path.read_text(encoding="utf-8"), str(path)
    else:
        names = builtin_recipes()
        if name_or_path not in names:
            close = difflib.get_close_matches(name_or_path, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown recipe {name_or_path!r}.{hint} Built-in recipes: {', '.join(names)}; "
                "or give the path of a .toml file"
            )
        text = builtin_recipe_files()[name_or_path].read_text(encoding="utf-8")
        label = name_or_path
    try:
        return tomllib.loads(text), label
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"recipe {label}: not valid TOML ({e})") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` -> (section, key, value). TOML literals are understood (`[1, 2]`, `"a"`)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train.lr=3e-4")
    dotted, value_text = text.split("=", 1)
    if dotted.count(".") != 1:
        raise ConfigError(f"--set {text!r}: the key must be section.key, e.g. model.n_layer=4")
    section, key = (part.strip() for part in dotted.split("."))
    if section not in ALL_SECTIONS:
        close = difflib.get_close_matches(section, ALL_SECTIONS, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise ConfigError(f"--set {text!r}: unknown section {section!r}.{hint} Valid sections: "
                          f"{', '.join(ALL_SECTIONS)}")
    value: Any = value_text
    stripped = value_text.strip()
    if stripped[:1] in ('"', "'", "["):
        try:
            value = tomllib.loads(f"v = {stripped}")["v"]
        except tomllib.TOMLDecodeError:
            value = value_text
    return section, key, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})[key] = value
    return raw


def _budget_tier(tiers: Any, max_time: float, label: str, machine_rate: Callable[[], float]) -> dict[str, Any] | None:
    """The `[[budget]]` entry that applies: of the tiers whose `min_time` the budget reaches and whose
    `min_gflops` (if any) the machine's measured matmul rate reaches, the one asking for the fastest
    machine, then for the longest budget. The machine is probed only when some tier asks for a rate."""
    if not isinstance(tiers, list) or not all(isinstance(t, dict) for t in tiers):
        raise ConfigError(f"recipe {label}: [[budget]] must be a list of tables")
    chosen, rate = None, None
    for tier in tiers:
        unknown = [k for k in tier if k not in ("min_time", "min_gflops") and k not in ALL_SECTIONS]
        if "min_time" not in tier or unknown:
            raise ConfigError(f"recipe {label}: each [[budget]] needs min_time, may hold min_gflops and the sections "
                              f"{', '.join(SECTIONS)} (found {', '.join(map(str, unknown)) or 'no min_time'})")
        min_time = coerce(tier["min_time"], float, "budget.min_time")
        min_gflops = coerce(tier.get("min_gflops", 0.0), float, "budget.min_gflops")
        if max_time < min_time:
            continue
        if min_gflops > 0:
            rate = machine_rate() if rate is None else rate
            if rate < min_gflops:
                continue
        candidate = {**tier, "min_time": min_time, "min_gflops": min_gflops}
        if chosen is None or (min_gflops, min_time) > (chosen["min_gflops"], chosen["min_time"]):
            chosen = candidate
    return chosen


def _machine_rate(train: dict[str, Any]) -> float:
    """GFLOP/s of matmuls at the precision this run will train in (the probe of core.machine)."""
    import torch

    from .machine import bf16_is_faster, machine_profile
    device = str(train.get("device", "auto"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        profile = machine_profile(device)
    except (RuntimeError, ValueError):       # e.g. cuda asked for on a machine without it: the trainer says so
        return 0.0
    precision = str(train.get("precision", "auto"))
    if precision == "bf16" or (precision == "auto" and bf16_is_faster(profile)):
        return float(profile.get("bf16_gflops", 0.0))
    return float(profile.get("fp32_gflops", 0.0))


def _start_from(raw: dict[str, Any], base: Path, label: str) -> dict[str, Any]:
    """A fine-tuning recipe on top of a base checkpoint: the model is the base's (a recipe's [model] table may
    change only dropout and the context, `CONTEXT_KEYS`: see `_longer_context`), the data and objective default
    to the base's, and finetune.base names it."""
    base = Path(base).expanduser()
    config_path = base / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"--from {base}: no config.json there; expected a checkpoint directory written by "
                          "genloom train or genloom merge")
    saved = read_json(config_path, "config file")
    if "finetune" in saved and saved["finetune"].get("method") == "lora":
        raise ConfigError(f"--from {base}: that folder holds a LoRA adapter, not a full model; fold it into its base "
                          f"first: genloom merge --base BASE --adapter {base} --out MERGED")
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    recipe_model = raw.get("model", {})
    if recipe_model.get("kind", saved["model"].get("kind")) != saved["model"].get("kind"):
        raise ConfigError(f"recipe {label} is for model.kind = {recipe_model['kind']!r} but {base} holds a "
                          f"{saved['model'].get('kind')!r} model")
    raw["model"] = {**saved["model"],
                    **{k: v for k, v in recipe_model.items() if k == "dropout" or k in CONTEXT_KEYS}}
    for section in ("data", "objective"):
        if section not in raw:
            raw[section] = dict(saved.get(section, {}))
    raw["finetune"] = {**raw.get("finetune", {}), "base": str(base.resolve())}
    return raw


CONTEXT_KEYS = ("block_size", "rope_scaling", "rope_factor", "rope_original_context", "rope_beta_fast",
                "rope_beta_slow")


def _keep_model(model: dict[str, Any], saved: dict[str, Any], base: Path, where: str) -> None:
    """Refuse a --set change to the base's model other than dropout and the context keys (one line, the key
    named). A recipe's own [model] table is read the other way: a pre-training recipe used to fine-tune
    describes the model it would build, and the base's model is kept."""
    def same(value: Any, old: Any, key: str) -> bool:
        if value == old or old is None or not isinstance(value, str):
            return value == old
        try:                                       # a --set string against the saved number, flag or list
            return coerce(value, type(old) if not isinstance(old, list) else list[type(old[0]) if old else str],
                          f"model.{key}") == old
        except ConfigError:
            return False

    for key, value in model.items():
        if key not in ("kind", "dropout", *CONTEXT_KEYS) and not same(value, saved.get(key), key):
            raise ConfigError(f"model.{key} = {value!r} ({where}): a fine-tune keeps the model of {base} "
                              f"({key} = {saved.get(key)!r}); it may change only model.dropout and the context "
                              f"({', '.join('model.' + k for k in CONTEXT_KEYS)})")


MAX_CONTEXT_FACTOR = 64          # how far past its training context a rotary model is stretched at most


def _longer_context(model: dict[str, Any], base: Path) -> dict[str, Any]:
    """Fine-tuning at another context (block_size or the rope_* keys in the recipe's [model] table or --set):
    rope_original_context keeps the context the base was pre-trained on, rope_factor defaults to the new
    block_size over it and block_size to rope_factor times it; past MAX_CONTEXT_FACTOR times it is refused."""
    saved = read_json(base / "config.json", "config file")["model"]
    if all(model.get(k) == saved.get(k) for k in CONTEXT_KEYS):
        return model
    if saved.get("position") != "rope":
        raise ConfigError(f"model.block_size: {base} has {saved.get('position', 'learned')} positions, which cannot "
                          f"be stretched past its context of {saved.get('block_size')}; only rotary models can be "
                          "fine-tuned at a longer context")
    original = int(saved.get("rope_original_context") or saved["block_size"])
    model = dict(model)
    block = coerce(model.get("block_size"), int, "model.block_size")
    factor = coerce(model.get("rope_factor", 1.0), float, "model.rope_factor")
    scaling = model.get("rope_scaling", "none")
    if not model.get("rope_original_context"):
        model["rope_original_context"] = original
    factor_given = model.get("rope_factor") != saved.get("rope_factor")
    if scaling != "none" and block != saved.get("block_size") and not factor_given:
        model["rope_factor"] = factor = block / original
    elif scaling != "none" and block == saved.get("block_size") and factor_given:
        model["block_size"] = block = round(original * factor)
    if block > original * MAX_CONTEXT_FACTOR:
        raise ConfigError(f"model.block_size: {block} tokens is longer than {base} can be scaled to ("
                          f"{MAX_CONTEXT_FACTOR}x its training context of {original}: {original * MAX_CONTEXT_FACTOR})")
    return model


def load_recipe(name_or_path: str, overrides: list[str] | None = None, base: str | Path | None = None) -> RunConfig:
    """Read a built-in recipe or a TOML file, apply `section.key=value` overrides, validate.

    A recipe may hold `[[budget]]` tables, each with a `min_time` in seconds, optionally a `min_gflops`
    (the matmul rate the machine must measure at the run's precision: a start-up probe, kept per machine)
    and values for any section: the tier that applies (see `_budget_tier`) is laid on top of the recipe
    (and under the user's overrides), e.g. a larger, regularised model for a long budget or a fast machine.
    With `base` (a checkpoint directory), the recipe fine-tunes that model (see `_start_from`).
    """
    raw, label = _read_recipe(name_or_path)
    raw.setdefault("recipe", label)
    tiers = raw.pop("budget", [])
    with_overrides = apply_overrides(raw, overrides or [])
    max_time = coerce(with_overrides.get("train", {}).get("max_time", 0.0), float, "train.max_time")
    train_settings = with_overrides.get("train", {})
    tier = _budget_tier(tiers, max_time, label, lambda: _machine_rate(train_settings)) if tiers else None
    if tier is not None:
        raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
        for section, values in tier.items():
            if section not in ("min_time", "min_gflops"):
                raw.setdefault(section, {}).update(values)
        faster = f", a machine of >= {tier['min_gflops']:g} GFLOP/s" if tier["min_gflops"] else ""
        raw["recipe"] = f"{label} (budget tier for --max-time >= {tier['min_time']:g} s{faster})"
    if base is not None:
        raw = _start_from(raw, Path(base), label)
    elif "finetune" in raw:
        raise ConfigError(f"recipe {label} fine-tunes a trained model: run genloom finetune {label} --from CHECKPOINT_DIR")
    with_overrides = apply_overrides(raw, overrides or [])
    if base is not None:
        _keep_model(with_overrides["model"], raw["model"], Path(base).expanduser(), "--set")
        with_overrides["model"] = _longer_context(with_overrides["model"], Path(base).expanduser())
    return RunConfig.from_dict(with_overrides, source=f"recipe {label}")
