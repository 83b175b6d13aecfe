"""Optimizer, weight-decay groups and LR schedule, all named in the config.

Weight decay follows timm and the Scaling-ViT recipe: never on norms, biases (any parameter of one
dimension), position embeddings or tokens (cls/dist/mask); `optimizer.weight_decay` on the encoder
(the body) and `optimizer.head_weight_decay` on everything else (the decoder and head); the body
trains at `optimizer.lr * optimizer.encoder_lr_scale` (fine-tuning a pretrained encoder). A
classifier's head is its `head*` modules; a model with neither (a plain CNN) counts its last layer
with parameters as the head.

The schedule is a factor of `optimizer.lr` at each step, defined over the whole budget of `total`
optimizer steps: the step taken after `t` completed steps runs at `lr * factor(t)`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from unetr_app.config import OptimizerConfig, ScheduleConfig

# attribute names under which the models here keep their encoder (ours, MONAI UNETR, MONAI SwinUNETR)
ENCODER_NAMES = ("encoder", "vit", "swinViT")
_NO_DECAY = re.compile(r"(^|\.)(pos_embed|position_embeddings|absolute_pos_embed|time_embed|relative_position_bias_table|rel_pos|\w*_token|\w*_tokens)(\.|$)")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or bool(_NO_DECAY.search(name))


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Name prefixes of the head: everything outside the encoder of a segmentation model, the
    `head*` modules of a classifier, or else the last layer with parameters (a plain CNN's)."""
    children = dict(model.named_children())
    encoder = next((n for n in ENCODER_NAMES if n in children), None)
    if encoder is not None:
        return tuple(f"{name}." for name in children if name != encoder)
    heads = tuple(f"{name}." for name in children if name.startswith("head"))
    if heads:
        return heads
    last = [name for name, module in model.named_modules() if name and any(True for _ in module.parameters(recurse=False))]
    return (f"{last[-1]}.",) if last else ()


def parameter_groups(model: nn.Module, config: OptimizerConfig, extra: Iterable[tuple[str, nn.Parameter]] = ()) -> list[dict]:
    """Four groups (body/head x decay/no decay), each with its own LR; `extra` trainable parameters
    outside the model (e.g. a recipe's projection head) join the head. Empty groups are dropped."""
    heads = head_prefixes(model)
    head_decay = config.weight_decay if config.head_weight_decay is None else config.head_weight_decay
    groups = {key: [] for key in ("body", "body_no_decay", "head", "head_no_decay")}
    named = [(n, p, n.startswith(heads)) for n, p in model.named_parameters() if p.requires_grad]
    named += [(n, p, True) for n, p in extra]
    for name, param, in_head in named:
        key = ("head" if in_head else "body") + ("_no_decay" if no_weight_decay(name, param) else "")
        groups[key].append(param)
    decay = {"body": config.weight_decay, "head": head_decay, "body_no_decay": 0.0, "head_no_decay": 0.0}
    lr = {key: config.lr * (config.encoder_lr_scale if key.startswith("body") else 1.0) for key in groups}
    return [{"name": key, "params": params, "weight_decay": decay[key], "lr": lr[key]} for key, params in groups.items() if params]


def build_optimizer(groups: list[dict], config: OptimizerConfig) -> torch.optim.Optimizer:
    eps = {} if config.eps is None else {"eps": config.eps}
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, **eps)
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    if config.name == "adafactor":
        return torch.optim.Adafactor(groups, lr=config.lr, **({"eps": (None, config.eps)} if config.eps else {}))
    raise AssertionError(f"optimizer {config.name!r} passed validation but has no builder")


@dataclass(frozen=True)
class Schedule:
    """`factor(t)` for t in 0..total; it is 0 at t == total (the budget's end)."""

    config: ScheduleConfig
    total: int

    @property
    def warmup(self) -> int:
        c = self.config
        steps = c.warmup_steps if c.warmup_steps is not None else round(c.warmup_fraction * self.total)
        return min(steps, self.total)

    def factor(self, t: int) -> float:
        warmup, total = self.warmup, self.total
        if t < warmup:
            return t / warmup
        progress = (t - warmup) / max(1, total - warmup)  # 0 after warmup, 1 at the end
        name = self.config.name
        if name == "warmup_cosine":  # MONAI's WarmupCosineSchedule (half a cosine)
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        if name == "poly":  # nnU-Net's PolyLRScheduler
            return max(0.0, 1.0 - progress) ** self.config.exponent
        if name == "warmup_cooldown":  # Scaling ViT: constant, then linear to zero
            cooldown = max(1, round(self.config.cooldown_fraction * total))
            return min(1.0, max(0.0, (total - t) / cooldown))
        raise AssertionError(f"schedule {name!r} passed validation but has no formula")

    def apply(self, optimizer: torch.optim.Optimizer, t: int) -> None:
        """Set every group's LR for the step after `t` completed steps."""
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.factor(t)


def remember_initial_lr(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
