"""Re-export a released zoo file written before the shared task contract, and re-measure it.

    python benchmarks/migrate_release.py pde-nested-moe-2d
    python benchmarks/migrate_release.py emotion-mister-e

The tensors are copied unchanged; the metadata's ``init_args`` move to the task contract
(optimizer settings leave the model; what the data determined becomes ``preprocess``). The new
file is loaded with ``mmoe.load``, tested with the released recipe's data exactly as the release
scripts did, and the manifest row gets the new sha256, size, ``preprocess`` and the re-measured
metrics (the old ones are printed beside them).
"""

from __future__ import annotations

import argparse
import sys
import json
import os
import tempfile
from pathlib import Path

import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import mmoe
from mmoe import zoo

if __name__ == "__main__" and not __package__:  # run as a file (python benchmarks/migrate_release.py): siblings import
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # as the benchmarks package, like `python -m benchmarks.migrate_release`

ROOT = Path(__file__).resolve().parents[1]
OPTIM_ARGS = ("lr", "weight_decay", "scheduler", "warmup_steps")


def new_init_args(task: str, old: dict, data_args: dict) -> dict:
    args = {k: v for k, v in old.items() if k not in OPTIM_ARGS}
    if task == "pde":
        from mmoe.datamodules.pde.datamodule import unit_scales

        names = args.pop("family_names")
        scales = {f: unit_scales(f) for f in names}
        args["preprocess"] = {
            "spatial_dims": args.pop("spatial_dims"), "in_channels": args.pop("in_channels"),
            "out_channels": args.pop("out_channels"), "family_names": names, "resolution": args.pop("train_resolution"),
            "input_scale": {f: s[0] for f, s in scales.items() if s[0] != 1.0},
            "target_scale": {f: s[1] for f, s in scales.items() if s[1] != 1.0}}
    else:
        from mmoe.datamodules.emotion.synthetic import CLASSES

        args["preprocess"] = {"class_names": args.pop("class_names") or list(CLASSES), "sample_rate": 16000,
                              "context_length": args.pop("context_length"),
                              "max_seconds": data_args.get("max_seconds", 10.0)}
    return args


def measure(task: str, model, data_args: dict) -> dict:
    if task == "pde":
        from benchmarks.pde_release import evaluate

        metrics = evaluate(model, data_args)
        metrics |= {f"{k}_64x64": v for k, v in evaluate(model, data_args | {"resolution": 64}).items()
                    if k.startswith("rel_l2")}
        return metrics
    from benchmarks.emotion import evaluate

    return {k: v for k, v in evaluate(model, data_args).items() if isinstance(v, float)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    args = parser.parse_args()
    manifest = ROOT / "checkpoints" / "manifest.json"
    data = zoo.read_manifest(manifest)
    row = next(r for r in data["models"] if r["name"] == args.name)
    path = ROOT / "checkpoints" / row["file"]
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    old = json.loads(meta["init_args"])
    data_args = yaml.safe_load((ROOT / "configs" / row["config"]).read_text())["data"]["init_args"]
    init = new_init_args(row["task"], old, data_args)
    if "preprocess" in old:
        raise SystemExit(f"{path} already follows the task contract")
    meta |= {"init_args": json.dumps(init, sort_keys=True), "preprocess": json.dumps(init["preprocess"], sort_keys=True),
             "mmoe_version": mmoe.__version__}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{args.name}.", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(load_file(str(path)), tmp, metadata=meta)
        model = mmoe.load(Path(tmp))
        metrics = measure(row["task"], model, data_args)
        print(json.dumps({"old": row["metrics"], "new": metrics}, indent=2))
        row |= {"sha256": zoo.file_sha256(Path(tmp)), "size_bytes": Path(tmp).stat().st_size, "metrics": metrics,
                "preprocess": init["preprocess"]}
        row["description"] = row["description"].split(" (re-exported")[0] + (
            " (re-exported for the shared task contract: same tensors, new metadata; metrics re-measured)")
        zoo.write_manifest(data, manifest)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
