"""Schemes: which quantizer goes where in a layer.

A scheme answers, for each layer ``quantize_model`` wraps, how each of its weights is
quantized (``weight_quantizer``) and how its output is (``activation_quantizer``). Schemes are
small serializable objects, also reachable by a short name (``get_scheme("pact")``, the CLI's
``--scheme``). ``base`` holds the base class, ``Linear`` and the lookup by name; each low-bit
method lives, with its math and quantizers, in the kerasq module named after it
(``kerasq.pact.PACT``), registers itself there, and is also reachable here
(``kerasq.schemes.PACT``). ``import kerasq`` imports every method module once, so the names
are all known whichever module a program imports first.
"""

import importlib

from kerasq.schemes.base import Linear, Scheme, available_schemes, get_scheme

# Scheme classes defined in the method modules, resolved on first access (PEP 562): importing
# them here would make `kerasq.schemes` and the method modules import each other.
_METHOD_MODULES = {
    "Binary": "kerasq.binary",
    "DoReFa": "kerasq.dorefa",
    "KMeans": "kerasq.kmeans",
    "PACT": "kerasq.pact",
    "PowerOfTwo": "kerasq.power_of_two",
    "Ternary": "kerasq.ternary",
}


def __getattr__(name: str):
    if name in _METHOD_MODULES:
        return getattr(importlib.import_module(_METHOD_MODULES[name]), name)
    raise AttributeError(f"module 'kerasq.schemes' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = ["Linear", "Scheme", "available_schemes", "get_scheme", *_METHOD_MODULES]
