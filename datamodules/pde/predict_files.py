"""The PDE task's input files for ``mmoe predict`` (``predict_path``): ``.npz`` or ``.npy``.

An ``.npz`` holds ``field`` (the input, in any layout ``predict`` takes) and optionally
``family`` (a name) and the family's parameters by name (``nu``, ``eps2``, ``velocity``: a
scalar/pair or one per sample); an ``.npy`` holds the field alone. Arrays are read without
pickles, and their size is checked from the header before any data is read.
"""
from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np

from mmoe.datamodules.pde.preprocess import FAMILY_PARAMETERS

SUFFIXES = (".npz", ".npy")
#: most values one array of an input file may hold (64 Mi float32 values: 256 MiB)
MAX_VALUES = 2**26
_PARAMETERS = sorted({p.name for params in FAMILY_PARAMETERS.values() for p in params})


def _header(f: Any, where: str, kinds: str = "biuf") -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version} is not read here (1.0 and 2.0 are)")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    except (ValueError, OSError, SyntaxError) as e:
        raise ValueError(f"predict_path: {where} is not a numpy array file ({e})") from None
    if dtype.hasobject or dtype.kind not in kinds:
        raise ValueError(f"predict_path: {where}: expected a {'numeric' if kinds == 'biuf' else 'text'} array, "
                         f"got dtype {dtype}")
    if int(np.prod(shape, dtype=np.int64)) > MAX_VALUES:
        raise ValueError(f"predict_path: {where}: {shape} holds more than {MAX_VALUES} values")
    return shape, dtype


def _array(path: str, member: str | None, kinds: str = "biuf") -> np.ndarray:
    where = repr(path) if member is None else f"{path!r}[{member!r}]"
    if member is None:
        with open(path, "rb") as f:
            _header(f, where, kinds)
        return np.load(path, allow_pickle=False)
    with zipfile.ZipFile(path) as z, z.open(member + ".npy") as f:
        _header(f, where, kinds)
    with np.load(path, allow_pickle=False) as data:
        return data[member]


def read_field_file(path: str | os.PathLike) -> dict[str, Any]:
    """``predict``'s keyword arguments from an ``.npz``/``.npy`` file (see the module docstring)."""
    path = str(path)
    if path.lower().endswith(".npy"):
        return {"field": _array(path, None)}
    try:
        with zipfile.ZipFile(path) as z:
            members = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"predict_path: cannot read {path!r} as .npz ({e})") from None
    if "field" not in members:
        raise ValueError(f"predict_path: {path!r} has no 'field' array (it holds {sorted(members)})")
    unknown = members - {"field", "family", *_PARAMETERS}
    if unknown:
        raise ValueError(f"predict_path: {path!r}: unknown arrays {sorted(unknown)}; expected 'field', "
                         f"optionally 'family' and parameters {_PARAMETERS}")
    inputs: dict[str, Any] = {"field": _array(path, "field")}
    if "family" in members:
        family = _array(path, "family", "U")
        if family.size != 1:
            raise ValueError(f"predict_path: {path!r}['family']: expected one name, got {family!r}")
        inputs["family"] = str(family.reshape(()))
    for name in _PARAMETERS:
        if name in members:
            value = _array(path, name)
            inputs[name] = value.item() if value.ndim == 0 else value
    return inputs
