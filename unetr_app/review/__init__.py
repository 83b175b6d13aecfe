"""Reviewing predicted masks in napari: `unetr review`, its dock widget and the napari plugin.

The logic a reviewer relies on lives in Qt-free modules, tested without a display:
`geometry` (file grid <-> radiological display orientation), `cases` (which scan goes with which
prediction, label names), `status` (review.csv), `measures` (volumes, Dice, the slice to show),
`windows` (CT presets, MRI auto-contrast) and `session` (a review as plain data and functions).
`widget` (the "UNETR review" dock widget), `plugin` (napari reader and writer) and `viewer`
(opening a viewer, screenshots) need Qt and napari; `display` starts a private Xvfb when needed.
"""
