"""Multi-crop views of unlabelled scans, and bad scan folders."""

from __future__ import annotations

import shutil

import pytest
import torch

from unetr_app.config import PreprocessingConfig
from unetr_app.data.multicrop import MultiCropd, find_scans, multicrop_loader, preprocess_scans
from unetr_app.errors import UsageError

PRE = PreprocessingConfig(orientation="RAS", spacing=(8.0, 8.0, 8.0), intensity_window=(-175, 250), roi_size=(32, 32, 32))


@pytest.fixture(scope="module")
def samples(phantom_dir):
    # labelled and test images together, as MSD imagesTr + imagesTs
    return preprocess_scans(find_scans([phantom_dir / "imagesTr", phantom_dir / "imagesTs"]), PRE)


def test_every_scan_of_every_folder_is_read_without_labels(samples):
    assert len(samples) == 8
    assert all(s["image"].ndim == 4 and s["image"].shape[0] == 1 for s in samples)
    assert all(0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0 for s in samples)  # the CT window


def test_views_have_the_configured_sizes_and_count(samples):
    crops = MultiCropd((32, 32, 32), (16, 16, 16), global_crops=2, local_crops=3)
    crops.set_random_state(0)
    out = crops(samples[0])
    assert out["global_crops"].shape == (2, 1, 32, 32, 32)
    assert out["local_crops"].shape == (3, 1, 16, 16, 16)
    assert not torch.equal(out["global_crops"][0], out["global_crops"][1])


def test_local_crops_cover_a_smaller_part_of_the_scan_than_global_crops(samples):
    image = samples[0]["image"]
    crops = MultiCropd((32, 32, 32), (16, 16, 16), global_crops=2, local_crops=2, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4))
    crops.set_random_state(3)
    box = crops.local_view.transforms[0].cropper
    sizes = []
    for _ in range(20):
        box.randomize(image.shape[1:])
        sizes.append(torch.tensor(box._size, dtype=torch.float64).prod() / torch.tensor(image.shape[1:], dtype=torch.float64).prod())
    assert 0.05 - 0.02 <= min(sizes) and max(sizes) <= 0.4 + 0.02


def test_the_same_seed_gives_the_same_batches(samples):
    def first_batch(seed):
        crops = MultiCropd((32, 32, 32), (16, 16, 16), global_crops=2, local_crops=2)
        loader = multicrop_loader(samples, crops, batch_size=2, seed=0)
        from monai.data.utils import set_rnd

        set_rnd(loader.dataset, seed)
        loader.generator.manual_seed(seed)
        return next(iter(loader))

    a, b, c = first_batch(5), first_batch(5), first_batch(6)
    assert a["global_crops"].shape == (2, 2, 1, 32, 32, 32) and a["local_crops"].shape == (2, 2, 1, 16, 16, 16)
    assert torch.equal(a["global_crops"], b["global_crops"]) and torch.equal(a["local_crops"], b["local_crops"])
    assert not torch.equal(a["global_crops"], c["global_crops"])


def test_a_folder_without_scans_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no scans here")
    with pytest.raises(UsageError, match="no .nii"):
        find_scans([tmp_path])


def test_unreadable_scans_are_skipped_and_none_readable_is_an_error(tmp_path, phantom_dir):
    (tmp_path / "broken_0000.nii.gz").write_bytes(b"not a scan")
    with pytest.raises(UsageError, match="none of the 1 scans could be read"):
        preprocess_scans(find_scans([tmp_path]), PRE)
    shutil.copy(sorted((phantom_dir / "imagesTs").iterdir())[0], tmp_path)
    assert len(preprocess_scans(find_scans([tmp_path]), PRE)) == 1
