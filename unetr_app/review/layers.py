"""The napari layers of one case: the scan, the prediction (editable) and the reference contours.

All three are in display order (see `geometry`) with the scan's voxel size as napari's `scale`,
and carry the file grid in their `metadata` so a layer saved by hand (File > Save Selected Layer)
lands back on the scan's grid through this package's writer.
"""

from __future__ import annotations

import numpy as np

from unetr_app.review.cases import PALETTE, label_color, label_name
from unetr_app.review.session import OpenCase
from unetr_app.review.windows import contrast_limits

CASE_LAYERS = ("scan", "prediction", "reference")
REFERENCE_COLOUR = (1.0, 0.95, 0.2, 1.0)  # yellow contours: unlike every fill colour in the palette


def label_colormap(values, colour_of=label_color):
    from napari.utils.colormaps import DirectLabelColormap

    """Transparent background; every palette colour present, so a label painted by hand is visible."""
    colours = {None: (1.0, 1.0, 1.0, 1.0), 0: (0.0, 0.0, 0.0, 0.0)}
    colours.update({int(v): colour_of(v) for v in [*range(1, len(PALETTE) + 1), *values]})
    return DirectLabelColormap(color_dict=colours)


def show_case(viewer, opened: OpenCase, names: dict[int, str], preset: str) -> None:
    """Replace the case layers in `viewer` with those of `opened` (reference contours drawn over the
    prediction fill); other layers are left alone."""
    for name in CASE_LAYERS:
        if name in viewer.layers:
            viewer.layers.remove(name)
    metadata = {**opened.grid.as_metadata(), "case": opened.case.name, "source": str(opened.case.image.path)}
    scale = opened.grid.display_scale
    values = sorted((set(names) | set(np.unique(opened.labels).tolist()) | set(np.unique(opened.prediction).tolist())) - {0})
    viewer.add_image(opened.image, name="scan", scale=scale, colormap="gray", metadata=metadata,
                     contrast_limits=contrast_limits(opened.image, preset))
    prediction = viewer.add_labels(
        opened.labels.copy(), name="prediction", scale=scale, metadata={**metadata, "label_names": {str(k): v for k, v in names.items()}},
        opacity=0.5, colormap=label_colormap(values),
        features={"index": [0, *values], "name": ["background", *(label_name(names, v) for v in values)]},
    )
    if opened.reference is not None:
        reference_values = np.unique(opened.reference)
        viewer.add_labels(opened.reference, name="reference", scale=scale, metadata=metadata, opacity=1.0,
                          colormap=label_colormap(reference_values[reference_values > 0], lambda _v: REFERENCE_COLOUR))
        viewer.layers["reference"].contour = 1
        viewer.layers["reference"].editable = False
    viewer.layers.selection.active = prediction
    viewer.dims.ndisplay = 2
    viewer.dims.order = (0, 1, 2)
    viewer.reset_view()


def apply_window(layer, image: np.ndarray, preset: str) -> None:
    layer.contrast_limits = contrast_limits(image, preset)
