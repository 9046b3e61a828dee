"""Find a run trained outside a benchmark script (``mmoe fit ... --run_dir RUN_DIR --run_name NAME``)."""

from __future__ import annotations

from pathlib import Path

import yaml


def discover(names: list[str], run_dir: str) -> dict:
    """The newest ``RUN_DIR/<name>/version_*`` with a checkpoint, for the first of ``names`` that has
    one: its saved config.yaml and checkpoint step (best.ckpt, else last.ckpt); the training time is
    the time between the config (written at the start) and last.ckpt."""
    from mmoe.loading import torch_load_weights_only

    folders = []
    for n in dict.fromkeys(names):
        folders += sorted((Path(run_dir) / n).glob("version_*"), key=lambda p: int(p.name.split("_")[-1]))[::-1]
    for folder in folders:
        best, last = folder / "checkpoints" / "best.ckpt", folder / "checkpoints" / "last.ckpt"
        ckpt = best if best.is_file() else last
        if not ckpt.is_file() or not (folder / "config.yaml").is_file():
            continue
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        final = last if last.is_file() else ckpt
        steps = torch_load_weights_only(final, str(final)).get("global_step")
        return {"config": f"{folder / 'config.yaml'}", "seed": cfg.get("seed_everything"), "smoke": False,
                "train_seconds": round(final.stat().st_mtime - (folder / "config.yaml").stat().st_mtime, 1),
                "train_seconds_source": "file times", "steps": steps,
                "planned_steps": (cfg.get("trainer") or {}).get("max_steps"), "checkpoint": str(ckpt),
                "checkpoint_kind": "best" if ckpt == best else "last",
                "model_args": cfg["model"].get("init_args") or {}, "data_args": cfg["data"].get("init_args") or {},
                "run_kind": "run_folder", "incomplete": (folder / "INCOMPLETE.json").is_file()}
    raise SystemExit(f"--skip_train: {names[0]!r} is neither in the results file nor a run under {run_dir}/{names[0]}")
