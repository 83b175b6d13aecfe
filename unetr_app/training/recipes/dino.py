"""DINO: self-distillation with no labels (Caron et al., "Emerging Properties in Self-Supervised
Vision Transformers", ICCV 2021), for 3D scans.

The student (the trainable `model`: a segmentation model's ViT encoder, a class token and the DINO
head) sees every crop of a scan: 2 global crops and N smaller local crops. The teacher, an
exponential moving average of the student, sees only the global crops. The loss is the
cross-entropy between the teacher's centred, sharpened distribution and the student's, over every
(teacher view, student view) pair that are not the same view, averaged over the pairs as DINO does:

    L = 1/|pairs| * sum_{t, s != t}  mean_batch  sum_k  -softmax((T_t - c) / tau_t)_k log softmax(S_s / tau_s)_k

Schedules (per optimizer step, over the run's total steps): teacher temperature linear from
`teacher_temp` to `teacher_temp_final` over the first `teacher_temp_warmup` fraction, then
constant (equal values: a constant temperature, what DINO's authors advise for short runs,
going down to 0.02 when the loss sits at ln K); teacher momentum on a cosine from `momentum` to
1; centre c <- m c + (1 - m) mean(T). The head's last layer gets no gradient for the first
`freeze_last_layer` fraction of the run (DINO freezes it for the first epoch: prototypes that
move before the features mean anything let the run settle on uniform targets).

The teacher runs in eval mode: no dropout and no stochastic depth (a student's `drop_path_rate`,
where its model has one, applies to the student alone). Gradient clipping is the trainer's
(`training.grad_clip`, DINO uses 3.0).

`koleo_weight` adds DINOv2's KoLeo term (Oquab et al. 2023), per global view across the batch's
scans, on the student head's normalised bottleneck, the vectors compared with the prototypes. DINOv2
puts it on the backbone's class token; on few similar scans the head then maps the spread class
tokens back onto one direction, and the targets stay uniform (measured: docs/pretraining.md).

iBOT (Zhou et al., "Image BERT Pre-training with Online Tokenizer", ICLR 2022; the patch objective
of DINOv2 and 3DINO) is this recipe with `patch_weight` > 0 (recipe `ibot`, `unetr pretrain --method
ibot`): a fraction `mask_ratio` of the student's global crops' patch tokens is replaced by a learned
mask token, and on those patches the student's patch distribution (the same head) learns the
teacher's for the unmasked crop, centred with its own centre:

    L_patch = mean_{views, scans}  mean_{masked n}  sum_k  -softmax((T_vn - c_p) / tau_t)_k log softmax(S_vn / tau_s)_k

and the loss is L + patch_weight * L_patch. Whole scans can be near alike (a few scans of one
kind), where the class token has nothing to tell apart and DINO settles on one embedding for all;
the patches of one scan (air, fat, organs, bone) differ, so the patch targets have something to
sharpen. Its monitors: `patch_entropy_ratio`, `patch_student_kl` (on the masked patches) and
`patch_batch_entropy_ratio` (the mean patch distribution's entropy: near 0, every patch on one
prototype).

Collapse monitors (`unetr_app.training.objectives.dino_monitors`) are loss parts, so they reach
metrics.jsonl: `teacher_entropy_ratio` (near 1: the uniform phase), `teacher_student_kl` (near 0:
nothing learnt) and `batch_entropy_ratio` (near 0: every scan on one prototype). A fifth into the
budget a run still uniform, or collapsed, logs a one-line warning with what to change.

The checkpoint's weights are the student's; the teacher, the centre and the step live in the
recipe's extra state, so a resumed run continues exactly and `train --init-from` can take either.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from unetr_app.data.multicrop import MultiCropd, multicrop_loader
from unetr_app.training.losses import at_least_float32
from unetr_app.training.objectives import dino_monitors, koleo_loss, patch_monitors, phase_warning, random_token_mask
from unetr_app.training.recipes.base import Recipe, RecipeParams, fraction_range, register_recipe, validate_params
from unetr_app.training.recipes.dino_network import build_dino_network

log = logging.getLogger(__name__)


class DinoParams(RecipeParams):
    """`recipe.params` of the dino recipe (validated; errors name the key)."""

    out_dim: int = Field(65536, ge=2, description="K: prototypes of the head's last layer")
    hidden_dim: int = Field(2048, ge=1)
    bottleneck_dim: int = Field(256, ge=1)
    student_temp: float = Field(0.1, gt=0)
    teacher_temp: float = Field(0.04, gt=0)
    teacher_temp_final: float = Field(0.07, gt=0)
    teacher_temp_warmup: float = Field(0.3, ge=0, le=1, description="fraction of the run")
    center_momentum: float = Field(0.9, ge=0, lt=1)
    momentum: float = Field(0.996, ge=0, le=1, description="teacher EMA momentum at step 0 (cosine to 1)")
    freeze_last_layer: float = Field(0.0, ge=0, le=1, description="fraction of the run the head's last layer is frozen")
    koleo_weight: float = Field(0.0, ge=0, description="weight of DINOv2's KoLeo term on the student head's "
                                "bottleneck (per global view, across the batch's scans)")
    patch_weight: float = Field(0.0, ge=0, description="weight of iBOT's masked patch-token term (0: DINO alone)")
    mask_ratio: float = Field(0.3, gt=0, lt=1, description="share of the student's global-crop patch tokens masked "
                              "for the patch term (iBOT draws 0.1-0.5)")
    global_crops: int = Field(2, ge=1)
    local_crops: int = Field(8, ge=0)
    global_size: tuple[int, int, int] | None = Field(None, description="null: preprocessing.roi_size")
    local_size: tuple[int, int, int] = (48, 48, 48)
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)

    @field_validator("global_scale", "local_scale")
    @classmethod
    def _scale_range(cls, value):
        return fraction_range(value)


class IbotParams(DinoParams):
    """`recipe.params` of the ibot recipe: DINO's, with the patch term on."""

    patch_weight: float = Field(1.0, gt=0, description="weight of the masked patch-token term (iBOT: 1)")


def dino_params(params: dict[str, Any] | None) -> DinoParams:
    return validate_params("dino", DinoParams, params)


# --- loss and schedules -----------------------------------------------------------------------------


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """student (Vs, B, K) logits, teacher (Vt, B, K) logits for views 0..Vt-1 (the first student views):
    the mean over pairs s != t of the batch-mean cross-entropy H(teacher_t, student_s)."""
    targets = F.softmax((at_least_float32(teacher) - center) / teacher_temp, dim=-1).detach()  # not bfloat16 under CPU autocast
    log_probs = F.log_softmax(at_least_float32(student) / student_temp, dim=-1)
    terms = [
        (-targets[t] * log_probs[s]).sum(dim=-1).mean()
        for t in range(teacher.shape[0]) for s in range(student.shape[0]) if s != t
    ]
    return torch.stack(terms).mean()


def masked_patch_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, center: torch.Tensor,
                      student_temp: float, teacher_temp: float) -> torch.Tensor:
    """student, teacher (V, N, K) patch logits of the same crops (the student's masked where `mask`
    (V, N) is True): per crop the mean over its masked patches of H(teacher, student), then the mean
    over crops."""
    targets = F.softmax((at_least_float32(teacher) - center) / teacher_temp, dim=-1).detach()
    log_probs = F.log_softmax(at_least_float32(student) / student_temp, dim=-1)
    per_patch = (-targets * log_probs).sum(dim=-1)
    weights = mask.to(per_patch.dtype)
    return ((per_patch * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)).mean()


def teacher_temperature(step: int, total_steps: int, params: DinoParams) -> float:
    warmup = params.teacher_temp_warmup * total_steps
    if warmup <= 0 or step >= warmup:
        return params.teacher_temp_final
    return params.teacher_temp + (params.teacher_temp_final - params.teacher_temp) * step / warmup


def teacher_momentum(step: int, total_steps: int, start: float) -> float:
    """Cosine from `start` at step 0 to 1 at the last step."""
    progress = min(step / max(total_steps, 1), 1.0)
    return 1.0 - (1.0 - start) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> torch.Tensor:
    """center (1, K), teacher logits (..., K) -> m * center + (1 - m) * the mean over every other
    axis (views, batch, patches; and over processes under torch.distributed)."""
    flat = at_least_float32(teacher.reshape(-1, teacher.shape[-1]))
    total = flat.sum(dim=0, keepdim=True)
    count = torch.tensor(float(flat.shape[0]), device=teacher.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        dist.all_reduce(count)
    return center * momentum + total / count * (1.0 - momentum)


# --- the recipe ------------------------------------------------------------------------------------


def _views(crops: torch.Tensor) -> torch.Tensor:
    """(B, V, C, *size) -> view-major (V*B, C, *size)."""
    return crops.transpose(0, 1).reshape(-1, *crops.shape[2:])


@register_recipe
class Dino(Recipe):
    """Batches: {"global_crops": (B, G, C, *g), "local_crops": (B, L, C, *l)} from data.multicrop."""

    name = "dino"
    Params = DinoParams
    self_supervised = True
    pretrain_profile = "cpu-dino"

    @classmethod
    def unlabelled_loader(cls, config: Any, samples: list[dict], shard: Any):
        """Multi-crop batches (data.multicrop) of the preprocessed scans, sharded across processes."""
        params, train = cls.parse_params(config.recipe.params), config.training
        crops = MultiCropd(params.global_size or config.preprocessing.roi_size, params.local_size, params.global_crops,
                           params.local_crops, params.global_scale, params.local_scale)
        return multicrop_loader(samples, crops, train.batch_size, train.seed, train.num_workers, shard.rank, shard.world_size)

    def __init__(self, model: nn.Module, config: Any, **params: Any) -> None:
        self.dino = self.parse_params(params)
        name = getattr(getattr(config, "model", None), "name", "this model")
        network = build_dino_network(model, self.dino.out_dim, self.dino.hidden_dim, self.dino.bottleneck_dim, name,
                                     mask_token=self.with_patches)
        super().__init__(network, config, **params)
        self.teacher = copy.deepcopy(network).eval()
        self.teacher.requires_grad_(False)
        for param in network.head.last_layer.parameters():
            if param.requires_grad:
                param.register_hook(self._last_layer_gradient)
        self.monitors: dict[str, float] = {}
        self.register_buffer("center", torch.zeros(1, self.dino.out_dim))
        self.register_buffer("patch_center", torch.zeros(1, self.dino.out_dim) if self.with_patches else None)
        # optimizer steps taken and planned, as buffers: restoring the recipe's state_dict restores them
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps_planned", torch.ones((), dtype=torch.long))

    @property
    def with_patches(self) -> bool:
        return self.dino.patch_weight > 0

    @property
    def step(self) -> int:
        return int(self.steps_done)

    @property
    def total_steps(self) -> int:
        return int(self.steps_planned)

    def train(self, mode: bool = True) -> Dino:
        super().train(mode)
        self.teacher.eval()  # the teacher never drops paths or units
        return self

    def last_layer_frozen(self) -> bool:
        return self.step < self.dino.freeze_last_layer * self.total_steps

    def _last_layer_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        # a zero gradient leaves AdamW's moments at zero, so the layer does not move (decoupled weight
        # decay only rescales the weight-normalised direction)
        return torch.zeros_like(grad) if self.last_layer_frozen() else grad

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        batch_size, n_global = batch["global_crops"].shape[:2]
        global_views, local_views = _views(batch["global_crops"]), _views(batch["local_crops"])
        mask = None
        if self.with_patches:
            tokens = math.prod(s // p for s, p in zip(global_views.shape[2:], _unwrapped(self.model).patch_size))
            mask = random_token_mask(global_views.shape[0], tokens, self.dino.mask_ratio, device=global_views.device)
        out = self.model(global_views, local_views, mask=mask, with_patches=self.with_patches)
        student = out["logits"].reshape(-1, batch_size, self.dino.out_dim)
        with torch.no_grad():
            teacher_out = self.teacher(global_views, with_patches=self.with_patches)
        teacher = teacher_out["logits"].reshape(n_global, batch_size, self.dino.out_dim)
        temp = teacher_temperature(self.step, self.total_steps, self.dino)
        loss = dino_loss(student, teacher, self.center, self.dino.student_temp, temp)
        parts = {}
        if self.dino.koleo_weight > 0:  # each global view's scans spread apart where the prototypes see them
            per_view = out["bottleneck"][: n_global * batch_size].reshape(n_global, batch_size, -1)
            parts["koleo"] = torch.stack([koleo_loss(view) for view in per_view]).mean()
            loss = loss + self.dino.koleo_weight * parts["koleo"]
        probs = F.softmax((teacher - self.center) / temp, dim=-1)
        monitors = dino_monitors(probs, F.log_softmax(student.detach() / self.dino.student_temp, dim=-1))
        if self.with_patches:
            student_patches, teacher_patches = out["patch_logits"], teacher_out["patch_logits"]
            parts["patch_loss"] = masked_patch_loss(student_patches, teacher_patches, mask, self.patch_center,
                                                    self.dino.student_temp, temp)
            parts["dino_loss"] = loss.detach()
            loss = loss + self.dino.patch_weight * parts["patch_loss"]
            monitors.update(patch_monitors(F.softmax((teacher_patches - self.patch_center) / temp, dim=-1),
                                           F.log_softmax(student_patches.detach() / self.dino.student_temp, dim=-1), mask))
        self.monitors = {name: float(value) for name, value in monitors.items()}
        if self.training:
            self.center.copy_(updated_center(self.center, teacher, self.dino.center_momentum))
            if self.with_patches:
                self.patch_center.copy_(updated_center(self.patch_center, teacher_patches, self.dino.center_momentum))
        return {"loss": loss, "output": student[0], **parts, **monitors}

    def after_step(self, step: int, total_steps: int) -> None:
        self.steps_planned.fill_(max(total_steps, 1))
        ema_update(self.teacher, _unwrapped(self.model), teacher_momentum(self.step, self.total_steps, self.dino.momentum))
        self.steps_done += 1
        if self.step == max(1, round(self.total_steps / 5)) and self.monitors:
            warning = phase_warning(self.step, self.total_steps, self.monitors)
            if warning:
                log.warning(warning)

    def extra_state(self) -> dict[str, Any]:
        return {
            "teacher": {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()},
            "center": self.center.detach().cpu(),
            **({"patch_center": self.patch_center.detach().cpu()} if self.with_patches else {}),
            "step": self.step,
            "total_steps": self.total_steps,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.center.copy_(state["center"])
        if self.with_patches:
            self.patch_center.copy_(state["patch_center"])
        self.steps_done.fill_(int(state["step"]))
        self.steps_planned.fill_(int(state["total_steps"]))


def _unwrapped(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel keeps the network in .module


@register_recipe
class Ibot(Dino):
    """DINO with iBOT's masked patch-token term on (module docstring); the same batches."""

    name = "ibot"
    Params = IbotParams
