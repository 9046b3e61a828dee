"""Routing statistics of a forward pass and the helper that gathers them over a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn


@dataclass
class RoutingStats:
    """What a :class:`mmoe.MoELayer` saw in its last forward. Tensors stay on the device.

    ``tokens_per_expert [E]`` and ``tokens_per_expert_per_modality [M, E]`` count computed
    (kept) pairs; ``routed_per_expert [E]`` counts pairs before capacity;
    ``dropped_per_modality [M]`` counts pairs dropped by capacity (for expert choice: tokens
    no expert took); ``router_entropy`` is the mean entropy of the routing distributions;
    ``dead_experts`` is the number of experts that received no token in each of the last
    ``dead_window`` training forwards; ``ecology`` is the layer's expert ecology
    ``E = T·H/(O+B)`` and ``entropy_weight`` the H in use (None where not set).
    """

    tokens_per_expert: torch.Tensor
    routed_per_expert: torch.Tensor
    tokens_per_expert_per_modality: torch.Tensor
    dropped_per_modality: torch.Tensor
    tokens_per_modality: torch.Tensor
    router_entropy: torch.Tensor
    dead_experts: torch.Tensor
    capacity: int | None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    ecology: float | None = None
    entropy_weight: float | None = None

    @property
    def dropped(self) -> torch.Tensor:
        return self.dropped_per_modality.sum()

    def as_floats(self) -> dict[str, float]:
        """Scalar summary for loggers (one host sync)."""
        load = self.tokens_per_expert.float()
        out = {
            "dropped": float(self.dropped),
            "router_entropy": float(self.router_entropy),
            "dead_experts": float(self.dead_experts),
            "max_over_mean_load": float(load.max() / load.mean().clamp_min(1e-12)) if load.numel() else 0.0,
        }
        for m, d in enumerate(self.dropped_per_modality.tolist()):
            out[f"dropped_modality{m}"] = float(d)
        out.update({k: float(v) for k, v in self.extra.items()})
        if self.ecology is not None:
            out["ecology"] = float(self.ecology)
        if self.entropy_weight is not None:
            out["entropy_weight"] = float(self.entropy_weight)
        return out


class MoEOutputs(NamedTuple):
    aux_loss: torch.Tensor
    stats: dict[str, RoutingStats]


def collect_moe(model: nn.Module) -> MoEOutputs:
    """Sum of ``aux_loss`` and the ``stats`` of every MoE layer in ``model``, keyed by module name."""
    from mmoe.moe_layer import MoELayer

    losses, stats = [], {}
    for name, module in model.named_modules():
        if isinstance(module, MoELayer) and module.aux_loss is not None:
            losses.append(module.aux_loss)
            if module.stats is not None:
                stats[name] = module.stats
    if losses:
        total = torch.stack([loss.float() for loss in losses]).sum()
    else:
        p = next(model.parameters(), None)
        total = torch.zeros((), device=p.device if p is not None else None)
    return MoEOutputs(total, stats)
