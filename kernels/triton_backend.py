"""The ``triton`` backend: same functions and semantics as :mod:`mmoe.kernels.reference`.

Each op is a ``torch.library.custom_op`` (namespace ``mmoe``) with a fake (meta) kernel, so
``torch.compile`` traces through it; ``expert_mlp`` and ``topk_routing`` register autograd.
Kernels: :mod:`.triton_routing`, :mod:`.triton_dispatch`, :mod:`.triton_expert_mlp`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmoe.kernels import triton_dispatch, triton_expert_mlp, triton_routing
from mmoe.kernels.reference import Dispatch, TopK

__all__ = ["topk_routing", "dispatch_metadata", "expert_mlp", "TopK", "Dispatch"]

_ACTIVATIONS = ("swiglu", "gelu")


def _buffer(shape, dtype, device):
    return triton_expert_mlp.new_buffer(shape, dtype, device)


# ----------------------------------------------------------------------------- routing
@torch.library.custom_op("mmoe::triton_topk", mutates_args=())
def _topk_op(logits: Tensor, k: int, sigmoid: bool, bias: Tensor | None,
             renormalize: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return triton_routing.topk_routing_launch(logits, k, sigmoid, bias, renormalize, _buffer)


@_topk_op.register_fake
def _(logits, k, sigmoid, bias, renormalize):
    T, E = logits.shape
    f = dict(device=logits.device)
    return (torch.empty(T, k, dtype=torch.float32, **f), torch.empty(T, k, dtype=torch.long, **f),
            torch.empty(T, E, dtype=torch.float32, **f), torch.empty(E, dtype=torch.long, **f))


def _topk_setup(ctx, inputs, output):
    logits, k, sigmoid, bias, renormalize = inputs
    ctx.sigmoid, ctx.renormalize = sigmoid, renormalize
    ctx.save_for_backward(logits, output[1])


def _topk_backward(ctx, g_weights, g_experts, g_scores, g_counts):
    # Recompute the differentiable part in torch (small: [T, E]).
    logits, experts = ctx.saved_tensors
    with torch.enable_grad():
        lg = logits.detach().float().requires_grad_()
        scores = torch.sigmoid(lg) if ctx.sigmoid else torch.softmax(lg, dim=-1)
        w = scores.gather(-1, experts)
        if ctx.renormalize:
            w = w / w.sum(-1, keepdim=True).clamp_min(1e-20)
        outs, grads = [], []
        for o, g in ((w, g_weights), (scores, g_scores)):
            if g is not None:
                outs.append(o)
                grads.append(g)
        (gl,) = torch.autograd.grad(outs, lg, grads) if outs else (torch.zeros_like(lg),)
    return gl.to(logits.dtype), None, None, None, None


_topk_op.register_autograd(_topk_backward, setup_context=_topk_setup)


def topk_routing(logits: Tensor, k: int, score: str = "softmax", bias: Tensor | None = None,
                 renormalize: bool = False) -> TopK:
    """Top-k expert choice per token; see :func:`mmoe.kernels.reference.topk_routing`."""
    if score not in ("softmax", "sigmoid"):
        raise ValueError(f"score: expected 'softmax' or 'sigmoid', got {score!r}")
    if logits.dim() != 2:
        raise ValueError(f"logits: expected shape [T, E], got {tuple(logits.shape)}")
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k: expected 1 <= k <= E={logits.shape[1]}, got {k}")
    b = None if bias is None else bias.detach().float().contiguous()
    return TopK(*_topk_op(logits, k, score == "sigmoid", b, renormalize))


# ---------------------------------------------------------------------------- dispatch
@torch.library.custom_op("mmoe::triton_dispatch", mutates_args=())
def _dispatch_op(pair_expert: Tensor, priority: Tensor, num_experts: int,
                 capacity: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return triton_dispatch.dispatch_launch(pair_expert, priority, num_experts, capacity, _buffer)


@_dispatch_op.register_fake
def _(pair_expert, priority, num_experts, capacity):
    P = pair_expert.numel()
    f = dict(device=pair_expert.device)
    return (torch.empty(P, dtype=torch.long, **f), torch.empty(num_experts + 1, dtype=torch.long, **f),
            torch.empty(P, dtype=torch.bool, **f), torch.empty(P, dtype=torch.long, **f))


def dispatch_metadata(pair_expert: Tensor, priority: Tensor, num_experts: int,
                      capacity: int | None) -> Dispatch:
    """Sort pairs by expert and apply capacity; see :func:`mmoe.kernels.reference.dispatch_metadata`."""
    if pair_expert.numel() != priority.numel():
        raise ValueError(f"priority: expected {pair_expert.numel()} elements like pair_expert, "
                         f"got {priority.numel()}")
    cap = None if capacity is None else int(capacity)
    return Dispatch(*_dispatch_op(pair_expert.reshape(-1).contiguous(),
                                  priority.detach().reshape(-1).contiguous(), num_experts, cap))


# -------------------------------------------------------------------------- expert MLP
@torch.library.custom_op("mmoe::triton_expert_mlp", mutates_args=())
def _mlp_op(x: Tensor, w_in: Tensor, w_out: Tensor, sorted_token: Tensor, sorted_weight: Tensor,
            expert_offsets: Tensor, activation: str, save: bool,
            deterministic: bool) -> tuple[Tensor, Tensor, Tensor]:
    return triton_expert_mlp.mlp_forward(x, w_in, w_out, sorted_token, sorted_weight,
                                         expert_offsets, activation, save, deterministic)


@_mlp_op.register_fake
def _(x, w_in, w_out, sorted_token, sorted_weight, expert_offsets, activation, save,
      deterministic):
    P = sorted_token.numel()
    return (x.new_empty(x.shape), x.new_empty(P, w_out.shape[1]),
            x.new_empty(P, w_in.shape[2]) if save else x.new_empty(0))


@torch.library.custom_op("mmoe::triton_expert_mlp_bwd", mutates_args=())
def _mlp_bwd_op(dy: Tensor, x: Tensor, w_in: Tensor, w_out: Tensor, sorted_token: Tensor,
                sorted_weight: Tensor, expert_offsets: Tensor, a: Tensor, z: Tensor,
                activation: str, deterministic: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return triton_expert_mlp.mlp_backward(dy, x, w_in, w_out, sorted_token, sorted_weight,
                                          expert_offsets, a, z, activation, deterministic)


@_mlp_bwd_op.register_fake
def _(dy, x, w_in, w_out, sorted_token, sorted_weight, expert_offsets, a, z, activation,
      deterministic):
    return (x.new_empty(x.shape), w_in.new_empty(w_in.shape), w_out.new_empty(w_out.shape),
            sorted_weight.new_empty(sorted_weight.shape))


def _mlp_setup(ctx, inputs, output):
    x, w_in, w_out, sorted_token, sorted_weight, offsets, activation, save, deterministic = inputs
    ctx.activation, ctx.deterministic = activation, deterministic
    ctx.save_for_backward(x, w_in, w_out, sorted_token, sorted_weight, offsets, output[1],
                          output[2])


def _mlp_backward(ctx, dy, da, dz):
    x, w_in, w_out, sorted_token, sorted_weight, offsets, a, z = ctx.saved_tensors
    if z.numel() == 0 and sorted_token.numel() > 0:
        raise RuntimeError("expert_mlp: backward needs the forward to run with grad enabled")
    dx, dw_in, dw_out, dsw = _mlp_bwd_op(dy.contiguous(), x, w_in, w_out, sorted_token,
                                         sorted_weight, offsets, a, z, ctx.activation,
                                         ctx.deterministic)
    return dx, dw_in, dw_out, None, dsw, None, None, None, None


_mlp_op.register_autograd(_mlp_backward, setup_context=_mlp_setup)


def expert_mlp(x: Tensor, w_in: Tensor, w_out: Tensor, sorted_token: Tensor,
               sorted_weight: Tensor, expert_offsets: Tensor, activation: str) -> Tensor:
    """Grouped expert MLP with gate-weighted combine; see :func:`mmoe.kernels.reference.expert_mlp`.

    Under :func:`torch.use_deterministic_algorithms` the combine (forward and backward) adds in
    a fixed order instead of with atomics, so results are bitwise reproducible run to run.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation: expected 'swiglu' or 'gelu', got {activation!r}")
    if x.dim() != 2 or w_in.dim() != 3 or w_out.dim() != 3:
        raise ValueError(f"x/w_in/w_out: expected [T, dim], [E, dim, N], [E, H, dim]; got "
                         f"{tuple(x.shape)}, {tuple(w_in.shape)}, {tuple(w_out.shape)}")
    E, D, N1 = w_in.shape
    H = w_out.shape[1]
    if x.shape[1] != D or w_out.shape != (E, H, D) or N1 != (2 * H if activation == "swiglu" else H):
        raise ValueError(f"w_in/w_out: shapes {tuple(w_in.shape)}, {tuple(w_out.shape)} do not fit "
                         f"x {tuple(x.shape)} and activation {activation!r}")
    if not (x.dtype == w_in.dtype == w_out.dtype):
        raise TypeError(f"x/w_in/w_out: expected one dtype, got {x.dtype}, {w_in.dtype}, {w_out.dtype}")
    if expert_offsets.numel() != E + 1:
        raise ValueError(f"expert_offsets: expected {E + 1} elements, got {expert_offsets.numel()}")
    save = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, w_in, w_out, sorted_weight))
    y, _, _ = _mlp_op(x, w_in, w_out, sorted_token.contiguous(), sorted_weight.contiguous(),
                      expert_offsets.contiguous(), activation, save,
                      torch.are_deterministic_algorithms_enabled())
    return y
