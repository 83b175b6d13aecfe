"""Cross-validation folds made once per dataset and reused by every model and run.

The folds live in the dataset folder as `splits.json`, in nnU-Net's `splits_final.json` layout (a
list of `{"train": [case, ...], "val": [case, ...]}`, cases named as `io.scans.case_name` names
them), so runs of different models, and nnU-Net itself, validate on the same cases. A read-only
dataset keeps them beside itself, in `<dataset>.splits.json`.

The assignment is a seeded shuffle of the sorted case names dealt into `folds` nearly equal parts:
the same cases and fold count always give the same folds, on any machine.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from unetr_app.data.dataset import split_cases
from unetr_app.errors import UsageError
from unetr_app.io.atomic import atomic_write_text

SPLITS_FILE = "splits.json"
DEFAULT_FOLDS = 5
SPLIT_SEED = 12345  # nnU-Net's KFold random_state; any fixed number would do
ALL = "all"


def make_folds(names: list[str], folds: int, seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """Deterministic k-fold split of case names; every case is validated in exactly one fold."""
    if not 2 <= folds <= len(names):
        raise UsageError(f"--folds {folds}: need between 2 and the number of cases ({len(names)}) folds")
    order = sorted(names)
    random.Random(seed).shuffle(order)
    parts = [sorted(order[i::folds]) for i in range(folds)]
    return [{"train": sorted(set(order) - set(val)), "val": val} for val in parts]


def splits_path(dataset: Path) -> Path:
    """Where a dataset's folds are (or will be) kept: inside it, or beside it when it is read-only."""
    inside = Path(dataset) / SPLITS_FILE
    beside = Path(dataset).parent / f"{Path(dataset).name}.{SPLITS_FILE}"
    if inside.is_file() or (not beside.is_file() and os.access(dataset, os.W_OK)):
        return inside
    return beside


def load_or_make_splits(dataset: Path, cases: list[dict[str, str]], folds: int | None = None) -> tuple[list[dict], Path]:
    """The dataset's folds (made on first use); `folds` None means "whatever exists, else 5"."""
    path = splits_path(dataset)
    names = [c["case"] for c in cases]
    if not path.is_file():
        splits = make_folds(names, folds or DEFAULT_FOLDS)
        atomic_write_text(path, json.dumps(splits, indent=2) + "\n")
        return splits, path
    splits = read_splits(path)
    if folds is not None and folds != len(splits):
        raise UsageError(f"--folds {folds}: {path} holds {len(splits)} folds; use --folds {len(splits)} (or delete it to make new folds)")
    listed = {name for split in splits for name in split["val"]}
    if listed != set(names):
        extra, missing = sorted(listed - set(names)), sorted(set(names) - listed)
        raise UsageError(f"{path} does not match the dataset's cases (not in the dataset: {extra[:3]}, not in the folds: {missing[:3]}); delete it to make new folds")
    return splits, path


def read_splits(path: Path) -> list[dict[str, list[str]]]:
    try:
        splits = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: unreadable folds ({' '.join(str(err).split())})") from None
    if not isinstance(splits, list) or not all(isinstance(s, dict) and {"train", "val"} <= s.keys() for s in splits):
        raise UsageError(f"{path}: expected a list of {{train, val}} folds (nnU-Net's splits_final.json layout)")
    return splits


def parse_fold(fold: str | int) -> int | str:
    """`--fold` is a fold index or `all`."""
    text = str(fold).strip().lower()
    if text == ALL:
        return ALL
    if text.isdigit():
        return int(text)
    raise UsageError(f"--fold {fold!r}: expected a fold index (0, 1, ...) or 'all'")


def fold_cases(cases: list[dict[str, str]], splits: list[dict], fold: int, path: Path | str = SPLITS_FILE) -> tuple[list, list]:
    """(train, validation) case dicts of fold `fold` of `splits`."""
    if not isinstance(fold, int) or not 0 <= fold < len(splits):
        raise UsageError(f"--fold {fold}: {path} has {len(splits)} folds; choose 0..{len(splits) - 1} or 'all'")
    by_name = {c["case"]: c for c in cases}
    return [by_name[n] for n in splits[fold]["train"]], [by_name[n] for n in splits[fold]["val"]]


def cases_for_fold(dataset: Path, cases: list[dict[str, str]], fold: str | int, folds: int | None = None,
                   watch_fraction: float = 1.0, seed: int = 0) -> tuple[list, list, dict]:
    """(train, validation, what to record) for `--fold`. `all` needs no folds file: it trains on every
    case and validates on the `watch_fraction` of them a default split would hold out, so watching
    the run costs what it costs in any run, not a pass over the whole training set."""
    fold = parse_fold(fold)
    if fold == ALL:
        watched = split_cases(cases, watch_fraction, seed)[1] if watch_fraction < 1 and len(cases) > 1 else list(cases)
        return list(cases), watched, {"fold": ALL}
    splits, path = load_or_make_splits(dataset, cases, folds)
    train, val = fold_cases(cases, splits, fold, path)
    return train, val, {"fold": fold, "folds": len(splits), "splits": str(path)}
