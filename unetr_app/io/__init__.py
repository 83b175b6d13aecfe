"""File input and output: atomic writes and image files that keep their geometry."""

from unetr_app.io.atomic import atomic_path, atomic_write_text, append_line

__all__ = ["atomic_path", "atomic_write_text", "append_line"]
