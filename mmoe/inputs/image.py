"""The one image and volume reader, and the one layout rule for images passed as arrays.

Layout rule (every task that takes images: anomaly, restoration). The layout is decided by the
input's type and number of dimensions, never guessed from its sizes:

* numpy arrays (and what the readers below return) are channels-last: ``[H, W]`` one greyscale
  image, ``[H, W, C]`` one image, ``[N, H, W, C]`` a batch (or the slices of a volume).
* torch tensors are channels-first: ``[H, W]``, ``[C, H, W]``, ``[N, C, H, W]``.
* ``C`` is 1 (greyscale), 3 (RGB) or 4 (RGBA). Anything else is refused with a hint, so numpy
  ``[3, 64, 64]`` (channels-first), ``[64, 64, 2]`` and a channels-last tensor ``[64, 64, 3]`` are
  errors, not a batch of 3 or 64 images. A stack of greyscale images or a volume is
  ``[N, H, W, 1]`` (numpy) / ``[N, 1, H, W]`` (torch), or a list. Numpy ``[5, 64, 3]`` is one
  5 x 64 RGB image.

Dtypes (:func:`unit_scale`): colour and images returned in their own range are uint8 (/255),
uint16 (/65535) or float in [0, 1]; signed or wider integer colour is refused. Greyscale scanner
data (anomaly) may be any integer or float dtype (the task maps it by percentiles). Floats must be
finite and within float32's range (the models compute in float32), checked by
:func:`check_float_values`.

Size caps: every reader reads the pixel count from the file's header before decoding anything
(PIL opens lazily; DICOM headers with ``stop_before_pixels``; NIfTI and TIFF headers) and refuses
more than ``max_pixels`` (default :data:`MAX_PIXELS`, 8192 x 8192 pixels counted over all frames
or slices) with a ValueError naming the argument.

Formats (:func:`read_image`): PNG/JPEG/BMP and the rest of PIL's formats; 16-bit colour PNG
keeps 16 bits (decoded by OpenCV, which PIL cannot); TIFF through tifffile (any dtype, float and
16-bit colour included; OpenCV when tifffile lacks the codec); DICOM through pydicom (stored
values, or with ``rescale=True`` the modality LUT applied: RescaleSlope/Intercept, Hounsfield
units for CT; never a display window); NIfTI ``.nii``/``.nii.gz`` through nibabel (stored values
times the header's scaling; a volume ``[X, Y, Z]`` is returned as slices ``[Z, X, Y, 1]``, slice
``z`` being ``data[:, :, z]``, not reoriented); DICOM series folders with
:func:`read_dicom_series`. :func:`read_volume` reads any of these as a stack of slices and says how
per-slice results go back into the file's own array axes (:class:`Volume`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

#: default cap on the pixels of one file (all frames/slices together): 8192 x 8192
MAX_PIXELS = 8192 * 8192
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
CHANNELS = (1, 3, 4)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


# ----------------------------------------------------------------------------------- paths
def inside_root(path: str | os.PathLike, root: str | os.PathLike, name: str) -> Path:
    """``path`` after following its links, refused (ValueError naming ``name``) when it leads
    outside ``root``: a dataset folder never makes a reader open files elsewhere."""
    real, base = Path(path).resolve(), Path(root).resolve()
    if real != base and base not in real.parents:
        raise ValueError(f"{name}: {str(path)!r} leads outside the dataset folder {str(root)!r} "
                         f"(to {str(real)!r}); links out of the dataset are refused")
    return real


def _kind(path: Path) -> str:
    low = path.name.lower()
    if low.endswith(NIFTI_SUFFIXES):
        return "nifti"
    with open(path, "rb") as f:
        head = f.read(132)
    if path.suffix.lower() in DICOM_SUFFIXES or head[128:132] == b"DICM":
        return "dicom"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return "pil"


def check_pixels(count: int, name: str, path: Any, max_pixels: int, what: str = "") -> None:
    """Refuse ``count`` pixels above ``max_pixels`` (read from a header, before decoding)."""
    if count > max_pixels:
        raise ValueError(f"{name}: {str(path)!r} declares {count} pixels{what}, more than the limit of "
                         f"{max_pixels} (max_pixels); refused before decoding")


# ----------------------------------------------------------------------------------- readers
def read_image(path: str | os.PathLike, name: str = "image", *, max_pixels: int = MAX_PIXELS,
               rescale: bool = False) -> np.ndarray:
    """One image or volume file as a numpy array in the layout rule (channels last, the stored dtype).

    Args:
        path: PNG/JPEG/BMP/TIFF/... image, DICOM file or NIfTI ``.nii``/``.nii.gz``.
        name: the argument named in errors.
        max_pixels: refuse files declaring more pixels (all frames/slices together).
        rescale: DICOM only: apply the modality LUT (RescaleSlope/Intercept; CT in Hounsfield units,
            float64 when the slope or intercept is not integral) instead of returning stored values.

    Returns ``[H, W]`` greyscale, ``[H, W, C]`` colour (C 3 or 4), or ``[N, H, W, C]`` for
    multi-frame DICOM and NIfTI volumes. Raises FileNotFoundError for a missing file and
    ValueError for an unreadable or too large one, naming ``name`` and the path.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{name}: no such file {str(path)!r}")
    kind = _kind(p)
    try:
        if kind == "dicom":
            return _read_dicom(p, name, max_pixels, rescale)
        if kind == "nifti":
            return _read_nifti(p, name, max_pixels)
        if kind == "tiff":
            return _read_tiff(p, name, max_pixels)
        return _read_pil(p, name, max_pixels)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as e:  # decoders raise OSError, SyntaxError, struct.error, ... on corrupt files
        raise ValueError(f"{name}: cannot read {str(path)!r} as an image ({type(e).__name__}: {e})") from None


def _read_pil(p: Path, name: str, max_pixels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # our own cap below replaces PIL's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(p)  # lazy: reads the header only
    except Image.DecompressionBombError as e:  # beyond PIL's own hard limit: same message as ours
        raise ValueError(f"{name}: {str(p)!r} declares more pixels than the limit of {max_pixels} (max_pixels); "
                         f"refused before decoding ({e})") from None
    except UnidentifiedImageError as e:
        raise ValueError(f"{name}: cannot read {str(p)!r} as an image ({e})") from None
    with img:
        W, H = img.size
        check_pixels(W * H, name, p, max_pixels)  # multi-frame files (GIF, MPO photos): the first frame is read
        rawmode = img.tile[0][3] if img.tile else ""
        rawmode = rawmode if isinstance(rawmode, str) else rawmode[0] if rawmode else ""
        if img.mode in ("RGB", "RGBA", "LA") and ";16" in rawmode:  # 16-bit colour: PIL would keep 8 bits
            return _read_cv2(p, name)
        img.load()
        mode = img.mode
        if mode.startswith("I;16"):
            return np.asarray(img).astype(np.uint16)
        if mode in ("L", "RGB", "RGBA", "I", "F"):  # "I" int32 and "F" float32 stay arrays (never converted to 8 bits)
            return np.asarray(img).copy()
        transparent = "A" in mode or "transparency" in img.info
        return np.asarray(img.convert("RGBA" if transparent else "RGB")).copy()


def _read_cv2(p: Path, name: str) -> np.ndarray:
    import cv2  # only for what PIL and tifffile cannot decode (16-bit colour); the header was checked

    a = cv2.imdecode(np.fromfile(p, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if a is None:
        raise ValueError(f"{name}: cannot read {str(p)!r} as an image (OpenCV could not decode it)")
    if a.ndim == 3:  # OpenCV's channel order is BGR(A)
        a = a[..., [2, 1, 0, 3][: a.shape[-1]]] if a.shape[-1] in (3, 4) else a
    return np.ascontiguousarray(a)


def _read_tiff(p: Path, name: str, max_pixels: int) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(p) as tif:
        series = tif.series[0]
        shape, axes = series.shape, series.axes
        spatial = [n for n, ax in zip(shape, axes) if ax not in "SC"]
        check_pixels(int(np.prod(spatial, dtype=np.int64)), name, p, max_pixels)
        keep = [i for i, (n, ax) in enumerate(zip(shape, axes)) if n != 1 or ax in "YX"]
        core = "".join(axes[i] for i in keep)
        if core not in ("YX", "YXS", "SYX", "YXC", "CYX"):
            raise ValueError(f"{name}: {str(p)!r} holds a TIFF of axes {axes} and shape {shape}; "
                             "pass one image per file")
        try:
            a = series.asarray()
        except ValueError as e:
            if "imagecodecs" not in str(e):
                raise
            return _read_cv2(p, name)  # a compression tifffile decodes only with imagecodecs (LZW, JPEG...)
    a = a.reshape([shape[i] for i in keep])
    return np.ascontiguousarray(np.moveaxis(a, 0, -1) if core[0] in "SC" else a)


def _dicom_header(p: Path, name: str) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(p, stop_before_pixels=True)
    except Exception as e:
        raise ValueError(f"{name}: cannot read {str(p)!r} as DICOM ({type(e).__name__}: {e})") from None


def _dicom_pixels(ds: Any) -> int:
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    return int(ds.Rows) * int(ds.Columns) * frames


def _modality_lut(a: np.ndarray, ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    return np.asarray(apply_modality_lut(a, ds))


def _read_dicom(p: Path, name: str, max_pixels: int, rescale: bool = False) -> np.ndarray:
    import pydicom

    head = _dicom_header(p, name)
    if "Rows" not in head or "Columns" not in head:
        raise ValueError(f"{name}: {str(p)!r} is a DICOM file without pixel data (no Rows/Columns)")
    check_pixels(_dicom_pixels(head), name, p, max_pixels, " (Rows x Columns x frames)")
    try:
        ds = pydicom.dcmread(p)
        a = _modality_lut(ds.pixel_array, ds) if rescale else ds.pixel_array
    except Exception as e:  # compressed without a decoder, truncated, ...
        raise ValueError(f"{name}: cannot read {str(p)!r} as DICOM pixel data ({type(e).__name__}: {e})") from None
    multi = int(getattr(ds, "NumberOfFrames", 1) or 1) > 1
    if multi:
        return a[..., None] if a.ndim == 3 else a  # [F, H, W] -> [F, H, W, 1]
    return a


def _read_nifti(p: Path, name: str, max_pixels: int) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(p)  # header only; the data are read below
    except Exception as e:
        raise ValueError(f"{name}: cannot read {str(p)!r} as NIfTI ({type(e).__name__}: {e})") from None
    shape = tuple(int(n) for n in img.shape)
    check_pixels(int(np.prod(shape, dtype=np.int64)), name, p, max_pixels)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (2, 3):
        raise ValueError(f"{name}: {str(p)!r} holds a NIfTI of shape {tuple(img.shape)}; expected one slice "
                         "[X, Y] or one volume [X, Y, Z]")
    a = np.asanyarray(img.dataobj).reshape(shape)
    return a if a.ndim == 2 else np.ascontiguousarray(np.moveaxis(a, -1, 0))[..., None]


def read_dicom_series(folder: str | os.PathLike, name: str = "image", *, max_pixels: int = MAX_PIXELS,
                      rescale: bool = False) -> np.ndarray:
    """A folder of single-frame DICOM slices as ``[N, H, W, 1]``, sorted by position along the
    slice normal (ImagePositionPatient and ImageOrientationPatient), else by InstanceNumber.

    Args:
        folder: the series folder (its visible files are all read; links out of it are refused).
        name: the argument named in errors.
        max_pixels: refuse series declaring more pixels (all slices together), before decoding.
        rescale: apply each slice's modality LUT (RescaleSlope/Intercept: Hounsfield units for CT).
    """
    import pydicom

    root = Path(folder)
    files = sorted(f for f in root.iterdir() if f.is_file() and not f.name.startswith("."))
    if not files:
        raise ValueError(f"{name}: no files in the DICOM series folder {str(folder)!r}")
    heads, total = [], 0
    for f in files:
        inside_root(f, root, name)
        h = _dicom_header(f, name)
        if "Rows" not in h or "Columns" not in h or int(getattr(h, "NumberOfFrames", 1) or 1) != 1:
            raise ValueError(f"{name}: {str(f)!r} is not a single-frame DICOM image; "
                             "a series folder holds one slice per file")
        total += _dicom_pixels(h)
        check_pixels(total, name, folder, max_pixels, f" (Rows x Columns over {len(heads) + 1} slices so far)")
        heads.append((f, h))
    sizes = {(int(h.Rows), int(h.Columns)) for _, h in heads}
    series = {str(getattr(h, "SeriesInstanceUID", "")) for _, h in heads}
    if len(sizes) != 1 or len(series) != 1:
        raise ValueError(f"{name}: {str(folder)!r} mixes slice sizes {sorted(sizes)} or series {sorted(series)}; "
                         "expected one series of equal slices")

    def position(item: tuple[Path, Any]) -> tuple[float, float, str]:
        h = item[1]
        ipp, iop = getattr(h, "ImagePositionPatient", None), getattr(h, "ImageOrientationPatient", None)
        along = float(np.dot(np.cross(np.array(iop[:3], float), np.array(iop[3:], float)), np.array(ipp, float))) \
            if ipp is not None and iop is not None and len(ipp) == 3 and len(iop) == 6 else 0.0
        return along, float(getattr(h, "InstanceNumber", 0) or 0), item[0].name

    slices = []
    for f, _ in sorted(heads, key=position):
        try:
            ds = pydicom.dcmread(f)
            slices.append(_modality_lut(ds.pixel_array, ds) if rescale else ds.pixel_array)
        except Exception as e:
            raise ValueError(f"{name}: cannot read {str(f)!r} as DICOM pixel data ({type(e).__name__}: {e})") from None
    return np.stack(slices)[..., None]


@dataclass(frozen=True)
class Volume:
    """A stack of slices read from one file or series folder (:func:`read_volume`).

    Args:
        slices: ``[N, H, W, 1]`` (greyscale) or ``[N, H, W, C]``, slice ``i`` as a 2-D image.
        slice_axis: the axis of the file's own array that indexes the slices: 2 for NIfTI
            (``data[:, :, z]``), 0 for DICOM frames and series (in position order).
        is_volume: False for a single 2-D image (one slice).
    """

    slices: np.ndarray
    slice_axis: int
    is_volume: bool

    def to_file_axes(self, per_slice: np.ndarray) -> np.ndarray:
        """Per-slice results ``[N, H, W]`` in the file's own array axes (NIfTI ``[X, Y, Z]``, DICOM
        ``[N, H, W]``; a 2-D image ``[H, W]``), so they overlay the input voxel by voxel."""
        if not self.is_volume:
            return per_slice[0]
        return np.moveaxis(per_slice, 0, self.slice_axis)


def read_volume(path: str | os.PathLike, name: str = "volume", *, max_pixels: int = MAX_PIXELS,
                rescale: bool = False) -> Volume:
    """A NIfTI file (slice or volume), a DICOM file (single- or multi-frame), a DICOM series folder
    or a 2-D image file as a :class:`Volume` of slices, with the same checks and caps as
    :func:`read_image` (``rescale``: DICOM modality LUT, see there)."""
    p = Path(path)
    if p.is_dir():
        return Volume(read_dicom_series(p, name, max_pixels=max_pixels, rescale=rescale), 0, True)
    a = read_image(p, name, max_pixels=max_pixels, rescale=rescale)
    if a.ndim == 4:
        return Volume(a, 2 if _kind(p) == "nifti" else 0, True)
    return Volume(a[None] if a.ndim == 3 else a[None, ..., None], 0, False)


# ----------------------------------------------------------------------------------- layout and dtypes
class Layout(NamedTuple):
    """How an array or tensor is read under the layout rule."""

    batched: bool  # 4-D input: a batch (returned as a batch)
    channels_first: bool  # torch tensors
    n: int
    h: int
    w: int
    c: int


def image_layout(x: np.ndarray | torch.Tensor, name: str) -> Layout:
    """The layout of ``x`` under the module's rule, or ValueError naming ``name`` with a hint."""
    first = isinstance(x, torch.Tensor)
    shape = tuple(x.shape)
    forms = "[H, W], [C, H, W] or [N, C, H, W] (torch: channels first)" if first \
        else "[H, W], [H, W, C] or [N, H, W, C] (numpy: channels last)"
    if len(shape) not in (2, 3, 4):
        raise ValueError(f"{name}: expected {forms} with C in {CHANNELS}, got shape {shape}")
    if len(shape) == 2:
        n, h, w, c = 1, shape[0], shape[1], 1
    elif first:
        n, c, h, w = (1, *shape) if len(shape) == 3 else shape
    else:
        n, h, w, c = (1, *shape) if len(shape) == 3 else shape
    if c not in CHANNELS:
        hint = ""
        if first and shape[-1] in CHANNELS:
            hint = "; this looks channels-last: pass x.permute(2, 0, 1) (or [N, H, W, C] -> x.permute(0, 3, 1, 2))"
        elif not first and shape[-3] in CHANNELS:
            hint = "; this looks channels-first: pass a.transpose(1, 2, 0) (or a torch tensor)"
        stack = "[N, 1, H, W]" if first else "[N, H, W, 1]"
        raise ValueError(f"{name}: expected {forms} with C in {CHANNELS}, got shape {shape}{hint}; "
                         f"a stack of greyscale images or a volume is {stack} or a list")
    if min(n, h, w) == 0:
        raise ValueError(f"{name}: expected a non-empty image, got shape {shape}")
    return Layout(len(shape) == 4, first, n, h, w, c)


def to_nhwc(x: np.ndarray | torch.Tensor, layout: Layout) -> np.ndarray | torch.Tensor:
    """``x`` as ``[N, H, W, C]`` (a view where possible; torch stays torch)."""
    if layout.channels_first:
        x = x.reshape(layout.n, layout.c, layout.h, layout.w)
        return x.permute(0, 2, 3, 1)
    return x.reshape(layout.n, layout.h, layout.w, layout.c)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def is_float(dtype: Any) -> bool:
    """A floating dtype, numpy or torch."""
    return dtype.is_floating_point if isinstance(dtype, torch.dtype) else np.issubdtype(dtype, np.floating)


def unit_scale(dtype: Any, name: str) -> float:
    """What ``dtype``'s full scale is: 255 (uint8), 65535 (uint16), 1 (float, values in [0, 1]).
    Other dtypes (bool, signed or wider integers, complex) raise TypeError naming ``name``."""
    key = _dtype_name(dtype)
    scales = {"uint8": 255.0, "uint16": 65535.0}
    if key in scales:
        return scales[key]
    if key in ("float16", "bfloat16", "float32", "float64"):
        return 1.0
    raise TypeError(f"{name}: expected dtype uint8, uint16 or float in [0, 1], got {key}")


def check_float_values(x: np.ndarray | torch.Tensor, name: str, unit: bool = False) -> None:
    """Refuse NaN/inf, magnitudes beyond float32 (the models compute in float32) and, with
    ``unit``, values outside [0, 1]; errors name ``name``. Integer inputs pass."""
    if not is_float(x.dtype):
        return
    lib: Any = np if isinstance(x, np.ndarray) else torch
    t = x if isinstance(x, np.ndarray) else x.detach()
    if not bool(lib.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or inf (shape {tuple(x.shape)})")
    lo, hi = float(t.min()), float(t.max())
    if max(-lo, hi) > _FLOAT32_MAX:
        raise ValueError(f"{name}: values in [{lo:.4g}, {hi:.4g}] exceed the float32 range (+-{_FLOAT32_MAX:.4g})")
    if unit and (lo < 0 or hi > 1):
        raise ValueError(f"{name}: expected float values in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                         "(divide 8-bit data by 255, or pass it as uint8)")


def to_unit_float(a: np.ndarray, name: str) -> np.ndarray:
    """A numpy image of dtype uint8/uint16/float in [0, 1] as float32 in [0, 1] (one conversion
    for every reader and task); other dtypes raise TypeError, bad floats ValueError, naming ``name``."""
    scale = unit_scale(a.dtype, name)
    check_float_values(a, name, unit=True)
    out = a.astype(np.float32)
    if scale != 1.0:
        out /= scale
    return out
