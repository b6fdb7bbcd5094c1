"""Model families, one per file, registered by name (torchvision / timm style).

    from trainables.models import get_model, list_models
    model = get_model("resnet18", width=16)    # logits for (B, 1, 28, 28) input
"""

from trainables.models import cnn, inception, resnet  # noqa: F401  (they register themselves)
from trainables.models.registry import get_model, list_models, register_model

__all__ = ["get_model", "list_models", "register_model"]
