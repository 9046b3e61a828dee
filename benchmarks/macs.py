"""MACS measured: emotion-model inference under binding expert capacity, static vs MACS.

    python benchmarks/macs.py                                    # the released emotion-mister-e model
    python benchmarks/macs.py --model runs/bench_emotion/mister_e/version_0/checkpoints/best.ckpt
    python benchmarks/macs.py --smoke                            # tiny random model, 3 conversations (CI)

The trained model (trained dropless) runs over the test split of its config's embedded data
with every MoE layer set to ``capacity_factor = cf`` and ``capacity_mode`` static (overflow
dropped by lowest gate weight) or MACS (capacity shared by the live modality mix, weighted by
token value), for each cf of ``--factors``, and dropless. Per setting: weighted F1, its
retention vs dropless, expert demand max/mean (pairs routed to the busiest expert over the mean,
per layer and batch, averaged), the share of speech and text pairs dropped, and throughput
(utterances/s on this machine, one process). Then, per mode, the smallest cf in the grid at
which weighted F1 keeps >= ``--retention`` of dropless, and the static/MACS ratio of those cf.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml
from torchmetrics.functional.classification import multiclass_f1_score

import mmoe
from mmoe.settings import MoESettings
from mmoe.datamodules import EmotionDataModule
from mmoe.moe_layer import MoELayer, collect_moe

ROOT = Path(__file__).resolve().parents[1]


def set_capacity(model: torch.nn.Module, factor: float | None, mode: str) -> None:
    for m in model.modules():
        if isinstance(m, MoELayer):
            m.capacity_factor, m.capacity_mode = factor, mode


@torch.no_grad()
def run_setting(model, batches: list[dict], num_classes: int, modalities: list[str]) -> dict:
    preds, labels = [], []
    dropped = torch.zeros(len(modalities))
    pairs = torch.zeros(len(modalities))
    imbalance = []
    start = time.perf_counter()
    for batch in batches:
        out = model(batch)
        preds.append(out["logits"].argmax(-1))
        labels.append(batch["labels"][batch["utterance_index"] >= 0])
        for s in collect_moe(model).stats.values():
            drop = s.dropped_per_modality.float().cpu()
            dropped += drop
            pairs += s.tokens_per_expert_per_modality.float().sum(1).cpu() + drop  # kept + dropped pairs
            demand = s.routed_per_expert.float()
            imbalance.append(float(demand.max() / demand.mean().clamp_min(1e-9)))
    seconds = time.perf_counter() - start
    p, y = torch.cat(preds), torch.cat(labels)
    return {"weighted_f1": float(multiclass_f1_score(p, y, num_classes, average="weighted")),
            "max_over_mean_load": sum(imbalance) / max(1, len(imbalance)),
            **{f"dropped_{m}": float(dropped[i] / pairs[i].clamp_min(1)) for i, m in enumerate(modalities)},
            "utterances_per_s": y.numel() / seconds}


def smallest_retaining(rows: dict, mode: str, floor: float) -> float | None:
    """Smallest cf such that it and every larger cf in the grid keep ``floor`` weighted F1."""
    best = None
    for cf in sorted((cf for (m, cf) in rows if m == mode), reverse=True):
        if rows[(mode, cf)]["weighted_f1"] < floor:
            break
        best = cf
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="emotion-mister-e", help="zoo name, .safetensors or .ckpt path")
    parser.add_argument("--config", default="configs/emotion/mister_e.yaml", help="config whose data to use")
    parser.add_argument("--factors", nargs="+", type=float, default=[2.0, 1.5, 1.25, 1.0, 0.75, 0.5, 0.35, 0.25])
    parser.add_argument("--retention", type=float, default=0.99)
    parser.add_argument("--smoke", action="store_true", help="tiny random model and data (a CI check of the script)")
    parser.add_argument("--out", default="runs/bench_macs/results.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.smoke:
        from mmoe.tasks import EmotionTask

        model = EmotionTask(dim=16, depth=1, fusion_depth=1, num_heads=2, hidden_dim=16,
                            moe=MoESettings(num_experts=4), n_mels=16)
        data_args = {"num_conversations": 3, "val_fraction": 0.0, "test_fraction": 0.5, "batch_size": 2}
        args.factors, args.model = [1.0, 0.5], "random init (smoke)"
    else:
        model = mmoe.load(args.model)
        data_args = yaml.safe_load((ROOT / args.config).read_text())["data"]["init_args"]
    model.eval()
    dm = EmotionDataModule(**data_args)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    modalities = list(model.model.modalities)
    run_setting(model, batches[:2], dm.num_classes, modalities)  # warm-up, untimed
    rows: dict[tuple[str, float | None], dict] = {("dropless", None): run_setting(model, batches, dm.num_classes, modalities)}
    for cf in args.factors:
        for mode in ("static", "macs"):
            set_capacity(model, cf, mode)
            rows[(mode, cf)] = run_setting(model, batches, dm.num_classes, modalities)
    set_capacity(model, None, "macs")
    base = rows[("dropless", None)]["weighted_f1"]
    floor = args.retention * base
    print(f"\n# MACS vs static capacity, emotion model {args.model!r}, test split "
          f"({sum(int((b['utterance_index'] >= 0).sum()) for b in batches)} utterances, batches of "
          f"{data_args.get('batch_size', 16)} conversations)")
    print("| capacity | cf | weighted F1 | retention | max/mean demand | " +
          " | ".join(f"dropped {m}" for m in modalities) + " | utterances/s |")
    print("|---|---|---|---|---|" + "---|" * len(modalities) + "---|")
    for (mode, cf), r in rows.items():
        drops = " | ".join(f"{100 * r[f'dropped_{m}']:.1f}%" for m in modalities)
        print(f"| {mode} | {'-' if cf is None else cf} | {r['weighted_f1']:.4f} | {r['weighted_f1'] / base:.4f} | "
              f"{r['max_over_mean_load']:.2f} | {drops} | {r['utterances_per_s']:.0f} |")
    s_cf, m_cf = smallest_retaining(rows, "static", floor), smallest_retaining(rows, "macs", floor)
    ratio = (s_cf / m_cf) if (s_cf and m_cf) else None
    print(f"\nsmallest cf keeping >= {args.retention:.0%} of dropless weighted F1 ({floor:.4f}): "
          f"static {s_cf}, MACS {m_cf}; static/MACS = {'n/a' if ratio is None else f'{ratio:.2f}'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "rows": [{"mode": m, "cf": cf, **r} for (m, cf), r in rows.items()],
                               "smallest_cf": {"static": s_cf, "macs": m_cf}, "ratio": ratio}, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
