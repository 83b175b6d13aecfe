"""Knowing when a mask is wrong: per-case quality signals, a quality model fitted on
cross-validation predictions, and temperature calibration of the class probabilities."""
