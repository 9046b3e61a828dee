"""``mmoe-zoo``: list, download, verify and export model-zoo weights.

Exit codes: 0 success, 1 failure (hash mismatch, download error, file not cached),
2 bad input (unknown name, missing file, malformed argument).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import mmoe.configs
from mmoe import zoo
from mmoe.loading import build_model, load_safetensors, read_checkpoint
from mmoe.version import __version__

EPILOG = (
    "environment: MMOE_ZOO_URL (base URL or directory of the weight files), MMOE_HOME "
    "(cache root, default ~/.cache/mmoe), MMOE_OFFLINE=1 (cache only), MMOE_ZOO_MANIFEST "
    "(another manifest). Exit codes: 0 ok, 1 failure, 2 bad input."
)


class _BadInput(ValueError):
    """An argument is wrong (exit code 2)."""


def _parse_metrics(value: str) -> dict[str, float]:
    """``--metrics``: a JSON object of name -> number, inline or in a file."""
    src = "--metrics"
    try:
        if os.path.isfile(value):
            src = f"--metrics file {value!r}"
            data = json.loads(Path(value).read_text(encoding="utf-8"))
        else:
            data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise _BadInput(f"{src}: expected a JSON object or a path to one, got {value!r} ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise _BadInput(f"{src}: expected a JSON object of name -> number, got {type(data).__name__}")
    out: dict[str, float] = {}
    for k, v in data.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _BadInput(f"{src}: metric {k!r} must be a finite number, got {v!r}")
        out[str(k)] = float(v)
    return out


def _configs_dir() -> Path:
    return Path(mmoe.configs.__file__).resolve().parent


def export_checkpoint(
    ckpt: Path,
    name: str,
    config: str,
    task: str,
    training_data: str,
    metrics: dict[str, float],
    out_dir: Path,
    description: str = "",
    dtype: str = "float32",
) -> dict[str, Any]:
    """Turn a Lightning checkpoint into ``OUT_DIR/NAME.safetensors`` plus a manifest row.

    ``dtype`` (float32, float16 or bfloat16) is the storage type of floating-point tensors;
    loading casts them back to the model's parameter type.
    """
    if not zoo.NAME_RE.fullmatch(name):
        raise _BadInput(f"--name: expected letters, digits, '.', '_' or '-' (not first), got {name!r}")
    if not task.strip():
        raise _BadInput("--task: must not be empty")
    cfg = Path(config)
    if cfg.is_absolute() or ".." in cfg.parts or cfg.suffix not in (".yaml", ".yml"):
        raise _BadInput(f"--config: expected a .yaml path relative to the configs folder, got {config!r}")
    if not (_configs_dir() / cfg).is_file():
        print(f"mmoe-zoo export: warning: --config {config!r} is not in {_configs_dir()}", file=sys.stderr)
    if not ckpt.is_file():
        raise FileNotFoundError(f"--ckpt: no such file {str(ckpt)!r}")

    manifest_file = out_dir / zoo.MANIFEST_NAME
    # the manifest is read first: a bad one must stop the export before anything is published
    data = zoo.read_manifest(manifest_file) if manifest_file.is_file() else {"models": []}
    class_path, init_args, state_dict = read_checkpoint(ckpt)
    model = build_model(class_path, init_args, state_dict, str(ckpt))
    try:
        init_json = json.dumps(init_args, sort_keys=True)
    except TypeError as exc:
        raise _BadInput(f"--ckpt: the model's init args are not JSON-serializable: {exc}") from exc
    # clone: safetensors refuses tensors that share storage (tied weights)
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise _BadInput(f"--dtype: expected one of {sorted(dtypes)}, got {dtype!r}")
    tensors = {k: (v.to(dtypes[dtype]) if v.is_floating_point() else v).detach().to("cpu").contiguous().clone()
               for k, v in model.state_dict().items()}
    meta = {"class_path": class_path, "init_args": init_json, "task": task, "mmoe_version": __version__, "name": name}
    preprocess = init_args.get("preprocess")
    if preprocess is not None:  # also inside init_args; stated on its own so readers need not parse them
        meta["preprocess"] = json.dumps(preprocess, sort_keys=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / f"{name}.safetensors"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, zoo.FILE_MODE)  # mkstemp makes it private; published weights are world-readable
        load_safetensors(Path(tmp), "cpu")  # it must load back before it is published
        row = {
            "name": name, "task": task, "config": cfg.as_posix(), "file": dest.name,
            "sha256": zoo.file_sha256(Path(tmp)), "size_bytes": Path(tmp).stat().st_size,
            "training_data": training_data, "metrics": metrics, "description": description, "dtype": dtype,
        }
        if preprocess is not None:
            row["preprocess"] = preprocess
        rows = [r for r in data["models"] if r["name"] != name]
        idx = next((i for i, r in enumerate(data["models"]) if r["name"] == name), len(rows))
        rows.insert(idx, row)  # a replaced row keeps its place
        # the row is checked and written first, the weights renamed last: a failure in between
        # leaves a row whose hash no file matches yet (refused on load), never unlisted weights
        zoo.write_manifest({**data, "models": rows}, manifest_file)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return row


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}GB"


def _cmd_list(args: argparse.Namespace) -> int:
    rows = zoo.list_models(args.task)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no models" + (f" for task {args.task!r}" if args.task else "") + f" (manifest: {zoo.manifest_path()})")
        return 0
    cache = zoo.cache_dir()
    table = [("NAME", "TASK", "SIZE", "CACHED", "METRICS")]
    for r in rows:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in r["metrics"].items())
        table.append((r["name"], r["task"], _human(r["size_bytes"]), "yes" if (cache / r["file"]).is_file() else "no", metrics))
    widths = [max(len(t[i]) for t in table) for i in range(4)]
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t[:4], widths)) + "  " + t[4])
    try:
        source = zoo.base_url()
        where = "MMOE_ZOO_URL" if os.environ.get("MMOE_ZOO_URL", "").strip() else "the weight files bundled with mmoe"
    except zoo.ZooError as exc:
        source, where = "none", str(exc)
    print(f"weights from {source} ({where}); cache {cache}; manifest {zoo.manifest_path()}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    for name in args.names:
        print(zoo.fetch(name))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    rows = zoo.list_models()
    cache = zoo.cache_dir()
    targets: list[tuple[dict[str, Any], Path]] = []
    for item in args.items:
        by_name = [r for r in rows if r["name"] == item]
        if by_name:
            targets.append((by_name[0], cache / by_name[0]["file"]))
            continue
        p = Path(item)
        if not p.is_file():
            if "/" in item or os.sep in item or p.suffix:
                raise FileNotFoundError(f"NAME: no such file {item!r}")
            zoo.get_entry(item)  # raises: the message lists the known names
        by_file = [r for r in rows if r["file"] == p.name]
        if not by_file:
            raise _BadInput(f"NAME: file {item!r} matches no manifest entry's 'file'")
        targets.append((by_file[0], p))
    if not args.items:
        targets = [(r, cache / r["file"]) for r in rows if (cache / r["file"]).is_file()]
        if not targets:
            print(f"no cached models in {cache}")
            return 0
    bad = 0
    for row, path in targets:
        if not path.is_file():
            print(f"MISSING   {row['name']}  {path} (not cached; run `mmoe-zoo download {row['name']}`)")
            bad += 1
            continue
        got = zoo.file_sha256(path)
        if got == row["sha256"]:
            print(f"OK        {row['name']}  {path}")
        else:
            print(f"MISMATCH  {row['name']}  {path} (sha256 {got}, manifest {row['sha256']})")
            bad += 1
    return 1 if bad else 0


def _cmd_export(args: argparse.Namespace) -> int:
    out_dir = args.out_dir if args.out_dir is not None else zoo.repo_checkpoints_dir()
    if out_dir is None:
        raise _BadInput("--out-dir: required outside a source checkout (no checkpoints/ folder found)")
    row = export_checkpoint(
        ckpt=args.ckpt, name=args.name, config=args.config, task=args.task, training_data=args.training_data,
        metrics=_parse_metrics(args.metrics), out_dir=Path(out_dir), description=args.description, dtype=args.dtype,
    )
    print(json.dumps(row, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmoe-zoo", description="mmoe model zoo: list, download, verify, export.", epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True, metavar="{list,download,verify,export}")

    s = sub.add_parser("list", help="list the models in the manifest")
    s.add_argument("--task", default=None, help="only models of this task")
    s.add_argument("--json", action="store_true", help="print the manifest rows as JSON")
    s.set_defaults(func=_cmd_list)

    s = sub.add_parser("download", help="download models into the cache (sha256-verified)")
    s.add_argument("names", nargs="+", metavar="NAME")
    s.set_defaults(func=_cmd_download)

    s = sub.add_parser("verify", help="recompute sha256 of cached models (all, or the given names/files)")
    s.add_argument("items", nargs="*", metavar="NAME", help="model names or paths of weight files")
    s.set_defaults(func=_cmd_verify)

    s = sub.add_parser("export", help="turn a Lightning checkpoint into a zoo .safetensors + manifest row")
    s.add_argument("--ckpt", type=Path, required=True, help="Lightning checkpoint written by `mmoe fit`")
    s.add_argument("--name", required=True, help="zoo name; the file is NAME.safetensors")
    s.add_argument("--config", required=True, help="training YAML, relative to the package configs folder")
    s.add_argument("--task", required=True, help="task name")
    s.add_argument("--training-data", required=True, help="what the model was trained on")
    s.add_argument("--metrics", required=True, help="JSON object of measured metrics, or a path to one")
    s.add_argument("--out-dir", type=Path, default=None, help="destination folder (default: the repo checkpoints/)")
    s.add_argument("--description", default="", help="one-line description")
    s.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="storage type of the floating-point weights (loading casts back)")
    s.set_defaults(func=_cmd_export)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mmoe-zoo``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"mmoe-zoo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (zoo.ZooError, OSError, RuntimeError, ImportError) as exc:
        print(f"mmoe-zoo {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
