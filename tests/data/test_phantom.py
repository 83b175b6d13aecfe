"""The phantom is a faithful stand-in for MSD spleen: readable identically by nibabel and
SimpleITK, CT-like in values and geometry, varied, and reproducible."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from unetr_app.data.phantom import GRIDS, ORIENTATIONS, make_phantom_case, save_nifti

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def _geometry_both_ways(path):
    img = nib.load(path)
    affine = img.affine
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    itk = sitk.ReadImage(str(path))
    return img, affine, spacing, itk


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_phantom_reads_back_identically_with_nibabel_and_simpleitk(tmp_path, orientation):
    case = make_phantom_case(seed=11, orientation=orientation)
    path = tmp_path / "case.nii.gz"
    save_nifti(case.image, case.affine, path)
    img, affine, spacing, itk = _geometry_both_ways(path)

    assert "".join(nib.aff2axcodes(affine)) == orientation
    assert img.shape == itk.GetSize()
    np.testing.assert_allclose(spacing, itk.GetSpacing(), rtol=1e-5)
    # SimpleITK reports LPS physical space; NIfTI stores RAS
    direction = LPS_FROM_RAS @ (affine[:3, :3] / spacing)
    np.testing.assert_allclose(np.array(itk.GetDirection()).reshape(3, 3), direction, atol=1e-5)
    np.testing.assert_allclose(itk.GetOrigin(), LPS_FROM_RAS @ affine[:3, 3], atol=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk).transpose(2, 1, 0), np.asanyarray(img.dataobj))


def test_oblique_cases_keep_their_geometry_in_both_readers(tmp_path):
    oblique = next(c for c in (make_phantom_case(s) for s in range(40)) if _is_oblique(c.affine))
    path = tmp_path / "oblique.nii.gz"
    save_nifti(oblique.image, oblique.affine, path)
    img, affine, spacing, itk = _geometry_both_ways(path)
    assert _is_oblique(affine)
    direction = LPS_FROM_RAS @ (affine[:3, :3] / spacing)
    np.testing.assert_allclose(np.array(itk.GetDirection()).reshape(3, 3), direction, atol=1e-5)
    np.testing.assert_allclose(itk.GetOrigin(), LPS_FROM_RAS @ affine[:3, 3], atol=1e-3)


def _is_oblique(affine) -> bool:
    cosines = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.any((np.abs(cosines) > 1e-4) & (np.abs(cosines) < 1 - 1e-4)))


def test_phantom_is_ct_like_and_varied():
    cases = [make_phantom_case(seed) for seed in range(12)]
    orientations = {c.orientation for c in cases}
    assert len(orientations) >= 3, orientations
    sizes, sides = [], []
    for case in cases:
        assert case.image.dtype == np.int16 and case.label.dtype == np.uint8
        assert set(np.unique(case.label)) == {0, 1}
        spacing = np.linalg.norm(case.affine[:3, :3], axis=0)
        assert spacing.max() / spacing.min() > 1.2, "slices are thicker than the in-plane spacing"
        hu = case.image.astype(float)
        assert hu.min() <= -900 and hu.max() >= 250, "air outside the body and bone inside"
        spleen = hu[case.label == 1]
        assert 60 < np.median(spleen) < 170, "soft-tissue enhancement, not a bright marker"
        sizes.append(case.label.sum() * np.prod(spacing) / 1000)  # mL
        centroid = np.argwhere(case.label == 1).mean(0)
        sides.append((case.affine @ np.append(centroid, 1))[0])
    assert all(x < 0 for x in sides), "the spleen is on the patient's left (negative x in RAS)"
    assert 40 < min(sizes) and max(sizes) < 800 and max(sizes) / min(sizes) > 1.5, sizes


def test_same_seed_same_case_and_other_seed_other_case():
    a, b, c = make_phantom_case(3), make_phantom_case(3), make_phantom_case(4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_synth_writes_msd_layout(cli, tmp_path):
    out = tmp_path / "Task09_Spleen"
    result = cli("data", "synth", out, "--cases", 3, "--test-cases", 1, "--seed", 5)
    assert result.exit_code == 0, result.output
    assert "thick grid" in json.loads((out / "dataset.json").read_text(encoding="utf-8"))["description"]
    description = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert description["numTraining"] == 3 and description["labels"] == {"0": "background", "1": "spleen"}
    for entry in description["training"]:
        image, label = nib.load(out / entry["image"]), nib.load(out / entry["label"])
        assert image.shape == label.shape
        np.testing.assert_allclose(image.affine, label.affine)
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["spleen_4.nii.gz"]
    assert (out / "labelsTs" / "spleen_4.nii.gz").is_file()


def test_fine_grid_is_sub_millimetre_in_plane_with_thin_slices_and_the_same_anatomy_in_mm():
    thick, fine = make_phantom_case(5), make_phantom_case(5, grid="fine")
    in_plane, slices = GRIDS["fine"]
    spacing = np.linalg.norm(fine.affine[:3, :3], axis=0)
    assert in_plane[0] <= min(spacing[:2]) <= max(spacing[:2]) <= in_plane[1] and spacing[2] in slices
    volume = lambda case: case.label.sum() * np.prod(np.linalg.norm(case.affine[:3, :3], axis=0)) / 1000  # noqa: E731
    assert volume(fine) > 40 and np.prod(fine.image.shape) > 4 * np.prod(thick.image.shape)


def test_an_unknown_grid_names_the_choices():
    with pytest.raises(ValueError, match="thick, fine"):
        make_phantom_case(0, grid="coarse")


def test_synth_refuses_an_unknown_grid_in_one_line_before_writing(cli, tmp_path):
    result = cli("data", "synth", tmp_path / "Task09_Spleen", "--grid", "coarse", "--cases", 2, "--test-cases", 0)
    assert result.exit_code == 2 and "--grid 'coarse'" in result.output and "thick or fine" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "Task09_Spleen").exists()
