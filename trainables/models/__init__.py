"""Model families, one per file, registered by name (torchvision / timm style).

    from trainables.models import get_model, list_models
    model = get_model("resnet18", width=16)    # logits for (B, 1, 28, 28) input

Every family takes ``in_channels`` (1), ``num_classes`` (10) and ``dropout`` (0.25, the rate of
every Dropout layer); resnet18 and inception also take ``width`` (64 = the papers' channels).
A new family is one file with ``@register_model("name", ...)`` (its constructor and its
ModelCard: default augmentation, width and per-profile widths, whether compiling pays, aliases)
plus its import below.
"""

from trainables.models import cnn, inception, resnet  # noqa: F401  (they register themselves)
from trainables.models.registry import (
    ModelCard,
    aliases,
    card,
    get_model,
    list_models,
    register_model,
)

__all__ = ["ModelCard", "aliases", "card", "get_model", "list_models", "register_model"]
