"""MoE hot-path ops: the torch reference and the Triton kernels that match it.

:func:`backend_ops` returns the module whose ``topk_routing``, ``dispatch_metadata`` and
``expert_mlp`` a :class:`mmoe.MoELayer` calls; both backends share the signatures of
:mod:`mmoe.kernels.reference`. The ``torch`` backend is :mod:`mmoe.kernels.cpu_dispatch` (the reference's
results, computed faster on CPU); the reference itself stays what the Triton kernels match.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from mmoe.kernels import cpu_dispatch, reference  # noqa: F401  (reference re-exported: the contract the backends match)

BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    """True when Triton imports and can run here (a CUDA GPU, or ``TRITON_INTERPRET=1``)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def backend_ops(backend: str, device: torch.device) -> ModuleType:
    """Module of ops for ``backend`` on ``device``: ``auto`` is triton on CUDA, torch elsewhere."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "torch":
        # the reference's routing with the faster dispatch and (on CPU) expert MLP; same results
        return cpu_dispatch
    if not triton_available():
        raise ValueError(
            "backend: 'triton' needs the triton package and a CUDA device or TRITON_INTERPRET=1"
        )
    from mmoe.kernels import triton_backend

    return triton_backend
