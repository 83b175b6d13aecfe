"""The effective receptive field of known networks: a 3x3x3 convolution sees 27 voxels, two see 125."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from unetr_app.evaluation.receptive_field import center_window, effective_receptive_field, radius_of_mass


def test_stacked_convolutions_have_the_receptive_field_their_kernels_give():
    torch.manual_seed(0)
    images = [torch.randn(1, 20, 30, 10) for _ in range(2)]
    one = effective_receptive_field(nn.Conv3d(1, 2, 3, padding=1), images, (16, 16, 16))
    two = effective_receptive_field(nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Conv3d(4, 2, 3, padding=1)), images, (16, 16, 16))
    assert one.shape == (16, 16, 16) and one.max() == 1.0
    assert np.count_nonzero(one) == 27 and one[7:10, 7:10, 7:10].all()
    assert np.count_nonzero(two) == 125 and two[6:11, 6:11, 6:11].all()
    assert radius_of_mass(two, (2.0, 2.0, 2.0)) > radius_of_mass(one, (2.0, 2.0, 2.0))


def test_center_window_pads_small_images_and_crops_large_ones():
    image = torch.arange(10 * 4 * 30, dtype=torch.float32).reshape(1, 10, 4, 30)
    window = center_window(image, (8, 8, 8))
    assert window.shape == (1, 1, 8, 8, 8)
    assert torch.equal(window[0, 0, :, 2:6, :], image[0, 1:9, :, 11:19])  # centred crop and centred padding
    assert (window[0, 0, :, :2] == image.min()).all()
