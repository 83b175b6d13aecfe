"""Reading every supported input into one form, and writing masks back on the input's exact grid.

Inputs: NIfTI (`.nii`, `.nii.gz`, read with nibabel so the header is kept byte for byte), NRRD and
MetaImage (`.nrrd`, `.nhdr`, `.mha`, `.mhd`, read with SimpleITK) and DICOM series folders (SimpleITK's
series reader). Each becomes a `Volume`: a float32 array in (i, j, k) voxel order (with a trailing
channel axis for multi-channel scans) and its RAS affine, plus the reference needed to write outputs
with the same geometry as the input *as its reader sees it*.

Training, prediction, evaluation and review all read through `read_volume`: this is the one reader.

Case names follow nnU-Net: `liver_003_0000.nii.gz` is case `liver_003`, and `liver_003_0001.nii.gz`
beside it is that case's second channel; a DICOM series is named by its folder. Multi-channel scans
come either as such files or as one 4D NIfTI with the channels on the last axis (MSD).
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from unetr_app.errors import InputError, UsageError
from unetr_app.io.atomic import TMP_MARK, atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
CHANNEL_SUFFIX = "_0000"
CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
MAX_CHANNELS = 16  # a 4D file with more "channels" than this is a time series, not a multi-channel scan
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class CaseSource:
    """One case to predict: where it is and how to read it."""

    name: str
    path: Path
    kind: str  # "nifti" | "sitk" | "dicom"
    series: str | None = None  # DICOM series instance UID, when a folder holds several series
    channel_paths: tuple[Path, ...] = ()  # nnU-Net CASE_0000, CASE_0001, ... files, in channel order

    @property
    def files(self) -> tuple[Path, ...]:
        return self.channel_paths or (self.path,)


@dataclass
class Volume:
    """A scan: `array[i, j, k]` (or `array[i, j, k, channel]`) lies at world (RAS, mm) `affine @ (i, j, k, 1)`."""

    array: np.ndarray
    affine: np.ndarray
    reference: Any  # nibabel header (NIfTI) or SimpleITK geometry dict (everything else)
    source: CaseSource

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid's shape (i, j, k), without the channel axis."""
        return tuple(self.array.shape[:3])

    @property
    def num_channels(self) -> int:
        return 1 if self.array.ndim == 3 else int(self.array.shape[3])

    def channel(self, index: int) -> np.ndarray:
        return self.array if self.array.ndim == 3 else self.array[..., index]

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


# --- finding cases ------------------------------------------------------------------------------


def case_name(path: Path) -> str:
    name = _stem(path)
    return name[: -len(CHANNEL_SUFFIX)] if name.endswith(CHANNEL_SUFFIX) else name


def _stem(path: Path) -> str:
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES + SITK_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def source_for(paths: str | Path | list | tuple, name: str | None = None) -> CaseSource:
    """The case at a path (a scan file or a DICOM series folder), or at a list of channel files."""
    if isinstance(paths, (list, tuple)):
        files = tuple(Path(p) for p in paths)
        if len(files) > 1:
            return CaseSource(name or case_name(files[0]), files[0], file_kind(files[0]) or "nifti", channel_paths=files)
        paths = files[0]
    path = Path(paths)
    if path.is_dir():
        series = _dicom_series(path)
        if not series:
            raise InputError(f"{path}: a folder without a DICOM series")
        return CaseSource(name or path.name, path, "dicom", sorted(series)[0])
    kind = file_kind(path)
    if kind is None:
        raise InputError(f"{path}: unsupported file type; expected .nii, .nii.gz, .nrrd, .mha or a DICOM series folder")
    return CaseSource(name or case_name(path), path, kind)


def file_kind(path: Path) -> str | None:
    lower = path.name.lower()
    if lower.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if lower.endswith(SITK_SUFFIXES):
        return "sitk"
    return None


def find_cases(input_path: str | Path) -> list[CaseSource]:
    """Every case under INPUT (a file, a folder of scans, or one DICOM series folder), sorted by name."""
    root = Path(input_path)
    if not root.exists():
        raise UsageError(f"{root}: no such file or folder")
    if root.is_file():
        kind = file_kind(root)
        if kind is None:
            raise UsageError(
                f"{root}: unsupported file type; expected .nii, .nii.gz, .nrrd, .mha or a DICOM series folder"
            )
        return [CaseSource(case_name(root), root, kind)]
    if not any(file_kind(p) for p in root.iterdir()) and (series := _dicom_series(root)):
        return _series_cases(root, series)
    cases, files = [], []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or TMP_MARK in entry.name:
            continue  # hidden files and our own temporaries
        if entry.is_dir():
            cases += _series_cases(entry, _dicom_series(entry))
        elif file_kind(entry):
            files.append(entry)
    cases = sorted(cases + _file_cases(files), key=lambda case: case.name)
    _check_unique(cases, root)
    if not cases:
        raise UsageError(f"{root}: no .nii, .nii.gz, .nrrd, .mha files or DICOM series folders found")
    return cases


def _file_cases(files: list[Path]) -> list[CaseSource]:
    """One case per file, except nnU-Net channel files: CASE_0001, CASE_0002 ... join CASE_0000."""
    stems = {_stem(f): f for f in files}
    channels: dict[str, list[Path]] = {}
    for stem, path in stems.items():
        match = CHANNEL_FILE.match(stem)
        if match and f"{match['case']}{CHANNEL_SUFFIX}" in stems:
            channels.setdefault(match["case"], []).append(path)
        else:
            channels.setdefault(stem, []).append(path)
    numbered = set()
    for name in [n for n, paths in channels.items() if len(paths) > MAX_CHANNELS]:
        # more "channels" than any scan has: numbered cases (spleen_0000, spleen_0001, ...), each its own case
        numbered.update(_stem(p) for p in channels[name])
        channels.update({_stem(p): [p] for p in channels.pop(name)})
    cases = []
    for name, paths in channels.items():
        paths = sorted(paths, key=_stem)
        extra = tuple(paths) if len(paths) > 1 else ()
        cases.append(CaseSource(name if extra or name in numbered else case_name(paths[0]), paths[0], file_kind(paths[0]), channel_paths=extra))
    return cases


def _check_unique(cases: list[CaseSource], root: Path) -> None:
    seen: dict[str, Path] = {}
    for case in cases:
        if case.name in seen:
            raise UsageError(
                f"{root}: {seen[case.name].name} and {case.path.name} are both case {case.name!r}; "
                "rename one so each case has one input"
            )
        seen[case.name] = case.path


def _series_cases(folder: Path, series: list[str]) -> list[CaseSource]:
    """One case per DICOM series: named by the folder, numbered when the folder holds several."""
    if len(series) == 1:
        return [CaseSource(folder.name, folder, "dicom", series[0])]
    return [CaseSource(f"{folder.name}_{k}", folder, "dicom", uid) for k, uid in enumerate(sorted(series), start=1)]


def _dicom_series(folder: Path) -> list[str]:
    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # "No Series were found" is an answer, not a warning
    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


# --- reading --------------------------------------------------------------------------------------


def read_header_shape(source: CaseSource) -> tuple[int, ...]:
    """The stored array shape, read without decoding the voxels (to refuse oversized scans cheaply)."""
    if source.kind == "nifti" and not source.channel_paths:
        try:
            return tuple(int(s) for s in nib.load(source.path).shape)
        except Exception as err:  # noqa: BLE001 - any reader failure is this file's problem
            raise InputError(f"{source.path}: {_describe_read_error(err, source.path)}") from None
    return ()  # SimpleITK formats: checked after reading


def read_volume(source: CaseSource) -> Volume:
    """Read one case; raise `InputError` naming the file and what is wrong with it."""
    if source.channel_paths:
        return _read_channel_files(source)
    try:
        volume = _read_nifti(source) if source.kind == "nifti" else _read_sitk(source)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is this file's problem
        raise InputError(f"{source.path}: {_describe_read_error(err, source.path)}") from None
    check_volume(volume)
    return volume


def _read_channel_files(source: CaseSource) -> Volume:
    """CASE_0000, CASE_0001, ...: one 3D scan per channel, all on one grid."""
    numbers = [int(CHANNEL_FILE.match(_stem(p))["channel"]) for p in source.channel_paths]
    if numbers != list(range(len(numbers))):
        missing = sorted(set(range(max(numbers) + 1)) - set(numbers))
        raise InputError(f"case {source.name}: channel files {', '.join(f'_{n:04d}' for n in numbers)}; "
                         f"_{missing[0]:04d} is missing")
    volumes = [read_volume(CaseSource(source.name, p, file_kind(p) or "nifti")) for p in source.channel_paths]
    first = volumes[0]
    for path, volume in zip(source.channel_paths[1:], volumes[1:]):
        if volume.num_channels != 1:
            raise InputError(f"{path}: a channel file of case {source.name} holds {volume.num_channels} channels; expected one")
        if volume.shape != first.shape or not np.allclose(volume.affine, first.affine, atol=1e-3):
            raise InputError(f"{path}: channel of case {source.name} lies on a different grid than {first.source.path.name}")
    array = np.stack([v.array for v in volumes], axis=-1)
    return Volume(array, first.affine, first.reference, source)


def _read_nifti(source: CaseSource) -> Volume:
    image = nib.load(source.path)
    check_shape(source, image.shape)
    # C order: resampling needs contiguous input, and copies (a second whole volume) otherwise
    array = np.ascontiguousarray(image.get_fdata(dtype=np.float32))
    if array.ndim == 4 and array.shape[3] == 1:  # (x, y, z, 1): a 3D scan saved with a singleton time axis
        array = np.ascontiguousarray(array[..., 0])
    # (x, y, z, C): an MSD multi-channel scan, channels on the last axis; kept as they are
    return Volume(array, image.affine.astype(np.float64), _spatial_header(image.header), source)


def _spatial_header(header):
    """The header of the 3D grid (masks written like a 4D input are 3D)."""
    header = header.copy()
    if len(header.get_data_shape()) > 3:
        header.set_data_shape(header.get_data_shape()[:3])
        zooms = header.get_zooms()[:3]
        header.set_zooms(zooms)
    return header


def _read_sitk(source: CaseSource) -> Volume:
    import SimpleITK as sitk

    if source.kind == "dicom":
        reader = sitk.ImageSeriesReader()
        series = source.series or sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(source.path))[0]
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(source.path), series))
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(source.path))
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{source.path}: {image.GetNumberOfComponentsPerPixel()}-component (vector/RGB) image; expected a scalar volume")
    size = image.GetSize()  # (x, y, z[, channels])
    check_shape(source, size)
    channels = [image[:, :, :, c] for c in range(size[3])] if image.GetDimension() == 4 else [image]
    first = channels[0]
    geometry = {"origin": first.GetOrigin(), "spacing": first.GetSpacing(), "direction": first.GetDirection()}
    # (z, y, x) -> (x, y, z), channels last
    arrays = [sitk.GetArrayFromImage(c).astype(np.float32).transpose(2, 1, 0) for c in channels]
    array = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=-1)
    return Volume(np.ascontiguousarray(array), sitk_affine(geometry), geometry, source)


def sitk_affine(geometry: dict) -> np.ndarray:
    """RAS affine of a SimpleITK geometry (SimpleITK's world is LPS)."""
    direction = np.asarray(geometry["direction"], dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(geometry["spacing"], dtype=np.float64)
    affine[:3, 3] = geometry["origin"]
    return LPS_TO_RAS @ affine


def check_shape(source: CaseSource, shape: tuple[int, ...]) -> None:
    shape = tuple(int(s) for s in shape)
    if any(s == 0 for s in shape):
        raise InputError(f"{source.path}: an axis has zero size (shape {shape})")
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) < 3 or (len(shape) == 3 and min(shape) == 1):
        raise InputError(f"{source.path}: 2D image (shape {shape}); expected a 3D volume")
    if len(shape) > 4 or (len(shape) == 4 and shape[3] > MAX_CHANNELS):
        raise InputError(
            f"{source.path}: {len(shape)}D image (shape {shape}); expected a 3D volume or up to {MAX_CHANNELS} "
            "channels on the last axis (split time series first)"
        )


def check_volume(volume: Volume) -> None:
    bad = int(np.count_nonzero(~np.isfinite(volume.array)))
    if bad:
        raise InputError(f"{volume.source.path}: {bad} voxels are NaN or infinite; fix or mask them before predicting")
    if not np.all(np.isfinite(volume.affine)) or abs(np.linalg.det(volume.affine[:3, :3])) < 1e-12:
        raise InputError(f"{volume.source.path}: the affine (voxel-to-world matrix) is singular or not finite")


def _describe_read_error(err: Exception, path: Path) -> str:
    text = " ".join(str(err).replace(str(path), "the file").split()) or type(err).__name__
    if "not a gzip file" in text:
        return "not a readable image (named .gz but not gzip-compressed)"
    if isinstance(err, (EOFError, zlib.error)) or "end-of-stream" in text or "CRC" in text:
        return f"truncated or corrupt compressed data ({text})"
    if isinstance(err, nib.filebasedimages.ImageFileError):
        return f"not a readable image ({text})"
    if isinstance(err, MemoryError):
        return "not enough memory to read this image"
    return f"could not be read ({text})"


# --- writing -----------------------------------------------------------------------------------


def write_like(volume: Volume, array: np.ndarray, target: Path, dtype=np.uint8) -> None:
    """Write `array` (same (i, j, k) shape as the input, optional trailing channel axis) with the
    input's geometry, atomically. NIfTI inputs keep their header (qform, sform and codes); other
    inputs get a NIfTI whose geometry SimpleITK reads back equal to the input's."""
    if array.shape[:3] != volume.shape:
        raise RuntimeError(f"internal error: output shape {array.shape} != input shape {volume.shape}")
    array = np.asarray(array, dtype=dtype)
    with atomic_path(target) as tmp:
        if isinstance(volume.reference, dict):
            _write_sitk(volume.reference, array, tmp)
        else:
            _write_nifti(volume.reference, array, tmp)


def _write_nifti(header, array: np.ndarray, path: Path) -> None:
    header = header.copy()
    header.set_data_dtype(array.dtype)
    header.set_slope_inter(1.0, 0.0)
    if array.ndim == 4:  # class probabilities: NIfTI keeps vectors in the 5th dimension
        array = array[:, :, :, np.newaxis, :]
        header.set_intent("vector")
    else:
        header.set_intent("label" if np.issubdtype(array.dtype, np.integer) else "none")
    image = nib.Nifti1Image(array, None, header=header)
    nib.save(image, path)


def _write_sitk(geometry: dict, array: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    is_vector = array.ndim == 4  # (i, j, k, C); SimpleITK arrays are (k, j, i[, C])
    zyx = np.ascontiguousarray(np.swapaxes(array, 0, 2))
    image = sitk.GetImageFromArray(zyx, isVector=is_vector)
    image.SetOrigin(geometry["origin"])
    image.SetSpacing(geometry["spacing"])
    image.SetDirection(geometry["direction"])
    sitk.WriteImage(image, str(path), useCompression=True)


def nifti_output_path(output_dir: Path, name: str, suffix: str = "") -> Path:
    return Path(output_dir) / f"{name}{suffix}.nii.gz"


def file_size_ok(path: Path) -> bool:
    return path.is_file() and os.path.getsize(path) > 0
