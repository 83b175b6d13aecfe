"""Optional parts of the install: the extra that brings each, and the one-line error when it is missing.

The core package trains, predicts, evaluates, plans and exports MONAI state dicts; the viewer,
ONNX, DICOM SEG and experiment tracking come with extras (`pip install 'unetr[review]'`, ...).
Every import of an extra's package goes through `require` (or `require_feature`, which names a
feature's packages once), inside the function that needs it, so `import unetr_app.cli.app` works
without any of them; the CLI asks for a feature's packages before any work, so a missing extra
costs no wait.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from unetr_app.errors import UsageError

# the top-level module a feature imports -> the extra that installs it
EXTRA_OF = {
    "napari": "review",
    "qtpy": "review",
    "onnx": "export",
    "onnxruntime": "export",
    "highdicom": "dicom",
    "mlflow": "track",
    "tensorboard": "track",
}


class MissingExtraError(UsageError):
    """A command needs a package of an optional extra that is not installed."""


def missing_extra_message(module: str, purpose: str, reason: str = "") -> str:
    """The one line: what needs which package, and the `pip install` that brings it."""
    package = module.partition(".")[0]
    why = f" ({reason})" if reason and package not in reason else ""
    return f"{purpose} needs {package}, which is not installed{why}: pip install 'unetr[{EXTRA_OF[package]}]'"


def require(module: str, purpose: str) -> ModuleType:
    """`module` imported, or a MissingExtraError naming the `pip install` that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:  # absent, or present without what it needs (napari without a Qt binding)
        raise MissingExtraError(missing_extra_message(module, purpose, str(err).splitlines()[0] if str(err) else "")) from None


# what each optional feature imports; the CLI asks before any work, the code that uses them again
FEATURES = {
    "unetr review": ("qtpy.QtWidgets", "napari"),
    "--format onnx": ("onnx", "onnxruntime"),  # torch.onnx.export writes with onnx; onnxruntime checks the file
    "--output-format dicom-seg": ("highdicom",),
    "--tracker tensorboard": ("tensorboard",),
    "--tracker mlflow": ("tensorboard", "mlflow"),
}


def require_feature(feature: str) -> dict[str, ModuleType]:
    """Every module of `feature` (a FEATURES key) imported, or the one line naming its extra."""
    return {module: require(module, feature) for module in FEATURES[feature]}


def available(module: str) -> bool:
    """Whether `module` can be imported (for features that are simply skipped without it)."""
    return importlib.util.find_spec(module.partition(".")[0]) is not None
