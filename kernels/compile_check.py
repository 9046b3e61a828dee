"""Compile every Triton kernel of the backend for a GPU target, with no GPU present.

The CPU interpreter (``TRITON_INTERPRET=1``) accepts code that the real compiler rejects, so
this builds each kernel ahead of time for ``sm_<arch>`` (default 90, the H100) in the
configurations the launchers use (default tile configs of the benchmark shapes, every
constexpr variant), and reports shared memory plus the registers and spills that ``ptxas -v``
gives. Run it without ``TRITON_INTERPRET``::

    python -m mmoe.kernels.compile_check [--arch 90]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mmoe.kernels import triton_dispatch, triton_expert_mlp, triton_routing, triton_tuning

_PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16",
        torch.int64: "*i64", torch.int32: "*i32", torch.bool: "*i1"}
# H100: 227 KiB of shared memory per block (opt-in maximum)
SMEM_LIMIT = 227 * 1024


def _source(fn, ptrs: dict[str, torch.dtype], ints: dict[str, int],
            constexprs: dict[str, Any]) -> ASTSource:
    """The kernel specialised as a launch specialises it: pointers 16-byte aligned, integers
    equal to 1 turned into constants, integers divisible by 16 marked so (``ints`` gives the
    values the benchmark shapes have; other integers get no hint)."""
    sig, consts, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ptrs:
            sig[name] = _PTR[ptrs[name]]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif ints.get(name) == 1:
            sig[name], consts[name] = "constexpr", 1
        else:
            sig[name] = "i32"
            if name in ints and ints[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(fn, sig, constexprs=consts, attrs=attrs)


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill bytes) that ptxas reports for the kernel in ``ptx``."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        suffix = "a" if arch >= 90 else ""
        r = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}{suffix}", src,
                            "-o", os.path.join(d, "k.cubin")], capture_output=True, text=True)
    info = r.stdout + r.stderr
    regs = re.search(r"Used (\d+) registers", info)
    spills = re.findall(r"(\d+) bytes spill stores", info)
    return (int(regs.group(1)) if regs else -1, sum(int(s) for s in spills))


def variants() -> list[tuple[str, Any, dict, dict, dict, int, int]]:
    """(label, kernel, pointer dtypes, integer values, constexprs, num_warps, num_stages)."""
    out = []
    for E, k, one in ((8, 2, False), (8, 2, True), (256, 8, False)):
        EB = max(16, triton.next_power_of_2(E))
        out.append((f"topk E={E} k={k} one_program={one}", triton_routing._topk_kernel,
                    dict(logit_ptr=torch.float32, bias_ptr=torch.float32, w_ptr=torch.float32,
                         idx_ptr=torch.int64, score_ptr=torch.float32, count_ptr=torch.int64),
                    dict(slt=E, sle=1),
                    dict(K=k, KB=max(2, triton.next_power_of_2(k)), SIGMOID=False, HAS_BIAS=True,
                         RENORM=False, BT=max(1, min(64, 4096 // EB)), EB=EB,
                         HB=max(16, triton.next_power_of_2(E + 1)), ONE_PROGRAM=one),
                    4 if EB <= 128 else 8, 3))
    HB = 512  # E = 256
    disp = dict(expert_ptr=torch.int64, prio_ptr=torch.float32, skey_ptr=torch.int64,
                hist_ptr=torch.int32, sorted_ptr=torch.int64, offs_ptr=torch.int64,
                keep_ptr=torch.bool, pos_ptr=torch.int64)
    CH = 2048
    for single in (True, False):
        out.append((f"dispatch sort_chunks CH={CH} single={single}",
                    triton_dispatch._sort_chunks_kernel, disp, {},
                    dict(IB=15, CH=CH, HB=HB, SINGLE=single), 16, 3))
    out.append(("dispatch merge_place NC<=16", triton_dispatch._merge_place_kernel, disp, {},
                dict(IB=15, CH=CH, LOG_CH=11, NCB=16, HB=HB, BLOCK=256), 4, 3))
    out.append(("dispatch fallback keys", triton_dispatch._key_kernel,
                dict(expert_ptr=torch.int64, prio_ptr=torch.float32, key_ptr=torch.int64,
                     count_ptr=torch.int32), {}, dict(BLOCK=1024, HB=HB), 4, 3))
    out.append(("dispatch fallback place", triton_dispatch._place_kernel,
                dict(key_ptr=torch.int64, order_ptr=torch.int64, count_ptr=torch.int32,
                     sorted_ptr=torch.int64, offs_ptr=torch.int64, keep_ptr=torch.bool,
                     pos_ptr=torch.int64), {}, dict(BLOCK=1024, HB=HB), 4, 3))

    bf16 = torch.bfloat16
    shapes = {"mixtral T=16": (4, 14336, 4096), "mixtral T=4096": (1024, 14336, 4096),
              "fine-grained T=32768": (2048, 768, 2048)}  # rows per expert, H, D
    for label, (rpe, H, D) in shapes.items():
        cfg = triton_tuning.default_cfg("up", rpe, H, True)
        out.append((f"up fwd swiglu {label}", triton_expert_mlp._up_fwd_kernel,
                    dict(x_ptr=bf16, w_ptr=bf16, z_ptr=bf16, a_ptr=bf16, tok_ptr=torch.int64,
                         offs_ptr=torch.int64),
                    dict(K=D, H=H, sxt=D, sxk=1, swe=D * 2 * H, swk=2 * H, swn=1, szp=2 * H,
                         sap=H),
                    dict(SWIGLU=True, SAVE_Z=True, PREC="tf32", BM=cfg.BM, BN=cfg.BN, BK=cfg.BK,
                         EB=16, GROUP_M=8), cfg.warps, cfg.stages))
        for atomic in (True, False):
            cfg = triton_tuning.default_cfg("down", rpe, D, True)
            split = cfg.split_k if atomic else 1
            out.append((f"down atomic={atomic} {label}", triton_expert_mlp._scatter_kernel,
                        dict(a_ptr=bf16, w_ptr=bf16, out_ptr=torch.float32, tok_ptr=torch.int64,
                             scale_ptr=bf16, offs_ptr=torch.int64),
                        dict(K=H, N=D, sap=H, sak=1, swe=H * D, swk=D, swn=1, sot=D, son=1),
                        dict(HAS_SCALE=True, PREC="tf32", BM=cfg.BM, BN=cfg.BN, BK=cfg.BK,
                             EB=16, GROUP_M=8, SPLIT_K=split, ATOMIC=atomic),
                        cfg.warps, cfg.stages))
            cfg = triton_tuning.default_cfg("upbwd", rpe, H, True)
            out.append((f"up bwd atomic={atomic} {label}", triton_expert_mlp._up_bwd_kernel,
                        dict(dy_ptr=bf16, w_ptr=bf16, z_ptr=bf16, dz_ptr=bf16, sw_ptr=bf16,
                             dsw_ptr=torch.float32, tok_ptr=torch.int64, offs_ptr=torch.int64),
                        dict(K=D, H=H, syt=D, syk=1, swe=H * D, swk=1, swn=D, szp=2 * H),
                        dict(SWIGLU=True, PREC="tf32", BM=cfg.BM, BN=cfg.BN, BK=cfg.BK, EB=16,
                             GROUP_M=8, ATOMIC=atomic), cfg.warps, cfg.stages))
        cfg = triton_tuning.default_cfg("wgrad", rpe, 2 * H, True)
        for lg, rg, sc in ((True, False, False), (False, True, True)):
            # dW_in = x^T dz: [D, 2H]; dW_out = a^T (w dy): [H, D]
            kd, n = (D, 2 * H) if lg else (H, D)
            out.append((f"wgrad gather_l={lg} {label}", triton_expert_mlp._wgrad_kernel,
                        dict(l_ptr=bf16, r_ptr=bf16, dw_ptr=bf16, tok_ptr=torch.int64,
                             scale_ptr=bf16, offs_ptr=torch.int64),
                        dict(KD=kd, N=n, slp=kd, slk=1, srp=n, srn=1, sde=kd * n, sdk=n, sdn=1),
                        dict(L_GATHER=lg, R_GATHER=rg, HAS_SCALE=sc, PREC="tf32", BM=cfg.BM,
                             BN=cfg.BN, BK=cfg.BK, GROUP_M=8), cfg.warps, cfg.stages))
    out.append(("segment sum (deterministic combine)", triton_expert_mlp._segment_sum_kernel,
                dict(row_ptr=torch.float32, perm_ptr=torch.int64, start_ptr=torch.int64,
                     out_ptr=bf16), dict(N=4096, srp=4096, sot=4096), dict(BT=16, BN=128), 4, 3))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 or 80")
    ap.add_argument("--only", default="", help="compile only variants whose label contains this")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_check: unset TRITON_INTERPRET (the interpreter compiles nothing)")
        return 2
    target = GPUTarget("cuda", args.arch, 32)
    print(f"{'kernel variant':<46}{'smem KiB':>9}{'regs':>6}{'spill B':>8}{'compile s':>10}")
    failed = total = 0
    for label, fn, ptrs, ints, consts, warps, stages in variants():
        if args.only not in label:
            continue
        total += 1
        t0 = time.perf_counter()
        try:
            k = triton.compile(_source(fn, ptrs, ints, consts), target=target,
                               options=dict(num_warps=warps, num_stages=stages))
        except Exception as exc:  # report every failure, then fail the run
            failed += 1
            print(f"{label:<46} FAILED: {type(exc).__name__}: {str(exc)[-1500:]}")
            continue
        regs, spill = _ptxas_usage(k.asm["ptx"], args.arch)
        smem = k.metadata.shared
        flag = "" if smem <= SMEM_LIMIT else "  > shared memory limit"
        failed += smem > SMEM_LIMIT
        print(f"{label:<46}{smem / 1024:>9.1f}{regs:>6}{spill:>8}{time.perf_counter() - t0:>10.1f}"
              f"{flag}", flush=True)
    print(f"{total} variants compiled for sm_{args.arch}, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
