"""Batch inference: read any scan, predict with a checkpoint, write masks on the input's grid."""
