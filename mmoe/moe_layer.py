"""The Mixture-of-Experts layer: router -> dispatch (sort by expert, capacity) -> experts -> combine."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from mmoe.capacity import (expert_capacity, macs_priority, pair_output_value, paper_macs_capacity,
                           paper_macs_priority)
from mmoe.experts import ACTIVATIONS, Experts
from mmoe.kernels import BACKENDS, backend_ops
from mmoe.kernels.reference import expert_counts
from mmoe.routers import ExpertChoiceRouter, Routing, SoftRouter, build_router, routing_entropy_loss
from mmoe.stats import RoutingStats, modality_counts
from mmoe.validation import check_choice, check_ids, check_number, check_positive_int, check_tensor

CAPACITY_MODES = ("macs", "static", "macs_output", "macs_paper")


class ExpertExchange(Protocol):
    """The seam where expert-parallel dispatch differs from the local one: an object set as
    ``layer.expert_parallel`` (:class:`mmoe.parallel.ExpertParallel`) runs the layer's pair-based
    forward with its experts sharded over a process group. The layer never imports it."""

    def sparse_forward(self, layer: MoELayer, xt: torch.Tensor, num_samples: int,
                       modality: torch.Tensor | None) -> torch.Tensor:
        """``y [T, dim]`` for the tokens ``xt [T, dim]``; sets the layer's aux_loss and stats."""
        ...


class MoELayer(nn.Module):
    """Sparse Mixture-of-Experts feed-forward layer; ``forward(x [..., dim], modality=None)``.

    Args:
        dim: token width.
        hidden_dim: hidden width of each expert.
        num_experts: number of routed experts E.
        top_k: experts per token k.
        router: a name from :data:`mmoe.routers.ROUTERS` (softmax, sigmoid, expert_choice, soft,
            sample, beam, nested, or one added with ``register_router``).
        router_options: the router's own keyword options, e.g. ``{"renormalize": True}``,
            ``{"bias_rate": 1e-3}`` (sigmoid), ``{"sparsity_weight": 1e-2}`` (beam),
            ``{"slots": 2}`` (soft), ``{"groups": 2}`` (nested); see each router class.
        capacity_factor: ``None`` is dropless; else each expert takes at most
            ``C = ceil(cf * k * T / E)`` pairs, overflow is dropped (zero from that expert,
            the residual carries the token) and counted in ``stats``.
        capacity_mode: ``"macs"`` shares capacity among modalities when ``modality`` is given
            (see :mod:`mmoe.capacity`); ``"static"`` drops the lowest gate weights regardless;
            ``"macs_output"`` is MACS valuing pairs by gate x expert-output norm (a study: it
            computes every routed pair first); ``"macs_paper"`` is the MACS paper's rule (capacity
            scaled by the live visual/text mix, text first, visual pairs by entropy-weighted value).
        num_modalities: number of modality ids accepted in ``forward``.
        num_shared_experts: experts applied to every token, beside the routed ones.
        activation: ``"swiglu"`` or ``"gelu"``.
        backend: ``"auto"`` (triton for CUDA tensors), ``"torch"`` or ``"triton"``.
        load_balance_weight: weight of the Switch load-balancing loss in ``aux_loss``.
        z_loss_weight: weight of the router z-loss in ``aux_loss``.
        dead_window: an expert with no token in this many consecutive training forwards is dead.
        validate_inputs: check x for NaN/inf and modality ids for range (costs a host sync).
        router_temperature: routing temperature T > 0: the logits are divided by T before the
            softmax / sigmoid of the routing decision and gates (not for the z-loss or a task's
            supervised routing loss).
        entropy_weight: routing-entropy weight H >= 0: ``aux_loss`` gets
            ``-H * mean token routing entropy / log E`` (see :func:`mmoe.routers.routing_entropy_loss`).
        ecology_target: None, or a target E > 0: then H is not ``entropy_weight`` but set at every
            forward to ``target * (O + B) / T`` so that E holds as O and B change.

    Expert ecology ``E = T·H/(O+B)`` (arXiv 2605.06415; :attr:`ecology`): O is
    :attr:`oracle_weight`, the weight of the owning task's supervised routing loss in the units
    of this layer's aux loss (a task sets it; 0 without one), B the balance weight in effect
    (:attr:`balance_weight`). The target sets H rather than T because H only enters the training
    loss, while T would also change how a trained model routes at inference.

    After a forward, ``aux_loss`` holds the weighted sum of the auxiliary losses and ``stats`` a
    :class:`mmoe.stats.RoutingStats`.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        num_experts: int,
        top_k: int = 2,
        router: str = "softmax",
        router_options: dict[str, Any] | None = None,
        capacity_factor: float | None = None,
        capacity_mode: str = "macs",
        num_modalities: int = 1,
        num_shared_experts: int = 0,
        activation: str = "swiglu",
        backend: str = "auto",
        load_balance_weight: float = 1e-2,
        z_loss_weight: float = 1e-3,
        dead_window: int = 100,
        validate_inputs: bool = True,
        router_temperature: float = 1.0,
        entropy_weight: float = 0.0,
        ecology_target: float | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden_dim", hidden_dim), ("num_experts", num_experts),
                            ("top_k", top_k), ("num_modalities", num_modalities), ("dead_window", dead_window)):
            check_positive_int(name, value)
        check_positive_int("num_shared_experts", num_shared_experts, minimum=0)
        if top_k > num_experts:
            raise ValueError(f"top_k: expected at most num_experts={num_experts}, got {top_k}")
        if capacity_factor is not None:
            check_number("capacity_factor", capacity_factor, inclusive=False)
        check_number("load_balance_weight", load_balance_weight)
        check_number("z_loss_weight", z_loss_weight)
        check_number("router_temperature", router_temperature, inclusive=False)
        check_number("entropy_weight", entropy_weight)
        if ecology_target is not None:
            check_number("ecology_target", ecology_target, inclusive=False)
        check_choice("capacity_mode", capacity_mode, CAPACITY_MODES)
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("backend", backend, BACKENDS)
        self.dim, self.hidden_dim, self.num_experts, self.top_k = dim, hidden_dim, num_experts, top_k
        self.capacity_factor, self.capacity_mode, self.num_modalities = capacity_factor, capacity_mode, num_modalities
        self.activation, self.backend = activation, backend
        self.load_balance_weight, self.z_loss_weight = load_balance_weight, z_loss_weight
        self.dead_window, self.validate_inputs = dead_window, validate_inputs
        self.router = build_router(router, dim, num_experts, top_k, router_options)
        self.router.routing_temperature = float(router_temperature)
        self.entropy_weight, self.ecology_target = float(entropy_weight), ecology_target
        #: O: the owning task's supervised-routing loss weight, in units of this layer's aux loss
        self.oracle_weight: float = 0.0
        self.experts = Experts(num_experts, dim, hidden_dim, activation)
        self.shared_experts = Experts(num_shared_experts, dim, hidden_dim, activation) if num_shared_experts else None
        self.register_buffer("idle_steps", torch.zeros(num_experts, dtype=torch.long), persistent=False)
        self.aux_loss: torch.Tensor | None = None
        self.stats: RoutingStats | None = None
        self.last_sample_logits: torch.Tensor | None = None
        # (pair_token, kept pair_expert with E for not computed, tokens per sample) of the last forward
        self.last_assignment: tuple[torch.Tensor, torch.Tensor, int] | None = None
        # set by mmoe.parallel.shard_experts: this rank keeps a shard of the experts
        self.expert_parallel: ExpertExchange | None = None

    def class_load(self, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Computed pairs per (class, expert) ``[num_classes, E]`` in the last forward.

        ``classes [num_samples]`` gives a class id per sample of the last input (the leading
        dims of ``x``); used for the experts x class routing maps.
        """
        if self.last_assignment is None:
            raise ValueError("class_load: no pair-based forward has run yet (soft router or none)")
        pair_token, kept_expert, per_sample = self.last_assignment
        E = self.num_experts
        cls = classes.to(pair_token.device).long()[pair_token // max(per_sample, 1)]
        out = torch.zeros(num_classes * (E + 1), device=pair_token.device)
        out.index_add_(0, cls * (E + 1) + kept_expert, torch.ones_like(cls, dtype=out.dtype))
        return out.view(num_classes, E + 1)[:, :E]

    @property
    def router_kind(self) -> str:
        return self.router.kind

    @property
    def router_temperature(self) -> float:
        """T: the router's temperature."""
        return self.router.routing_temperature

    @property
    def balance_weight(self) -> float:
        """B in effect: ``load_balance_weight``, or 0 for routers the balance loss does not apply to
        (expert choice and soft slots are balanced by construction and take no balance loss)."""
        if isinstance(self.router, (ExpertChoiceRouter, SoftRouter)):
            return 0.0
        return float(self.load_balance_weight)

    @property
    def effective_entropy_weight(self) -> float:
        """H in use: ``entropy_weight``, or with :attr:`ecology_target` ``target * (O + B) / T``."""
        if self.ecology_target is None:
            return self.entropy_weight
        denominator = self.oracle_weight + self.balance_weight
        if not denominator > 0:
            raise ValueError(f"ecology_target: E = T·H/(O+B) cannot be held with O + B = 0 (no supervised routing "
                             f"loss, balance weight {self.balance_weight}); set a load_balance_weight > 0")
        return self.ecology_target * denominator / self.router_temperature

    @property
    def ecology(self) -> float:
        """E = T·H/(O+B) from the current weights: 0 when H = 0, inf when H > 0 and O + B = 0."""
        H = self.effective_entropy_weight
        if H == 0:
            return 0.0
        denominator = self.oracle_weight + self.balance_weight
        return self.router_temperature * H / denominator if denominator > 0 else math.inf

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden_dim={self.hidden_dim}, num_experts={self.num_experts}, "
                f"top_k={self.top_k}, router={self.router_kind}, capacity_factor={self.capacity_factor}, "
                f"capacity_mode={self.capacity_mode}, backend={self.backend}")

    def forward(self, x: torch.Tensor, modality: torch.Tensor | None = None) -> torch.Tensor:
        if self.validate_inputs:
            check_tensor("x", x, last_dim=self.dim)
            if modality is not None:
                check_ids("modality", modality, shape=tuple(x.shape[:-1]), num=self.num_modalities)
        elif x.shape[-1] != self.dim or (modality is not None and modality.shape != x.shape[:-1]):
            raise ValueError(f"x/modality: expected [..., {self.dim}] and x.shape[:-1], got "
                             f"{tuple(x.shape)} and {None if modality is None else tuple(modality.shape)}")
        shape = x.shape
        xt = x.reshape(-1, self.dim)
        num_samples = math.prod(shape[:-2]) if x.ndim >= 3 else 1
        mod = modality.reshape(-1).long() if modality is not None else None
        # H is read at every forward: with a target it follows O and B as they change
        self.router.entropy_weight = self.effective_entropy_weight
        if isinstance(self.router, SoftRouter):
            tokens_per_sample = shape[-2] if x.ndim >= 2 else 1
            y = self._soft_forward(x.reshape(num_samples, tokens_per_sample, self.dim), mod).reshape(-1, self.dim)
        else:
            y = self._sparse_forward(xt, num_samples, mod)
        if self.shared_experts is not None:
            y = y + self.shared_experts.dense(xt)
        if self.stats is not None:
            self.stats.ecology = self.ecology
            self.stats.entropy_weight = self.router.entropy_weight
        return y.reshape(shape).to(x.dtype)

    def _sparse_forward(self, xt: torch.Tensor, num_samples: int, mod: torch.Tensor | None) -> torch.Tensor:
        if self.expert_parallel is not None:
            return self.expert_parallel.sparse_forward(self, xt, num_samples, mod)
        T, E = xt.shape[0], self.num_experts
        ops = backend_ops(self.backend, xt.device)
        expert_choice = isinstance(self.router, ExpertChoiceRouter)
        capacity = expert_capacity(self.capacity_factor if not expert_choice else (self.capacity_factor or 1.0),
                                   self.top_k, T, E)
        sample = torch.arange(num_samples, device=xt.device).repeat_interleave(T // max(num_samples, 1))
        visual = None
        if capacity is not None and mod is not None and self.capacity_mode == "macs_paper" and not expert_choice:
            # the live modality mix sets the capacity (one host read: the capacity is a number)
            counts = torch.bincount(mod, minlength=self.num_modalities).tolist()
            capacity, visual = paper_macs_capacity(self.capacity_factor, self.top_k, counts, E)
        r = self.router(xt, sample, num_samples, ops, capacity)
        dispatch_capacity = None if expert_choice else capacity
        priority = r.priority
        if visual is not None:
            priority = paper_macs_priority(r.pair_token, r.pair_weight, mod, r.token_probs, visual)
        if dispatch_capacity is not None and mod is not None and self.capacity_mode in ("macs", "macs_output"):
            value = (pair_output_value(xt, r.pair_token, r.pair_expert, r.pair_weight, self.experts)
                     if self.capacity_mode == "macs_output" else None)
            priority = macs_priority(r.pair_token, r.pair_expert, r.pair_weight, mod, r.token_probs,
                                     E, self.num_modalities, value)
        d = ops.dispatch_metadata(r.pair_expert, priority, E, dispatch_capacity)
        y = ops.expert_mlp(
            xt,
            self.experts.w_in.to(xt.dtype),
            self.experts.w_out.to(xt.dtype),
            r.pair_token[d.sorted_pair],
            r.pair_weight[d.sorted_pair].to(xt.dtype),
            d.expert_offsets,
            self.activation,
        )
        self.last_sample_logits = r.sample_logits
        self.last_assignment = (r.pair_token, torch.where(d.keep, r.pair_expert, E), T // max(num_samples, 1))
        self.aux_loss = self._aux_loss(r)
        with torch.no_grad():
            self.stats = self._sparse_stats(r, d.keep, d.expert_offsets, T, mod, capacity, expert_choice)
        return y

    def _aux_loss(self, r: Routing) -> torch.Tensor:
        loss = r.logits.new_zeros(())
        if r.token_probs.shape[0] == 0:  # no token (a sample-level router may still have empty samples)
            return loss if r.extra_loss is None else loss + r.extra_loss
        if r.load_fraction is not None and self.load_balance_weight:
            loss = loss + self.load_balance_weight * self.num_experts * (r.load_fraction * r.probs.mean(0)).sum()
        if self.z_loss_weight:
            loss = loss + self.z_loss_weight * torch.logsumexp(r.logits, dim=-1).pow(2).mean()
        if r.extra_loss is not None:
            loss = loss + r.extra_loss
        return loss

    def _modality_ids(self, T: int, mod: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        return mod if mod is not None else torch.zeros(T, dtype=torch.long, device=device)

    def _sparse_stats(self, r: Routing, keep: torch.Tensor, offsets: torch.Tensor, T: int,
                      mod: torch.Tensor | None, capacity: int | None, expert_choice: bool) -> RoutingStats:
        E = self.num_experts
        counts = modality_counts(r.pair_token, r.pair_expert, keep, mod, T, E, self.num_modalities, expert_choice)
        kept = offsets.diff()
        return RoutingStats(
            tokens_per_expert=kept,
            routed_per_expert=expert_counts(r.pair_expert, E),
            tokens_per_expert_per_modality=counts.per_modality,
            dropped_per_modality=counts.dropped_per_modality,
            tokens_per_modality=counts.tokens_per_modality,
            router_entropy=_entropy(r.token_probs),
            dead_experts=self.update_dead_experts(kept),
            capacity=capacity,
            extra=dict(r.extra_stats),
        )

    def update_dead_experts(self, load: torch.Tensor) -> torch.Tensor:
        """Advance the idle counters with this forward's per-expert ``load [E]`` (training only) and
        return the number of dead experts; the expert-parallel forward calls it with the global load."""
        if self.training:
            self.idle_steps.copy_(torch.where(load > 0, 0, self.idle_steps + 1))
        return (self.idle_steps >= self.dead_window).sum()

    def _soft_forward(self, x: torch.Tensor, mod: torch.Tensor | None) -> torch.Tensor:
        """Soft MoE on ``x [B, N, dim]``: slots mix tokens, tokens mix slot outputs."""
        B, N, _ = x.shape
        E, S = self.num_experts, self.router.slots
        logits = self.router.logits(x)  # [B, N, E*S]
        scaled = self.router.scaled(logits)
        dispatch = torch.softmax(scaled, dim=1)
        combine = torch.softmax(scaled, dim=-1)
        slot_in = torch.einsum("bns,bnd->bsd", dispatch.to(x.dtype), x).view(B, E, S, self.dim)
        slot_out = self.experts.slots(slot_in).reshape(B, E * S, self.dim)
        y = torch.einsum("bns,bsd->bnd", combine.to(x.dtype), slot_out)
        self.last_sample_logits = None
        self.last_assignment = None
        flat_logits = logits.reshape(-1, E * S)
        loss = logits.new_zeros(())
        if flat_logits.shape[0] and self.z_loss_weight:
            loss = self.z_loss_weight * torch.logsumexp(flat_logits, dim=-1).pow(2).mean()
        if self.router.entropy_weight:  # the soft router's forward (and its hook) does not run
            mass = combine.reshape(B * N, E, S).sum(-1)
            loss = loss + routing_entropy_loss(mass, self.router.entropy_weight)
        self.aux_loss = loss
        with torch.no_grad():
            T = B * N
            mod_ids = self._modality_ids(T, mod, x.device)
            expert_mass = combine.reshape(T, E, S).sum(-1)  # [T, E], rows sum to 1
            per_mod = torch.zeros(self.num_modalities, E, device=x.device).index_add_(0, mod_ids, expert_mass)
            load = expert_mass.sum(0)
            self.stats = RoutingStats(
                tokens_per_expert=load,
                routed_per_expert=load,
                tokens_per_expert_per_modality=per_mod,
                dropped_per_modality=torch.zeros(self.num_modalities, dtype=torch.long, device=x.device),
                tokens_per_modality=torch.zeros(self.num_modalities, dtype=torch.long, device=x.device).index_add_(
                    0, mod_ids, torch.ones_like(mod_ids)),
                router_entropy=_entropy(expert_mass),
                dead_experts=self.update_dead_experts(load),
                capacity=None,
            )
        return y


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    p = probs.float().clamp_min(1e-12)
    return -(p * p.log()).sum(-1).mean()


class MoEOutputs(NamedTuple):
    aux_loss: torch.Tensor
    stats: dict[str, RoutingStats]


def collect_moe(model: nn.Module) -> MoEOutputs:
    """Sum of ``aux_loss`` and the ``stats`` of every MoE layer in ``model``, keyed by module name."""
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
