"""Loss terms and monitors of the training recipes, as plain functions of tensors.

Logits are (B, K, *spatial) for segmentation, (V, B, K) for DINO's views; every function is
computed in float32 (AMP hands them half-precision logits).

Distillation for dense prediction:
    soft_distillation     T^2 KL(softmax(teacher/T) || softmax(student/T)) per voxel (Hinton et al.
                          2015; DeiT's soft form), summed over classes, averaged over voxels
    hard_distillation     the task loss (DiceCE) against the teacher's argmax masks: on a small
                          foreground cross-entropy alone settles on background, Dice does not
    channel_distillation  channel-wise distillation (Shu et al., ICCV 2021): per class channel a
                          softmax over the voxels at temperature T, KL(teacher || student) summed
                          over voxels, averaged over batch and channels, times T^2

Deep supervision (nnU-Net): `deep_supervision_weights` gives head i (0 = full resolution) the
weight 1/2^i, the coarsest optionally 0, normalised to sum 1.

Masked image modelling (SimMIM, Xie et al., CVPR 2022; MAE, He et al., CVPR 2022): `patchify` cuts
(B, C, *size) into the ViT's patches (B, N, C * prod(patch)), in the patch embedding's token order;
`random_token_mask` masks round(ratio * N) tokens per sample; `masked_reconstruction_loss` is the
mean L1 (SimMIM) or squared (MAE) error over the voxels of masked patches only, against the raw
patch or, with `normalise_target`, each patch standardised by its own mean and std (MAE's target).
A reconstruction target cannot collapse: predicting a constant costs the patches' variance.

DINO collapse monitors (Caron et al. 2021; its authors' advice for runs stuck at ln K): from the
teacher's centred, sharpened distribution p_t and the student's log-probabilities,
    teacher_entropy_ratio   mean H(p_t) / ln K: near 1 in the uniform phase, 0 for one-hot targets
    teacher_student_kl      KL(p_t || p_s) over the loss's (teacher view, other student view) pairs,
                            i.e. the loss minus the teacher's entropy: near 0 when nothing is learnt
    batch_entropy_ratio     H(mean over the batch of p_t) / ln K: near 0 when every scan maps to
                            one prototype (collapse), near 1 when the batch spreads over them
`dino_phase` names the phase those say; `phase_warning` is the one line a run logs about it.
`patch_monitors` are iBOT's: the same three over patch tokens (the KL over the masked patches only).

Against every scan sharing one embedding, DINOv2's KoLeo term (`koleo_loss`): minus the mean log
distance of each normalised embedding to its nearest neighbour in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from unetr_app.training.losses import at_least_float32

# a teacher spending over 90% of ln K is still in DINO's uniform phase; below 5% the whole batch
# sits on a handful of prototypes (for K = 1024, e^(0.05 ln K) is about 1.4 prototypes)
UNIFORM_ENTROPY_RATIO = 0.9
COLLAPSED_BATCH_ENTROPY_RATIO = 0.05


# --- distillation ------------------------------------------------------------------------------


def soft_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(teacher/T) || softmax(student/T)) over the class axis, averaged over voxels."""
    log_p_teacher = F.log_softmax(at_least_float32(teacher) / temperature, dim=1)
    log_p_student = F.log_softmax(at_least_float32(student) / temperature, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    return kl.mean() * temperature**2


def hard_distillation(student: torch.Tensor, teacher: torch.Tensor,
                      task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The task loss of the student's logits against the teacher's masks (B, 1, *spatial)."""
    return task_loss(at_least_float32(student), teacher.argmax(dim=1, keepdim=True))


def channel_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 times the mean over (batch, class) of KL between spatial softmaxes of one class channel."""
    log_p_teacher = F.log_softmax(at_least_float32(teacher).flatten(2) / temperature, dim=2)  # (B, K, voxels)
    log_p_student = F.log_softmax(at_least_float32(student).flatten(2) / temperature, dim=2)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=2)  # (B, K)
    return kl.mean() * temperature**2


# --- deep supervision --------------------------------------------------------------------------


def patchify(x: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """(B, C, *size) -> (B, N, C * prod(patch)): patches in row-major grid order (a patch-embedding
    convolution's flattened output), each flattened channel-first."""
    batch, channels, *size = x.shape
    grid = [s // p for s, p in zip(size, patch)]
    if any(g * p != s for g, p, s in zip(grid, patch, size)):
        raise ValueError(f"size {tuple(size)} is not a multiple of the patch {tuple(patch)}")
    dims = len(patch)
    x = x.reshape(batch, channels, *[n for pair in zip(grid, patch) for n in pair])
    order = [0, *(2 + 2 * i for i in range(dims)), 1, *(3 + 2 * i for i in range(dims))]
    return x.permute(order).reshape(batch, math.prod(grid), channels * math.prod(patch))


def random_token_mask(batch: int, tokens: int, ratio: float, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, N) bool: exactly round(ratio * N) masked tokens per sample (at least 1, at most N - 1)."""
    masked = min(max(round(ratio * tokens), 1), tokens - 1)
    order = torch.rand(batch, tokens, device=device, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch, tokens, dtype=torch.bool, device=device)
    return mask.scatter(1, order[:, :masked], True)


def masked_reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                               kind: str = "l1", normalise_target: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """prediction, target (B, N, P); mask (B, N) bool: the mean error over the masked patches' voxels."""
    prediction, target = at_least_float32(prediction), at_least_float32(target)
    if normalise_target:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, unbiased=False, keepdim=True)
        target = (target - mean) / (var + eps).sqrt()
    error = (prediction - target).abs() if kind == "l1" else (prediction - target) ** 2
    per_patch = error.mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)


def deep_supervision_weights(heads: int, coarsest_zero: bool = True) -> list[float]:
    """Weights of `heads` outputs, full resolution first: 1/2^i, the coarsest 0 if asked, sum 1."""
    if heads < 1 or (coarsest_zero and heads < 2):
        raise ValueError(f"deep supervision needs at least {2 if coarsest_zero else 1} heads, got {heads}")
    weights = [0.5**i for i in range(heads)]
    if coarsest_zero:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


# --- DINO monitors -----------------------------------------------------------------------------


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last axis; 0 log 0 counts as 0."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1)


def teacher_entropy_ratio(teacher_probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the teacher's distributions (..., K) over ln K."""
    return entropy(at_least_float32(teacher_probs)).mean() / math.log(teacher_probs.shape[-1])


def batch_entropy_ratio(teacher_probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the teacher's distribution averaged over views and batch (..., K), over ln K."""
    flat = at_least_float32(teacher_probs).reshape(-1, teacher_probs.shape[-1])
    return entropy(flat.mean(dim=0)) / math.log(teacher_probs.shape[-1])


def teacher_student_kl(teacher_probs: torch.Tensor, student_log_probs: torch.Tensor) -> torch.Tensor:
    """teacher (Vt, B, K), student (Vs, B, K): mean over pairs s != t of the batch-mean KL(p_t || p_s)."""
    teacher_probs, student_log_probs = at_least_float32(teacher_probs), at_least_float32(student_log_probs)
    log_teacher = torch.log(teacher_probs.clamp_min(1e-12))
    terms = [
        (teacher_probs[t] * (log_teacher[t] - student_log_probs[s])).sum(dim=-1).mean()
        for t in range(teacher_probs.shape[0]) for s in range(student_log_probs.shape[0]) if s != t
    ]
    return torch.stack(terms).mean()


def dino_monitors(teacher_probs: torch.Tensor, student_log_probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three collapse monitors of the module docstring, detached, for the recipe's loss parts."""
    with torch.no_grad():
        return {
            "teacher_entropy_ratio": teacher_entropy_ratio(teacher_probs),
            "teacher_student_kl": teacher_student_kl(teacher_probs, student_log_probs),
            "batch_entropy_ratio": batch_entropy_ratio(teacher_probs),
        }


@torch.no_grad()
def patch_monitors(teacher_probs: torch.Tensor, student_log_probs: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """iBOT's patch monitors, from teacher probabilities and student log-probabilities (V, N, K) and
    the mask (V, N): patch_entropy_ratio and patch_batch_entropy_ratio as their class-token
    counterparts over every patch, patch_student_kl KL(p_t || p_s) over the masked patches."""
    teacher_probs, student_log_probs = at_least_float32(teacher_probs), at_least_float32(student_log_probs)
    log_k = math.log(teacher_probs.shape[-1])
    kl = (teacher_probs * (torch.log(teacher_probs.clamp_min(1e-12)) - student_log_probs)).sum(dim=-1)
    return {
        "patch_entropy_ratio": entropy(teacher_probs).mean() / log_k,
        "patch_student_kl": kl[mask].mean(),
        "patch_batch_entropy_ratio": entropy(teacher_probs.reshape(-1, teacher_probs.shape[-1]).mean(dim=0)) / log_k,
    }


def koleo_loss(embeddings: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The Kozachenko-Leonenko entropy estimator as a loss (Sablayrolles et al. 2019; DINOv2):
    embeddings (B, D), L2-normalised -> -mean_i log(min_{j != i} |x_i - x_j| + eps). It falls as the
    batch's embeddings spread apart; 0 for a batch of one."""
    if embeddings.shape[0] < 2:
        return embeddings.sum() * 0.0
    x = F.normalize(at_least_float32(embeddings), dim=-1)
    distances = torch.cdist(x, x)
    distances = distances + torch.eye(len(x), device=x.device, dtype=x.dtype) * 4.0  # unit vectors are at most 2 apart
    return -torch.log(distances.min(dim=1).values + eps).mean()


def dino_phase(entropy_ratio: float, batch_ratio: float) -> str | None:
    """'uniform' (targets near uniform), 'collapsed' (the batch on one prototype) or None (learning)."""
    if entropy_ratio > UNIFORM_ENTROPY_RATIO:
        return "uniform"
    if batch_ratio < COLLAPSED_BATCH_ENTROPY_RATIO:
        return "collapsed"
    return None


def phase_warning(step: int, total_steps: int, monitors: dict[str, float]) -> str | None:
    """One line for a run still uniform, or collapsed onto one prototype, with what to change. With
    iBOT's patch monitors the line says where the patch targets stand too."""
    entropy, spread = monitors["teacher_entropy_ratio"], monitors["batch_entropy_ratio"]
    phase = dino_phase(entropy, spread)
    where = f"dino: step {step} of {total_steps}"
    if "patch_entropy_ratio" in monitors:
        patch_phase = dino_phase(monitors["patch_entropy_ratio"], monitors["patch_batch_entropy_ratio"]) or "learning"
        where += f" (patch targets {patch_phase}, entropy {monitors['patch_entropy_ratio']:.2f} of ln K)"
    if phase == "uniform":
        return (f"{where}: the teacher is still uniform (entropy {entropy:.2f} of ln K, teacher-student KL "
                f"{monitors['teacher_student_kl']:.3f}); lower recipe.params.teacher_temp and teacher_temp_final "
                f"(e.g. 0.02), set freeze_last_layer (e.g. 0.1) or a smaller bottleneck_dim; with few scans, "
                f"`--method masked` cannot collapse")
    if phase == "collapsed":
        return (f"{where}: the teacher has collapsed onto one prototype (batch-mean entropy {spread:.2f} of ln K); "
                f"raise recipe.params.teacher_temp or lower center_momentum (a faster centre)")
    return None
