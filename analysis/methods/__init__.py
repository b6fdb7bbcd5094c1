"""Fusion methods, one per file, registered by name (as trainables/models/ registers models).

    from analysis.methods import method, names
    method("nll").fit(val_probs, y_val, None)    # one weight per member, fitted on validation
    names(pipeline=True)                         # the methods the pipeline offers

A new method is one file with ``@register_method("name", ...)`` over its weights function
(and its FusionMethod: whether it weighs every candidate, takes --weights, the report's words
for it, whether the pipeline offers it) plus its import line below; the lines' order is the
order ``--method`` lists them in.
"""

# isort: off
from analysis.methods import uniform  # noqa: F401  (they register themselves)
from analysis.methods import weighted  # noqa: F401
from analysis.methods import greedy  # noqa: F401
from analysis.methods import nll  # noqa: F401
# isort: on
from analysis.methods.registry import (
    FusionMethod,
    method,
    methods,
    names,
    register_method,
    top_k_help,
)

__all__ = ("FusionMethod", "method", "methods", "names", "register_method", "top_k_help")
