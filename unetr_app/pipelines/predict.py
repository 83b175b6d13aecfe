"""`unetr predict`: a trained checkpoint over a file or folder of scans.

The recipe: find the cases; load the model once; clear temporaries a killed run left behind; skip
cases already done; predict the rest (each mask on its input's exact grid); write one report.
Under torchrun each process takes its share of the cases and rank 0 writes the merged report.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from unetr_app.config import DEFAULT_PROFILE, DEFAULT_TASK, load_run_config
from unetr_app.device import resolve_device
from unetr_app.errors import UsageError
from unetr_app import distributed
from unetr_app.inference.batch import OutputOptions, predict_cases
from unetr_app.io.scans import find_cases
from unetr_app.inference.predictor import PredictSettings, Predictor
from unetr_app.inference.report import FAILED, build_report, write_report
from unetr_app.io.atomic import remove_stale_temporaries
from unetr_app.io.checkpoint import load_model, resolve_checkpoint_path
from unetr_app.evaluation.postprocess import find_postprocessing, read_postprocessing
from unetr_app.quality.context import load_quality_kit

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("nifti", "dicom-seg", "both")


@dataclass(frozen=True)
class PredictRequest:
    input: Path
    output_dir: Path
    checkpoint: Path | tuple[Path, ...]  # several: an ensemble (their softmax averaged)
    device: str = "auto"
    stitch_device: str | None = None
    overlap: float | None = None
    sw_batch_size: int | None = None
    tta: bool | str | None = None  # None: on for CUDA, off for CPU (mirroring costs 8x the compute); "auto": see --tta-risk
    tta_risk: float = 0.5  # with tta "auto": cases whose first-pass risk is above this get every member and mirror
    amp: bool | None = None  # None: float16 on CUDA, float32 on CPU; True on CPU: bfloat16
    save_probabilities: bool = False
    overwrite: bool = False
    preview: bool = False
    max_memory_gb: float | None = None  # None: 80% of this machine's memory
    show_progress: bool = True
    output_format: str = "nifti"  # nifti | dicom-seg | both
    # for a bare state dict (MONAI's UNETR / SwinUNETR weights): the model and preprocessing to use
    task: str | None = None
    model: str | None = None
    profile: str | None = None
    postprocess: bool = True  # apply the postprocessing.json found beside the (first) checkpoint


def run_predict(request: PredictRequest) -> dict:
    """Predict every case; returns the merged report (on every process)."""
    with distributed.process_group() as shard:
        cases = find_cases(request.input)
        _check_output_dir(request, cases)
        device = distributed.device_for(shard, resolve_device(request.device))
        checkpoints, fallback = _checkpoints(request), _fallback(request)
        members = [load_model(path, device, fallback) for path in checkpoints]
        postprocessing = find_postprocessing(checkpoints[0]) if request.postprocess else None  # the first member's
        kit = load_quality_kit(checkpoints[0], members[0].labels)
        predictor = Predictor(members, _settings(request, device, postprocessing), kit)
        if shard.is_main:
            for note in kit.notes(predictor.settings.tta):  # once per run, not once per case
                log.warning("%s", note)
        options = OutputOptions(request.output_dir, request.overwrite, request.save_probabilities, request.preview,
                                _output_format(request.output_format))
        if shard.is_main:
            request.output_dir.mkdir(parents=True, exist_ok=True)
            for path in remove_stale_temporaries(request.output_dir):
                log.info("removed %s left by an interrupted run", path.name)
        distributed.barrier(shard)
        mine = distributed.my_part(cases, shard)
        records = predict_cases(predictor, mine, options, show_progress=request.show_progress and shard.is_main)
        everyone = distributed.gather_to_main(records, shard)
        report = None
        if shard.is_main:
            order = {case.name: i for i, case in enumerate(cases)}
            everyone.sort(key=lambda record: order[record.case])
            report = build_report(everyone, predictor.loaded.labels, {**_run_info(predictor, shard, postprocessing), "quality_notes": kit.notes(predictor.settings.tta)})
            write_report(request.output_dir, report)
        return distributed.broadcast_from_main(report, shard)


def exit_code(report: dict) -> int:
    return 1 if any(case["status"] == FAILED for case in report["cases"]) else 0


def _checkpoints(request: PredictRequest) -> list[Path]:
    paths = request.checkpoint if isinstance(request.checkpoint, (list, tuple)) else [request.checkpoint]
    return [resolve_checkpoint_path(path) for path in paths]


def _fallback(request: PredictRequest) -> dict | None:
    """What a bare state dict lacks (model, preprocessing, labels), from --task/--model/--profile."""
    if request.task is None and request.model is None and request.profile is None:
        return None
    return load_run_config(request.task or DEFAULT_TASK, request.model, request.profile or DEFAULT_PROFILE).checkpoint_description()


def _tta(value: bool | str | None, device) -> bool | str:
    if value is None:
        return device.type == "cuda"
    if isinstance(value, bool):
        return value
    choices = {"on": True, "true": True, "off": False, "false": False, "auto": "auto"}
    if value.lower() not in choices:
        raise UsageError(f"--tta {value!r}: expected on, off or auto")
    return choices[value.lower()]


def _output_format(value: str) -> str:
    if value not in OUTPUT_FORMATS:
        raise UsageError(f"--output-format {value!r}: expected one of {', '.join(OUTPUT_FORMATS)}")
    return value


def _settings(request: PredictRequest, device, postprocessing: Path | None) -> PredictSettings:
    if request.overlap is not None and not 0 <= request.overlap < 1:
        raise UsageError(f"--overlap {request.overlap}: expected a fraction in [0, 1), e.g. 0.5")
    stitch = resolve_device(request.stitch_device) if request.stitch_device else None
    limit_gb = request.max_memory_gb if request.max_memory_gb is not None else 0.8 * _machine_memory_gb()
    return PredictSettings(
        device=device,
        stitch_device=stitch,
        overlap=request.overlap,
        sw_batch_size=request.sw_batch_size,
        tta=_tta(request.tta, device),
        tta_risk=request.tta_risk,
        amp=request.amp,
        max_memory_bytes=limit_gb * 2**30,
        postprocessing=read_postprocessing(postprocessing) if postprocessing else None,
    )


def _check_output_dir(request: PredictRequest, cases) -> None:
    if request.output_dir.exists() and not request.output_dir.is_dir():
        raise UsageError(f"{request.output_dir}: exists and is not a folder; OUTPUT_DIR must be a folder")
    out = request.output_dir.resolve()
    clash = [c.path for c in cases if (out / f"{c.name}.nii.gz") == c.path.resolve()]
    if clash:
        raise UsageError(f"{request.output_dir}: writing there would overwrite the input {clash[0].name}; choose another output folder")


def _run_info(predictor: Predictor, shard, postprocessing: Path | None) -> dict:
    inferer = predictor.inferer
    return {
        "checkpoint": str(predictor.loaded.path) if len(predictor.members) == 1 else [str(m.path) for m in predictor.members],
        "model": "+".join(m.name for m in predictor.members),
        "postprocessing": str(postprocessing) if postprocessing else None,
        "device": str(predictor.settings.device),
        "stitch_device": str(predictor.settings.stitch_device or predictor.settings.device),
        "overlap": inferer.overlap,
        "sw_batch_size": inferer.sw_batch_size,
        "tta": predictor.settings.tta,
        "amp": str(predictor.amp_dtype).removeprefix("torch.") if predictor.use_amp else "float32",
        "processes": shard.world_size,
        **({"weights": predictor.loaded.key_report.summary()} if predictor.loaded.key_report else {}),
    }


def _machine_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("inf")
