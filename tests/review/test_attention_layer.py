"""`unetr review --attention DIR`: the maps of `unetr attention` as layers over the scan (no display needed)."""

from __future__ import annotations

import numpy as np

from tests.recipes.dino_helpers import tiny_model, write_checkpoint
from tests.review.conftest import make_review_folders
from unetr_app.review.session import ReviewSession


def test_attention_maps_become_one_layer_per_head(cli, tmp_path):
    from napari.components import ViewerModel

    from unetr_app.review.layers import show_case

    folders = make_review_folders(tmp_path, cases=2)
    ckpt = write_checkpoint(tmp_path / "seg.pt", "vit_tiny_patch16", tiny_model("vit_tiny_patch16").state_dict())
    scan = folders.images / "spleen_1.nii.gz"
    assert cli("attention", ckpt, scan, tmp_path / "attention").exit_code == 0

    session = ReviewSession(folders.images, folders.predictions, attention_dir=tmp_path / "attention")
    opened = session.open(session.index_of("spleen_1"))
    assert list(opened.attention) == ["attention head 1", "attention head 2", "attention head 3"]
    assert all(a.shape == opened.image.shape for a in opened.attention.values())
    viewer = ViewerModel()
    show_case(viewer, opened, session.label_names, "abdomen")
    shown = [layer for layer in viewer.layers if layer.name.startswith("attention head")]
    assert [layer.name for layer in shown] == list(opened.attention)
    assert all(layer.blending == "additive" and np.allclose(layer.scale, viewer.layers["scan"].scale) for layer in shown)

    other = session.open(session.index_of("spleen_2"))  # no maps for this case: the layers go
    show_case(viewer, other, session.label_names, "abdomen")
    assert not [layer for layer in viewer.layers if layer.name.startswith("attention head")]
