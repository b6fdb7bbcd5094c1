"""The model registry: one lookup by name, as torchvision's and timm's ``get_model``.

Each family file registers its constructors with ``@register_model("name")``; everything else
(``--model`` choices, checkpoints, the Trainable) goes through ``get_model(name, **kw)``, so a
new family needs no edits outside its own file and ``__init__.py``'s import line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model constructor under ``name``; a duplicate name raises ValueError."""

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return decorate


def get_model(name: str, **kwargs) -> nn.Module:
    """Build the model registered as ``name``.

    Unknown names and keyword arguments the family does not take raise ValueError (checked here,
    not left to a TypeError deep in a constructor, so a bad search space fails with a clear line).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    fn = _MODELS[name]
    accepted = inspect.signature(fn).parameters
    for key in kwargs:
        if key not in accepted:
            raise ValueError(f"model {name} takes no argument {key!r} "
                             f"(it takes {', '.join(accepted)})")
    return fn(**kwargs)


def list_models() -> list[str]:
    """The registered names, sorted."""
    return sorted(_MODELS)
