"""Model families. Each module registers its variants on import; list them here."""

from unetr_app.models.registry import create_model, get_model_entry, list_models, register_model
from unetr_app.models import unetr  # noqa: F401  (registers MONAI's UNETR)

__all__ = ["create_model", "get_model_entry", "list_models", "register_model"]
