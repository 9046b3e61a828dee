"""Benchmark of the MoE kernels: triton backend vs torch backend vs a naive per-expert loop.

GPU (default): CUDA events, median of many runs after warm-up, CUDA-graph replay for small
token counts, fresh random (never zero) data. Prints forward and forward+backward time,
TFLOP/s and GB/s for a Mixtral-like shape (E=8, dim=4096, hidden=14336, k=2, SwiGLU) and a
fine-grained shape (E=128, dim=2048, hidden=768, k=8), a dense bf16 GEMM with the same FLOPs
as the ceiling, routing+dispatch metadata time, and the measured device copy bandwidth.
``triton-det`` is the triton backend under ``torch.use_deterministic_algorithms(True)``
(fixed-order combine, no floating-point atomics); in the routing table ``tr-tsort`` is the
triton dispatch with its ``torch.sort`` fallback instead of the sorted chunks.

``--cpu``: tiny shapes under ``TRITON_INTERPRET=1``, a few iterations (a CI smoke test).
``--tune``: after the default-config table, tune (``MMOE_TRITON_TUNE``) and time again.
``--profile``: per-kernel CUDA times (routing+dispatch, and forward+backward of the largest shapes).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if "--cpu" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mmoe.kernels import reference  # noqa: E402

if not hasattr(F, "grouped_mm") and hasattr(torch, "_grouped_mm"):
    F.grouped_mm = torch._grouped_mm  # older torch: the reference backend needs this name
from mmoe.kernels import triton_backend as tb  # noqa: E402
from mmoe.kernels import triton_dispatch  # noqa: E402
from mmoe.kernels import triton_tuning  # noqa: E402

CUDA = torch.cuda.is_available() and "--cpu" not in sys.argv
DEV = "cuda" if CUDA else "cpu"


def bench(fn, iters: int, warmup: int = 3, graph: bool = False) -> float:
    """Median seconds per call."""
    if not CUDA:
        fn()
        ts = []
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return sorted(ts)[len(ts) // 2]
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    if graph:
        try:
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                fn()
                with torch.cuda.graph(g):
                    fn()
            torch.cuda.current_stream().wait_stream(s)
            g.replay()
            fn = g.replay
        except Exception as exc:  # not capturable: time eagerly, say so
            print(f"  (graph capture failed, eager timing: {type(exc).__name__}: {exc})"[:200])
            torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return sorted(ts)[len(ts) // 2]


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second."""
    n = 1 << 28 if CUDA else 1 << 16
    a = torch.randn(n, device=DEV)
    b = torch.empty_like(a)
    t = bench(lambda: b.copy_(a), 20)
    return 2 * a.numel() * a.element_size() / t


def make_problem(T, D, H, E, k, dtype, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(T, D, device=DEV, dtype=dtype, generator=g)
    w_in = (torch.randn(E, D, 2 * H, device=DEV, dtype=dtype, generator=g) / D**0.5)
    w_out = (torch.randn(E, H, D, device=DEV, dtype=dtype, generator=g) / H**0.5)
    logits = torch.randn(T, E, device=DEV, generator=g)
    r = reference.topk_routing(logits, k)
    pw = r.weights.reshape(-1)
    d = reference.dispatch_metadata(r.experts.reshape(-1), pw, E, None)
    return x, w_in, w_out, d.sorted_pair // k, pw[d.sorted_pair].contiguous(), d.expert_offsets


def deterministic(fn, *args):
    """``fn(*args)`` under ``torch.use_deterministic_algorithms(True)`` (fixed-order combine)."""
    torch.use_deterministic_algorithms(True)
    try:
        return fn(*args)
    finally:
        torch.use_deterministic_algorithms(False)


def naive_mlp(x, w_in, w_out, tok, sw, offs, act):
    """Per-expert Python loop (host sync on the offsets): the baseline."""
    y = torch.zeros_like(x)
    o = offs.tolist()
    for e in range(w_in.shape[0]):
        if o[e + 1] > o[e]:
            t = tok[o[e]:o[e + 1]]
            h = reference.activate(x[t] @ w_in[e], act)
            y.index_add_(0, t, (h @ w_out[e]) * sw[o[e]:o[e + 1], None].to(x.dtype))
    return y


def mlp_rows(name, T, D, H, E, k, dtype, iters, bw, only=None, backward=True):
    x, w_in, w_out, tok, sw, offs = make_problem(T, D, H, E, k, dtype)
    P = T * k
    flops = 2 * P * D * 3 * H
    active = int((offs.diff() > 0).sum())
    nbytes = active * 3 * D * H * x.element_size() + 2 * T * D * x.element_size()
    small = T <= 128
    impls = {
        "triton": lambda *a: tb.expert_mlp(*a, "swiglu"),
        "triton-det": lambda *a: deterministic(tb.expert_mlp, *a, "swiglu"),
        "torch": lambda *a: reference.expert_mlp(*a, "swiglu"),
        "naive-loop": lambda *a: naive_mlp(*a, "swiglu"),
    }
    rows = []
    for impl, f in impls.items():
        if only and impl not in only:
            continue
        args = (x, w_in, w_out, tok, sw, offs)
        with torch.no_grad():
            t_f = bench(lambda: f(*args), iters, graph=small and CUDA and impl != "naive-loop")
        leaves = [t.detach().requires_grad_() for t in (x, w_in, w_out, sw)]
        dy = torch.randn_like(x)

        def fb():
            y = f(leaves[0], leaves[1], leaves[2], tok, leaves[3], offs)
            torch.autograd.grad(y, leaves, dy)

        t_b = bench(fb, max(3, iters // 2)) if backward else float("nan")
        rows.append((name, T, impl, t_f * 1e6, flops / t_f / 1e12, nbytes / t_f / 1e9,
                     100 * nbytes / t_f / bw, t_b * 1e6, 3 * flops / t_b / 1e12))
        del leaves
    if only:
        return rows
    # dense GEMM ceiling, same FLOPs: [P, D] @ [D, 3H]
    a = torch.randn(P, D, device=DEV, dtype=dtype)
    b = torch.randn(D, 3 * H, device=DEV, dtype=dtype)
    t_d = bench(lambda: a @ b, iters)
    rows.append((name, T, "dense-gemm", t_d * 1e6, flops / t_d / 1e12, float("nan"),
                 float("nan"), 3 * t_d * 1e6, flops / t_d / 1e12))
    return rows


def routing_rows(T, iters, chunks=()):
    """tr-tsort: the triton dispatch's fallback (keys + torch.sort) instead of sorted chunks;
    tr-ch<N>: the chunked dispatch with CHUNK = N (``--chunks``)."""
    impls = [("triton", tb, {}), ("tr-tsort", tb, {"PACKED_KEY_BITS": 0})]
    impls += [(f"tr-ch{c}", tb, {"CHUNK": c}) for c in chunks]
    impls.append(("torch", reference, {}))
    rows = []
    for E, k in ((8, 2), (64, 6), (256, 8)):
        logits = torch.randn(T, E, device=DEV)
        for impl, ops, setting in impls:
            def f():
                r = ops.topk_routing(logits, k)
                ops.dispatch_metadata(r.experts.reshape(-1), r.weights.reshape(-1), E,
                                      int(1.25 * T * k / E))
            saved = {name: getattr(triton_dispatch, name) for name in setting}
            for name, value in setting.items():
                setattr(triton_dispatch, name, value)
            try:
                t_e = bench(f, iters)
                t_g = bench(f, iters, graph=CUDA)
            finally:
                for name, value in saved.items():
                    setattr(triton_dispatch, name, value)
            rows.append((T, E, k, impl, t_e * 1e6, t_g * 1e6))
    return rows


def profile_table(title: str, fn) -> None:
    """Print the CUDA time per kernel of one call of ``fn`` (after one warm-up call)."""
    from torch.profiler import ProfilerActivity, profile as prof

    fn()
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        fn()
        torch.cuda.synchronize()
    print(f"profile {title}")
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=40))


def profile(shapes, dtype) -> None:
    """CUDA time per kernel: triton forward+backward of each shape, routing+dispatch."""
    for E, k in ((8, 2), (256, 8)):
        logits = torch.randn(4096, E, device=DEV)

        def rd(logits=logits, E=E, k=k):
            r = tb.topk_routing(logits, k)
            tb.dispatch_metadata(r.experts.reshape(-1), r.weights.reshape(-1), E,
                                 int(1.25 * 4096 * k / E))

        profile_table(f"routing+dispatch T=4096 E={E} k={k}", rd)
    for name, T, D, H, E, k in shapes:
        x, w_in, w_out, tok, sw, offs = make_problem(T, D, H, E, k, dtype)
        leaves = [t.detach().requires_grad_() for t in (x, w_in, w_out, sw)]
        dy = torch.randn_like(x)

        def fb():
            y = tb.expert_mlp(leaves[0], leaves[1], leaves[2], tok, leaves[3], offs, "swiglu")
            torch.autograd.grad(y, leaves, dy)

        profile_table(f"{name} T={T} forward+backward", fb)
        profile_table(f"{name} T={T} forward+backward, deterministic",
                      lambda: deterministic(fb))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="tiny interpreted smoke run")
    ap.add_argument("--tune", action="store_true", help="also time with tuned configs")
    ap.add_argument("--skip-main", action="store_true", help="only the --tune/--profile parts")
    ap.add_argument("--profile", action="store_true", help="per-kernel times of triton fwd+bwd")
    ap.add_argument("--chunks", default="", help="also time the dispatch with these CHUNK "
                    "sizes (powers of two, comma-separated), e.g. 512,1024,4096")
    args = ap.parse_args()
    chunks = [int(c) for c in args.chunks.split(",") if c.strip()]
    if any(c < 2 or c & (c - 1) for c in chunks):
        ap.error(f"--chunks: expected powers of two >= 2, got {args.chunks!r}")
    torch.manual_seed(0)
    if CUDA:
        dtype, iters = torch.bfloat16, 30
        shapes = [("mixtral", T, 4096, 14336, 8, 2) for T in (1, 16, 128, 1024, 4096)]
        shapes.append(("fine-grained", 32768, 2048, 768, 128, 8))
        print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
              f"date {time.strftime('%Y-%m-%d %H:%M')}")
    else:
        dtype, iters = torch.float32, 2
        shapes = [("tiny", T, 48, 40, 4, 2) for T in (1, 16)] + [("tiny-fg", 64, 32, 24, 8, 4)]
        print("device: CPU (TRITON_INTERPRET=1), tiny shapes, fp32")
    if args.profile and CUDA:
        profile(shapes[-2:], dtype)
    bw = copy_bandwidth()
    print(f"device copy bandwidth: {bw / 1e9:.0f} GB/s (read+write)")
    hdr = (f"{'shape':<13}{'T':>6} {'impl':<11}{'fwd us':>10}{'TFLOP/s':>9}{'GB/s':>8}"
           f"{'%copyBW':>8}{'f+b us':>11}{'TFLOP/s':>9}")
    print(hdr)
    results = {}
    for s in ([] if args.skip_main else shapes):
        for r in mlp_rows(*s, dtype, iters, bw):
            results[(r[0], r[1], r[2])] = r
            print(f"{r[0]:<13}{r[1]:>6} {r[2]:<11}{r[3]:>10.1f}{r[4]:>9.1f}{r[5]:>8.0f}"
                  f"{r[6]:>8.1f}{r[7]:>11.1f}{r[8]:>9.1f}", flush=True)
    print(f"\n{'routing+dispatch':<17}{'T':>6}{'E':>5}{'k':>3} {'impl':<8}{'eager us':>10}"
          f"{'graph us':>10}")
    for r in ([] if args.skip_main else routing_rows(4096 if CUDA else 64, iters, chunks)):
        print(f"{'':<17}{r[0]:>6}{r[1]:>5}{r[2]:>3} {r[3]:<8}{r[4]:>10.1f}{r[5]:>10.1f}", flush=True)
    if args.tune and CUDA:
        triton_tuning.set_tuning(True)
        print("\ntuned vs default config (triton, bf16)")
        print(f"{'shape':<13}{'T':>6} {'default fwd us':>15}{'tuned fwd us':>14}{'default f+b':>12}"
              f"{'tuned f+b':>11}")
        for s in shapes:
            r = [x for x in mlp_rows(*s, dtype, iters, bw, ("triton",),
                                         backward=s[1] >= 1024)][0]
            d = results.get((s[0], s[1], "triton"), (float("nan"),) * 9)
            print(f"{s[0]:<13}{s[1]:>6} {d[3]:>15.1f}{r[3]:>14.1f}{d[7]:>12.1f}{r[7]:>11.1f}",
                  flush=True)
        for key, cfg in triton_tuning.tuned_configs().items():
            print("tuned", key, cfg)


if __name__ == "__main__":
    main()
