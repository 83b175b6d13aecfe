"""Dataset manifests (`data_manifests/<task>.yaml`): what a dataset is, and checking a copy of it.

`check_dataset` reports every problem by file and cause, so a user fixes a broken download
once instead of meeting the problems one crash at a time during training.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from unetr_app.config import find_named, format_validation_error, known_names, read_yaml
from unetr_app.errors import ConfigError, InputError, UsageError
from unetr_app.io.scans import CaseSource, Volume, find_cases, read_volume

AFFINE_TOLERANCE_MM = 1e-3


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    homepage: str
    archive: str
    citation: str = ""


class Counts(_Strict):
    training: int
    test: int


class Layout(_Strict):
    images_train: str = "imagesTr"
    labels_train: str = "labelsTr"
    images_test: str = "imagesTs"
    labels_test: str = "labelsTs"
    dataset_json: str = "dataset.json"


class Manifest(_Strict):
    name: str
    task: str
    description: str
    source: Source
    license: str
    modality: str
    channels: dict[str, str] | None = None  # name -> modality per input channel; None: one channel
    labels: dict[str, int]
    counts: Counts
    layout: Layout = Layout()
    file_pattern: str
    file_ending: str = ".nii.gz"

    @property
    def num_channels(self) -> int:
        return len(self.channels) if self.channels else 1

    def where_to_get(self) -> str:
        return f"{self.source.archive} ({self.license}; see {self.source.homepage})"


def load_manifest(name: str | None) -> Manifest | None:
    """The named manifest; None for a task described by its dataset.json alone (no manifest)."""
    if name is None:
        return None
    path = Path(name) if name.endswith((".yaml", ".yml")) else find_named("data_manifests", name)
    if path is None or not path.is_file():
        raise ConfigError(f"no data manifest {name!r}; known: {', '.join(known_names('data_manifests'))} (or a .yaml path)")
    try:
        return Manifest.model_validate(read_yaml(path))
    except ValidationError as err:
        raise ConfigError(f"{path}: {format_validation_error(err)}") from None


@dataclass(frozen=True)
class Problem:
    file: str
    cause: str

    def __str__(self) -> str:
        return f"{self.file}: {self.cause}"


def check_dataset(root: str | Path, manifest: Manifest, progress=None) -> list[Problem]:
    """Every problem found in a dataset folder, as (file, cause) pairs; empty if it is sound."""
    root = Path(root)
    if not root.is_dir():
        return [Problem(str(root), "dataset folder not found")]
    lay = manifest.layout
    problems = _check_dataset_json(root, manifest)
    problems += _check_counts(root, manifest)
    pattern = re.compile(manifest.file_pattern)
    for images, labels in ((lay.images_train, lay.labels_train), (lay.images_test, lay.labels_test)):
        problems += _check_pairs(root, images, labels, pattern, manifest, required=images == lay.images_train, progress=progress)
    return problems


def _check_dataset_json(root: Path, manifest: Manifest) -> list[Problem]:
    path = root / manifest.layout.dataset_json
    if not path.is_file():
        return [Problem(str(path), "missing dataset description")]
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return [Problem(str(path), f"unreadable JSON ({err})")]
    problems = []
    for entry in description.get("training", []):
        for key in ("image", "label"):
            listed = entry.get(key) if isinstance(entry, dict) else None
            if not listed or not (root / listed).is_file():
                problems.append(Problem(str(path), f"training entry {key} {listed!r} does not exist"))
    labels = {str(v): k for k, v in manifest.labels.items()}
    if description.get("labels") not in (None, labels, manifest.labels):  # MSD {"1": name} or nnU-Net {name: 1}
        problems.append(Problem(str(path), f"labels {description.get('labels')} differ from the manifest's {labels}"))
    channels = description.get("channel_names", description.get("modality"))  # nnU-Net v2 / MSD
    if isinstance(channels, dict):
        names = [str(channels[k]) for k in sorted(channels, key=lambda k: int(k) if str(k).isdigit() else 0)]
        expected = list(manifest.channels or {})
        if len(names) != manifest.num_channels:
            problems.append(Problem(str(path), f"names {len(names)} channels ({', '.join(names)}); the manifest expects {manifest.num_channels}"))
        elif expected and [n.lower() for n in names] != [n.lower() for n in expected]:
            problems.append(Problem(str(path), f"channels {', '.join(names)} differ from the manifest's {', '.join(expected)} (order matters)"))
    return problems


def _check_counts(root: Path, manifest: Manifest) -> list[Problem]:
    problems = []
    for folder, expected in ((manifest.layout.images_train, manifest.counts.training), (manifest.layout.images_test, manifest.counts.test)):
        found = len(_images_in(root / folder, manifest))
        if found != expected:
            problems.append(Problem(str(root / folder), f"{found} images, the manifest expects {expected}"))
    return problems


def _check_pairs(root, images_dir, labels_dir, pattern, manifest, required: bool, progress=None) -> list[Problem]:
    """Images and labels paired by case name (nnU-Net's CASE_0000, CASE_0001 ... pair with CASE)."""
    images = {c.name: c for c in _images_in(root / images_dir, manifest)}
    labels = {c.name: c for c in _images_in(root / labels_dir, manifest)}
    problems = [Problem(str(p), f"file name does not match {manifest.file_pattern}") for c in images.values() for p in c.files if not pattern.match(p.name)]
    if required or labels:
        problems += [Problem(str(images[n].path), f"missing label ({labels_dir}/{n}{manifest.file_ending})") for n in sorted(images.keys() - labels.keys())]
        problems += [Problem(str(labels[n].path), f"label without image ({images_dir}/{n})") for n in sorted(labels.keys() - images.keys())]
    allowed = set(manifest.labels.values())
    for name in sorted(images):
        problems += _check_case(images[name], labels.get(name), allowed, manifest)
        if progress is not None:
            progress()
    return problems


def _check_case(image_case: CaseSource, label_case: CaseSource | None, allowed: set[int], manifest: Manifest) -> list[Problem]:
    image, problem = _read(image_case)
    if problem:
        return [problem]
    if image.num_channels != manifest.num_channels:
        names = f" ({', '.join(manifest.channels)})" if manifest.channels else ""
        return [Problem(str(image_case.path), f"case {image_case.name} has {image.num_channels} channel(s); expected {manifest.num_channels}{names}")]
    if label_case is None:
        return []
    label, problem = _read(label_case)
    if problem:
        return [problem]
    problems = []
    if label.array.shape != image.shape:
        problems.append(Problem(str(label_case.path), f"shape {label.array.shape} differs from the image's {image.shape}"))
    elif not np.allclose(label.affine, image.affine, atol=AFFINE_TOLERANCE_MM):
        worst = float(np.abs(label.affine - image.affine).max())
        problems.append(Problem(str(label_case.path), f"affine differs from the image's (by up to {worst:.3g} mm)"))
    values = set(np.unique(label.array).astype(int).tolist())
    if not values <= allowed:
        problems.append(Problem(str(label_case.path), f"label values {sorted(values - allowed)} are outside the label map {sorted(allowed)}"))
    return problems


def _read(case: CaseSource) -> tuple[Volume | None, Problem | None]:
    """The scan through the one reader, or a Problem if it cannot be read whole (catches truncated gzip)."""
    try:
        return read_volume(case), None
    except InputError as err:
        text = " ".join(str(err).split())
        return None, Problem(str(case.path), "unreadable (" + text.split(": ", 1)[-1][:200] + ")")


def _images_in(folder: Path, manifest: Manifest) -> list[CaseSource]:
    """The cases in a folder; MSD archives carry macOS resource forks (._name), which are not images."""
    if not folder.is_dir():
        return []
    try:
        return find_cases(folder)
    except UsageError:
        return []
