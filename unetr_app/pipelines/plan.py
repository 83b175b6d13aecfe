"""Plan a dataset: its fingerprint (streamed, cached), then a plan per target device, into plans.yaml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import yaml

from unetr_app.errors import UsageError
from unetr_app.io.atomic import atomic_write_text
from unetr_app.planning.fingerprint import compute_fingerprint
from unetr_app.planning.plan import DEFAULT_GPU_GB, make_plan

PLANS_NAME = "plans.yaml"
DEVICES = ("cpu", "cuda")


def machine_memory_gb(device: str) -> float:
    """What this machine has: its RAM for cpu; its first GPU's memory for cuda (nnU-Net's 8 GB reference without one)."""
    if device == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    import torch

    return torch.cuda.get_device_properties(0).total_memory / 1024**3 if torch.cuda.is_available() else DEFAULT_GPU_GB


def this_machine() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def plan_dataset(data_dir: Path, out: Path | None = None, device: str | None = None, memory_gb: float | None = None,
                 exclude_outliers: bool = False, overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> tuple[dict, Path]:
    """Fingerprint `data_dir` and plan it; writes `out` (default DATA_DIR/plans.yaml) and returns (plans, path).

    With `device` the plan has that target alone (with `memory_gb`, default this machine's);
    without, it has both, and its `profile` is the one for this machine."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UsageError(f"{data_dir}: no such dataset folder")
    if device is not None and device not in DEVICES:
        raise UsageError(f"--device {device!r}: plan for one of {', '.join(DEVICES)}")
    out = Path(out) if out is not None else data_dir / PLANS_NAME
    fingerprint = compute_fingerprint(data_dir, cache_dir=out.parent, progress=progress, exclude_outliers=exclude_outliers)
    primary = device or this_machine()
    targets = {d: make_plan(fingerprint, d, memory_gb if (memory_gb and d == primary) else machine_memory_gb(d))
               for d in ((device,) if device else DEVICES)}
    plans = {
        "dataset": str(data_dir),
        "device": primary,
        "task": fingerprint["task"],
        "fingerprint": {k: v for k, v in fingerprint.items() if k not in ("task", "computed_cases")},
        "targets": targets,
        "profile": targets[primary]["profile"],
    }
    text = "# written by `unetr plan`; train with it: unetr train --data-dir DIR --profile auto (or --profile THIS.yaml)\n" + \
        yaml.safe_dump(plans, sort_keys=False, width=200)
    if out.is_file() and not overwrite and out.read_text(encoding="utf-8") != text:
        raise UsageError(f"{out} already holds another plan; pass --overwrite to replace it, or --out another file")
    atomic_write_text(out, text)
    return {**plans, "computed_cases": fingerprint["computed_cases"]}, out


def auto_profile(data_dir: Path | None, device: str, announce: Callable[[str], Any] = print) -> tuple[dict, dict | None]:
    """(profile, task) for `unetr train --profile auto`: DATA_DIR/plans.yaml's target for the
    training device, planned now if the file does not exist. The task is the plan's when the
    dataset has no dataset.json (read from its folder layout), else None (dataset.json says)."""
    if data_dir is None:
        raise UsageError("--profile auto plans from the data: give --data-dir DIR")
    from unetr_app.device import resolve_device

    target = resolve_device(device).type
    path = Path(data_dir) / PLANS_NAME
    if path.is_file():
        plans = yaml.safe_load(path.read_text(encoding="utf-8"))
        announce(f"using the plan in {path} (re-plan with `unetr plan {data_dir} --overwrite`)")
    else:
        plans, path = plan_dataset(Path(data_dir), device=None)
        announce(f"planned {data_dir} into {path}")
    if target not in plans.get("targets", {}):
        raise UsageError(f"{path} has no plan for {target}; re-plan with `unetr plan {data_dir} --device {target} --overwrite`")
    for line in plans["targets"][target].get("warnings", []):
        announce(f"warning: {line}")
    described = plans.get("fingerprint", {}).get("described", True)
    return plans["targets"][target]["profile"], None if described else plans["task"]
