"""`review.csv`: the verdict on every case, kept beside the corrections.

One row per case: case, status (pending, accepted, rejected, flagged), note, time (UTC, ISO 8601)
and voxels_changed (how many voxels the saved correction differs from the prediction; empty until
a correction is saved). The whole file is rewritten atomically after each change, so a crash never
leaves a half-written table. Rows of cases no longer in the folders are kept, untouched.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from unetr_app.errors import InputError
from unetr_app.io.atomic import atomic_write_text

STATUSES = ("pending", "accepted", "rejected", "flagged")
CSV_NAME = "review.csv"


@dataclass
class ReviewRecord:
    case: str
    status: str = "pending"
    note: str = ""
    time: str = ""
    voxels_changed: str = ""


FIELDS = tuple(field.name for field in fields(ReviewRecord))


class ReviewLog:
    """The review state of a list of cases, read from and written to `review.csv`."""

    def __init__(self, path: Path, case_names: list[str]):
        self.path = Path(path)
        self.case_names = list(case_names)
        self.records = {record.case: record for record in self._read()}
        for name in self.case_names:
            self.records.setdefault(name, ReviewRecord(name))

    def __getitem__(self, case: str) -> ReviewRecord:
        return self.records[case]

    def set_status(self, case: str, status: str, note: str = "") -> ReviewRecord:
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
        record = self.records[case]
        record.status, record.note, record.time = status, note, _now()
        self.save()
        return record

    def record_correction(self, case: str, voxels_changed: int) -> ReviewRecord:
        record = self.records[case]
        record.voxels_changed, record.time = str(int(voxels_changed)), _now()
        self.save()
        return record

    def first_pending(self) -> int:
        """Index of the first pending case, or 0 when every case has a verdict."""
        for index, name in enumerate(self.case_names):
            if self.records[name].status == "pending":
                return index
        return 0

    def save(self) -> None:
        ordered = [self.records[name] for name in self.case_names]
        ordered += [record for case, record in self.records.items() if case not in set(self.case_names)]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(asdict(record) for record in ordered)
        atomic_write_text(self.path, buffer.getvalue())

    def _read(self) -> list[ReviewRecord]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"case", "status"} <= set(reader.fieldnames):
                raise InputError(f"{self.path}: not a review table (expected columns {', '.join(FIELDS)}); move it away to start afresh")
            records = [ReviewRecord(**{key: row.get(key) or "" for key in FIELDS}) for row in reader]
        for record in records:
            if record.status not in STATUSES:
                raise InputError(f"{self.path}: case {record.case!r} has status {record.status!r}; expected one of {', '.join(STATUSES)}")
        return records


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
