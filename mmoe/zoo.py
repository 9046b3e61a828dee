"""Model zoo: the manifest, the download cache and sha256 verification.

The manifest (``{"models": [...]}``) is read from the local install, never from the
download server, so the hashes it pins cannot be changed by a mirror: the base URL only
says where the bytes come from. Environment:

- ``MMOE_ZOO_URL``: base URL of the weight files (``http(s)://``, ``file://`` or a
  directory). Default: the repository's ``checkpoints/`` folder when it is present.
- ``MMOE_ZOO_MANIFEST``: path of another manifest (e.g. a private zoo).
- ``MMOE_HOME``: cache root (default ``~/.cache/mmoe``); files go to ``$MMOE_HOME/zoo``.
- ``MMOE_OFFLINE=1``: use the cache only.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

from tqdm.auto import tqdm

__all__ = [
    "HashMismatchError",
    "OfflineError",
    "ZooError",
    "base_url",
    "cache_dir",
    "fetch",
    "file_sha256",
    "get_entry",
    "is_offline",
    "list_models",
    "manifest_path",
    "read_manifest",
    "repo_checkpoints_dir",
    "write_manifest",
]

_PKG_DIR = Path(__file__).resolve().parent
MANIFEST_NAME = "manifest.json"
ENTRY_KEYS = ("name", "task", "config", "file", "sha256", "size_bytes", "training_data", "metrics", "description")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CHUNK = 1 << 20


class ZooError(RuntimeError):
    """A model-zoo operation failed (download, verification, manifest)."""


class HashMismatchError(ZooError):
    """A file's sha256 differs from the manifest."""


class OfflineError(ZooError):
    """``MMOE_OFFLINE`` is set and the cache cannot satisfy the request."""


# ---------------------------------------------------------------- locations


def repo_checkpoints_dir() -> Path | None:
    """The source tree's ``checkpoints/`` folder (editable install or checkout), if any."""
    d = _PKG_DIR.parent / "checkpoints"
    return d if (d / MANIFEST_NAME).is_file() else None


def manifest_path() -> Path | None:
    """``MMOE_ZOO_MANIFEST``, else the manifest shipped in the wheel, else the repo's."""
    env = os.environ.get("MMOE_ZOO_MANIFEST")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"MMOE_ZOO_MANIFEST: no such file {p}")
        return p
    # the wheel ships checkpoints/manifest.json as mmoe/checkpoints/manifest.json
    for p in (_PKG_DIR / "checkpoints" / MANIFEST_NAME, _PKG_DIR.parent / "checkpoints" / MANIFEST_NAME):
        if p.is_file():
            return p
    return None


def cache_dir() -> Path:
    """``$MMOE_HOME/zoo`` (``MMOE_HOME`` defaults to ``~/.cache/mmoe``)."""
    home = os.environ.get("MMOE_HOME") or "~/.cache/mmoe"
    return Path(home).expanduser() / "zoo"


def is_offline() -> bool:
    return os.environ.get("MMOE_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def base_url() -> str:
    """Base URL of the weight files, always ending in ``/``."""
    url = os.environ.get("MMOE_ZOO_URL", "").strip()
    if not url:
        repo = repo_checkpoints_dir()
        if repo is None:
            raise ZooError(
                "no model-zoo location: set MMOE_ZOO_URL to the base URL (http://, https://, "
                "file://) or the directory that holds the .safetensors files"
            )
        url = repo.as_uri()
    elif not re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", url):  # a plain directory path
        url = Path(url).expanduser().resolve().as_uri()
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise ZooError(f"MMOE_ZOO_URL: expected an http://, https:// or file:// URL or a directory, got {url!r}")
    return url.rstrip("/") + "/"


# ---------------------------------------------------------------- manifest


def _check_entry(e: Any, where: Path) -> dict[str, Any]:
    if not isinstance(e, dict):
        raise ZooError(f"{where}: each model entry must be an object, got {type(e).__name__}")
    missing = [k for k in ENTRY_KEYS if k not in e]
    if missing:
        raise ZooError(f"{where}: model entry {e.get('name', '?')!r} lacks keys {missing}")
    f = e["file"]
    # a file name, never a path: the cache must not be escaped by a manifest row
    if not isinstance(f, str) or Path(f).name != f or f.startswith(".") or "\\" in f:
        raise ZooError(f"{where}: model {e['name']!r}: 'file' must be a plain file name, got {f!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", str(e["sha256"])):
        raise ZooError(f"{where}: model {e['name']!r}: 'sha256' must be 64 lowercase hex digits")
    return e


def read_manifest(path: Path | None = None) -> dict[str, Any]:
    """Parse and check a manifest; ``{"models": []}`` when none is installed."""
    path = manifest_path() if path is None else Path(path)
    if path is None or not path.is_file():
        return {"models": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ZooError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ZooError(f"{path}: expected an object with a 'models' list")
    for e in data["models"]:
        _check_entry(e, path)
    return data


def write_manifest(data: dict[str, Any], path: Path) -> None:
    """Write a manifest atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    for e in data["models"]:
        _check_entry(e, path)
    _atomic_write(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def list_models(task: str | None = None) -> list[dict[str, Any]]:
    """Manifest rows (copies), optionally only those of one task."""
    rows = read_manifest()["models"]
    return [json.loads(json.dumps(r)) for r in rows if task is None or r["task"] == task]


def get_entry(name: str) -> dict[str, Any]:
    """The manifest row of ``name``; ``ValueError`` listing the known names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    rows = list_models()
    for r in rows:
        if r["name"] == name:
            return r
    known = ", ".join(sorted(r["name"] for r in rows)) or "(the manifest is empty)"
    raise ValueError(f"name: unknown model {name!r}; known models: {known}")


# ---------------------------------------------------------------- files


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _open_url(url: str) -> tuple[BinaryIO, int | None]:
    from mmoe import __version__

    req = urllib.request.Request(url, headers={"User-Agent": f"mmoe/{__version__}"})
    try:
        resp = urllib.request.urlopen(req, timeout=60)  # noqa: S310 - scheme checked in base_url()
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise ZooError(f"cannot download {url}: {exc}") from exc
    length = resp.headers.get("Content-Length")
    return resp, (int(length) if length and length.isdigit() else None)


def _download(url: str, dest: Path, sha256: str, size: int | None) -> None:
    """Download ``url`` to ``dest``: temp file, check length and hash, then rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        h, n = hashlib.sha256(), 0
        resp, total = _open_url(url)
        with resp, open(tmp, "wb") as out, tqdm(
            total=total or size, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, disable=None, leave=False
        ) as bar:
            try:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    n += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                raise ZooError(f"download of {url} failed after {n} bytes: {exc!r}") from exc
        # http.client returns b"" (no error) when the peer closes early: count the bytes
        if total is not None and n != total:
            raise ZooError(f"download of {url} cut off: got {n} of {total} bytes")
        if size is not None and n != size:
            raise HashMismatchError(f"{url}: got {n} bytes, the manifest says {size}")
        got = h.hexdigest()
        if got != sha256:
            raise HashMismatchError(f"{url}: sha256 {got} does not match the manifest's {sha256}")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch(name: str) -> Path:
    """The verified cached weight file of zoo model ``name``, downloading it if needed.

    The cached file's sha256 is recomputed on every call; a wrong one is deleted and
    downloaded again (or raises when offline).
    """
    entry = get_entry(name)
    cache = cache_dir()
    path = cache / entry["file"]
    if path.is_file():
        got = file_sha256(path)
        if got == entry["sha256"]:
            return path
        if is_offline():
            raise HashMismatchError(
                f"model {name!r}: cached file {path} has sha256 {got}, the manifest says {entry['sha256']} "
                "(corrupted or an older version); MMOE_OFFLINE=1 forbids downloading it again"
            )
        path.unlink()
    elif is_offline():
        raise OfflineError(
            f"model {name!r} is not in the cache {cache} and MMOE_OFFLINE=1 forbids downloading it; "
            f"run `mmoe-zoo download {name}` while online, or unset MMOE_OFFLINE"
        )
    url = base_url() + urllib.parse.quote(entry["file"])
    _download(url, path, entry["sha256"], int(entry["size_bytes"]))
    return path
