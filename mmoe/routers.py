"""Routers: turn tokens into (token, expert, weight) pairs.

Every router owns ``weight [E, dim]`` (the checkpoint layout; the soft router has
``[E * slots, dim]``) and returns a :class:`Routing`. Routers are selected by name through
:data:`ROUTERS` (``register_router`` adds one) and built with :func:`build_router`, which passes
the router's own options (``router_options``) to its constructor as keywords: a router's
options are its ``__init__`` arguments after ``dim, num_experts, top_k``. The soft router is not
pair-based: it mixes tokens into slots, and :class:`mmoe.MoELayer` runs it on its own path.

Expert ecology (``E = T·H/(O+B)``, arXiv 2605.06415): every router has a ``routing_temperature`` T and an
``entropy_weight`` H, plain attributes set by its :class:`mmoe.MoELayer` (not in the state dict, so
the checkpoint layout is unchanged). T divides the logits the routing decision and gate weights
are computed from; the logits a router returns (``Routing.logits``, ``sample_logits``) stay raw, so
the z-loss and a task's supervised routing loss see the unscaled map. H adds
:func:`routing_entropy_loss` to ``Routing.extra_loss`` after every forward (a forward hook, so a
router added with ``register_router`` gets it without code).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmoe.validation import check_bool, check_choice, check_number, check_options, check_positive_int

ROUTERS: dict[str, type["Router"]] = {}


def register_router(name: str, *, replace: bool = False) -> Callable[[type["Router"]], type["Router"]]:
    """Class decorator that makes a :class:`Router` subclass selectable by ``name``.

    Args:
        name: the name given as ``router=`` to :class:`mmoe.MoELayer` or a block spec.
        replace: allow replacing a router already registered under ``name`` (refused otherwise).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty str, got {name!r}")
    if name in ROUTERS and not replace:
        raise ValueError(f"name: a router {name!r} is already registered ({ROUTERS[name].__qualname__}); "
                         f"pass replace=True to replace it")

    def wrap(cls: type[Router]) -> type[Router]:
        if not (isinstance(cls, type) and issubclass(cls, Router)):
            raise TypeError(f"register_router({name!r}): expected a Router subclass, got {cls!r}")
        ROUTERS[name] = cls
        cls.kind = name
        return cls

    return wrap


@dataclass
class Routing:
    """Pairs chosen by a router, all ``[P]``, plus what the losses and stats need.

    ``pair_expert == E`` marks a pair that is not computed (pruned). ``probs`` are the
    per-token (or per-sample) routing distributions over experts, rows summing to one.
    """

    pair_token: torch.Tensor
    pair_expert: torch.Tensor
    pair_weight: torch.Tensor
    priority: torch.Tensor
    logits: torch.Tensor  # [T or B, E], fp32
    probs: torch.Tensor  # [T or B, E], fp32
    load_fraction: torch.Tensor | None  # [E] fraction of assignments per expert, for the Switch loss
    token_probs: torch.Tensor  # [T, E] routing distribution seen by each token, for entropy / MACS
    extra_loss: torch.Tensor | None = None
    sample_logits: torch.Tensor | None = None  # [B, choices] of a sample-level decision
    extra_stats: dict[str, torch.Tensor] = field(default_factory=dict)


class Router(nn.Module):
    """Base router: a linear map from tokens to expert logits, computed in fp32.

    A subclass takes ``(dim, num_experts, top_k)`` then its own options as keyword arguments
    with defaults (checked in its ``__init__``), and implements :meth:`forward`.

    Args:
        dim: token width.
        num_experts: number of experts E.
        top_k: experts per token k.
    """

    kind = "base"
    #: True when each token is routed on its own (any subset of tokens can be routed, e.g. with
    #: padding removed); False when a decision depends on the other tokens of the sample
    #: (sample-level pooling, soft slots).
    token_level: bool = True
    #: what the owning model must set on the router before each forward (e.g. ``"task_ids"``); a task
    #: lists what it provides in ``BaseMoETask.router_context`` and refuses routers needing more
    context: str | None = None

    def __init__(self, dim: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_experts", num_experts), ("top_k", top_k)):
            check_positive_int(name, value)
        self.dim, self.num_experts, self.top_k = dim, num_experts, top_k
        self.weight = nn.Parameter(torch.empty(num_experts, dim))
        nn.init.normal_(self.weight, std=dim**-0.5)
        #: routing temperature T (> 0) and routing-entropy weight H (>= 0), set by the owning layer
        self.routing_temperature: float = 1.0  # not `temperature`: a registered router may have its own
        self.entropy_weight: float = 0.0
        self.register_forward_hook(_add_entropy_term)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The raw router logits (fp32), as the z-loss and supervised routing losses see them."""
        return F.linear(x.float(), self.weight.float())

    def scaled(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits / T``: what the routing decision and gate weights are computed from."""
        return logits if self.routing_temperature == 1.0 else logits / self.routing_temperature

    def forward(  # pragma: no cover - abstract
        self, x: torch.Tensor, sample: torch.Tensor, num_samples: int, ops: ModuleType, capacity: int | None
    ) -> Routing:
        raise NotImplementedError

    def _token_choice(self, x: torch.Tensor, ops: ModuleType, score: str, renormalize: bool, bias=None):
        logits = self.logits(x)
        top = ops.topk_routing(self.scaled(logits), self.top_k, score=score, bias=bias, renormalize=renormalize)
        T = x.shape[0]
        pair_token = torch.arange(T, device=x.device).repeat_interleave(self.top_k)
        return logits, top, pair_token


def _mean_per_sample(x: torch.Tensor, sample: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Mean of the rows of ``x [T, dim]`` per sample id ``[T]``: ``[num_samples, dim]`` in fp32."""
    pooled = torch.zeros(num_samples, x.shape[1], dtype=torch.float32, device=x.device).index_add_(0, sample, x.float())
    sizes = torch.zeros(num_samples, device=x.device).index_add_(0, sample, torch.ones(x.shape[0], device=x.device))
    return pooled / sizes.clamp_min(1).unsqueeze(-1)


def normalized_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the Shannon entropy of ``probs [N, E]`` divided by ``log E`` (in [0, 1];
    0 when ``E == 1`` or there is no row). Zero probabilities add nothing and keep finite gradients."""
    n, E = probs.shape[0], probs.shape[-1]
    if n == 0 or E < 2:
        return probs.float().sum() * 0
    p = probs.float()
    # clamp inside the log only: p log p -> 0 at p = 0, and the gradient stays finite there
    return -(p * p.clamp_min(1e-12).log()).sum(-1).mean() / math.log(E)


def routing_entropy_loss(probs: torch.Tensor, weight: float) -> torch.Tensor:
    """The routing-entropy term of the aux loss: ``-weight * normalized_entropy(probs)``.

    The form chosen for the paper's H (its text could not be read here): a *bonus* on the mean
    per-token routing entropy, i.e. a negative loss term, because E grows with H and the paper's
    claim is that a larger E keeps experts alive, so H must push routing towards spread. Per token
    (not the entropy of the batch-mean load) so that it stays distinct from the balance loss B,
    which the formula counts on the other side; divided by ``log E`` so H means the same for any
    expert count (the term lies in ``[-weight, 0]``, the scale of the Switch loss at balance).

    Args:
        probs: routing distributions ``[N, E]`` (rows sum to one), after the temperature.
        weight: H (>= 0).
    """
    return -weight * normalized_entropy(probs)


def _add_entropy_term(router: "Router", args: tuple, routing: "Routing") -> "Routing":
    """Forward hook of every router: H's entropy term joins ``extra_loss``."""
    if router.entropy_weight and isinstance(routing, Routing):
        term = routing_entropy_loss(routing.token_probs, router.entropy_weight)
        routing.extra_loss = term if routing.extra_loss is None else routing.extra_loss + term
    return routing


def _load_fraction(counts: torch.Tensor) -> torch.Tensor:
    return counts.float() / counts.sum().clamp_min(1).float()


@register_router("softmax")
class SoftmaxRouter(Router):
    """Softmax over experts, top-k.

    Args:
        renormalize: divide the k gate weights by their sum.
    """

    def __init__(self, dim: int, num_experts: int, top_k: int, renormalize: bool = False) -> None:
        super().__init__(dim, num_experts, top_k)
        self.renormalize = check_bool("renormalize", renormalize)

    def forward(self, x, sample, num_samples, ops, capacity):
        logits, top, pair_token = self._token_choice(x, ops, "softmax", self.renormalize)
        w = top.weights.reshape(-1)
        return Routing(pair_token, top.experts.reshape(-1), w, w.detach(), logits, top.scores,
                       _load_fraction(top.counts), top.scores)


@register_router("sigmoid")
class SigmoidRouter(Router):
    """Sigmoid scores with auxiliary-loss-free bias balancing (DeepSeek-V3 style).

    Selection ranks ``sigmoid(logit) + bias``; gate weights are the unbiased sigmoid scores of
    the chosen experts (renormalized over the k by default). In training, after each forward,
    ``bias[e] += bias_rate * sign(mean_load - load[e])``: overloaded experts become less
    likely to be chosen. The bias never receives gradients.

    Args:
        renormalize: divide the k gate weights by their sum.
        bias_rate: step of the balancing bias per training forward (0 freezes it).
    """

    def __init__(self, dim: int, num_experts: int, top_k: int, renormalize: bool = True, bias_rate: float = 1e-3) -> None:
        super().__init__(dim, num_experts, top_k)
        self.renormalize = check_bool("renormalize", renormalize)
        self.bias_rate = check_number("bias_rate", bias_rate)
        self.register_buffer("bias", torch.zeros(num_experts))

    def forward(self, x, sample, num_samples, ops, capacity):
        logits, top, pair_token = self._token_choice(x, ops, "sigmoid", self.renormalize, bias=self.bias)
        if self.training and self.bias_rate > 0 and x.shape[0] > 0:
            with torch.no_grad():
                load = top.counts.float()
                self.bias.add_(self.bias_rate * torch.sign(load.mean() - load))
        w = top.weights.reshape(-1)
        probs = top.scores / top.scores.sum(-1, keepdim=True).clamp_min(1e-20)
        return Routing(pair_token, top.experts.reshape(-1), w, w.detach(), logits, probs,
                       _load_fraction(top.counts), probs)


@register_router("expert_choice")
class ExpertChoiceRouter(Router):
    """Expert choice (Zhou et al. 2022): each expert takes its ``C`` highest-scoring tokens.

    Scores are the per-token softmax over experts; ``C`` is the layer's capacity
    (``capacity_factor`` defaults to 1, i.e. ``C = ceil(k * T / E)``), clipped to ``T``. A
    token may get zero or several experts; tokens that get none ride the residual and are
    counted as dropped.
    """

    def forward(self, x, sample, num_samples, ops, capacity):
        T, E = x.shape[0], self.num_experts
        logits = self.logits(x)
        probs = torch.softmax(self.scaled(logits), dim=-1)
        C = min(T, capacity if capacity is not None else math.ceil(self.top_k * T / E))
        top = torch.topk(probs.t(), C, dim=-1)  # [E, C]
        pair_token = top.indices.reshape(-1)
        pair_expert = torch.arange(E, device=x.device).repeat_interleave(C)
        w = top.values.reshape(-1)
        return Routing(pair_token, pair_expert, w, w.detach(), logits, probs, None, probs)


@register_router("sample")
class SampleRouter(Router):
    """One decision per sample: softmax top-k over experts from mean-pooled sample features.

    Every token of a sample goes to the sample's k experts with the sample's weights. The
    sample logits are kept on the layer (``last_sample_logits``) so a task can add a
    supervised loss on them (PDE family, degradation type).

    Args:
        renormalize: divide the k gate weights by their sum.
    """

    token_level = False

    def __init__(self, dim: int, num_experts: int, top_k: int, renormalize: bool = True) -> None:
        super().__init__(dim, num_experts, top_k)
        self.renormalize = check_bool("renormalize", renormalize)

    def forward(self, x, sample, num_samples, ops, capacity):
        T, k = x.shape[0], self.top_k
        logits = self.logits(_mean_per_sample(x, sample, num_samples))
        top = ops.topk_routing(self.scaled(logits), k, score="softmax", renormalize=self.renormalize)
        pair_token = torch.arange(T, device=x.device).repeat_interleave(k)
        pair_expert = top.experts[sample].reshape(-1)
        w = top.weights[sample].reshape(-1)
        return Routing(pair_token, pair_expert, w, w.detach(), logits, top.scores,
                       _load_fraction(top.counts), top.scores[sample], sample_logits=logits)


@register_router("beam")
class BeamRouter(Router):
    """Softmax top-k with a learned binary mask that prunes experts out of the top-k.

    A second linear map ``mask_weight [E, dim]`` gives per-(token, expert) mask logits; the
    hard mask is ``sigmoid(mask_logit) > 0.5`` (the top-1 expert is always kept), trained
    with a straight-through estimator: the gate weight is multiplied by
    ``hard + soft - soft.detach()``. Pruned pairs are not computed. The sparsity loss
    ``sparsity_weight * mean(soft)`` over the prunable slots pushes masks shut;
    ``stats["active_experts_per_token"]`` reports the mean number of computed experts.

    Args:
        renormalize: divide the k gate weights by their sum (before masking).
        sparsity_weight: weight of the mask sparsity loss in the layer's ``aux_loss``.
    """

    def __init__(self, dim: int, num_experts: int, top_k: int, renormalize: bool = False,
                 sparsity_weight: float = 1e-2) -> None:
        super().__init__(dim, num_experts, top_k)
        self.renormalize = check_bool("renormalize", renormalize)
        self.sparsity_weight = check_number("sparsity_weight", sparsity_weight)
        self.mask_weight = nn.Parameter(torch.zeros(num_experts, dim))
        self.mask_bias = nn.Parameter(torch.full((num_experts,), 2.0))  # masks start open

    def forward(self, x, sample, num_samples, ops, capacity):
        E = self.num_experts
        logits, top, pair_token = self._token_choice(x, ops, "softmax", self.renormalize)
        mask_logits = F.linear(x.float(), self.mask_weight.float(), self.mask_bias.float())
        soft = torch.sigmoid(mask_logits.gather(-1, top.experts))  # [T, k]
        hard = soft > 0.5
        hard[:, 0] = True
        st = hard.float() + soft - soft.detach()
        w = (top.weights * st).reshape(-1)
        pair_expert = torch.where(hard, top.experts, E).reshape(-1)
        prunable = soft[:, 1:]
        sparsity = prunable.mean() if prunable.numel() else soft.sum() * 0
        active = hard.float().sum(-1).mean() if x.shape[0] else soft.new_zeros(())
        return Routing(pair_token, pair_expert, w, w.detach(), logits, top.scores,
                       _load_fraction(top.counts), top.scores,
                       extra_loss=self.sparsity_weight * sparsity,
                       extra_stats={"active_experts_per_token": active.detach()})


@register_router("nested")
class NestedRouter(Router):
    """Nested MoE (after NESTOR): a sample-level choice of an expert group, token-level top-k inside it.

    The ``E`` experts form ``groups`` equal groups; the last expert of each group is the group's
    shared expert. Per sample, ``group_weight [G, dim]`` on mean-pooled features picks one
    group (softmax top-1, gate ``g``); per token, ``weight [E, dim]`` logits restricted to the
    chosen group's routed experts pick the top-k (softmax inside the group, gates ``w``). A
    token's pairs are its k routed experts with weights ``g * w`` and the group's shared expert
    with weight ``g``. The sample logits are kept as ``last_sample_logits`` for a supervised
    loss (e.g. PDE family). All in one dispatch, with no host sync.

    Args:
        groups: number of expert groups G; ``num_experts`` must be a multiple of G with at least
            ``top_k + 1`` experts per group.
    """

    token_level = False

    def __init__(self, dim: int, num_experts: int, top_k: int, groups: int = 2) -> None:
        super().__init__(dim, num_experts, top_k)
        check_positive_int("groups", groups)
        if num_experts % groups or num_experts // groups < top_k + 1:
            raise ValueError(f"groups: expected a divisor of num_experts={num_experts} leaving >= top_k+1="
                             f"{top_k + 1} experts per group, got {groups}")
        self.groups = groups
        self.group_weight = nn.Parameter(torch.empty(groups, dim))
        nn.init.normal_(self.group_weight, std=dim**-0.5)

    def group_logits(self, x: torch.Tensor, sample: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Per-sample group logits ``[num_samples, G]`` (fp32); subclasses may impose others."""
        return F.linear(_mean_per_sample(x, sample, num_samples), self.group_weight.float())

    def forward(self, x, sample, num_samples, ops, capacity):
        T, E, G, k = x.shape[0], self.num_experts, self.groups, self.top_k
        per = E // G
        group_logits = self.group_logits(x, sample, num_samples)
        group_probs = torch.softmax(self.scaled(group_logits), dim=-1)
        gate, group = group_probs.max(dim=-1)  # [B]
        tok_group, tok_gate = group[sample], gate[sample]  # [T]
        logits = self.logits(x)
        expert_group = torch.arange(E, device=x.device) // per
        is_shared = torch.arange(E, device=x.device) % per == per - 1
        allowed = (expert_group.unsqueeze(0) == tok_group.unsqueeze(1)) & ~is_shared
        top = ops.topk_routing(self.scaled(logits).masked_fill(~allowed, float("-inf")), k, score="softmax")
        shared = (tok_group * per + per - 1).unsqueeze(1)  # [T, 1]
        experts = torch.cat([top.experts, shared], dim=1)  # [T, k+1]
        weights = torch.cat([top.weights * tok_gate.unsqueeze(1), tok_gate.unsqueeze(1)], dim=1)
        pair_token = torch.arange(T, device=x.device).repeat_interleave(k + 1)
        w = weights.reshape(-1)
        return Routing(pair_token, experts.reshape(-1), w, w.detach(), logits, top.scores,
                       _load_fraction(top.counts), top.scores, sample_logits=group_logits)


@register_router("soft")
class SoftRouter(Router):
    """Soft MoE (Puigcerver et al. 2023) / token pooling: ``slots`` slots per expert.

    ``weight [E * slots, dim]``. Per sample, slot inputs are softmax-over-tokens mixtures of
    the tokens; expert outputs return to tokens through a softmax over slots. Dropless by
    construction; run by :class:`mmoe.MoELayer` directly (``top_k`` is unused).

    Args:
        slots: slots per expert.
    """

    token_level = False

    def __init__(self, dim: int, num_experts: int, top_k: int, slots: int = 1) -> None:
        super().__init__(dim, num_experts, top_k)
        self.slots = check_positive_int("slots", slots)
        self.weight = nn.Parameter(torch.empty(num_experts * slots, dim))
        nn.init.normal_(self.weight, std=dim**-0.5)

    def forward(self, x, sample, num_samples, ops, capacity):  # pragma: no cover - not pair based
        raise RuntimeError("the soft router is run by MoELayer._soft_forward")


def build_router(name: str, dim: int, num_experts: int, top_k: int,
                 options: Mapping[str, Any] | None = None) -> Router:
    """``ROUTERS[name](dim, num_experts, top_k, **options)``, with clear errors.

    Args:
        name: a name from :data:`ROUTERS`.
        dim: token width.
        num_experts: number of experts E.
        top_k: experts per token k.
        options: the router's own keyword options (``router_options``), e.g. ``{"groups": 2}``.
    """
    check_choice("router", name, tuple(ROUTERS))
    for arg, value in (("dim", dim), ("num_experts", num_experts), ("top_k", top_k)):
        check_positive_int(arg, value)
    cls = ROUTERS[name]
    options = check_options("router_options", options, cls, f"router {name!r}", ("dim", "num_experts", "top_k"))
    try:
        return cls(dim, num_experts, top_k, **options)
    except (TypeError, ValueError) as e:
        error = TypeError if isinstance(e, TypeError) else ValueError
        raise error(f"router_options={options!r} for router {name!r}: {e}") from e
