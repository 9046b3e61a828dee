"""Model zoo: the manifest, the download cache and sha256 verification.

The manifest (``{"models": [...]}``) is read from the local install, never from the
download server, so the hashes it pins cannot be changed by a mirror: the base URL only
says where the bytes come from. Environment:

- ``MMOE_ZOO_URL``: base URL of the weight files (``http(s)://``, ``file://`` or a
  directory): an optional mirror. Default: the weight files that ship with the install (the
  wheel's package data ``mmoe/checkpoints/``, or a checkout's ``checkpoints/``), still copied
  into the cache and hash-checked like a download.
- ``MMOE_ZOO_MANIFEST``: path of another manifest (e.g. a private zoo).
- ``MMOE_HOME``: cache root (default ``~/.cache/mmoe``); files go to ``$MMOE_HOME/zoo``.
- ``MMOE_OFFLINE=1``: no network: a model not in the cache is copied from a local source only
  (the bundled weight files, or a ``file://``/directory ``MMOE_ZOO_URL``).
- ``MMOE_DOWNLOAD_TIMEOUT``: overall limit of one download in seconds (default 600).
  A single socket read may overrun it by at most ``min(60, limit)`` seconds.

Cache rules. Files this module writes (cache files, manifests) are mode 0644, like the
data cache, so a shared cache is readable by other users. A download writes
``.<file>.<random>.part`` and renames it only after the length and sha256 checks.
Processes fetching the same model serialize on ``$MMOE_HOME/locks/zoo.<file>.lock``
(``fcntl.flock``; kept outside the cache folder, which holds only weights). A live download
holds that lock, so any ``.part`` of the model found under the lock is the leftover of a
killed process and is deleted. Lock files are kept (deleting one races with a process
about to take it).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import math
import os
import re
import reprlib
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from tqdm.auto import tqdm

from mmoe.version import __version__

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock, rename stays atomic
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "HashMismatchError",
    "OfflineError",
    "ZooError",
    "base_url",
    "cache_dir",
    "download_timeout",
    "fetch",
    "fetch_bytes",
    "file_sha256",
    "get_entry",
    "is_offline",
    "list_models",
    "manifest_path",
    "read_manifest",
    "bundled_weights_dir",
    "repo_checkpoints_dir",
    "write_manifest",
]

_PKG_DIR = Path(__file__).resolve().parent
MANIFEST_NAME = "manifest.json"
ENTRY_KEYS = ("name", "task", "config", "file", "sha256", "size_bytes", "training_data", "metrics", "description")
_TEXT_KEYS = ("task", "config", "training_data", "description")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DEFAULT_DOWNLOAD_TIMEOUT = 600.0
FILE_MODE = 0o644
_SOCKET_TIMEOUT = 60.0  # per socket operation
_CHUNK = 1 << 20


class ZooError(RuntimeError):
    """A model-zoo operation failed (download, verification, manifest)."""


class HashMismatchError(ZooError):
    """A file's sha256 (or length) differs from the manifest."""


class OfflineError(ZooError):
    """``MMOE_OFFLINE`` is set and the cache cannot satisfy the request."""


# ---------------------------------------------------------------- locations


def repo_checkpoints_dir() -> Path | None:
    """The source tree's ``checkpoints/`` folder (editable install or checkout), if any."""
    d = _PKG_DIR.parent / "checkpoints"
    return d if (d / MANIFEST_NAME).is_file() else None


def bundled_weights_dir() -> Path | None:
    """Where the released weight files ship with this install: the wheel's ``mmoe/checkpoints/``
    (package data), else the source tree's ``checkpoints/``; None when neither has them."""
    for d in (_PKG_DIR / "checkpoints", _PKG_DIR.parent / "checkpoints"):
        if (d / MANIFEST_NAME).is_file() and any(d.glob("*.safetensors")):
            return d
    return None


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


def download_timeout() -> float:
    """``MMOE_DOWNLOAD_TIMEOUT`` in seconds (default 600): the overall limit of one download."""
    raw = os.environ.get("MMOE_DOWNLOAD_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_DOWNLOAD_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ZooError(f"MMOE_DOWNLOAD_TIMEOUT: expected a positive number of seconds, got {raw!r}")
    return value


def base_url() -> str:
    """Base URL of the weight files, always ending in ``/``."""
    url = os.environ.get("MMOE_ZOO_URL", "").strip()
    if not url:
        bundled = bundled_weights_dir()
        if bundled is None:
            raise ZooError(
                "no model-zoo location: this install carries no weight files; set MMOE_ZOO_URL to the base URL "
                "(http://, https://, file://) or the directory that holds the .safetensors files"
            )
        url = bundled.as_uri()
    else:
        try:
            if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", url):  # a plain directory path
                url = Path(url).expanduser().resolve().as_uri()
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except (ValueError, RuntimeError) as exc:  # RuntimeError: expanduser without a home
            raise ZooError(f"MMOE_ZOO_URL: malformed URL or path {url!r}: {exc}") from exc
        if parts.scheme.lower() in ("http", "https") and not parts.hostname:
            raise ZooError(f"MMOE_ZOO_URL: no host in {url!r}")
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise ZooError(f"MMOE_ZOO_URL: expected an http://, https:// or file:// URL or a directory, got {url!r}")
    return url.rstrip("/") + "/"


# ---------------------------------------------------------------- manifest


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_entry(e: Any, where: Path) -> dict[str, Any]:
    """Check one manifest row; errors name the model and the key."""
    if not isinstance(e, dict):
        raise ZooError(f"{where}: each model entry must be an object, got {type(e).__name__}")
    name = e.get("name", "?")
    missing = [k for k in ENTRY_KEYS if k not in e]
    if missing:
        raise ZooError(f"{where}: model entry {reprlib.repr(name)} lacks keys {missing}")

    def bad(key: str, expected: str) -> ZooError:
        return ZooError(f"{where}: model {reprlib.repr(name)}: {key!r} must be {expected}, got {reprlib.repr(e[key])}")

    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise bad("name", f"a string matching {NAME_RE.pattern}")
    for key in _TEXT_KEYS:
        if not isinstance(e[key], str):
            raise bad(key, "a string")
    f = e["file"]
    # a file name, never a path: the cache must not be escaped by a manifest row
    if (
        not isinstance(f, str) or not f.strip() or any(c < " " for c in f)
        or Path(f).name != f or f.startswith(".") or "\\" in f
    ):
        raise bad("file", "a plain file name (no path, no leading dot, no control characters)")
    if not isinstance(e["sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", e["sha256"]):
        raise bad("sha256", "64 lowercase hex digits")
    size = e["size_bytes"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise bad("size_bytes", "a non-negative integer")
    metrics = e["metrics"]
    if not isinstance(metrics, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in metrics.items()):
        raise bad("metrics", "an object of name -> number")
    return e


def _check_models(models: Any, where: Path) -> None:
    if not isinstance(models, list):
        raise ZooError(f"{where}: expected an object with a 'models' list")
    names: set[str] = set()
    files: set[str] = set()
    for e in models:
        _check_entry(e, where)
        if e["name"] in names:
            raise ZooError(f"{where}: model {e['name']!r} appears twice")
        # two rows sharing one cache file would overwrite each other's download
        if e["file"] in files:
            raise ZooError(f"{where}: model {e['name']!r}: 'file' {e['file']!r} is used by another model")
        names.add(e["name"])
        files.add(e["file"])


def read_manifest(path: Path | None = None) -> dict[str, Any]:
    """Parse and check a manifest; ``{"models": []}`` when none is installed."""
    path = manifest_path() if path is None else Path(path)
    if path is None or not path.is_file():
        return {"models": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ZooError(f"{path}: not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise ZooError(f"{path}: JSON nested too deeply") from exc
    if not isinstance(data, dict):
        raise ZooError(f"{path}: expected an object with a 'models' list")
    _check_models(data.get("models"), path)
    return data


def write_manifest(data: dict[str, Any], path: Path) -> None:
    """Write a manifest atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    _check_models(data.get("models"), path)
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
        os.chmod(tmp, FILE_MODE)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cache_error(cache: Path, exc: BaseException) -> ZooError:
    return ZooError(f"cannot use the model cache {cache} (set MMOE_HOME to a writable folder): {exc}")


def _cached_sha256(path: Path) -> str | None:
    """sha256 of the cached file, ``None`` when there is none."""
    try:
        return file_sha256(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise _cache_error(path.parent, exc) from exc


@contextlib.contextmanager
def _locked(lock: Path, wait: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock``, waiting at most ``wait`` seconds for it."""
    try:
        # read-only suffices for flock, so users who may not write the lock file can take it
        fd = os.open(lock, os.O_RDONLY | os.O_CREAT, FILE_MODE)
    except (OSError, ValueError) as exc:
        raise _cache_error(lock.parent, exc) from exc
    try:
        if fcntl is not None:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ZooError(f"{lock}: another process held the download lock for over {wait:g} s") from None
                    time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_stale_parts(cache: Path, file: str) -> None:
    """Delete ``.part`` files of ``file``; call only under its lock (see the module docstring)."""
    part = re.compile(re.escape(f".{file}.") + r"[A-Za-z0-9_]+\.part")  # mkstemp's random part
    for p in cache.iterdir():
        if part.fullmatch(p.name):
            p.unlink(missing_ok=True)


def _open_url(url: str, timeout: float) -> tuple[BinaryIO, int | None]:
    req = urllib.request.Request(url, headers={"User-Agent": f"mmoe/{__version__}"})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - scheme checked in base_url()
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise ZooError(f"cannot download {url}: {exc}") from exc
    length = resp.headers.get("Content-Length")
    return resp, (int(length) if length and length.isdigit() else None)


def _download(url: str, dest: Path, sha256: str, size: int | None, timeout: float) -> None:
    """Download ``url`` to ``dest``: temp file, check length and hash, then rename.

    Stops after ``timeout`` seconds in all, or as soon as more than ``size`` bytes arrived.
    """
    deadline = time.monotonic() + timeout
    try:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise _cache_error(dest.parent, exc) from exc
    os.close(fd)
    try:
        h, n = hashlib.sha256(), 0
        resp, total = _open_url(url, min(_SOCKET_TIMEOUT, timeout))
        # read1 returns what has arrived (read(n) would wait for all n bytes of a trickle)
        read = getattr(resp, "read1", resp.read)
        with resp, open(tmp, "wb") as out, tqdm(
            total=total or size, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, disable=None, leave=False
        ) as bar:
            try:
                # asking for at most size + 1 bytes is enough to notice an oversized body
                while chunk := read(_CHUNK if size is None else min(_CHUNK, size + 1 - n)):
                    out.write(chunk)
                    h.update(chunk)
                    n += len(chunk)
                    bar.update(len(chunk))
                    if size is not None and n > size:
                        raise HashMismatchError(f"{url}: the server sent more than the manifest's {size} bytes")
                    if time.monotonic() > deadline:
                        raise ZooError(
                            f"download of {url} took over {timeout:g} s (MMOE_DOWNLOAD_TIMEOUT) and was "
                            f"stopped after {n} bytes"
                        )
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
        os.chmod(tmp, FILE_MODE)  # mkstemp makes it private; a shared cache should be readable
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch(name: str) -> Path:
    """The verified cached weight file of zoo model ``name``, downloading it if needed.

    The cached file's sha256 is recomputed on every call; a wrong one is replaced by a
    fresh download (or raises when offline). Safe for concurrent processes: files are
    only ever replaced by rename, and check + download run under a per-model lock.
    Callers that then read the file should use :func:`fetch_bytes`, which verifies the
    very bytes it returns.
    """
    entry = get_entry(name)
    cache = cache_dir()
    path = cache / entry["file"]
    got = _cached_sha256(path)  # no lock needed: a reader sees one whole version of the file
    if got == entry["sha256"]:
        return path
    if is_offline() and not (got is None and base_url().startswith("file:")):
        if got is None:
            raise OfflineError(
                f"model {name!r} is not in the cache {cache} and MMOE_OFFLINE=1 forbids downloading it "
                f"(its source {base_url()} is not local); "
                f"run `mmoe-zoo download {name}` while online, or unset MMOE_OFFLINE"
            )
        raise HashMismatchError(
            f"model {name!r}: cached file {path} has sha256 {got}, the manifest says {entry['sha256']} "
            "(corrupted or an older version); MMOE_OFFLINE=1 forbids downloading it again"
        )
    timeout = download_timeout()
    url = base_url() + urllib.parse.quote(entry["file"])
    locks = cache.parent / "locks"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        locks.mkdir(exist_ok=True)
    except (OSError, ValueError) as exc:
        raise _cache_error(cache, exc) from exc
    # the holder of the lock finishes within its deadline plus one socket operation
    with _locked(locks / f"zoo.{entry['file']}.lock", timeout + _SOCKET_TIMEOUT):
        _remove_stale_parts(cache, entry["file"])
        if _cached_sha256(path) == entry["sha256"]:  # another process downloaded it meanwhile
            return path
        path.unlink(missing_ok=True)  # a known-bad copy must not survive a failed download
        _download(url, path, entry["sha256"], entry["size_bytes"], timeout)
    return path


def fetch_bytes(name: str) -> bytes:
    """The content of zoo model ``name``'s weight file, read once and verified (sha256).

    Unlike ``fetch(name).read_bytes()`` no file can be swapped between check and read.
    """
    entry = get_entry(name)

    def read_verified() -> bytes | None:
        try:
            data = (cache_dir() / entry["file"]).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _cache_error(cache_dir(), exc) from exc
        return data if hashlib.sha256(data).hexdigest() == entry["sha256"] else None

    data = read_verified()
    if data is None:
        path = fetch(name)  # downloads, or raises the offline / mismatch errors
        data = read_verified()
        if data is None:
            raise HashMismatchError(f"model {name!r}: {path} changed while being read; try again")
    return data
