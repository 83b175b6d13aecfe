"""A review as plain data: the cases, where the reviewer is, each case's arrays in display order,
and the two things a reviewer writes (a verdict in review.csv, a correction on the scan's grid).

No Qt here: the widget is a thin view of a `ReviewSession`, and the tests drive this directly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from unetr_app.errors import InputError, UsageError
from unetr_app.io.atomic import atomic_write_text
from unetr_app.io.scans import Volume, read_volume, source_for, write_like
from unetr_app.registry import closest_name
from unetr_app.review import measures
from unetr_app.quality.signals import voxel_entropy
from unetr_app.review.cases import (
    ReviewCase, find_review_cases, label_name, natural_key, order_cases, read_channel_names, read_label_names, read_quality,
)
from unetr_app.review.geometry import DisplayGrid
from unetr_app.review.status import CSV_NAME, ReviewLog

log = logging.getLogger(__name__)


@dataclass
class OpenCase:
    """One case loaded for review; every array is in display order (see `geometry`)."""

    case: ReviewCase
    scan: Volume
    grid: DisplayGrid
    image: np.ndarray
    prediction: np.ndarray  # as predicted; never edited
    labels: np.ndarray  # what the reviewer edits: the saved correction if any, else the prediction
    reference: np.ndarray | None
    corrected: bool  # labels come from a saved correction
    attention: dict[str, np.ndarray] = field(default_factory=dict)  # `unetr attention` maps by layer name
    channels: dict[str, np.ndarray] = field(default_factory=dict)  # the scan's other channels by layer name
    uncertainty: np.ndarray | None = None  # per-voxel entropy / ln C of the saved probabilities


class ReviewSession:
    def __init__(self, images_dir: Path, pred_dir: Path, labels_dir: Path | None = None, corrections_dir: Path | None = None,
                 attention_dir: Path | None = None, order: str = "name"):
        self.pred_dir = Path(pred_dir)
        self.images_dir = Path(images_dir)
        self.attention_dir = Path(attention_dir) if attention_dir else None
        if self.attention_dir and not self.attention_dir.is_dir():
            raise UsageError(f"--attention {self.attention_dir}: no such folder (the OUT_DIR of `unetr attention`)")
        self.quality = read_quality(self.pred_dir)
        if order == "risk" and not self.quality:
            raise UsageError(f"--order risk: {self.pred_dir / 'qc.csv'} not found or without risks; it is written by "
                             "`unetr predict` (predict again, or review with --order name)")
        cases = find_review_cases(Path(images_dir), self.pred_dir, Path(labels_dir) if labels_dir else None)
        self.cases = order_cases(cases, self.quality, order)
        self.channel_names = read_channel_names(Path(images_dir))
        self.corrections_dir = Path(corrections_dir) if corrections_dir else default_corrections_dir(self.pred_dir)
        if self.corrections_dir.resolve() == self.pred_dir.resolve():
            raise UsageError(f"--corrections {self.corrections_dir} is the predictions folder; corrections go to a folder of their own")
        self.label_names = read_label_names(self.pred_dir)
        self.log = ReviewLog(self.corrections_dir / CSV_NAME, [case.name for case in self.cases])
        self.index = self.log.first_pending()
        self._volumes: dict[str, dict[int, float]] = {}

    # --- where the reviewer is ----------------------------------------------------------------

    @property
    def current(self) -> ReviewCase:
        return self.cases[self.index]

    def go_to(self, index: int) -> ReviewCase:
        self.index = min(max(index, 0), len(self.cases) - 1)
        return self.current

    def index_of(self, name: str) -> int:
        names = [case.name for case in self.cases]
        if name not in names:
            close = closest_name(name, names)
            hint = f"; did you mean {close!r}?" if close else f"; cases are {', '.join(names[:5])}..."
            raise UsageError(f"--case {name!r} is not among the {len(names)} cases with a prediction{hint}")
        return names.index(name)

    # --- reading a case -------------------------------------------------------------------------

    def open(self, index: int | None = None) -> OpenCase:
        index = min(max(self.index if index is None else index, 0), len(self.cases) - 1)
        case = self.cases[index]
        scan = read_volume(case.image)
        grid = DisplayGrid(scan.affine, scan.shape)
        prediction = grid.to_display(_read_mask(case.prediction, scan))
        correction = self.correction_path(case)
        labels = grid.to_display(_read_mask(correction, scan)) if correction.is_file() else prediction.copy()
        reference = grid.to_display(_read_mask(case.reference.path, scan)) if case.reference else None
        # the first channel is "scan" (windowed, what the mask is drawn over); the others are layers of their own
        opened = OpenCase(case, scan, grid, grid.to_display(scan.channel(0), copy=False), prediction, labels, reference, correction.is_file(),
                          self.attention_maps(case, scan, grid), self.other_channels(scan, grid), self.uncertainty_map(case, scan, grid))
        self._volumes[case.name] = self.volumes_of(labels, grid.voxel_ml)
        self.index = index  # only once the case could be read: a broken file leaves the reviewer where they were
        return opened

    def attention_maps(self, case: ReviewCase, scan: Volume, grid: DisplayGrid) -> dict[str, np.ndarray]:
        """{"attention head k": map in display order} from --attention; maps on another grid are skipped."""
        from unetr_app.models.attention_maps import ATTENTION_SUFFIX

        if self.attention_dir is None:
            return {}
        maps = {}
        for path in sorted(self.attention_dir.glob(f"{case.name}{ATTENTION_SUFFIX}*.nii.gz"), key=lambda p: natural_key(p.name)):
            image = nib.load(path)
            if image.shape != scan.array.shape or not np.allclose(image.affine, scan.affine, atol=1e-3):
                log.warning("%s: not on the grid of %s; not shown", path, case.image.path)
                continue
            head = path.name[len(case.name) + len(ATTENTION_SUFFIX):].split(".")[0]
            maps[f"attention head {head}"] = grid.to_display(np.asarray(image.dataobj, dtype=np.float32))
        return maps

    def other_channels(self, scan: Volume, grid: DisplayGrid) -> dict[str, np.ndarray]:
        """{"channel k (name)": array in display order} for channels 1.. of a multi-channel scan."""
        names = {c: f"channel {c}" + (f" ({self.channel_names[c]})" if c in self.channel_names else "") for c in range(scan.num_channels)}
        return {names[c]: grid.to_display(scan.channel(c), copy=False) for c in range(1, scan.num_channels)}

    def uncertainty_map(self, case: ReviewCase, scan: Volume, grid: DisplayGrid) -> np.ndarray | None:
        """Per-voxel entropy / ln C of PRED_DIR/<case>_probabilities.npz (`predict --save-probabilities`),
        in display order; None without the file, or when it is unreadable or on another grid (said once)."""
        path = self.probabilities_path(case)
        if not path.is_file():
            return None
        try:
            with np.load(path) as saved:
                probabilities = saved["probabilities"]
        except (OSError, ValueError, KeyError) as err:
            log.warning("%s: unreadable probabilities (%s); no uncertainty layer", path, " ".join(str(err).split()))
            return None
        if probabilities.shape[1:] != scan.shape:
            log.warning("%s: probabilities of shape %s are not on the grid of %s %s; no uncertainty layer",
                        path, probabilities.shape[1:], case.image.path, scan.shape)
            return None
        return grid.to_display(voxel_entropy(probabilities, axis=0))

    def probabilities_path(self, case: ReviewCase) -> Path:
        return self.pred_dir / f"{case.name}_probabilities.npz"

    def risk_of(self, case: ReviewCase) -> dict | None:
        """{predicted_dice, risk, flag} from qc.csv, or None."""
        return self.quality.get(case.name)

    def correction_path(self, case: ReviewCase) -> Path:
        return self.corrections_dir / f"{case.name}.nii.gz"

    def label_values(self, *masks: np.ndarray | None) -> list[int]:
        """Foreground values to report: the named ones and any other present in the masks."""
        present = set().union(*(measures.label_counts(m) for m in masks if m is not None))
        return sorted((set(self.label_names) | present) - {0})

    def volumes_of(self, labels: np.ndarray, voxel_ml: float) -> dict[int, float]:
        counts = measures.label_counts(labels)
        return measures.label_volumes_ml(counts, voxel_ml, sorted((set(self.label_names) | set(counts)) - {0}))

    def volumes_ml(self, index: int) -> dict[int, float]:
        """Label volumes of a case's current mask (its correction if saved), read once and kept."""
        case = self.cases[index]
        if case.name not in self._volumes:
            path = self.correction_path(case) if self.correction_path(case).is_file() else case.prediction
            try:
                image = nib.load(path)
                labels = np.asarray(image.dataobj).astype(np.int64)
            except Exception as err:  # noqa: BLE001 - any reader failure is this file's problem
                raise InputError(f"{path}: could not be read as a mask ({' '.join(str(err).split())})") from None
            voxel_ml = float(abs(np.linalg.det(image.affine[:3, :3]))) / 1000.0
            self._volumes[case.name] = self.volumes_of(labels, voxel_ml)
        return self._volumes[case.name]

    def known_volumes(self, index: int) -> dict[int, float] | None:
        """Label volumes of a case if already computed (without reading anything)."""
        return self._volumes.get(self.cases[index].name)

    def dice(self, opened: OpenCase, labels: np.ndarray | None = None) -> dict[str, float | None]:
        """Dice of the (edited) mask against the reference, per label name; {} without a reference."""
        if opened.reference is None:
            return {}
        labels = opened.labels if labels is None else labels
        values = self.label_values(labels, opened.reference)
        return {label_name(self.label_names, v): measures.dice(labels, opened.reference, v) for v in values}

    # --- what the reviewer writes ---------------------------------------------------------------

    def set_status(self, status: str, note: str = "") -> None:
        self.log.set_status(self.current.name, status, note)
        self._write_sources()

    def _write_sources(self) -> None:
        """sources.json beside review.csv: which scans and predictions the verdicts are about
        (what `train --add-reviewed` reads)."""
        path = self.corrections_dir / "sources.json"
        sources = {"images": str(self.images_dir.resolve()), "predictions": str(self.pred_dir.resolve())}
        atomic_write_text(path, json.dumps(sources, indent=2) + "\n")

    def save_correction(self, opened: OpenCase, edited: np.ndarray) -> int:
        """Write the edited display-order mask to CORRECTIONS/<case>.nii.gz with the scan's exact
        grid (shape, affine, qform/sform); return how many voxels differ from the prediction."""
        edited = np.asarray(edited)
        dtype = np.uint8 if edited.max(initial=0) < 256 and edited.min(initial=0) >= 0 else np.int16
        write_like(opened.scan, opened.grid.from_display(edited), self.correction_path(opened.case), dtype=dtype)
        changed = int(np.count_nonzero(edited != opened.prediction))
        self.log.record_correction(opened.case.name, changed)
        self._write_sources()
        opened.labels, opened.corrected = edited.copy(), True
        self._volumes[opened.case.name] = self.volumes_of(edited, opened.grid.voxel_ml)
        return changed


def default_corrections_dir(pred_dir: Path) -> Path:
    """PRED_DIR's sibling `<pred_dir>_corrections`: never inside the predictions folder."""
    return pred_dir.parent / f"{pred_dir.resolve().name}_corrections"


def _read_mask(path: Path, scan: Volume) -> np.ndarray:
    """An integer mask in the file's voxel order, which must have the scan's shape (any format the
    one reader takes: NIfTI, NRRD, MHA)."""
    mask = read_volume(source_for(path))
    array = mask.array
    if array.shape != scan.shape:
        raise InputError(f"{path}: mask shape {array.shape} differs from the scan's {scan.shape} ({scan.source.path})")
    if not np.allclose(mask.affine, scan.affine, atol=1e-3):
        log.warning("%s: affine differs from the scan's (%s); showing it on the scan's grid", path, scan.source.path)
    if not np.issubdtype(array.dtype, np.integer):
        array = np.rint(array)
    return array.astype(np.int32 if array.max(initial=0) > 255 else np.uint8)
