"""Our one-step, slab-by-slab return to the input grid equals MONAI's `Invertd` chain (inverse crop,
inverse resampling, inverse reorientation), which holds a whole-volume sampling grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from .predict_helpers import oblique_affine
from unetr_app.data.phantom import make_phantom_case
from unetr_app.inference import predictor as predictor_module
from unetr_app.io.scans import CaseSource, Volume
from unetr_app.inference.predictor import Predictor, PredictSettings
from unetr_app.io.checkpoint import load_model


@pytest.mark.parametrize("geometry", ["LPS", "oblique"])
def test_restore_matches_monai_invertd(tiny_checkpoint, monkeypatch, geometry):
    monkeypatch.setattr(predictor_module, "SLAB_VOXELS", 20_000)  # many slabs, to test their seams
    case = make_phantom_case(7, orientation="LPS")
    affine = case.affine if geometry == "LPS" else oblique_affine((2.2, 2.2, 4.0), degrees=25.0)
    image = case.image[::2, ::2].astype(np.float32)  # smaller, for speed
    affine = affine @ np.diag([2.0, 2.0, 1.0, 1.0])
    volume = Volume(image, affine, None, CaseSource("phantom", None, "nifti"))
    predictor = Predictor(load_model(tiny_checkpoint), PredictSettings(device=torch.device("cpu")))
    prepared = predictor.prepare(volume)
    probabilities = predictor.infer(prepared)
    ours = predictor.restore(prepared, probabilities, keep_probabilities=True)

    invert = mt.Invertd(keys="pred", transform=predictor.preprocess, orig_keys="image", nearest_interp=False)
    theirs = invert({"image": prepared["image"], "pred": MetaTensor(probabilities)})["pred"]
    theirs = torch.as_tensor(theirs).permute(1, 2, 3, 0).numpy()
    assert theirs.shape[:3] == ours.labels.shape == image.shape
    complete = theirs.sum(axis=-1) > 0.999  # where MONAI's padded crop left no probability out
    assert complete.mean() > 0.3
    np.testing.assert_allclose(ours.probabilities[complete], theirs[complete], atol=1e-4)
    assert np.array_equal(ours.labels[complete], theirs[complete].argmax(-1))
    # where it did, the missing mass lies outside the body: ours gives it to background
    np.testing.assert_allclose(ours.probabilities.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours.probabilities[~complete][:, 1], theirs[~complete][:, 1], atol=1e-4)
