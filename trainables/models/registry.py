"""The model registry: one lookup by name, as torchvision's and timm's ``get_model``.

Each family file registers its constructors with ``@register_model("name", ...)``, and with
them what the rest of the project needs to know of the family (its ``ModelCard``, as timm keeps
a ``default_cfg`` with each model): the augmentation it trains with by default, whether it
takes a width and which one each profile gives it, whether torch.compile pays for it, the
names it also answers to. Everything else (``--model`` choices and aliases, the profiles'
widths, ``augment="auto"``, the fast path's compile choice, checkpoints, the Trainable, the
report) asks ``get_model(name, **kw)`` or ``card(name)``, so a new family needs no edits
outside its own file and ``__init__.py``'s import line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn


@dataclass(frozen=True)
class ModelCard:
    """What a model family declares of itself when it registers."""

    name: str
    augment: str = "online"  # what augment="auto" trains it with (trainables/augment.py)
    width: int | None = None  # its default width; None: it takes no width (a fixed one)
    widths: dict[str, int] = field(default_factory=dict)  # a profile's width, where not `width`
    # torch.compile of its training steps pays on a CPU in fp32 (trainables/fastpath.py,
    # measured with bench/train_step.py); "auto" compiles only such models
    compile_pays: bool = False
    aliases: tuple[str, ...] = ()  # other names --model takes for it

    @property
    def takes_width(self) -> bool:
        return self.width is not None

    def width_in(self, profile: str) -> int | None:
        """The width the profile ``profile`` gives it (None: it takes none)."""
        return self.widths.get(profile, self.width) if self.takes_width else None


_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CARDS: dict[str, ModelCard] = {}


def register_model(name: str, **card) -> Callable[[Callable[..., nn.Module]],
                                                   Callable[..., nn.Module]]:
    """Register a model constructor under ``name``, with its ModelCard's fields (``card``); a
    duplicate name or alias raises ValueError."""
    info = ModelCard(name, **card)

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        taken = {*_MODELS, *aliases()}
        for n in (name, *info.aliases):
            if n in taken:
                raise ValueError(f"model {n!r} is already registered")
        if info.takes_width and "width" not in inspect.signature(fn).parameters:
            raise ValueError(f"model {name!r} declares a width but takes no width argument")
        _MODELS[name] = fn
        _CARDS[name] = info
        return fn

    return decorate


def card(name: str) -> ModelCard:
    """The ModelCard of the model registered as ``name`` (or one of its aliases)."""
    name = aliases().get(name, name)
    if name not in _CARDS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    return _CARDS[name]


def aliases() -> dict[str, str]:
    """Every alias, to the name it stands for."""
    return {a: c.name for c in _CARDS.values() for a in c.aliases}


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
