"""mmoe: a multimodal Mixture-of-Experts applications suite on one shared MoE backbone.

The public names are imported on first use, so ``import mmoe`` (and ``mmoe list``) stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmoe.version import __version__ as __version__

#: public name -> module that defines it
_PUBLIC: dict[str, str] = {
    "BlockSpec": "mmoe.backbone", "MultimodalMoEBackbone": "mmoe.backbone",
    "MIXERS": "mmoe.mixers", "register_mixer": "mmoe.mixers",
    "DenseFFN": "mmoe.experts", "Experts": "mmoe.experts",
    "list_models": "mmoe.loading", "load": "mmoe.loading",
    "MoELayer": "mmoe.moe_layer",
    "ROUTERS": "mmoe.routers", "register_router": "mmoe.routers",
    "MoEOutputs": "mmoe.moe_layer", "RoutingStats": "mmoe.stats", "collect_moe": "mmoe.moe_layer",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmoe' has no attribute {name!r}")
