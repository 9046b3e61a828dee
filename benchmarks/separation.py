"""Speech separation benchmark on the embedded 8 kHz eSpeak NG test split (held-out sentences and voices).

    python benchmarks/separation.py --moe runs/bench_separation/tfmoe_8k/version_0/checkpoints/best.ckpt \\
        --dense runs/bench_separation/dense_8k/version_0/checkpoints/best.ckpt --moe_train_s 1150 --dense_train_s 1100
    python benchmarks/separation.py --smoke          # tiny random models, 4 test mixtures (CI)

Rows: the unprocessed mixture (floor, 0 dB by definition), the oracle ideal ratio mask (magnitude
IRM |S_i| / sum_j |S_j| on the model's STFT: the upper bound of a real-valued mask), the MoE model and
the dense baseline with the same active compute. Columns: SI-SNRi and SDRi (dB, best permutation,
whole test mixtures), parameters (total and active per token), multiply-accumulates per second of
8 kHz audio (counted with ``torch.utils.flop_counter.FlopCounterMode`` on a 4 s input: matmuls,
attention and the experts' grouped GEMMs actually run, i.e. active compute, plus the LSTMs counted
from their shapes; STFT/iSTFT and element-wise ops not counted), and the real-time factor of predict on this machine's CPU threads
(a 60 s mixture, chunked as predict does; RTF = compute seconds / audio seconds).
"""

from __future__ import annotations

import argparse
import sys
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import mmoe
from mmoe.settings import MoESettings
from mmoe.datamodules.separation.datamodule import SeparationDataModule
from mmoe.moe_layer import MoELayer
from mmoe.tasks.separation.metrics import SDRi, SISNRi
from mmoe.tasks.separation.task import SeparationTask

if __name__ == "__main__" and not __package__:  # run as a file (python benchmarks/separation.py): siblings import
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # as the benchmarks package, like `python -m benchmarks.separation`

ROOT = Path(__file__).resolve().parents[1]


def load(path: str) -> SeparationTask:
    return mmoe.load(path).float().eval()


def evaluate(separate, dm: SeparationDataModule, limit: int | None) -> dict[str, float]:
    si, sd = SISNRi(), SDRi()
    for i, batch in enumerate(dm.test_dataloader()):
        if limit is not None and i >= limit:
            break
        est = separate(batch["mixture"], batch["sources"])
        si.update(est, batch["sources"], batch["mixture"])
        sd.update(est, batch["sources"], batch["mixture"])
    return {"si_snri": float(si.compute()), "sdri": float(sd.compute())}


def oracle_irm(n_fft: int, hop: int):
    window = torch.hann_window(n_fft)

    def separate(mix: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        spec = lambda x: torch.stft(x, n_fft, hop, window=window, return_complex=True)  # noqa: E731
        S = torch.stack([spec(s) for s in sources.unbind(1)], 1)  # [B, S, F, T]
        mask = S.abs() / S.abs().sum(1, keepdim=True).clamp_min(1e-8)
        est = mask * spec(mix)[:, None]
        B, N = est.shape[:2]
        return torch.istft(est.flatten(0, 1), n_fft, hop, window=window, length=mix.shape[-1]).view(B, N, -1)

    return separate


def count_params(task: SeparationTask) -> tuple[int, int]:
    """``(total, active per token)``: an MoE layer's inactive experts are ``E - k`` of its routed experts."""
    total = sum(p.numel() for p in task.model.parameters())
    inactive = 0
    for m in task.model.modules():
        if isinstance(m, MoELayer):
            per_expert = sum(p.numel() for p in m.experts.parameters()) // m.num_experts
            inactive += (m.num_experts - m.top_k) * per_expert
    return total, total - inactive


def lstm_macs(lstm: torch.nn.LSTM, sequences: int, steps: int) -> int:
    """Multiply-accumulates of ``lstm`` over ``sequences`` x ``steps``: 4 gates x hidden x (input + hidden) per
    direction and layer and step (FlopCounterMode does not see the fused CPU LSTM kernels)."""
    dirs = 2 if lstm.bidirectional else 1
    total, width = 0, lstm.input_size
    for _ in range(lstm.num_layers):
        total += dirs * 4 * lstm.hidden_size * (width + lstm.hidden_size)
        width = dirs * lstm.hidden_size
    return total * sequences * steps


def macs_per_second(model: torch.nn.Module, rate: int, seconds: float = 4.0) -> float:
    """Counted multiply-accumulates per second of audio of ``model [B, L] -> [B, S, L]``: FlopCounterMode
    flops / 2, plus the LSTMs counted from their shapes and the experts' GEMMs from the routed pairs
    where the counter does not list them."""
    x = torch.randn(1, int(seconds * rate)) * 0.05
    lstm_total = []

    def hook(module: torch.nn.LSTM, args: tuple, output: tuple) -> None:
        seq = args[0]  # batch_first [N, T, input]
        lstm_total.append(lstm_macs(module, seq.shape[0], seq.shape[1]))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.LSTM)]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
    counts = counter.get_flop_counts()["Global"]
    flops = sum(counts.values())
    if not any("grouped_mm" in str(op) for op in counts):
        # the experts' grouped GEMMs are not in FlopCounterMode's table: count the pairs actually routed
        for m in model.modules():
            if isinstance(m, MoELayer) and m.last_assignment is not None:
                pairs = int((m.last_assignment[1] < m.num_experts).sum())
                flops += 2 * pairs * (m.experts.w_in.shape[1] * m.experts.w_in.shape[2]
                                      + m.experts.w_out.shape[1] * m.experts.w_out.shape[2])
    if any("lstm" in str(op) for op in counts):
        raise RuntimeError("FlopCounterMode now counts LSTMs itself: drop the shape-based LSTM count")
    return (flops / 2 + sum(lstm_total)) / seconds


def real_time_factor(separate, rate: int, seconds: float = 60.0, repeats: int = 2) -> float:
    """Compute seconds per audio second of ``separate(audio [samples] float32 numpy)`` (best of ``repeats``)."""
    x = (0.05 * np.random.default_rng(0).standard_normal(int(seconds * rate))).astype(np.float32)
    separate(x[: rate])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        separate(x)
        best = min(best, time.perf_counter() - t)
    return best / seconds


def release(args: argparse.Namespace) -> None:
    """Export, load the exported file with ``mmoe.load`` and measure it; the manifest row carries those numbers."""
    import yaml

    from mmoe.zoo_cli import export_checkpoint

    config_rel = "separation/tfmoe_8k.yaml"
    cfg = yaml.safe_load((ROOT / "configs" / config_rel).read_text())
    steps = int(torch.load(args.moe, map_location="cpu", weights_only=True)["global_step"])
    train = "" if args.moe_train_s is None else f" ({args.moe_train_s:.0f} s on 2 CPU cores)"
    training = (f"embedded eSpeak NG two-speaker mixtures, SeparationDataModule "
                f"{json.dumps(cfg['data']['init_args'], sort_keys=True)}; recipe of {cfg['trainer']['max_steps']} "
                f"steps{train}, best validation checkpoint at step {steps}, seed {cfg['seed_everything']}")
    common = dict(ckpt=Path(args.moe), name=args.release, config=config_rel, task="separation",
                  training_data=training, out_dir=Path(args.release_dir), dtype="float16",
                  description="two-speaker speech separation at 8 kHz (band-split time/band-alternating MoE, "
                              "after TF-MoE), weights stored as float16")
    row = export_checkpoint(metrics={}, **common)
    model = mmoe.load(str(Path(args.release_dir) / row["file"])).float().eval()
    dm = SeparationDataModule(test_mixtures=args.test_mixtures)
    dm.setup("test")
    with torch.no_grad():
        metrics = evaluate(lambda mix, src: model({"mixture": mix})["sources"], dm, args.limit)
    row = export_checkpoint(metrics={"test_si_snri_db": round(metrics["si_snri"], 3),
                                     "test_sdri_db": round(metrics["sdri"], 3)}, **common)
    print(json.dumps(row, indent=2))


def blstm_row(seconds: float, dm: SeparationDataModule, limit: int | None, rtf_seconds: float) -> dict:
    """The uPIT BLSTM peer (benchmarks/separation_blstm.py) trained for ``seconds``, measured like the others."""
    from benchmarks.separation_blstm import train_blstm

    start = time.perf_counter()
    peer, steps = train_blstm(seconds)
    train_s = time.perf_counter() - start
    with torch.no_grad():
        quality = evaluate(lambda mix, src: peer(mix), dm, limit)

        def separate(audio: np.ndarray) -> torch.Tensor:
            return peer(torch.from_numpy(audio)[None])
        rtf = real_time_factor(separate, 8000, rtf_seconds)
    total = sum(p.numel() for p in peer.parameters())
    return {"method": f"peer: uPIT BLSTM ({steps} steps)", **quality, "params": total, "active_params": total,
            "mac_per_s": macs_per_second(peer, 8000), "rtf": rtf, "train_s": train_s}


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moe", help="MoE checkpoint (.ckpt) or zoo file/name")
    parser.add_argument("--dense", help="dense baseline checkpoint (.ckpt) or zoo file/name")
    parser.add_argument("--moe_train_s", type=float, default=None, help="measured fit wall time of the MoE recipe")
    parser.add_argument("--dense_train_s", type=float, default=None, help="measured fit wall time of the dense recipe")
    parser.add_argument("--test_mixtures", type=int, default=100)
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N test mixtures")
    parser.add_argument("--peer_seconds", type=float, default=None,
                        help="also train the uPIT BLSTM peer (benchmarks/separation_blstm.py) for this wall time")
    parser.add_argument("--smoke", action="store_true", help="tiny random models and 4 mixtures")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--release", default=None, help="export the --moe checkpoint as this zoo name (float16) into "
                        "--release_dir, evaluate the exported file and write its metrics into that manifest row")
    parser.add_argument("--release_dir", default="runs/bench_separation/release")
    args = parser.parse_args()
    if args.release:
        release(args)
        return
    torch.manual_seed(0)
    if args.smoke:
        tiny = dict(n_fft=64, hop=16, dim=16, depth=1, num_heads=2, hidden_dim=16,
                    moe=MoESettings(num_experts=4, top_k=2), mask_hidden=16)
        models = {"MoE (random)": SeparationTask(**tiny).eval(), "dense (random)": SeparationTask(**(tiny | {"moe": tiny["moe"].replace(dense=True)})).eval()}
        dm = SeparationDataModule(test_mixtures=4, train_utterances=8, progress=False)
        limit, rtf_seconds = 4, 4.0
    else:
        models = {}
        if args.moe:
            models["MoE (tfmoe_8k)"] = load(args.moe)
        if args.dense:
            models["dense (dense_8k)"] = load(args.dense)
        dm = SeparationDataModule(test_mixtures=args.test_mixtures)
        limit, rtf_seconds = args.limit, 60.0
    dm.setup("test")
    first = next(iter(models.values()), None)
    n_fft, hop = (first.hparams.n_fft, first.hparams.hop) if first is not None else (256, 64)
    rows = [{"method": "mixture (floor)", "si_snri": 0.0, "sdri": 0.0},
            {"method": f"oracle IRM (n_fft {n_fft}, hop {hop})", **evaluate(oracle_irm(n_fft, hop), dm, limit)}]
    for name, task in models.items():
        with torch.no_grad():
            quality = evaluate(lambda mix, src: task({"mixture": mix})["sources"], dm, limit)
        total, active = count_params(task)
        train_s = args.moe_train_s if name.startswith("MoE") else args.dense_train_s
        rate = task.pre.sample_rate
        rows.append({"method": name, **quality, "params": total, "active_params": active,
                     "mac_per_s": macs_per_second(task.model, rate),
                     "rtf": real_time_factor(lambda a: task.predict(a, sample_rate=rate), rate, rtf_seconds),
                     "train_s": train_s})
    if args.peer_seconds:
        rows.append(blstm_row(args.peer_seconds, dm, limit, rtf_seconds))
    print(f"embedded eSpeak NG 8 kHz test split: {len(dm.test_set) if limit is None else limit} two-speaker mixtures "
          f"(-5..5 dB, min mode), torch threads {torch.get_num_threads()}")
    print("| method | SI-SNRi (dB) | SDRi (dB) | params (active) | MAC/s of audio | RTF (x real time) | train |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        extra = "| - | - | - | - |"
        if "params" in r:
            extra = (f"| {r['params'] / 1e3:.0f}k ({r['active_params'] / 1e3:.0f}k) | {r['mac_per_s'] / 1e6:.1f}M "
                     f"| {r['rtf']:.4f} ({1 / r['rtf']:.0f}x) | "
                     f"{_seconds(r['train_s'])} |")
        print(f"| {r['method']} | {r['si_snri']:.2f} | {r['sdri']:.2f} {extra}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
