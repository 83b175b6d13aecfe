"""`unetr data check` names every problem by file and cause, on a deliberately broken copy."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest

from unetr_app.data.manifest import check_dataset, load_manifest


@pytest.fixture
def manifest_for_small_copy():
    # the fixture phantom has 6 training / 2 test cases; the real manifest expects 41 / 20
    manifest = load_manifest("spleen")
    return manifest.model_copy(update={"counts": manifest.counts.model_copy(update={"training": 6, "test": 2})})


@pytest.fixture
def broken(phantom_dir, tmp_path):
    root = tmp_path / "Task09_Spleen"
    shutil.copytree(phantom_dir, root)
    tr, lb = root / "imagesTr", root / "labelsTr"
    (lb / "spleen_1.nii.gz").unlink()  # missing label
    _rewrite(lb / "spleen_2.nii.gz", lambda d, a: (d[:-1], a))  # shape mismatch
    _rewrite(lb / "spleen_3.nii.gz", lambda d, a: (d, a + np.array([[0, 0, 0, 5.0]] * 3 + [[0, 0, 0, 0]])))  # shifted
    _rewrite(lb / "spleen_4.nii.gz", lambda d, a: (np.where(d > 0, 3, d).astype(np.uint8), a))  # value 3
    data = (tr / "spleen_5.nii.gz").read_bytes()
    (tr / "spleen_5.nii.gz").write_bytes(data[: len(data) // 2])  # truncated gzip
    return root


def _rewrite(path, change):
    img = nib.load(path)
    data, affine = change(np.asanyarray(img.dataobj), img.affine)
    nib.save(nib.Nifti1Image(data, affine), path)


def test_clean_phantom_has_no_problems(phantom_dir, manifest_for_small_copy):
    assert check_dataset(phantom_dir, manifest_for_small_copy) == []


def test_each_problem_is_named_by_file_and_cause(broken, manifest_for_small_copy):
    problems = {(p.file.split("/")[-2] + "/" + p.file.split("/")[-1], p.cause.split(" ")[0]): p.cause for p in check_dataset(broken, manifest_for_small_copy)}
    causes = {key: cause for key, cause in problems.items()}
    assert ("imagesTr/spleen_1.nii.gz", "missing") in causes
    assert ("labelsTr/spleen_2.nii.gz", "shape") in causes
    assert "affine differs" in causes[("labelsTr/spleen_3.nii.gz", "affine")]
    assert "[3]" in causes[("labelsTr/spleen_4.nii.gz", "label")]
    assert ("imagesTr/spleen_5.nii.gz", "unreadable") in causes
    # dataset.json still lists the deleted label
    assert any(k[0].endswith("dataset.json") and "does not exist" in v for k, v in causes.items())
    assert not any("spleen_6" in k[0] for k in causes), "the intact case is not reported"


def test_cli_exit_codes_and_counts(cli, broken, phantom_dir):
    result = cli("data", "check", broken)
    assert result.exit_code == 1
    assert "spleen_5.nii.gz: unreadable" in result.output
    assert "6 images, the manifest expects 41" in result.output  # the real manifest's counts
    assert "Traceback" not in result.output


def test_cli_reports_missing_folder(cli, tmp_path):
    result = cli("data", "check", tmp_path / "nowhere")
    assert result.exit_code == 1 and "dataset folder not found" in result.output


def test_truncated_file_is_detected_even_if_header_reads(tmp_path, phantom_dir, manifest_for_small_copy):
    root = tmp_path / "copy"
    shutil.copytree(phantom_dir, root)
    path = root / "labelsTr" / "spleen_6.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) - 1000]))  # valid gzip, short data
    problems = check_dataset(root, manifest_for_small_copy)
    assert [p.file for p in problems] == [str(path)]
