"""Optimizers: AdamW, and Muon for hidden weight matrices with AdamW for the rest.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks") keeps SGD
momentum and replaces each matrix update by its nearest semi-orthogonal matrix, computed with a
few Newton-Schulz iterations. It applies to the 2-D weights inside the network; embeddings, the
output head, norms and biases keep AdamW. Under FSDP each matrix is gathered whole before its iteration.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .parallel import full_tensor, is_sharded, shard_rows_like

__all__ = ["Muon", "orthogonalize", "build_optimizer", "parameter_groups", "optimizer_to_tensors", "optimizer_from_tensors"]

# Quintic Newton-Schulz coefficients chosen by Jordan et al. to push all singular values towards 1
# quickly (they land in roughly [0.7, 1.2], which is enough for an update direction).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
SHARDED_BATCH = 8        # under FSDP: whole matrices gathered for one batched iteration (bounds their memory)


@torch.no_grad()
def orthogonalize(update: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximately U V^T for update = U S V^T (Newton-Schulz iteration on X X^T), computed in `dtype`.

    Works on one matrix (r, c) or a stack of same-shaped matrices (n, r, c) at once. The iteration only needs
    the singular values pushed near 1, so bf16 is enough (Muon's authors run it in bf16); genloom uses bf16
    where the run trains in bf16 because the machine multiplies bf16 faster.
    """
    a, b, c = NS_COEFFICIENTS
    x = update.to(dtype)
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = x.mT                                  # iterate on the wide side: X X^T is the small Gram matrix
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if transposed else x).to(update.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for groups with `use_muon=True`, AdamW for the others (one optimizer, one state dict)."""

    def __init__(self, groups: list[dict], lr: float = 0.02, momentum: float = 0.95, ns_steps: int = 5,
                 betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8, weight_decay: float = 0.0,
                 ns_dtype: torch.dtype = torch.float32):
        defaults = dict(lr=lr, momentum=momentum, ns_steps=ns_steps, betas=betas, eps=eps,
                        weight_decay=weight_decay, use_muon=False)
        super().__init__(groups, defaults)
        self.ns_dtype = ns_dtype       # the Newton-Schulz iteration's precision (not state: resume may change it)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon_step if group["use_muon"] else self._adamw_step)(group, params)

    def _muon_step(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, momentum = group["lr"], group["momentum"]
        grads = [p.grad for p in params]
        buffers = [self.state[p].setdefault("momentum", torch.zeros_like(p)) for p in params]
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, grads)
        updates = torch._foreach_add(grads, buffers, alpha=momentum)             # Nesterov
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(params):
            by_shape.setdefault(tuple(p.shape), []).append(i)
        batches = []
        for shape, indices in by_shape.items():             # one batched Newton-Schulz per shape
            # A sharded matrix (FSDP) is gathered whole first: the iteration needs the full matrix, not a rank's
            # rows (every rank runs the same iteration, in the same order, and keeps its own rows of the result).
            # Sharded, at most SHARDED_BATCH whole matrices at a time, so the gathered copies stay small.
            step = SHARDED_BATCH if is_sharded(params[indices[0]]) else len(indices)
            batches += [(shape, indices[i:i + step]) for i in range(0, len(indices), step)]
        for shape, indices in batches:
            whole = [full_tensor(updates[i]) for i in indices]
            ortho = list(orthogonalize(torch.stack(whole), group["ns_steps"], self.ns_dtype).unbind(0))
            ortho = [shard_rows_like(o, params[i]) if is_sharded(params[i]) else o for o, i in zip(ortho, indices)]
            scale = math.sqrt(max(1.0, shape[0] / shape[1]))                     # same RMS for tall matrices
            torch._foreach_add_([params[i] for i in indices], ortho, alpha=-lr * scale)

    def _adamw_step(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        grads = [p.grad for p in params]
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
        t = float(self.state[params[0]]["step"])                 # every parameter of a group steps together
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denominators, math.sqrt(1 - beta2 ** t))
        torch._foreach_add_(denominators, eps)
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_addcdiv_(params, exp_avgs, denominators, value=-lr / (1 - beta1 ** t))


def parameter_groups(model: nn.Module, params: list[nn.Parameter]) -> dict[str, list[nn.Parameter]]:
    """Sort `params` into hidden matrices, other decayed matrices and the rest (norms, biases, tables).

    Hidden matrices are the 2-D weights of `nn.Linear` layers, except modules the model lists in
    its `output_modules` attribute (e.g. the language-model head).
    """
    wanted = {id(p) for p in params}
    excluded = set(getattr(model, "output_modules", ()))
    hidden, seen = [], set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name not in excluded and id(module.weight) in wanted:
            hidden.append(module.weight)
            seen.add(id(module.weight))
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    matrices = [p for p in params if p.dim() >= 2 and id(p) not in seen and id(p) not in tables]
    rest = [p for p in params if id(p) not in seen and not (p.dim() >= 2 and id(p) not in tables)]
    return {"hidden": hidden, "matrices": matrices, "rest": rest}


def build_optimizer(model: nn.Module, params: list[nn.Parameter], cfg,
                    precision: torch.dtype | None = None) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.optimizer`. Every group keeps its peak LR in `base_lr`. `precision`: the
    run's autocast dtype (None: fp32); Muon's Newton-Schulz iteration runs in it."""
    groups = parameter_groups(model, params)
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        param_groups = [
            {"params": groups["hidden"] + groups["matrices"], "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
            {"params": groups["rest"], "weight_decay": 0.0, "base_lr": cfg.lr},
        ]
        optimizer = torch.optim.AdamW(_nonempty(param_groups), lr=cfg.lr, betas=betas)
    else:
        param_groups = [
            # Muon's updates have a fixed size, so it needs no decay to keep the weights bounded.
            {"params": groups["hidden"], "use_muon": True, "weight_decay": 0.0, "base_lr": cfg.muon_lr,
             "lr": cfg.muon_lr},
            {"params": groups["matrices"], "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
            {"params": groups["rest"], "weight_decay": 0.0, "base_lr": cfg.lr},
        ]
        optimizer = Muon(_nonempty(param_groups), lr=cfg.lr, momentum=cfg.muon_momentum, betas=betas,
                         ns_dtype=precision or torch.float32)
    return optimizer


def _nonempty(groups: list[dict]) -> list[dict]:
    return [g for g in groups if g["params"]]


# -- optimizer state <-> (tensors, JSON), for checkpoints ------------------------------------------

def optimizer_to_tensors(state: dict, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Split `optimizer.state_dict()` into safetensors-ready tensors and JSON-ready values."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{param_id}.{name}"] = value
            else:
                plain.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "plain_state": plain}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict, prefix: str) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            param_id, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(param_id), {})[name] = value
    for param_id, values in meta["plain_state"].items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}
