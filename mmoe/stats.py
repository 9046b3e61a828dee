"""Routing statistics of a forward pass and the helper that gathers them over a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch


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


class ModalityCounts(NamedTuple):
    """Per-modality counts of one routing decision (see :func:`modality_counts`)."""

    per_modality: torch.Tensor  # [M, E] computed pairs per (modality, expert)
    tokens_per_modality: torch.Tensor  # [M]
    dropped_per_modality: torch.Tensor  # [M]


def modality_counts(pair_token: torch.Tensor, pair_expert: torch.Tensor, keep: torch.Tensor,
                    modality: torch.Tensor | None, num_tokens: int, num_experts: int, num_modalities: int,
                    expert_choice: bool) -> ModalityCounts:
    """The per-modality counts of :class:`RoutingStats` from a pair-based routing decision, for the
    local layer and (before its all-reduce) the expert-parallel one alike.

    ``pair_expert`` holds ``num_experts`` for a pair the router pruned; ``keep`` marks the pairs
    capacity kept; ``modality`` is None for one modality. A dropped pair counts once per pair;
    for expert choice a token no expert took counts once.
    """
    E, M, T = num_experts, num_modalities, num_tokens
    device = pair_token.device
    mod = modality if modality is not None else torch.zeros(T, dtype=torch.long, device=device)
    kept_expert = torch.where(keep, pair_expert, E)
    per_mod = torch.zeros(M * (E + 1), dtype=torch.long, device=device)
    per_mod.index_add_(0, mod[pair_token] * (E + 1) + kept_expert, torch.ones_like(kept_expert))
    tokens = torch.zeros(M, dtype=torch.long, device=device).index_add_(0, mod, torch.ones_like(mod))
    if expert_choice:  # a token no expert took is the drop of expert choice
        covered = torch.zeros(T, dtype=torch.long, device=device).index_add_(0, pair_token, torch.ones_like(pair_token))
        dropped_tok = (covered == 0).long()
    else:
        dropped_pair = ((pair_expert < E) & ~keep).long()
        dropped_tok = torch.zeros(T, dtype=torch.long, device=device).index_add_(0, pair_token, dropped_pair)
    dropped = torch.zeros(M, dtype=torch.long, device=device).index_add_(0, mod, dropped_tok)
    return ModalityCounts(per_mod.view(M, E + 1)[:, :E], tokens, dropped)
