"""unetr: 3D medical image segmentation with UNETR and the vision-transformer family."""

__version__ = "0.1.0"
