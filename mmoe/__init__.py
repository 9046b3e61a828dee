"""mmoe: a multimodal Mixture-of-Experts applications suite on one shared MoE backbone."""

from mmoe.backbone import BlockSpec, MultimodalMoEBackbone
from mmoe.mixers import MIXERS, register_mixer
from mmoe.experts import DenseFFN, Experts
from mmoe.loading import list_models, load
from mmoe.moe_layer import MoELayer
from mmoe.routers import ROUTERS, register_router
from mmoe.stats import MoEOutputs, RoutingStats, collect_moe
from mmoe.version import __version__ as __version__

__all__ = [
    "BlockSpec",
    "MIXERS",
    "ROUTERS",
    "DenseFFN",
    "Experts",
    "MoELayer",
    "MoEOutputs",
    "MultimodalMoEBackbone",
    "RoutingStats",
    "collect_moe",
    "list_models",
    "load",
    "register_mixer",
    "register_router",
]
