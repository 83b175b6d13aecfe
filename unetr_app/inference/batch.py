"""Predicting many cases with one loaded model, never stopped by one bad file.

Three stages overlap: a reader thread loads and preprocesses the next case while the model runs on
the current one, and a writer thread maps the previous prediction back to its grid and writes it.
At most one case waits in each stage, so memory stays bounded by three cases.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from unetr_app.errors import InputError
from unetr_app.io.scans import CaseSource, Volume, read_header_shape, read_volume, write_like
from unetr_app.inference.dicom_seg import SegReferenceError, check_seg_input, write_dicom_seg
from unetr_app.inference.predictor import INTENSITY_WARNINGS, Passes, Prediction, Predictor
from unetr_app.inference.preview import write_preview
from unetr_app.inference.report import FAILED, OK, SKIPPED, CaseRecord, label_volumes
from unetr_app.io.atomic import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FirstPassJudged:
    """What --tta auto learnt judging a case's first pass: the scan's own signals (the final
    judgement reuses them) and, where the first pass is kept, its mask and verdict, which are final."""
    scan: dict
    kept_labels: np.ndarray | None = None
    kept_verdict: dict | None = None


@dataclass(frozen=True)
class OutputOptions:
    output_dir: Path
    overwrite: bool = False
    save_probabilities: bool = False
    preview: bool = False
    # nifti | dicom-seg (other inputs fail: a SEG references a DICOM series) | both (SEG where the input is DICOM)
    output_format: str = "nifti"

    def mask_path(self, case: CaseSource) -> Path:
        return self.output_dir / f"{case.name}.nii.gz"

    def seg_path(self, case: CaseSource) -> Path:
        return self.output_dir / f"{case.name}_seg.dcm"

    def writes_nifti(self, case: CaseSource) -> bool:
        return self.output_format != "dicom-seg"

    def writes_seg(self, case: CaseSource) -> bool:
        return self.output_format == "dicom-seg" or (self.output_format == "both" and case.kind == "dicom")

    def probabilities_path(self, case: CaseSource) -> Path:
        return self.output_dir / f"{case.name}_probabilities.npz"

    def preview_path(self, case: CaseSource) -> Path:
        return self.output_dir / f"{case.name}.png"

    def expected(self, case: CaseSource) -> list[Path]:
        paths = [self.mask_path(case)] if self.writes_nifti(case) else []
        paths += [self.seg_path(case)] if self.writes_seg(case) else []
        paths += [self.probabilities_path(case)] if self.save_probabilities else []
        return paths + ([self.preview_path(case)] if self.preview else [])


def predict_cases(
    predictor: Predictor, cases: list[CaseSource], options: OutputOptions, show_progress: bool = True
) -> list[CaseRecord]:
    """Predict every case whose outputs are missing (all with `overwrite`); one record per case."""
    records: dict[str, CaseRecord] = {}
    todo = []
    for case in cases:
        done = not options.overwrite and all(p.is_file() for p in options.expected(case))
        record = _skipped_record(case, options, predictor.loaded.labels) if done else None
        if record is None:
            todo.append(case)
        else:
            records[case.name] = record

    with _progress(show_progress) as progress, ThreadPoolExecutor(1, "read") as reader, ThreadPoolExecutor(1, "write") as writer:
        bar = progress.add_task("predicting", total=len(cases), completed=len(records), failed=0)
        reads = [reader.submit(_read_and_prepare, predictor, case) for case in todo[:1]]
        writing: tuple[CaseRecord, Future] | None = None
        for index, case in enumerate(todo):
            if index + 1 < len(todo):
                reads.append(reader.submit(_read_and_prepare, predictor, todo[index + 1]))
            record, job = _infer_stage(predictor, case, reads.pop(0), options, writer)
            if writing is not None:
                _finish(writing, records, progress, bar)
            writing = (record, job) if job is not None else None
            if job is None:
                _finish((record, None), records, progress, bar)
        if writing is not None:
            _finish(writing, records, progress, bar)
    return [records[case.name] for case in cases]


# --- stages --------------------------------------------------------------------------------------


def _read_and_prepare(predictor: Predictor, case: CaseSource) -> tuple[Volume, dict, float]:
    start = time.perf_counter()
    shape = read_header_shape(case)
    if shape and predictor.settings.max_memory_bytes is not None:
        _check_header_memory(predictor, case, shape)
    volume = read_volume(case)
    prepared = predictor.prepare(volume)
    return volume, prepared, time.perf_counter() - start


def _check_header_memory(predictor: Predictor, case: CaseSource, shape: tuple[int, ...]) -> None:
    affine = nib.load(case.path).affine
    need = predictor.estimate_bytes(shape, affine)
    if need > predictor.settings.max_memory_bytes:
        raise InputError(
            f"{case.path}: too large: shape {shape} needs about {need / 2**30:.1f} GB, over the memory "
            f"limit of {predictor.settings.max_memory_bytes / 2**30:.1f} GB (raise --max-memory-gb)"
        )


def _infer_stage(predictor, case, read: Future, options, writer) -> tuple[CaseRecord, Future | None]:
    record = CaseRecord(case=case.name, input=str(case.path), status=FAILED)
    try:
        if options.writes_seg(case):
            check_seg_input(case)  # before spending the inference on it
        volume, prepared, read_seconds = read.result()
        record.warnings = prepared[INTENSITY_WARNINGS]
        start = time.perf_counter()
        passes, judged = _passes(predictor, prepared, volume)
        record.forward_passes = passes.count
        record.seconds = read_seconds + time.perf_counter() - start
    except Exception as err:  # noqa: BLE001 - one case's failure must not stop the batch
        record.error = _one_line(err, case.path)
        return record, None
    return record, writer.submit(_restore_and_write, predictor, volume, prepared, passes, judged, options, record)


def _passes(predictor: Predictor, prepared: dict, volume: Volume) -> tuple[Passes, FirstPassJudged | None]:
    """Every member and mirror; under --tta auto first one member unmirrored, and the rest only
    when that first mask's risk is above the threshold (mirrors only where `unetr qc` did not
    find them lowering the validation Dice)."""
    kit = predictor.quality
    if predictor.settings.tta != "auto" or kit is None:
        return predictor.infer_passes(prepared), None
    first = predictor.infer_passes(prepared, predictor.members[:1], [()])
    if len(predictor.members) * len(predictor.mirrors) == 1:  # one model, mirroring found harmful: nothing to add
        return first, None
    labels = predictor.restore(prepared, first.probabilities).labels
    scan = kit.scan_signals(volume)
    verdict = kit.judge(labels, first.probabilities.numpy(), first.labels, volume, scan)
    if verdict["risk"] <= predictor.settings.tta_risk:
        return first, FirstPassJudged(scan, labels, verdict)
    full = predictor.infer_passes(prepared, predictor.members, predictor.mirrors)
    return Passes(full.probabilities, full.labels, first.count + full.count), FirstPassJudged(scan)


def _restore_and_write(predictor, volume: Volume, prepared, passes: Passes, judged: FirstPassJudged | None, options: OutputOptions, record) -> None:
    start = time.perf_counter()
    kept = judged is not None and judged.kept_labels is not None
    if kept and not options.save_probabilities:  # the mask judged already is the one to write
        prediction = Prediction(judged.kept_labels, None)
    else:
        prediction = predictor.restore(prepared, passes.probabilities, keep_probabilities=options.save_probabilities)
    if prediction.labels.shape != volume.shape:
        raise RuntimeError(f"internal error: mask shape {prediction.labels.shape} != input {volume.shape}")
    case = volume.source
    labels = predictor.loaded.labels
    kit = predictor.quality
    if kit is not None:
        record.quality = judged.kept_verdict if kept else kit.judge(prediction.labels, passes.probabilities.numpy(), passes.labels, volume,
                                                                    judged.scan if judged is not None else None)
    if options.save_probabilities:
        calibrated = kit.calibrate(prediction.probabilities) if kit is not None else prediction.probabilities
        temperature = kit.temperature if kit is not None and kit.temperature is not None else np.ones(len(labels), np.float32)
        with atomic_path(options.probabilities_path(case)) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(
                handle,
                probabilities=np.moveaxis(calibrated, -1, 0).astype(np.float16),  # (classes, i, j, k)
                affine=volume.affine,
                class_names=np.array(sorted(labels, key=labels.get)),
                temperature=temperature,  # applied already: softmax(log p / T); T = 1 undoes nothing
            )
    if options.preview:
        window = predictor.loaded.preprocessing.intensity_window
        write_preview(volume.channel(0), prediction.labels, volume.affine, options.preview_path(case), case.name, window)
    if options.writes_nifti(case):  # first: a SEG that fails must not take the mask with it
        write_like(volume, prediction.labels, options.mask_path(case))
        record.output = str(options.mask_path(case))
    if options.writes_seg(case):
        _write_seg(volume, prediction.labels, labels, options, record)
    record.volumes = label_volumes(prediction.labels, volume.voxel_ml, labels)
    record.seconds = round(record.seconds + time.perf_counter() - start, 3)


def _write_seg(volume: Volume, mask: np.ndarray, labels: dict[str, int], options: OutputOptions, record: CaseRecord) -> None:
    """Under `both` a SEG is written where it can be, and its failure is a warning beside the
    NIfTI mask; under `dicom-seg` it fails the case, yet a series the SEG cannot reference still
    gets its mask as NIfTI, so the inference is not lost."""
    case = volume.source
    try:
        record.output = str(write_dicom_seg(volume, mask, labels, options.seg_path(case)))
    except Exception as err:  # noqa: BLE001 - the NIfTI is the mask; the SEG is a second copy of it
        if options.output_format == "both":
            record.warnings.append(f"{_one_line(err, case.path)} (the NIfTI mask {options.mask_path(case).name} is written)")
            return
        if not isinstance(err, SegReferenceError):
            raise
        write_like(volume, mask, options.mask_path(case))
        record.output = str(options.mask_path(case))
        raise InputError(f"{_one_line(err, case.path)} (the mask is written as NIfTI instead: {options.mask_path(case)})") from None


def _finish(writing: tuple[CaseRecord, Future | None], records, progress: Progress, bar) -> None:
    record, job = writing
    if job is not None:
        try:
            job.result()
            record.status = OK
        except Exception as err:  # noqa: BLE001
            record.error = _one_line(err, record.input)
    records[record.case] = record
    for line in record.warnings:  # also in predict_report.json
        progress.console.print(f"[yellow]warning[/yellow] {record.case}: {line}", highlight=False)
    if record.status == FAILED:
        log.warning("%s: %s", record.case, record.error)
        progress.console.print(f"[red]failed[/red] {record.case}: {record.error}", highlight=False)
    failed = sum(r.status == FAILED for r in records.values())
    progress.update(bar, advance=1, failed=failed)


def _skipped_record(case: CaseSource, options: OutputOptions, labels: dict[str, int]) -> CaseRecord | None:
    """A record for a case already done; None when its mask cannot be read (then predict it again)."""
    if not options.writes_nifti(case):
        return CaseRecord(case=case.name, input=str(case.path), status=SKIPPED, output=str(options.seg_path(case)))
    path = options.mask_path(case)
    try:
        image = nib.load(path)
        mask = np.asarray(image.dataobj).astype(np.int64)
    except Exception:  # noqa: BLE001 - an unreadable old output is simply redone
        return None
    voxel_ml = abs(float(np.linalg.det(image.affine[:3, :3]))) / 1000.0
    return CaseRecord(
        case=case.name, input=str(case.path), status=SKIPPED, output=str(path), volumes=label_volumes(mask, voxel_ml, labels)
    )


def _one_line(err: BaseException, path) -> str:
    """InputErrors already name the file; anything else gets the file and the error's type."""
    if isinstance(err, InputError):
        return " ".join(str(err).split())
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return f"{path}: out of GPU memory (try --stitch-device cpu or a smaller --sw-batch-size)"
    if isinstance(err, MemoryError):
        return f"{path}: out of memory (lower --max-memory-gb to refuse such scans up front)"
    log.debug("unexpected error on %s", path, exc_info=err)
    return f"{path}: {type(err).__name__}: {' '.join(str(err).split())}"


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TextColumn("remaining"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
