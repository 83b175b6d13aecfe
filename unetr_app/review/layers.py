"""The napari layers of one case: the scan, the prediction (editable) and the reference contours;
beside them, hidden until switched on, the scan's other channels and the uncertainty (per-voxel
entropy of the saved probabilities).

All are in display order (see `geometry`) with the scan's voxel size as napari's `scale`,
and carry the file grid in their `metadata` so a layer saved by hand (File > Save Selected Layer)
lands back on the scan's grid through this package's writer.
"""

from __future__ import annotations

import numpy as np

from unetr_app.review.cases import PALETTE, label_color, label_name
from unetr_app.review.measures import label_counts
from unetr_app.review.session import OpenCase
from unetr_app.review.windows import AUTO, contrast_limits

CASE_LAYERS = ("scan", "prediction", "reference")
UNCERTAINTY_LAYER = "uncertainty"
CHANNEL_PREFIX = "channel "
REFERENCE_COLOUR = (1.0, 0.95, 0.2, 1.0)  # yellow contours: unlike every fill colour in the palette


def label_colormap(values, colour_of=label_color):
    from napari.utils.colormaps import DirectLabelColormap

    """Transparent background; every palette colour present, so a label painted by hand is visible."""
    colours = {None: (1.0, 1.0, 1.0, 1.0), 0: (0.0, 0.0, 0.0, 0.0)}
    colours.update({int(v): colour_of(v) for v in [*range(1, len(PALETTE) + 1), *values]})
    return DirectLabelColormap(color_dict=colours)


def show_case(viewer, opened: OpenCase, names: dict[int, str], preset: str) -> None:
    """Show `opened` in the case layers of `viewer` (reference contours drawn over the prediction
    fill); other layers are left alone. Existing case layers are updated in place: removing and
    re-adding napari layers costs seconds per case."""
    metadata = {**opened.grid.as_metadata(), "case": opened.case.name, "source": str(opened.case.image.path)}
    values = sorted((set(names) | set(label_counts(opened.labels)) | set(label_counts(opened.prediction))) - {0})
    common = {"scale": opened.grid.display_scale, "metadata": metadata}
    _put(viewer, "scan", opened.image, viewer.add_image, colormap="gray",
         contrast_limits=contrast_limits(opened.image, preset), **common)
    prediction = _put(
        viewer, "prediction", opened.labels.copy(), viewer.add_labels, opacity=0.5, colormap=label_colormap(values),
        features={"index": [0, *values], "name": ["background", *(label_name(names, v) for v in values)]},
        **{**common, "metadata": {**metadata, "label_names": {str(k): v for k, v in names.items()}}},
    )
    if opened.reference is None:
        if "reference" in viewer.layers:
            viewer.layers.remove("reference")
    else:
        reference_values = sorted(set(label_counts(opened.reference)) - {0})
        reference = _put(viewer, "reference", opened.reference, viewer.add_labels, opacity=1.0,
                         colormap=label_colormap(reference_values, lambda _v: REFERENCE_COLOUR), **common)
        reference.contour = 1
        reference.editable = False
    show_attention(viewer, opened, common)
    show_channels(viewer, opened, common)
    show_uncertainty(viewer, opened, common)
    viewer.layers.selection.active = prediction
    viewer.dims.ndisplay = 2
    viewer.dims.order = (0, 1, 2)
    viewer.reset_view()


def show_attention(viewer, opened: OpenCase, common: dict) -> None:
    """`unetr attention` maps over the scan, one colour per head (as in its montage), added together."""
    from napari.utils.colormaps import Colormap

    from unetr_app.models.attention_maps import HEAD_COLOURS

    for name in [layer.name for layer in viewer.layers if layer.name.startswith("attention head ")]:
        if name not in opened.attention:
            viewer.layers.remove(name)
    for index, (name, data) in enumerate(opened.attention.items()):
        colour = HEAD_COLOURS[index % len(HEAD_COLOURS)]
        colormap = Colormap([[0, 0, 0, 0], [*_rgb(colour), 1]], name=f"attention {colour}")
        _put(viewer, name, data, viewer.add_image, colormap=colormap, blending="additive", opacity=0.7,
             contrast_limits=(0.0, float(data.max()) or 1.0), **common)


def show_channels(viewer, opened: OpenCase, common: dict) -> None:
    """A grey layer per further channel of the scan (hidden: tick it in the layer list to see it),
    each with its own auto-contrast; the mask stays drawn above them."""
    for name in [layer.name for layer in viewer.layers if layer.name.startswith(CHANNEL_PREFIX)]:
        if name not in opened.channels:
            viewer.layers.remove(name)
    for name, data in opened.channels.items():
        new = name not in viewer.layers
        layer = _put(viewer, name, data, viewer.add_image, colormap="gray", contrast_limits=contrast_limits(data, AUTO), **common)
        if new:  # hidden at first, then as the reviewer leaves it from case to case
            layer.visible = False
            viewer.layers.move(viewer.layers.index(layer), viewer.layers.index("prediction"))


def show_uncertainty(viewer, opened: OpenCase, common: dict) -> None:
    """The per-voxel entropy / ln C (0 certain, 1 uniform) as a hidden 'inferno' overlay."""
    if opened.uncertainty is None:
        if UNCERTAINTY_LAYER in viewer.layers:
            viewer.layers.remove(UNCERTAINTY_LAYER)
        return
    new = UNCERTAINTY_LAYER not in viewer.layers
    layer = _put(viewer, UNCERTAINTY_LAYER, opened.uncertainty, viewer.add_image, colormap="inferno", blending="additive",
                 opacity=0.7, contrast_limits=(0.0, 1.0), **common)
    if new:
        layer.visible = False


def _rgb(colour: str) -> tuple[float, float, float]:
    return tuple(int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))


def _put(viewer, name: str, data: np.ndarray, add, **attributes):
    """Add layer `name`, or give the existing one new data and attributes."""
    if name not in viewer.layers:
        return add(data, name=name, **attributes)
    layer = viewer.layers[name]
    layer.scale = attributes.pop("scale")
    layer.data = data
    for key, value in attributes.items():
        setattr(layer, key, value)
    return layer


def apply_window(layer, image: np.ndarray, preset: str) -> None:
    layer.contrast_limits = contrast_limits(image, preset)
