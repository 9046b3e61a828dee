"""Expert parallelism over ``torch.distributed`` and the Lightning strategy that sets it up.

:func:`shard_experts` gives every pair-based :class:`mmoe.MoELayer` of a model an expert-parallel
(EP) process group of ``W`` ranks: rank ``r`` keeps experts ``[r*E/W, (r+1)*E/W)`` (``E`` must be
a multiple of ``W``); the router, shared experts and the rest of the model stay replicated.
A forward on rank ``r`` then

1. routes its own tokens with the replicated router;
2. decides capacity *globally*, exactly as one process holding every rank's tokens (in rank
   order) would: the routing decision (expert id and priority per pair, 16 bytes a pair; for
   MACS also modality and token value; for expert choice the ``[T, E]`` scores) is gathered,
   and every rank runs the same dispatch on it, so the drops, MACS included, are those of the
   single-process layer (ties included: pair index order is the global token order);
3. sorts its kept pairs by expert, exchanges the per-expert counts with ``all_to_all_single``
   on the device (one host read of the split sizes follows: the collective needs them), sends
   the token rows to the experts' ranks with ``all_to_all_single``, runs its local experts with
   the layer's backend (torch or triton), sends the outputs back and combines them with the
   gate weights. :class:`AllToAll` is an autograd function whose backward is the reverse
   exchange.
4. reduces the aux loss (with an autograd all-reduce) and the routing stats over the group, so
   every rank reports the same numbers as the single-process layer.

Gradient convention: the EP objective is the *mean* of the per-rank losses, as in DDP (which
averages the gradients of replicated parameters). The reverse exchange gives each expert the
*sum* of the ranks' gradients, so expert gradients are divided by the data-parallel world size
(``expert_grad_scale``). The aux loss on each rank has the global value; its autograd
all-reduce sums the ranks' gradients, which DDP's averaging turns back into the single-process
gradient.

Rules where one process has no exact counterpart: the load-balancing fraction, the router's
``extra_loss`` and ``extra_stats`` are combined as row-weighted means over the ranks (exact for
every registered router, whose values are per-row means); the soft router mixes every token
into every expert's slots, so soft layers keep replicated experts (plain data parallel).
Samples are never split over ranks, so sample-level routers (``sample``, ``nested``) are exact.

:class:`ExpertParallelStrategy` (``--trainer.strategy ddp_expert_parallel``) is Lightning's DDP
strategy with the experts sharded before DDP wraps the model, the expert shards kept out of
DDP's gradient all-reduce and its state broadcasts, and checkpoints holding full (gathered)
experts: an EP checkpoint loads in one process with ``mmoe.load``; a single-process checkpoint
(or one written with another world size) is resharded on load, optimizer state included.
Gradient clipping by norm uses the global norm (:func:`clip_grad_norm_`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from mmoe.capacity import (expert_capacity, fair_queue_priority, paper_macs_capacity, paper_macs_pair_priority,
                           token_value)
from mmoe.kernels import backend_ops
from mmoe.kernels.reference import expert_counts
from mmoe.moe_layer import MoELayer
from mmoe.routers import ExpertChoiceRouter, Routing, SigmoidRouter, SoftRouter
from mmoe.stats import RoutingStats, modality_counts

__all__ = [
    "AllToAll",
    "clip_grad_norm_",
    "ExpertParallel",
    "ExpertParallelStrategy",
    "expert_parallel_layers",
    "full_state_dict",
    "shard_experts",
    "shard_state_dict",
]


@dataclass
class ExpertParallel:
    """What a sharded :class:`mmoe.MoELayer` knows about its EP group (``layer.expert_parallel``).

    ``traffic`` counts, since the last reset, the bytes this rank sent to *other* ranks:
    ``tokens`` (token rows and their outputs, forward; the backward sends as much again) and
    ``routing`` (gathered routing decisions, split counts).
    """

    group: Any
    rank: int
    world: int
    num_local: int
    expert_grad_scale: float
    traffic: dict[str, int] = field(default_factory=lambda: {"tokens": 0, "routing": 0})

    @property
    def first(self) -> int:
        return self.rank * self.num_local

    def sparse_forward(self, layer: MoELayer, xt: torch.Tensor, num_samples: int,
                       modality: torch.Tensor | None) -> torch.Tensor:
        """:class:`mmoe.moe_layer.ExpertExchange`: the layer's pair-based forward over this group."""
        return sparse_forward(layer, xt, num_samples, modality)


# ------------------------------------------------------------------------------ exchange
def _all_to_all(x: torch.Tensor, send: list[int], recv: list[int], group: Any) -> torch.Tensor:
    out = x.new_empty((sum(recv), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=group)
    return out


class AllToAll(torch.autograd.Function):
    """``all_to_all_single`` of rows with ``send``/``recv`` split sizes; backward: the reverse."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, send: list[int], recv: list[int], group: Any) -> torch.Tensor:
        ctx.send, ctx.recv, ctx.group = send, recv, group
        return _all_to_all(x, send, recv, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return _all_to_all(grad, ctx.recv, ctx.send, ctx.group), None, None, None


def _gather_rows(x: torch.Tensor, sizes: list[int], group: Any, world: int) -> torch.Tensor:
    """Concatenation over ranks (rank order) of ``x [sizes[rank], ...]`` (no autograd)."""
    pad = max(sizes)
    buf = x.new_zeros((pad, *x.shape[1:]))
    buf[: x.shape[0]] = x
    parts = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(parts, buf.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the backward sums the ranks' gradients (each rank's input feeds every
    rank's output)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = grad.contiguous().clone()
        dist.all_reduce(out, group=ctx.group)
        return out, None


def _sum(x: torch.Tensor, group: Any) -> torch.Tensor:
    """All-reduce sum that autograd differentiates."""
    return _AllReduceSum.apply(x, group)


# ------------------------------------------------------------------------------ sharding
def expert_parallel_layers(model: nn.Module) -> dict[str, MoELayer]:
    """The sharded MoE layers of ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MoELayer) and m.expert_parallel is not None}


def _shardable(layer: MoELayer) -> bool:
    return not isinstance(layer.router, SoftRouter)


def shard_experts(model: nn.Module, group: Any = None, expert_grad_scale: float | None = None) -> list[str]:
    """Keep on this rank only its share of each pair-based MoE layer's experts, in place.

    Args:
        model: any module; every :class:`mmoe.MoELayer` in it with a pair-based router is
            sharded (soft-router layers keep all their experts: they are data parallel).
        group: the expert-parallel process group (default: the whole world). Every layer's
            ``num_experts`` must be a multiple of its size.
        expert_grad_scale: factor applied to expert gradients; default ``1 / world size``, so
            expert gradients are the mean over ranks like DDP's (see the module docstring).

    Returns the state-dict names of the sharded parameters (for DDP's ignore list).
    """
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("shard_experts: torch.distributed is not initialized (call init_process_group first)")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    scale = 1.0 / dist.get_world_size() if expert_grad_scale is None else float(expert_grad_scale)
    names: list[str] = []
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, MoELayer) and _shardable(m)]
    for name, layer in layers:
        if layer.expert_parallel is not None:
            raise ValueError(f"shard_experts: layer {name!r} is already sharded")
        if layer.num_experts % world:
            raise ValueError(f"shard_experts: layer {name!r} has num_experts={layer.num_experts}, expected a "
                             f"multiple of the expert-parallel group size {world}")
    for name, layer in layers:
        local = layer.num_experts // world
        experts = layer.experts
        for pname in ("w_in", "w_out"):
            full = getattr(experts, pname)
            shard = nn.Parameter(full.detach()[rank * local:(rank + 1) * local].clone(),
                                 requires_grad=full.requires_grad)
            if scale != 1.0 and shard.requires_grad:
                shard.register_hook(lambda g, s=scale: g * s)
            setattr(experts, pname, shard)
            names.append(f"{name}.experts.{pname}" if name else f"experts.{pname}")
        experts.num_experts = local
        layer.expert_parallel = ExpertParallel(group, rank, world, local, scale)
    return names


def _expert_keys(model: nn.Module) -> dict[str, ExpertParallel]:
    out = {}
    for name, layer in expert_parallel_layers(model).items():
        for pname in ("w_in", "w_out"):
            out[f"{name}.experts.{pname}" if name else f"experts.{pname}"] = layer.expert_parallel
    return out


def full_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None,
                    prefix: str = "") -> dict[str, torch.Tensor]:
    """``state_dict`` (default ``model.state_dict()``) with every expert shard all-gathered to the
    full ``[E, ...]`` tensor. A collective: every rank of the group calls it."""
    state = dict(model.state_dict() if state_dict is None else state_dict)
    for key, ep in _expert_keys(model).items():
        shard = state[prefix + key]
        parts = [torch.empty_like(shard) for _ in range(ep.world)]
        dist.all_gather(parts, shard.detach().contiguous(), group=ep.group)
        state[prefix + key] = torch.cat(parts)
    return state


def shard_state_dict(model: nn.Module, state_dict: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``state_dict`` with full ``[E, ...]`` expert tensors cut to this rank's shard (shards already
    of the local size pass unchanged); for a model sharded by :func:`shard_experts`."""
    state = dict(state_dict)
    for key, ep in _expert_keys(model).items():
        t = state.get(prefix + key)
        if isinstance(t, torch.Tensor) and t.shape[0] == ep.num_local * ep.world and ep.world > 1:
            state[prefix + key] = t[ep.first:ep.first + ep.num_local].clone()
    return state


# ------------------------------------------------------------------------------ forward
def _expert_choice_routing(layer: MoELayer, xt: torch.Tensor, capacity: int, sizes: list[int],
                           ep: ExpertParallel) -> Routing:
    """Expert choice over the tokens of all ranks: each expert takes its ``C`` best tokens globally."""
    E = layer.num_experts
    T_all = sum(sizes)
    offset = sum(sizes[: ep.rank])
    logits = layer.router.logits(xt)
    probs = torch.softmax(logits, dim=-1)
    everyone = _gather_rows(probs.detach(), sizes, ep.group, ep.world)  # [T_all, E]
    ep.traffic["routing"] += probs.numel() * probs.element_size() * (ep.world - 1)
    C = min(T_all, capacity)
    top = torch.topk(everyone.t(), C, dim=-1).indices.reshape(-1)  # [E*C] global token ids
    expert = torch.arange(E, device=xt.device).repeat_interleave(C)
    mine = (top >= offset) & (top < offset + xt.shape[0])
    pair_token, pair_expert = top[mine] - offset, expert[mine]
    w = probs[pair_token, pair_expert]
    return Routing(pair_token, pair_expert, w, w.detach(), logits, probs, None, probs)


def sparse_forward(layer: MoELayer, xt: torch.Tensor, num_samples: int, mod: torch.Tensor | None) -> torch.Tensor:
    """The expert-parallel counterpart of ``MoELayer._sparse_forward`` (see the module docstring)."""
    ep: ExpertParallel = layer.expert_parallel
    group, W = ep.group, ep.world
    T, E, M = xt.shape[0], layer.num_experts, layer.num_modalities
    device = xt.device
    ops = backend_ops(layer.backend, device)
    router = layer.router
    expert_choice = isinstance(router, ExpertChoiceRouter)
    per_sample = T // max(num_samples, 1)
    sample = torch.arange(num_samples, device=device).repeat_interleave(per_sample)

    cf = layer.capacity_factor if not expert_choice else (layer.capacity_factor or 1.0)
    sizes: list[int] = []
    capacity = None
    visual = None  # paper MACS: the visual modality of the global batch
    paper = mod is not None and layer.capacity_mode == "macs_paper" and not expert_choice
    if cf is not None:  # tokens per rank: the global T of the capacity, the layout of gathered scores
        mine = torch.tensor([T], dtype=torch.long, device=device)
        if paper:  # and its tokens per modality: paper MACS's capacity follows the global mix
            mine = torch.cat([mine, torch.bincount(mod, minlength=M)])
        parts = [torch.empty_like(mine) for _ in range(W)]
        dist.all_gather(parts, mine, group=group)
        gathered = torch.stack(parts)
        sizes = [int(p) for p in gathered[:, 0].tolist()]
        capacity = expert_capacity(cf, layer.top_k, sum(sizes), E)
        if paper:
            capacity, visual = paper_macs_capacity(cf, layer.top_k, gathered[:, 1:].sum(0).tolist(), E)

    if expert_choice:
        r = _expert_choice_routing(layer, xt, capacity, sizes, ep)
    else:
        bias = router.bias.clone() if isinstance(router, SigmoidRouter) else None
        r = router(xt, sample, num_samples, ops, capacity)
        if bias is not None:  # the balancing step must follow the global load, as in one process
            router.bias.copy_(bias)
    dispatch_capacity = None if expert_choice else capacity
    valid = r.pair_expert < E

    if dispatch_capacity is None:
        keep = valid
    else:
        # gather the routing decision and run the single-process dispatch on it
        if mod is not None and layer.capacity_mode == "macs_output":
            raise ValueError("capacity_mode: 'macs_output' (a single-process study of the value rule) is not "
                             "supported with expert parallelism; use 'macs' or 'static'")
        macs = mod is not None and layer.capacity_mode in ("macs", "macs_paper")
        cols = [r.pair_expert.double(), r.priority.double()]
        if macs:
            cols += [mod[r.pair_token].double(), token_value(r.token_probs)[r.pair_token].double(),
                     r.pair_weight.detach().double()]
        local = torch.stack(cols, dim=1) if cols[0].numel() else torch.zeros(0, len(cols), dtype=torch.float64,
                                                                             device=device)
        n_pairs = torch.tensor([local.shape[0]], dtype=torch.long, device=device)
        counts = [torch.empty_like(n_pairs) for _ in range(W)]
        dist.all_gather(counts, n_pairs, group=group)
        psizes = [int(c) for c in torch.cat(counts).tolist()]
        everyone = _gather_rows(local, psizes, group, W)
        ep.traffic["routing"] += local.numel() * 8 * (W - 1)
        g_expert = everyone[:, 0].long()
        if visual is not None:  # the same columns: modality, token value, gate
            priority = paper_macs_pair_priority(everyone[:, 2].long(), everyone[:, 3].float(), everyone[:, 4].float(),
                                                visual)
        elif macs:
            value = everyone[:, 3].float()  # the token value; column 4 is the pair's gate weight
            priority = fair_queue_priority(g_expert, everyone[:, 2].long(), value * everyone[:, 4].float(), value, E, M)
        else:
            priority = everyone[:, 1].float()
        d = ops.dispatch_metadata(g_expert, priority, E, dispatch_capacity)
        start = sum(psizes[: ep.rank])
        keep = d.keep[start:start + local.shape[0]]

    # kept pairs sorted by expert: contiguous per destination rank
    kept_expert = torch.where(keep, r.pair_expert, E)
    send_counts = expert_counts(kept_expert, E)  # [E] from this rank
    order = torch.sort(kept_expert, stable=True).indices
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)  # [W sources x local experts]
    ep.traffic["routing"] += send_counts.numel() * 8 * (W - 1) // W
    splits = torch.cat([send_counts.view(W, -1).sum(1), recv_counts.view(W, -1).sum(1)]).tolist()
    send, recv = splits[:W], splits[W:]
    n_send = sum(send)
    order = order[:n_send]
    send_token = r.pair_token[order]
    send_weight = r.pair_weight[order]
    x_recv = AllToAll.apply(xt.index_select(0, send_token), send, recv, group)
    row_bytes = xt.shape[1] * xt.element_size()
    ep.traffic["tokens"] += (n_send - send[ep.rank] + sum(recv) - recv[ep.rank]) * row_bytes

    # local experts on the received rows (source-major, expert-minor): expert_mlp gathers rows by
    # index and scatters them back to the same index, so no permutation of x is materialised
    local_expert = torch.arange(ep.num_local, device=device).repeat(W)
    row_expert = torch.repeat_interleave(local_expert, recv_counts)
    perm = torch.sort(row_expert, stable=True).indices
    per_expert = recv_counts.view(W, ep.num_local).sum(0)
    offsets = torch.cat([per_expert.new_zeros(1), per_expert.cumsum(0)])
    out = ops.expert_mlp(x_recv, layer.experts.w_in.to(xt.dtype), layer.experts.w_out.to(xt.dtype), perm,
                         torch.ones(perm.numel(), dtype=xt.dtype, device=device), offsets, layer.activation)
    back = AllToAll.apply(out, recv, send, group)
    y = torch.zeros(T, xt.shape[1], dtype=back.dtype, device=device)
    y = y.index_add(0, send_token, back * send_weight.to(back.dtype).unsqueeze(-1))

    layer.last_sample_logits = r.sample_logits
    layer.last_assignment = (r.pair_token, kept_expert, per_sample)
    layer.aux_loss = _aux_loss(layer, r, group)
    with torch.no_grad():
        layer.stats = _stats(layer, r, keep, kept_expert, T, mod, capacity, expert_choice, group)
    return y


def _aux_loss(layer: MoELayer, r: Routing, group: Any) -> torch.Tensor:
    """``MoELayer._aux_loss`` over the tokens of every rank (same value on each rank)."""
    rows = r.probs.shape[0]
    logit_rows = r.logits.shape[0]
    tokens = r.token_probs.shape[0]
    counts = torch.tensor([rows, logit_rows, tokens], dtype=torch.float64, device=r.logits.device)
    dist.all_reduce(counts, group=group)
    rows_all, logit_rows_all, tokens_all = (float(c) for c in counts.tolist())
    loss = r.logits.new_zeros(())
    extra = None
    if r.extra_loss is not None:  # a per-token mean (beam sparsity): row-weighted mean over ranks
        extra = _sum(r.extra_loss.float() * tokens, group) / max(tokens_all, 1.0)
    if tokens_all == 0:
        return loss if extra is None else loss + extra
    if r.load_fraction is not None and layer.load_balance_weight:
        with torch.no_grad():
            fraction = r.load_fraction.float() * rows
            dist.all_reduce(fraction, group=group)
            fraction = fraction / max(rows_all, 1.0)
        mean_probs = _sum(r.probs.float().sum(0), group) / max(rows_all, 1.0)
        loss = loss + layer.load_balance_weight * layer.num_experts * (fraction * mean_probs).sum()
    if layer.z_loss_weight:
        z = _sum(torch.logsumexp(r.logits, dim=-1).pow(2).sum(), group) / max(logit_rows_all, 1.0)
        loss = loss + layer.z_loss_weight * z
    if extra is not None:
        loss = loss + extra
    return loss


def _stats(layer: MoELayer, r: Routing, keep: torch.Tensor, kept_expert: torch.Tensor, T: int,
           mod: torch.Tensor | None, capacity: int | None, expert_choice: bool, group: Any) -> RoutingStats:
    E, M = layer.num_experts, layer.num_modalities
    device = r.pair_token.device
    # the same counts as the local layer, on this rank's pairs, then summed over the group
    counts = modality_counts(r.pair_token, r.pair_expert, keep, mod, T, E, M, expert_choice)
    kept = expert_counts(kept_expert, E)
    routed = expert_counts(r.pair_expert, E)
    ints = torch.cat([kept, routed, counts.per_modality.reshape(-1), counts.tokens_per_modality,
                      counts.dropped_per_modality])
    dist.all_reduce(ints, group=group)
    kept, routed, per_mod, tokens_per_modality, dropped = ints.split([E, E, M * E, M, M])
    p = r.token_probs.float().clamp_min(1e-12)
    names = sorted(r.extra_stats)
    floats = torch.stack([-(p * p.log()).sum(), torch.tensor(float(T), device=device),
                          *[r.extra_stats[n].float() * T for n in names]])
    dist.all_reduce(floats, group=group)
    tokens_all = float(floats[1])
    entropy = floats[0] / tokens_all if tokens_all else floats[0] * 0
    extra = {n: floats[2 + i] / max(tokens_all, 1.0) for i, n in enumerate(names)}
    if isinstance(layer.router, SigmoidRouter) and layer.training and layer.router.bias_rate > 0 and tokens_all:
        load = routed.float()
        layer.router.bias.add_(layer.router.bias_rate * torch.sign(load.mean() - load))
    return RoutingStats(
        tokens_per_expert=kept,
        routed_per_expert=routed,
        tokens_per_expert_per_modality=per_mod.view(M, E),
        dropped_per_modality=dropped,
        tokens_per_modality=tokens_per_modality,
        router_entropy=entropy,
        dead_experts=layer.update_dead_experts(kept),
        capacity=capacity,
        extra=extra,
    )


def clip_grad_norm_(model: nn.Module, parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (2-norm) for a sharded model after DDP's gradient
    all-reduce: replicated gradients count once, the expert shards of every rank are summed in,
    so every rank computes the single-process norm and the same factor. Returns the norm."""
    shards = {id(layer.experts.w_in): layer.expert_parallel for layer in expert_parallel_layers(model).values()}
    shards.update({id(layer.experts.w_out): layer.expert_parallel
                   for layer in expert_parallel_layers(model).values()})
    grads = [p.grad for p in parameters if p.grad is not None]
    device = grads[0].device if grads else torch.device("cpu")
    replicated = sum((g.detach().double().pow(2).sum() for p, g in ((p, p.grad) for p in parameters)
                      if g is not None and id(p) not in shards), torch.zeros((), dtype=torch.float64, device=device))
    sharded = sum((p.grad.detach().double().pow(2).sum() for p in parameters
                   if p.grad is not None and id(p) in shards), torch.zeros((), dtype=torch.float64, device=device))
    groups = {id(ep.group): ep.group for ep in shards.values()}
    for group in groups.values():
        dist.all_reduce(sharded, group=group)
    total = (replicated + sharded).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype))
    return total.float()


# ------------------------------------------------------------------------------ Lightning
def _broadcast_replicated(module: nn.Module, skip: set[str]) -> None:
    """Rank 0's parameters and buffers to every rank, except the expert shards."""
    for name, t in module.state_dict(keep_vars=True).items():
        if name not in skip and isinstance(t, torch.Tensor):
            dist.broadcast(t.data, src=0)


class ExpertParallelStrategy(DDPStrategy):
    """DDP with expert parallelism over all processes (``--trainer.strategy ddp_expert_parallel``).

    Before DDP wraps the model, every pair-based MoE layer is sharded over the world
    (:func:`shard_experts`, one EP group = all ranks, so ``num_experts`` must be a multiple of
    the number of processes); the shards are left out of DDP's gradient all-reduce and state
    broadcasts (their gradients arrive through the all-to-all and are averaged by
    ``expert_grad_scale``). Checkpoints hold full experts and full optimizer state (gathered on
    save); full tensors are cut to the local shard on load, so checkpoints move freely between
    one process and any EP world size. Arguments are those of Lightning's ``DDPStrategy``.
    """

    strategy_name = "ddp_expert_parallel"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._expert_names: list[str] = []

    def _shard(self) -> None:
        module = self.lightning_module
        if expert_parallel_layers(module):  # sharded by an earlier run (fit, then test)
            self._expert_names = sorted(_expert_keys(module))
            return
        _broadcast_replicated(module, set())  # one starting point for everything before sharding
        self._expert_names = shard_experts(module)
        ignore = set(getattr(module, "_ddp_params_and_buffers_to_ignore", ())) | set(self._expert_names)
        module._ddp_params_and_buffers_to_ignore = sorted(ignore)

    def setup(self, trainer: Any) -> None:
        assert self.accelerator is not None
        self.accelerator.setup(trainer)
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and self._layer_sync:
            self.model = self._layer_sync.apply(self.model)
        self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        self._shard()
        if fitting:
            self.configure_ddp()
            self.setup_optimizers(trainer)
        else:  # DDP's own sync would overwrite the other ranks' expert shards with rank 0's
            _broadcast_replicated(self.lightning_module, set(self._expert_names))
        self.setup_precision_plugin()
        module = self.lightning_module

        def clip_grad_by_norm(optimizer: Any, clip_val: float) -> None:  # a global norm: shards differ per rank
            clip_grad_norm_(module, [p for g in optimizer.param_groups for p in g["params"]], clip_val)

        self.precision_plugin.clip_grad_by_norm = clip_grad_by_norm
        if fitting:
            _optimizers_to_device(self.optimizers, self.root_device)

    def lightning_module_state_dict(self) -> dict[str, Any]:
        return full_state_dict(self.lightning_module)

    def load_model_state_dict(self, checkpoint: dict[str, Any], strict: bool = True) -> None:
        module = self.lightning_module
        if expert_parallel_layers(module):
            checkpoint = {**checkpoint, "state_dict": shard_state_dict(module, checkpoint["state_dict"])}
        super().load_model_state_dict(checkpoint, strict=strict)

    def _expert_params(self, optimizer: torch.optim.Optimizer) -> dict[int, ExpertParallel]:
        module = self.lightning_module
        eps = {id(layer.experts.w_in): layer.expert_parallel for layer in expert_parallel_layers(module).values()}
        eps.update({id(layer.experts.w_out): layer.expert_parallel
                    for layer in expert_parallel_layers(module).values()})
        params = [p for g in optimizer.param_groups for p in g["params"]]
        return {i: eps[id(p)] for i, p in enumerate(params) if id(p) in eps}

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        state = super().optimizer_state(optimizer)
        opt = getattr(optimizer, "optimizer", optimizer)
        experts = self._expert_params(opt)
        if not experts:
            return state
        params = [p for g in opt.param_groups for p in g["params"]]
        new_state = dict(state["state"])
        for i, ep in experts.items():
            entry = dict(new_state.get(i, {}))
            for key, value in sorted(entry.items()):
                if isinstance(value, torch.Tensor) and value.shape == params[i].shape:
                    parts = [torch.empty_like(value) for _ in range(ep.world)]
                    dist.all_gather(parts, value.contiguous(), group=ep.group)
                    entry[key] = torch.cat(parts)
            new_state[i] = entry
        return {**state, "state": new_state}

    def load_optimizer_state_dict(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("optimizer_states")
        if states:
            new = []
            for optimizer, state in zip(self.optimizers, states):
                experts = self._expert_params(getattr(optimizer, "optimizer", optimizer))
                inner = dict(state["state"])
                for i, ep in experts.items():
                    entry = dict(inner.get(i, {}))
                    for key, value in entry.items():
                        if (isinstance(value, torch.Tensor) and value.dim() > 0
                                and value.shape[0] == ep.num_local * ep.world and ep.world > 1):
                            entry[key] = value[ep.first:ep.first + ep.num_local].clone()
                    inner[i] = entry
                new.append({**state, "state": inner})
            checkpoint = {**checkpoint, "optimizer_states": new}
        super().load_optimizer_state_dict(checkpoint)


if "ddp_expert_parallel" not in StrategyRegistry:
    StrategyRegistry.register("ddp_expert_parallel", ExpertParallelStrategy,
                              description="DDP with MoE experts sharded over the processes (mmoe.parallel)")
    # like Lightning's ddp_find_unused_parameters_true: for models where a batch leaves some
    # replicated parameters unused (per-task heads)
    StrategyRegistry.register("ddp_expert_parallel_find_unused_parameters_true", ExpertParallelStrategy,
                              description="ddp_expert_parallel with find_unused_parameters=True",
                              find_unused_parameters=True)
