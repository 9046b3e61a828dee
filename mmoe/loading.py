"""``mmoe.load``: build a task model from a zoo name, a zoo ``.safetensors`` file or a
Lightning ``.ckpt`` written by ``mmoe fit``.

A model is rebuilt as ``cls(**init_args)`` from its recorded class path, then its
weights are loaded with strict key matching. Nothing is unpickled from zoo files, and
``.ckpt`` files are read with ``torch.load(weights_only=True)``. Because a class path in
a file decides which constructor runs, only classes from trusted module prefixes are
imported: ``mmoe`` plus ``TRUSTED_MODULES`` plus the comma-separated
``MMOE_TRUSTED_MODULES`` environment variable.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmoe.zoo import fetch, get_entry, list_models

__all__ = ["TRUSTED_MODULES", "build_model", "import_class", "load", "list_models", "read_checkpoint"]

#: module prefixes whose classes a weights file may name (extend for your own tasks)
TRUSTED_MODULES: list[str] = ["mmoe"]
SAFETENSORS_SUFFIX = ".safetensors"
CKPT_SUFFIXES = (".ckpt", ".pt", ".pth")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def _trusted(module: str) -> bool:
    extra = [m.strip() for m in os.environ.get("MMOE_TRUSTED_MODULES", "").split(",") if m.strip()]
    return any(module == p or module.startswith(p + ".") for p in [*TRUSTED_MODULES, *extra])


def import_class(class_path: str) -> type[nn.Module]:
    """Import ``package.module.Class`` (nested qualnames allowed) from a trusted module."""
    if not isinstance(class_path, str) or not _DOTTED.match(class_path):
        raise ValueError(f"class_path: expected 'package.module.Class', got {class_path!r}")
    if not _trusted(class_path):
        raise ValueError(
            f"class_path: {class_path!r} is outside the trusted modules {TRUSTED_MODULES}; "
            "add its package to mmoe.loading.TRUSTED_MODULES or MMOE_TRUSTED_MODULES if you trust this file"
        )
    parts = class_path.split(".")
    for i in range(len(parts) - 1, 0, -1):  # longest importable module prefix, then attributes
        mod_name = ".".join(parts[:i])
        try:
            obj: Any = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and mod_name.startswith(exc.name):
                continue
            raise
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise ImportError(f"class_path: {class_path!r}: module {mod_name!r} has no {'.'.join(parts[i:])!r}") from None
        break
    else:
        raise ImportError(f"class_path: cannot import any module of {class_path!r}")
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise TypeError(f"class_path: {class_path!r} is not a torch.nn.Module subclass")
    return obj


def build_model(
    class_path: str,
    init_args: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    source: str,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """``cls(**init_args)``, strict ``load_state_dict``, ``.eval()``, moved to ``map_location``."""
    cls = import_class(class_path)
    if not isinstance(init_args, dict):
        raise TypeError(f"{source}: init_args must be a dict, got {type(init_args).__name__}")
    try:
        model = cls(**init_args)
    except TypeError as exc:
        raise TypeError(f"{source}: cannot construct {class_path}(**init_args): {exc}") from exc
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise RuntimeError(
            f"{source}: weights do not match {class_path}: missing keys {missing[:20]}, "
            f"unexpected keys {unexpected[:20]} ({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise RuntimeError(f"{source}: weights do not fit {class_path}: {exc}") from exc
    return model.eval().to(map_location)


def _clean_init_args(hparams: Any, source: str) -> dict[str, Any]:
    if not isinstance(hparams, dict):
        raise TypeError(f"{source}: hyper_parameters must be a dict, got {type(hparams).__name__}")
    # LightningCLI adds `_instantiator` / `_class_path`; they are not constructor arguments
    return {k: v for k, v in hparams.items() if not str(k).startswith("_")}


def read_checkpoint(path: Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """``(class_path, init_args, state_dict)`` of a Lightning checkpoint written by ``mmoe fit``."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses arbitrary objects; we never fall back to full unpickling
        raise ValueError(
            f"{path}: the checkpoint holds objects that torch.load(weights_only=True) refuses "
            f"(init args must be JSON-like): {exc}"
        ) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    hparams = ckpt.get("hyper_parameters", {})
    class_path = ckpt.get("mmoe_class_path") or (hparams.get("_class_path") if isinstance(hparams, dict) else None)
    if not class_path:
        raise ValueError(f"{path}: no 'mmoe_class_path' in the checkpoint; was it written by `mmoe fit`?")
    return class_path, _clean_init_args(hparams, str(path)), ckpt["state_dict"]


def _load_safetensors(path: Path, map_location: str | torch.device) -> nn.Module:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: not a readable .safetensors file: {exc}") from exc
    for key in ("class_path", "init_args"):
        if key not in meta:
            raise ValueError(f"{path}: metadata lacks {key!r}; not an mmoe zoo file")
    try:
        init_args = json.loads(meta["init_args"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: metadata 'init_args' is not valid JSON: {exc}") from exc
    return build_model(meta["class_path"], init_args, tensors, str(path), map_location)


def load_path(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a zoo ``.safetensors`` file or a Lightning checkpoint from disk."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"name_or_path: no such file {str(p)!r}")
    if p.suffix == SAFETENSORS_SUFFIX:
        return _load_safetensors(p, map_location)
    if p.suffix in CKPT_SUFFIXES:
        class_path, init_args, state_dict = read_checkpoint(p)
        return build_model(class_path, init_args, state_dict, str(p), map_location)
    raise ValueError(f"name_or_path: expected a {SAFETENSORS_SUFFIX} or {'/'.join(CKPT_SUFFIXES)} file, got {str(p)!r}")


def _looks_like_path(s: str) -> bool:
    return "/" in s or os.sep in s or s.endswith((SAFETENSORS_SUFFIX, *CKPT_SUFFIXES)) or Path(s).exists()


def load(name_or_path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> nn.Module:
    """A ready-to-use model (eval mode) from a zoo name or a local weights file.

    Zoo names win over same-named paths; anything else that looks like a path is read
    from disk (``FileNotFoundError`` when missing); other strings raise ``ValueError``
    listing the known names.
    """
    if isinstance(name_or_path, os.PathLike):
        return load_path(name_or_path, map_location)
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path: expected a str or a path, got {type(name_or_path).__name__}")
    try:
        get_entry(name_or_path)
    except ValueError:  # the message lists the known models
        if _looks_like_path(name_or_path):
            return load_path(name_or_path, map_location)
        raise
    return _load_safetensors(fetch(name_or_path), map_location)
