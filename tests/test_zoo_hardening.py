"""Model-zoo cache hardening: download deadline and size cap, stale ``.part`` files,
concurrent fetches, manifest validation, environment faults and file modes.

Every server is a thread on 127.0.0.1 and every wait is bounded in time and count. The
"weights" are random bytes: ``fetch`` checks length and sha256, it does not parse them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import QuietHandler, serve_zoo

from mmoe import zoo
from mmoe.zoo_cli import main

MMOE_DIR = Path(zoo.__file__).resolve().parent

# Runs the zoo module in a child process without mmoe/__init__ (it imports torch: seconds per
# process on a small shared machine). argv: mmoe dir, model name, then "go" file (or "-").
CHILD = r"""
import hashlib, os, sys, time, types
pkg = types.ModuleType("mmoe")
pkg.__path__ = [sys.argv[1]]
pkg.__version__ = "test"
sys.modules["mmoe"] = pkg
from mmoe import zoo
name, go = sys.argv[2], sys.argv[3]
if go != "-":
    open(go + "." + str(os.getpid()) + ".ready", "w").close()
    for _ in range(30_000):  # at most ~30 s
        if os.path.exists(go):
            break
        time.sleep(0.001)
path = zoo.fetch(name)
data = zoo.fetch_bytes(name)
print(zoo.file_sha256(path), hashlib.sha256(data).hexdigest())
"""


@dataclass
class Route:
    """What the server sends for one path: ``chunk`` ``count`` times, ``delay`` s apart."""

    chunk: bytes
    count: int = 1
    delay: float = 0.0
    length: int | None = None  # Content-Length header; None: none (body ends at close)


def row(name: str, data: bytes, **over: Any) -> dict[str, Any]:
    r = {
        "name": name, "task": "toy", "config": "toy/tiny.yaml", "file": f"{name}.bin",
        "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data),
        "training_data": "random", "metrics": {"mse": 0.1}, "description": "test weights",
    }
    return {**r, **over}


def write_manifest(env: Path, rows: list[dict[str, Any]]) -> None:
    (env / "manifest.json").write_text(json.dumps({"models": rows}))


def cache(env: Path) -> Path:
    return env / "home" / "zoo"


def cache_names(env: Path) -> list[str]:
    d = cache(env)
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MMOE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MMOE_ZOO_MANIFEST", str(tmp_path / "manifest.json"))
    monkeypatch.delenv("MMOE_ZOO_URL", raising=False)
    monkeypatch.delenv("MMOE_OFFLINE", raising=False)
    monkeypatch.delenv("MMOE_DOWNLOAD_TIMEOUT", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    write_manifest(tmp_path, [])
    return tmp_path


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Route]]:
    """127.0.0.1 HTTP server serving ``routes`` (file name -> Route) under ``/zoo/``."""
    routes: dict[str, Route] = {}

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            r = routes.get(urllib.parse.unquote(self.path.rsplit("/", 1)[-1]))
            if r is None:
                self.send_error(404)
                return
            self.send_response(200)
            if r.length is not None:
                self.send_header("Content-Length", str(r.length))
            self.end_headers()
            try:
                for _ in range(r.count):
                    self.wfile.write(r.chunk)
                    self.wfile.flush()
                    time.sleep(r.delay)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up: what the deadline and size tests want
            self.close_connection = True

    with serve_zoo(Handler, monkeypatch):
        yield routes


def child(name: str, go: Path | None = None, **kw: Any) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", CHILD, str(MMOE_DIR), name, str(go) if go else "-"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# ---------------------------------------------------------------- 1. deadline and size cap


def test_trickling_server_hits_the_deadline(env: Path, server: dict[str, Route], monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(1000)
    write_manifest(env, [row("slow", data)])
    server["slow.bin"] = Route(b"x", count=40, delay=0.15)  # 6 s in all, one byte at a time
    monkeypatch.setenv("MMOE_DOWNLOAD_TIMEOUT", "1")
    t0 = time.monotonic()
    with pytest.raises(zoo.ZooError, match=r"took over 1 s \(MMOE_DOWNLOAD_TIMEOUT\)"):
        zoo.fetch("slow")
    assert time.monotonic() - t0 < 4
    assert cache_names(env) == []  # no .part left


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf"])
def test_bad_download_timeout_names_the_variable(env: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    data = os.urandom(100)
    (env / "src").mkdir()
    (env / "src" / "m.bin").write_bytes(data)
    write_manifest(env, [row("m", data)])
    monkeypatch.setenv("MMOE_ZOO_URL", str(env / "src"))
    monkeypatch.setenv("MMOE_DOWNLOAD_TIMEOUT", value)
    with pytest.raises(zoo.ZooError, match=f"MMOE_DOWNLOAD_TIMEOUT: .*{value!r}"):
        zoo.fetch("m")
    monkeypatch.setenv("MMOE_DOWNLOAD_TIMEOUT", " 2.5 ")
    assert zoo.download_timeout() == 2.5
    monkeypatch.delenv("MMOE_DOWNLOAD_TIMEOUT")
    assert zoo.download_timeout() == 600
    assert zoo.fetch("m").read_bytes() == data


def test_oversized_body_stops_at_size_bytes(env: Path, server: dict[str, Route], monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(1000)
    write_manifest(env, [row("big", data)])
    server["big.bin"] = Route(os.urandom(1 << 16), count=800)  # 50 MiB, no Content-Length
    read = [0]
    real_urlopen = urllib.request.urlopen

    class Counting:
        """The response, counting the bytes the client takes from it."""

        def __init__(self, resp: Any) -> None:
            self.resp = resp

        def _count(self, b: bytes) -> bytes:
            read[0] += len(b)
            return b

        def read(self, *a: Any) -> bytes:
            return self._count(self.resp.read(*a))

        def read1(self, *a: Any) -> bytes:
            return self._count(self.resp.read1(*a))

        def __getattr__(self, key: str) -> Any:
            return getattr(self.resp, key)

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.resp.close()

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Counting(real_urlopen(*a, **k)))
    with pytest.raises(zoo.HashMismatchError, match="more than the manifest's 1000 bytes"):
        zoo.fetch("big")
    assert 1000 < read[0] <= 1000 + (1 << 20)
    assert cache_names(env) == []


# ---------------------------------------------------------------- 2. stale .part files


def test_part_of_a_killed_download_is_removed_at_the_next_fetch(env: Path, server: dict[str, Route]) -> None:
    data = os.urandom(1000)
    write_manifest(env, [row("m", data), row("other", b"o")])
    server["m.bin"] = Route(b"x", count=200, delay=0.1)  # slow enough to be killed mid-way
    proc = child("m")
    try:
        for _ in range(300):  # at most ~30 s (the child imports tqdm first)
            if any(n.endswith(".part") for n in cache_names(env)) or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert [n for n in cache_names(env) if n.endswith(".part")], proc.communicate(timeout=10)
        proc.send_signal(signal.SIGTERM)  # no handler: the .part stays behind
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    # another model's leftover is not this fetch's business
    (cache(env) / ".other.bin.abc_123.part").write_bytes(b"o")
    server["m.bin"] = Route(data)
    assert zoo.fetch("m").read_bytes() == data
    assert cache_names(env) == [".other.bin.abc_123.part", "m.bin"]


# ---------------------------------------------------------------- 3. concurrent fetches


def test_concurrent_fetches_repair_a_corrupted_cache(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 8 MiB: hashing takes long enough for the processes' checks to overlap
    data = os.urandom(8 << 20)
    (env / "src").mkdir()
    (env / "src" / "m.bin").write_bytes(data)
    write_manifest(env, [row("m", data)])
    monkeypatch.setenv("MMOE_ZOO_URL", (env / "src").as_uri())
    cache(env).mkdir(parents=True)
    (cache(env) / "m.bin").write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    go = env / "go"
    procs = [child("m", go) for _ in range(4)]
    try:
        for _ in range(600):  # at most ~60 s for the children to start
            if len(list(env.glob("go.*.ready"))) == len(procs) or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.1)
        go.touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    want = hashlib.sha256(data).hexdigest()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert out.split() == [want, want]
    assert cache_names(env) == ["m.bin"]
    assert zoo.file_sha256(cache(env) / "m.bin") == want


def test_fetch_bytes_verifies_what_it_returns(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(1000)
    (env / "src").mkdir()
    (env / "src" / "m.bin").write_bytes(data)
    write_manifest(env, [row("m", data)])
    monkeypatch.setenv("MMOE_ZOO_URL", str(env / "src"))
    assert zoo.fetch_bytes("m") == data  # downloaded
    (cache(env) / "m.bin").write_bytes(b"corrupt")
    monkeypatch.setenv("MMOE_OFFLINE", "1")
    with pytest.raises(zoo.HashMismatchError, match="corrupted"):
        zoo.fetch_bytes("m")
    monkeypatch.delenv("MMOE_OFFLINE")
    assert zoo.fetch_bytes("m") == data  # downloaded again
    assert zoo.fetch_bytes("m") == data  # from the cache


# ---------------------------------------------------------------- 4. manifest validation


BAD_FIELDS = [
    ("file", ""), ("file", "   "), ("file", "a\0b.bin"), ("file", "a\nb.bin"),
    ("size_bytes", "12"), ("size_bytes", -1), ("size_bytes", True), ("size_bytes", 1.5),
    ("metrics", [1]), ("metrics", None), ("metrics", {"a": "x"}), ("metrics", {"a": True}), ("metrics", {"a": [1]}),
    ("name", "bad name"), ("name", ""), ("name", "x\n"), ("name", 3),
    ("task", 3), ("config", None), ("training_data", []), ("description", {}),
]


@pytest.mark.parametrize(("key", "value"), BAD_FIELDS)
def test_manifest_rejects_bad_field(env: Path, key: str, value: Any, capsys: pytest.CaptureFixture) -> None:
    bad = {**row("m", b"x"), key: value}
    write_manifest(env, [bad])
    with pytest.raises(zoo.ZooError, match=re.escape(f"model {bad['name']!r}: '{key}' must be")):
        zoo.read_manifest()
    with pytest.raises(zoo.ZooError, match=f"'{key}' must be"):
        zoo.write_manifest({"models": [bad]}, env / "out.json")
    assert not (env / "out.json").exists()
    assert main(["list"]) != 0  # a clear error, not a crash
    assert f"'{key}' must be" in capsys.readouterr().err


def test_manifest_rejects_duplicates_and_deep_nesting(env: Path) -> None:
    write_manifest(env, [row("m", b"x"), row("m", b"y", file="other.bin")])
    with pytest.raises(zoo.ZooError, match="model 'm' appears twice"):
        zoo.read_manifest()
    write_manifest(env, [row("m", b"x"), row("n", b"y", file="m.bin")])
    with pytest.raises(zoo.ZooError, match="model 'n': 'file' 'm.bin' is used by another model"):
        zoo.read_manifest()
    (env / "manifest.json").write_text('{"models": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(zoo.ZooError, match="nested too deeply"):
        zoo.read_manifest()
    write_manifest(env, [row("m", b"x", dtype="float16", metrics={"a": 1, "b": 0.5})])  # extra keys are fine
    assert zoo.list_models()[0]["dtype"] == "float16"


# ---------------------------------------------------------------- 5. environment faults


def test_unwritable_home_names_the_variable(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(100)
    (env / "src").mkdir()
    (env / "src" / "m.bin").write_bytes(data)
    write_manifest(env, [row("m", data)])
    monkeypatch.setenv("MMOE_ZOO_URL", str(env / "src"))
    (env / "regular").write_text("a file, not a folder")
    monkeypatch.setenv("MMOE_HOME", str(env / "regular" / "home"))
    with pytest.raises(zoo.ZooError, match="MMOE_HOME"):
        zoo.fetch("m")
    with pytest.raises(zoo.ZooError, match="MMOE_HOME"):
        zoo.fetch_bytes("m")


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:port/zoo", "http:///zoo"])
def test_malformed_zoo_url_names_the_variable(env: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    write_manifest(env, [row("m", b"x")])
    monkeypatch.setenv("MMOE_ZOO_URL", url)
    with pytest.raises(zoo.ZooError, match="MMOE_ZOO_URL"):
        zoo.base_url()
    with pytest.raises(zoo.ZooError, match="MMOE_ZOO_URL"):
        zoo.fetch("m")


# ---------------------------------------------------------------- 6. file modes


def test_written_files_are_0644(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(100)
    (env / "src").mkdir()
    (env / "src" / "m.bin").write_bytes(data)
    write_manifest(env, [row("m", data)])
    monkeypatch.setenv("MMOE_ZOO_URL", str(env / "src"))
    assert stat.S_IMODE(zoo.fetch("m").stat().st_mode) == 0o644
    zoo.write_manifest({"models": [row("m", data)]}, env / "out.json")
    assert stat.S_IMODE((env / "out.json").stat().st_mode) == 0o644
