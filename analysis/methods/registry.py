"""The fusion-method registry: one lookup by name, as the model registry
(trainables/models/registry.py) is for model families.

Each method is a file of its own under analysis/methods/ that registers its weights function
with ``@register_method("name", ...)``, and with it what the rest of the report needs to know
of the method (its ``FusionMethod``): whether it weighs every candidate (the whole pool) or the
top-k members, whether it takes ``--weights``, the words the report describes it with, its
``--method`` help, and whether the pipeline offers it. The report's ``--method`` choices and
help, the fusion (analysis/summary.py ``fuse_members``) and the report's text ask
``method(name)`` or ``names()``, so a new method needs no edits outside its own file and
``__init__.py``'s import line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# (each fitted member's validation probabilities (N, C), the validation labels, the --weights
# given or None) -> one non-negative weight per member; a weight of 0 leaves a pooled
# method's candidate out
Fit = Callable[[Sequence[np.ndarray], np.ndarray, Sequence[float] | None], np.ndarray]


@dataclass(frozen=True)
class FusionMethod:
    """What a fusion method declares of itself when it registers."""

    name: str
    fit: Fit  # its weights, from validation only
    help: str  # its --method help, a few words: what the weights are
    words: str = ""  # how the report's text describes it after its name; "" says nothing more
    # it weighs every candidate and keeps those it gives a weight (the heaviest first); else
    # it weighs the top-k members (--top-k, --per-model-cap)
    pooled: bool = False
    takes_weights: bool = False  # it takes --weights, one number per member
    pipeline: bool = True  # the pipeline's --method offers it (not one that needs --weights)


_METHODS: dict[str, FusionMethod] = {}


def register_method(name: str, **card) -> Callable[[Fit], Fit]:
    """Register a weights function as the method ``name``, with its FusionMethod's fields
    (``card``); a duplicate name raises ValueError."""

    def decorate(fit: Fit) -> Fit:
        if name in _METHODS:
            raise ValueError(f"fusion method {name!r} is already registered")
        _METHODS[name] = FusionMethod(name, fit, **card)
        return fit

    return decorate


def method(name: str) -> FusionMethod:
    """The FusionMethod registered as ``name``."""
    if name not in _METHODS:
        raise ValueError(f"unknown fusion method {name!r}; choose one of {', '.join(names())}")
    return _METHODS[name]


def methods() -> tuple[FusionMethod, ...]:
    """Every method, in the order they registered (``__init__.py``'s import lines)."""
    return tuple(_METHODS.values())


def names(pipeline: bool = False) -> tuple[str, ...]:
    """The registered names, in registration order; with ``pipeline``, only those the
    pipeline offers."""
    return tuple(m.name for m in methods() if m.pipeline or not pipeline)


def _and(words: list[str]) -> str:
    """The words as a list in a sentence: a; a and b; a, b and c."""
    return " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


def top_k_help(default: str, pipeline: bool = False) -> str:
    """--top-k's help: which methods fuse the top k members, and which weigh every
    candidate."""
    offered = [m for m in methods() if m.pipeline or not pipeline]
    ranked = [m.name for m in offered if not m.pooled]
    pooled = [m.name for m in offered if m.pooled]
    return (f"members to fuse with {_and(ranked)} (default {default})"
            + (f"; {_and(pooled)} weigh every candidate" if pooled else ""))
