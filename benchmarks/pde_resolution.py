"""Zero-shot resolution transfer of a PDE model: relative L2 per family on the embedded test
split generated at several grids (the same functions: the random fields are Fourier series),
and the predict time per sample at each grid.

    python benchmarks/pde_resolution.py --model pde-nested-moe-2d --resolutions 32 64 128

Prints a markdown table; the model computes on its training grid and resamples (spectrally for
periodic families, bilinearly for darcy), so the error of a periodic family should not grow
with the grid.
"""

from __future__ import annotations

import argparse
import time

import lightning.pytorch as pl
import torch

import mmoe
from mmoe.datamodules.pde import PDEDataModule


def evaluate(model: pl.LightningModule, resolution: int, num_samples_per_family: int, seed: int) -> dict[str, float]:
    """Test metrics of ``model`` on the embedded test split at ``resolution``."""
    pre = model.pre
    dm = PDEDataModule(spatial_dims=pre.spatial_dims, resolution=resolution, families=list(pre.family_names),
                       num_samples_per_family=num_samples_per_family, seed=seed, batch_size=32)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False)
    return {k: float(v) for k, v in trainer.test(model, datamodule=dm, verbose=False)[0].items()
            if k.startswith("test/rel_l2")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="pde-nested-moe-2d", help="zoo name or file")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--num_samples_per_family", type=int, default=1024, help="the recipe's, so the test split is its")
    ap.add_argument("--seed", type=int, default=0, help="the data seed of the recipe")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    model = mmoe.load(args.model).float()
    rows = []
    for r in args.resolutions:
        metrics = evaluate(model, r, args.num_samples_per_family, args.seed)
        x = torch.randn(8, model.pre.in_channels, *([r] * model.pre.spatial_dims))
        model.predict(x[:1], family=None if not model.pre.units_differ else model.pre.family_names[-1])  # warm
        start = time.perf_counter()
        model.predict(x, family=None if not model.pre.units_differ else model.pre.family_names[-1])
        rows.append((r, metrics, (time.perf_counter() - start) / 8 * 1000))
    names = [k.split("rel_l2_")[1] for k in rows[0][1] if "rel_l2_" in k]
    print("| grid | rel L2 | " + " | ".join(names) + " | predict ms/sample |")
    print("|---|---|" + "---|" * len(names) + "---|")
    for r, m, ms in rows:
        print(f"| {r}x{r} | {m['test/rel_l2']:.4f} | " + " | ".join(f"{m['test/rel_l2_' + n]:.4f}" for n in names)
              + f" | {ms:.1f} |")


if __name__ == "__main__":
    main()
