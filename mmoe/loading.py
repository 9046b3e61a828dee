"""``mmoe.load``: build a task model from a zoo name, a zoo ``.safetensors`` file or a
Lightning ``.ckpt`` written by ``mmoe fit``.

A model is rebuilt as ``cls(**init_args)`` from its recorded class path, then its weights are
loaded with strict key matching. Nothing is unpickled from zoo files, and ``.ckpt`` files are
read with ``torch.load(weights_only=True)``. A weights file is untrusted input, so before
anything is allocated or imported on its word:

* the class path must lie in a trusted module (``mmoe``, ``TRUSTED_MODULES`` and the
  comma-separated ``MMOE_TRUSTED_MODULES`` environment variable), and so must the module that
  really defines the class it resolves to (``cls.__module__``; re-exports such as
  ``mmoe.tasks.pde.PDETask`` resolve, attribute walks such as ``mmoe.loading.torch.nn.Linear``
  do not); the class must be an ``nn.Module`` subclass (a task need not derive from
  ``BaseMoETask``: your own trusted LightningModules load too);
* init args that make a constructor read other files or the network are refused: the names in
  the class's ``load_forbidden_args`` attribute and :data:`FORBIDDEN_INIT_ARGS` may only hold
  ``None`` or their default, and no init-arg string may be a URL or an open_clip
  ``hf-hub:`` / ``local-dir:`` reference;
* the model is first built on the meta device (no tensor memory, a bounded number of
  modules); its state dict must have exactly the names and shapes of the file's tensors, and
  all it builds (also outside the state dict) be at most ``_BUILT_PER_SAVED`` times their size;
  only then are the tensors read (NaN / inf refused) and the model built for real on the CPU
  (so non-persistent buffers get their constructor values) and loaded;
* init args and hyper-parameters are refused when, walked as a tree, they hold more than
  :data:`MAX_ARG_VALUES` values or nest deeper than :data:`MAX_ARG_DEPTH` (``torch.load`` keeps
  shared references, so a 2 KB file can describe 2**60 values): :func:`check_bounded`, before
  anything else walks them.

File-content problems raise ``ValueError`` naming the file (mismatched weights raise
:class:`WeightsMismatchError`, also a ``RuntimeError`` as before).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pickle
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file
from torch import nn
from torch.nn.modules import module as nn_module
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors  # the factories `with torch.device(...)` redirects

from mmoe.zoo import fetch_bytes, get_entry, list_models

__all__ = [
    "FORBIDDEN_INIT_ARGS",
    "TRUSTED_MODULES",
    "WeightsMismatchError",
    "build_model",
    "check_bounded",
    "import_class",
    "list_models",
    "load",
    "read_checkpoint",
    "torch_load_weights_only",
    "trusted_modules",
]

#: module prefixes whose classes a weights file may name (extend for your own tasks)
TRUSTED_MODULES: list[str] = ["mmoe"]
#: init args a weights file may not set (besides a class's own ``load_forbidden_args``): they
#: make constructors read files or download weights (open_clip / timm ``pretrained`` tags, paths)
FORBIDDEN_INIT_ARGS: tuple[str, ...] = (
    "text_pretrained", "pretrained", "pretrained_path", "checkpoint_path", "ckpt_path", "weights_path",
)
#: init-arg string prefixes that make open_clip (or anything else) read local dirs or the network
_REMOTE_PREFIXES = ("hf-hub:", "local-dir:")
SAFETENSORS_SUFFIX = ".safetensors"
CKPT_SUFFIXES = (".ckpt", ".pt", ".pth")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
#: a build may make this many tensor elements per element in the file, plus the slack (open_clip
#: builds a whole CLIP and keeps the text tower: up to ~3.7x; metric states, non-persistent buffers)
_BUILT_PER_SAVED, _BUILT_SLACK = 8, 1 << 24
#: parameter/buffer/submodule registrations a meta build may make: per file tensor, and at least
_REGISTRATIONS_PER_TENSOR, _MIN_REGISTRATIONS = 50, 10_000
#: the most values (and string characters / 100) and the deepest nesting that init args or
#: hyper-parameters read from a file may expand to (far above what any task's arguments hold)
MAX_ARG_VALUES, MAX_ARG_DEPTH = 100_000, 64


class WeightsMismatchError(ValueError, RuntimeError):
    """The tensors in a weights file are not the state dict of the model its metadata describes."""


def trusted_modules() -> list[str]:
    """``TRUSTED_MODULES`` plus the comma-separated ``MMOE_TRUSTED_MODULES`` environment variable."""
    extra = [m.strip() for m in os.environ.get("MMOE_TRUSTED_MODULES", "").split(",") if m.strip()]
    return [*TRUSTED_MODULES, *extra]


def _trusted(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in trusted_modules())


def _untrusted(what: str) -> ValueError:
    return ValueError(
        f"class_path: {what} is outside the trusted modules {TRUSTED_MODULES}; add its package to "
        "mmoe.loading.TRUSTED_MODULES or MMOE_TRUSTED_MODULES if you trust this file"
    )


def import_class(class_path: str) -> type[nn.Module]:
    """Import ``package.module.Class`` (nested qualnames, re-exports allowed): both the path and
    the module that defines the class must be trusted, and the class an ``nn.Module``."""
    if not isinstance(class_path, str) or not _DOTTED.match(class_path):
        raise ValueError(f"class_path: expected 'package.module.Class', got {class_path!r}")
    if not _trusted(class_path):  # checked before importing anything
        raise _untrusted(repr(class_path))
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
    # an attribute walk can reach any class a trusted module imported (mmoe.loading.torch.nn.Linear)
    if not _trusted(obj.__module__):
        raise _untrusted(f"{class_path!r} resolves to {obj.__module__}.{obj.__qualname__}, which")
    return obj


# ------------------------------------------------------------------------------ init args


def check_bounded(value: Any, source: str, what: str = "init_args", max_values: int = MAX_ARG_VALUES,
                  max_depth: int = MAX_ARG_DEPTH) -> None:
    """Refuse ``value`` (data read from ``source``) when, walked as the tree that copying,
    merging or printing it builds, it holds more than ``max_values`` values or nests deeper
    than ``max_depth``.

    Args:
        value: plain data from a file (dicts, lists, tuples, sets, strings, numbers, tensors).
        source: the file, named in the error.
        what: the part of the file, named in the error.
        max_values: budget; every value reached costs 1 each time it is reached (so shared
            references and cycles count as what they expand to), strings and bytes also 1 per 100 characters.
        max_depth: deepest nesting accepted.
    """
    # `torch.load(weights_only=True)` and YAML anchors keep shared references: a 2 KB file can
    # hold [a, a] nested 60 times, which any tree walk (a config merge, a dump) expands to 2**60
    # values. Counting on push bounds both the time and the stack of this walk.
    stack, used = [(value, 0)], 1
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (str, bytes)):
            used += len(item) // 100
            children: Any = ()
        elif isinstance(item, Mapping):
            children = [c for kv in item.items() for c in kv]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = item
        else:
            children = ()
        if children and depth >= max_depth:
            raise ValueError(f"{source}: {what} nest deeper than {max_depth} levels; refused as a malformed file")
        used += len(children)
        if used > max_values:
            raise ValueError(
                f"{source}: {what} expand to more than {max_values} values (shared references or cycles count "
                "each time they are reached); refused as a malformed or malicious file"
            )
        stack.extend((c, depth + 1) for c in children)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def check_init_args(cls: type, init_args: Any, source: str) -> dict[str, Any]:
    """``init_args`` as a dict; refuses arguments that would make ``cls`` read other files or
    the network (see the module docstring)."""
    if not isinstance(init_args, dict) or not all(isinstance(k, str) for k in init_args):
        raise ValueError(f"{source}: init_args must be a dict with string keys, got {type(init_args).__name__}")
    check_bounded(init_args, source)  # before the walks below (and any copy the caller makes)
    forbidden = {*FORBIDDEN_INIT_ARGS, *getattr(cls, "load_forbidden_args", ())}
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    for name in sorted(forbidden & set(init_args)):
        value = init_args[name]
        default = params[name].default if name in params else inspect.Parameter.empty
        if value is not None and (default is inspect.Parameter.empty or value != default):
            raise ValueError(
                f"{source}: init_args sets {name}={value!r}; this argument makes the model read other files or "
                f"the network, so it is not taken from a weights file (the file's own weights are loaded). "
                f"Build the model yourself if you trust this file"
            )
    for s in _strings(init_args):
        if s.startswith(_REMOTE_PREFIXES) or "://" in s:
            raise ValueError(
                f"{source}: init_args holds {s!r}, a reference to other files or the network; a weights file "
                "may not make the model fetch anything"
            )
    return init_args


# ------------------------------------------------------------------------------ building


class _MetaDevice(TorchFunctionMode):
    """Like ``with torch.device("meta")``, but explicit devices (``device="cpu"``, ``.to("cpu")``,
    ``.cpu()``) stay on meta too, so constructors that move what they build (open_clip's
    ``create_model``) still allocate nothing; ``bool()`` of a meta tensor is False, so value
    checks in constructors (torchaudio warns on empty mel filters) pass. Values never decide
    shapes in the trusted models, and a build whose shapes differ from the file's is refused."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in (torch.Tensor.cpu, torch.Tensor.cuda):
            return args[0]
        if func is torch.Tensor.__bool__ and args[0].is_meta:
            return False
        if "device" in kwargs or func in _device_constructors():
            kwargs["device"] = "meta"
        if func is torch.Tensor.to:
            args = (args[0], *("meta" if isinstance(a, (str, torch.device)) else a for a in args[1:]))
        return func(*args, **kwargs)


class _TooManyRegistrations(Exception):
    pass


@contextmanager
def _registrations(limit: int) -> Iterator[list[int]]:
    """Tally ``[registrations, tensor elements]`` of the parameters, buffers and submodules
    registered inside; more than ``limit`` registrations raise ``_TooManyRegistrations`` (a meta
    build costs no tensor memory, but ``depth=10**8`` still builds that many Python objects)."""
    tally = [0, 0]

    def hook(_module: nn.Module, _name: str, value: Any) -> None:
        tally[0] += 1
        if isinstance(value, torch.Tensor):
            tally[1] += value.numel()
        if tally[0] > limit:
            raise _TooManyRegistrations

    handles = [nn_module.register_module_parameter_registration_hook(hook),
               nn_module.register_module_buffer_registration_hook(hook),
               nn_module.register_module_module_registration_hook(hook)]
    try:
        yield tally
    finally:
        for h in handles:
            h.remove()


def _construct(cls: type[nn.Module], init_args: dict[str, Any], source: str) -> nn.Module:
    name = f"{cls.__module__}.{cls.__qualname__}"
    try:
        return cls(**init_args)
    except TypeError as exc:
        raise TypeError(f"{source}: cannot construct {name}(**init_args): {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{source}: {name} refuses the file's init_args: {exc}") from exc


def _attribute_numel(model: nn.Module) -> int:
    """Elements of plain tensor attributes (e.g. torchmetrics states): neither parameters nor buffers."""
    return sum(v.numel() for m in model.modules() for v in vars(m).values() if isinstance(v, torch.Tensor))


def check_weights_fit(cls: type[nn.Module], init_args: dict[str, Any], shapes: Mapping[str, tuple[int, ...]],
                      source: str) -> None:
    """Build ``cls(**init_args)`` on the meta device and require its state dict to have exactly
    the names and ``shapes`` of the file's tensors, and everything it builds (also what it
    discards or keeps outside the state dict) to be at most ``_BUILT_PER_SAVED`` times that:
    the real build then allocates what the file holds, not what its metadata asks for."""
    name = f"{cls.__module__}.{cls.__qualname__}"
    limit = max(_MIN_REGISTRATIONS, _REGISTRATIONS_PER_TENSOR * len(shapes))
    try:
        with _registrations(limit) as tally, _MetaDevice():
            meta = _construct(cls, init_args, source)
    except _TooManyRegistrations:
        raise WeightsMismatchError(
            f"{source}: init_args make {name} register more than {limit} parameters/buffers/modules for a file of "
            f"{len(shapes)} tensors; the metadata does not describe these weights"
        ) from None
    except (TypeError, ValueError):
        raise
    except Exception as exc:  # noqa: BLE001 - the size check needs the meta build; no fallback
        raise RuntimeError(
            f"{source}: {name} cannot be built on the meta device ({type(exc).__name__}: {exc}), so the file's "
            "weights cannot be checked against its init_args before allocating memory"
        ) from exc
    expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise WeightsMismatchError(
            f"{source}: weights do not match {name}: missing keys {missing[:20]}, unexpected keys {unexpected[:20]} "
            f"({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    wrong = [f"{k}: {tuple(shapes[k])} in the file, {expected[k]} in the model" for k in expected
             if tuple(shapes[k]) != expected[k]]
    if wrong:
        raise WeightsMismatchError(f"{source}: weights do not fit {name}: size mismatch for {'; '.join(wrong[:10])}")
    saved = sum(_numel(s) for s in expected.values())
    built = tally[1] + _attribute_numel(meta)
    if built > _BUILT_PER_SAVED * saved + _BUILT_SLACK:
        raise WeightsMismatchError(
            f"{source}: init_args make {name} build {built} tensor elements (also outside its state dict: "
            f"non-persistent buffers, metric states, discarded submodules) for {saved} in the file"
        )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _check_state_dict(state_dict: Any, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{source}: the state dict is a {type(state_dict).__name__}, not a dict of tensors")
    bad = [str(k) for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{source}: the state dict holds entries that are not named tensors: {bad[:10]}")
    return dict(state_dict)


def _check_finite(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    for k, v in state_dict.items():
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
            raise ValueError(f"{source}: tensor {k!r} holds NaN or inf values; the weights are corrupt")


def _build(cls: type[nn.Module], init_args: Any, shapes: Mapping[str, tuple[int, ...]],
           read_tensors: Callable[[], dict[str, torch.Tensor]], source: str,
           map_location: str | torch.device) -> nn.Module:
    init_args = check_init_args(cls, init_args, source)
    upgrade = getattr(cls, "upgrade_init_args", None)
    if upgrade is not None:  # files written before a task's arguments changed keep loading
        try:
            init_args = upgrade(init_args)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: init_args of an older mmoe do not map to today's arguments: {exc}") from exc
    check_weights_fit(cls, init_args, shapes, source)
    state_dict = read_tensors()
    _check_finite(state_dict, source)
    # built again on the CPU: the meta check proved the size is the file's, and a real build
    # gives non-persistent buffers and metric states their constructor values
    model = _construct(cls, init_args, source)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # the meta check should have caught it; keep the file in the message
        raise WeightsMismatchError(f"{source}: weights do not fit {cls.__qualname__}: {exc}") from exc
    return model.eval().to(map_location)


def build_model(
    class_path: str,
    init_args: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    source: str,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Checked ``cls(**init_args)`` (see the module docstring), strict ``load_state_dict``,
    ``.eval()``, moved to ``map_location``."""
    cls = import_class(class_path)
    state_dict = _check_state_dict(state_dict, source)
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    return _build(cls, init_args, shapes, lambda: state_dict, source, map_location)


# ------------------------------------------------------------------------------ files


def torch_load_weights_only(file: str | os.PathLike[str] | IO[bytes], source: str, map_location: Any = "cpu") -> Any:
    """``torch.load(file, weights_only=True)``; an unreadable or code-carrying file raises
    ``ValueError`` naming ``source`` (file-system errors stay ``OSError``)."""
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as exc:
        # weights_only refuses arbitrary objects; we never fall back to full unpickling
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        named = next((ln for ln in lines if "GLOBAL" in ln), None)
        if named is not None:
            raise ValueError(
                f"{source}: the checkpoint holds objects that torch.load(weights_only=True) refuses (only tensors "
                f"and plain Python data may be loaded; a file that needs more could run code): {named}"
            ) from exc
        detail = next((ln for ln in lines if ln.startswith("Unsupported")), lines[-1] if lines else type(exc).__name__)
        raise ValueError(f"{source}: not a readable PyTorch checkpoint (corrupt, or another format): {detail}") from exc
    except Exception as exc:  # noqa: BLE001 - EOFError, RuntimeError (bad zip), KeyError, ...: all bad input
        raise ValueError(
            f"{source}: not a readable PyTorch checkpoint (empty, truncated or another format): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _clean_init_args(hparams: Any, source: str) -> dict[str, Any]:
    if not isinstance(hparams, dict):
        raise ValueError(f"{source}: hyper_parameters must be a dict, got {type(hparams).__name__}")
    # LightningCLI adds `_instantiator` / `_class_path`; they are not constructor arguments
    return {k: v for k, v in hparams.items() if not str(k).startswith("_")}


def read_checkpoint(path: Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """``(class_path, init_args, state_dict)`` of a Lightning checkpoint written by ``mmoe fit``."""
    ckpt = torch_load_weights_only(path, str(path))
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        kind = type(ckpt).__name__ if not isinstance(ckpt, dict) else "dict without 'state_dict'"
        raise ValueError(f"{path}: not a Lightning checkpoint (it holds a {kind})")
    hparams = ckpt.get("hyper_parameters", {})
    check_bounded(hparams, str(path), "hyper_parameters")  # before anything walks them
    class_path = ckpt.get("mmoe_class_path") or (hparams.get("_class_path") if isinstance(hparams, dict) else None)
    if not class_path:
        raise ValueError(f"{path}: no 'mmoe_class_path' in the checkpoint; was it written by `mmoe fit`?")
    return class_path, _clean_init_args(hparams, str(path)), _check_state_dict(ckpt["state_dict"], str(path))


def load_safetensors(path: Path, map_location: str | torch.device) -> nn.Module:
    """The model in a released ``.safetensors`` file (metadata checked before any tensor is read)."""
    try:  # the header only: no tensor is read before the metadata is checked
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: not a readable .safetensors file: {exc}") from exc

    def read_tensors() -> dict[str, torch.Tensor]:
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path}: not a readable .safetensors file: {exc}") from exc

    return _from_metadata(meta, shapes, read_tensors, str(path), map_location)


def _load_safetensors_bytes(data: bytes, source: str, map_location: str | torch.device) -> nn.Module:
    """Like :func:`load_safetensors` on bytes already read (and hash-checked) once."""

    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    try:
        if not 0 < n <= len(data) - 8:
            raise ValueError("bad header length")
        header = json.loads(data[8:8 + n])
        meta = header.pop("__metadata__", None) or {}
        shapes = {k: tuple(v["shape"]) for k, v in header.items()}
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise ValueError(f"{source}: not a readable .safetensors file: {exc}") from exc

    def read_tensors() -> dict[str, torch.Tensor]:
        try:
            return load_bytes(data)
        except SafetensorError as exc:
            raise ValueError(f"{source}: not a readable .safetensors file: {exc}") from exc

    return _from_metadata(meta, shapes, read_tensors, source, map_location)


def _from_metadata(meta: dict[str, str], shapes: dict[str, tuple[int, ...]],
                   read_tensors: Callable[[], dict[str, torch.Tensor]], source: str,
                   map_location: str | torch.device) -> nn.Module:
    for key in ("class_path", "init_args"):
        if key not in meta:
            raise ValueError(f"{source}: metadata lacks {key!r}; not an mmoe zoo file")
    try:
        init_args = json.loads(meta["init_args"])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{source}: metadata 'init_args' is not valid JSON: {exc}") from exc
    cls = import_class(meta["class_path"])
    return _build(cls, init_args, shapes, read_tensors, source, map_location)


def load_path(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a zoo ``.safetensors`` file or a Lightning checkpoint from disk."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"name_or_path: no such file {str(p)!r}")
    if p.suffix == SAFETENSORS_SUFFIX:
        return load_safetensors(p, map_location)
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
    listing the known names. See the module docstring for what a file may not do.
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
    # the bytes that were hash-checked are the bytes that are loaded: no window to swap the file
    return _load_safetensors_bytes(fetch_bytes(name_or_path), f"zoo model {name_or_path!r}", map_location)
