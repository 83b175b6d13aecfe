"""Segmentation metrics in physical units."""

from unetr_app.evaluation.metrics import label_metrics, case_metrics

__all__ = ["case_metrics", "label_metrics"]
