"""Model families. Each module registers its variants on import; list them here."""

from unetr_app.models.registry import MODELS, create_model, get_model_entry, list_models, register_model
from unetr_app.models import unetr  # noqa: F401  (registers MONAI's UNETR)
from unetr_app.models import vit, deit, xcit, mlp_mixer, convmixer, divided  # noqa: F401,E401  (plain family)
from unetr_app.models import pvt, pvt_v2, swin, mvit, segformer  # noqa: F401,E401  (hierarchical family)
from unetr_app.models import cnn  # noqa: F401  (MONAI's UNet, SegResNet, DynUNet: teachers and baselines)

__all__ = ["MODELS", "create_model", "get_model_entry", "list_models", "register_model"]
