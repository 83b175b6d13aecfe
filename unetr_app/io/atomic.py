"""Atomic writes: write to a temporary name beside the target, then rename over it.

A reader never sees a half-written file, and a run killed mid-write leaves the old file intact.
Temporary names start with `.` and contain `.tmp-`, so a restarted run can find and remove them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

TMP_MARK = ".tmp-"


def temporary_name(target: Path) -> Path:
    """A hidden name beside `target` that keeps its extension (writers pick formats by suffix)."""
    suffix = "".join(target.suffixes)
    stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
    return target.with_name(f".{stem}{TMP_MARK}{os.getpid()}{suffix}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to `target`, on error removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def append_line(target: str | os.PathLike, line: str) -> None:
    """Append one line and flush it to disk, so a crash loses at most the line being written."""
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(line.rstrip("\n") + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporaries left by a killed run in `folder`; returns what was removed."""
    removed = [p for p in Path(folder).glob(f".*{TMP_MARK}*") if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
