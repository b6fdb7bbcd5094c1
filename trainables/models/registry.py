"""The model registry: one lookup by name, as torchvision's and timm's ``get_model``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Register a model constructor under ``name`` (a duplicate name is an error)."""

    def decorate(fn: Callable[..., nn.Module]):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return decorate


def get_model(name: str, **kwargs) -> nn.Module:
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
    return sorted(_MODELS)
