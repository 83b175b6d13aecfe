"""Datasets: the phantom, the manifest check, dataset discovery and MONAI transforms."""
