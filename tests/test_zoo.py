"""Model zoo and ``mmoe.load``: downloads from a local HTTP server, hashes, cache,
offline mode, strict loading, export from Lightning checkpoints and the CLI."""

from __future__ import annotations

import json
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from conftest import QuietHandler, serve_zoo
import torch
from safetensors.torch import save_file
from torch import nn

from mmoe import loading, zoo
from mmoe.loading import load
from mmoe.zoo_cli import main

ROOT = Path(__file__).resolve().parents[1]


class TinyTask(L.LightningModule):
    """Stand-in for a BaseMoETask: typed JSON init args, save_hyperparameters, predict."""

    def __init__(self, dim: int = 4, out: int = 3, scale: float = 1.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(dim, 8), nn.GELU(), nn.Linear(8, out))
        self.register_buffer("offset", torch.zeros(out))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale + self.offset

    @torch.no_grad()
    def predict(self, x: Any) -> torch.Tensor:
        return self(torch.as_tensor(x, dtype=torch.float32))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mmoe_class_path"] = f"{type(self).__module__}.{type(self).__qualname__}"


CLASS_PATH = f"{TinyTask.__module__}.{TinyTask.__qualname__}"
X = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))


def make_model(seed: int = 0) -> TinyTask:
    torch.manual_seed(seed)
    m = TinyTask(dim=4, out=3, scale=2.0)
    with torch.no_grad():
        m.offset.add_(0.5)
    return m.eval()


def write_zoo_file(model: nn.Module, path: Path, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A zoo file in the contract's format, written independently of the export code."""
    tensors = tensors if tensors is not None else {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"class_path": CLASS_PATH, "init_args": json.dumps(dict(model.hparams)), "task": "toy", "mmoe_version": "0.1.0"}
    save_file(tensors, str(path), metadata=meta)
    return path


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"models": rows}))


def row_for(name: str, file: Path, sha256: str | None = None) -> dict[str, Any]:
    return {
        "name": name, "task": "toy", "config": "toy/tiny.yaml", "file": file.name,
        "sha256": sha256 or zoo.file_sha256(file), "size_bytes": file.stat().st_size,
        "training_data": "random", "metrics": {"mse": 0.1}, "description": "tiny test model",
    }


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MMOE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MMOE_ZOO_MANIFEST", str(tmp_path / "manifest.json"))
    monkeypatch.delenv("MMOE_ZOO_URL", raising=False)
    monkeypatch.delenv("MMOE_OFFLINE", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(loading, "TRUSTED_MODULES", ["mmoe", TinyTask.__module__])
    write_manifest(tmp_path / "manifest.json", [])
    return tmp_path


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, tuple[bytes, int | None]]]:
    """127.0.0.1 HTTP server: file name -> (body, declared Content-Length or None)."""
    files: dict[str, tuple[bytes, int | None]] = {}

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            name = urllib.parse.unquote(self.path.lstrip("/"))
            if name not in files:
                self.send_error(404)
                return
            body, length = files[name]
            self.send_response(200)
            self.send_header("Content-Length", str(length if length is not None else len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True  # a short body then EOF: the cut-off case

    with serve_zoo(Handler, monkeypatch):
        yield files


def publish(env: Path, files: dict[str, tuple[bytes, int | None]], name: str = "tiny", **kw: Any) -> tuple[TinyTask, Path]:
    model = make_model()
    (env / "src").mkdir(exist_ok=True)
    f = write_zoo_file(model, env / "src" / f"{name}.safetensors")
    files[f"zoo/{f.name}"] = (f.read_bytes(), kw.get("length"))
    write_manifest(env / "manifest.json", [row_for(name, f, kw.get("sha256"))])
    return model, f


def cache_files(env: Path) -> list[Path]:
    d = env / "home" / "zoo"
    return sorted(d.iterdir()) if d.exists() else []


# ---------------------------------------------------------------- downloads


def test_http_download_loads_same_predictions(env: Path, server: dict) -> None:
    model, _ = publish(env, server)
    assert [m["name"] for m in zoo.list_models()] == ["tiny"] and zoo.list_models("other") == []
    loaded = load("tiny")
    assert isinstance(loaded, TinyTask) and not loaded.training
    torch.testing.assert_close(loaded.predict(X.numpy()), model.predict(X), rtol=0, atol=0)
    assert [p.name for p in cache_files(env)] == ["tiny.safetensors"]
    torch.testing.assert_close(load("tiny").predict(X), model.predict(X), rtol=0, atol=0)  # from the cache


def test_hash_mismatch_leaves_nothing(env: Path, server: dict) -> None:
    publish(env, server, sha256="0" * 64)
    with pytest.raises(zoo.HashMismatchError, match="does not match the manifest"):
        zoo.fetch("tiny")
    assert cache_files(env) == []


def test_cut_off_download_leaves_nothing(env: Path, server: dict) -> None:
    _, f = publish(env, server, length=10_000_000)
    with pytest.raises(zoo.ZooError, match="cut off"):
        zoo.fetch("tiny")
    assert cache_files(env) == []


def test_http_404_is_clear(env: Path, server: dict) -> None:
    publish(env, server)
    server.clear()
    with pytest.raises(zoo.ZooError, match="404"):
        zoo.fetch("tiny")
    assert cache_files(env) == []


def test_offline_empty_cache(env: Path, server: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    publish(env, server)
    monkeypatch.setenv("MMOE_OFFLINE", "1")
    with pytest.raises(zoo.OfflineError) as exc:
        load("tiny")
    assert "'tiny'" in str(exc.value) and str(env / "home" / "zoo") in str(exc.value)


def test_offline_copies_from_a_local_source(env: Path, server: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline means no network: a local source (a directory, as the bundled weights are) still fills the cache."""
    model, f = publish(env, server)
    monkeypatch.setenv("MMOE_ZOO_URL", str(f.parent))
    monkeypatch.setenv("MMOE_OFFLINE", "1")
    torch.testing.assert_close(load("tiny").predict(X), model.predict(X), rtol=0, atol=0)
    assert [p.name for p in cache_files(env)] == [f.name]
    server.clear()
    monkeypatch.setenv("MMOE_ZOO_URL", "http://127.0.0.1:9/zoo/")  # a remote source: the cache only
    (env / "home" / "zoo" / f.name).unlink()
    with pytest.raises(zoo.OfflineError, match="not local"):
        load("tiny")


def test_offline_warm_cache(env: Path, server: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = publish(env, server)
    zoo.fetch("tiny")
    server.clear()  # the server has nothing left to give
    monkeypatch.setenv("MMOE_OFFLINE", "1")
    torch.testing.assert_close(load("tiny").predict(X), model.predict(X), rtol=0, atol=0)


def test_corrupted_cache_detected(env: Path, server: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = publish(env, server)
    cached = zoo.fetch("tiny")
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF
    cached.write_bytes(bytes(data))
    monkeypatch.setenv("MMOE_OFFLINE", "1")
    with pytest.raises(zoo.HashMismatchError, match="corrupted"):
        load("tiny")
    monkeypatch.delenv("MMOE_OFFLINE")
    torch.testing.assert_close(load("tiny").predict(X), model.predict(X), rtol=0, atol=0)  # re-downloaded
    assert zoo.file_sha256(cached) == zoo.list_models()[0]["sha256"]


def test_default_base_url_is_repo_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    assert zoo.base_url() == (ROOT / "checkpoints").as_uri() + "/"
    monkeypatch.setenv("MMOE_ZOO_URL", "ftp://example.invalid/zoo")
    with pytest.raises(zoo.ZooError, match="MMOE_ZOO_URL"):
        zoo.base_url()
    monkeypatch.delenv("MMOE_ZOO_MANIFEST")
    assert isinstance(zoo.list_models(), list)  # the repository's manifest parses


# ---------------------------------------------------------------- strict loading


def test_strict_keys(tmp_path: Path) -> None:
    model = make_model()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    f = write_zoo_file(model, tmp_path / "ok.safetensors", sd)
    torch.testing.assert_close(load(f).predict(X), model.predict(X), rtol=0, atol=0)
    extra = write_zoo_file(model, tmp_path / "extra.safetensors", {**sd, "net.9.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match=r"unexpected keys \['net.9.weight'\]"):
        load(extra)
    missing = write_zoo_file(model, tmp_path / "missing.safetensors", {k: v for k, v in sd.items() if k != "offset"})
    with pytest.raises(RuntimeError, match=r"missing keys \['offset'\]"):
        load(str(missing))
    shape = write_zoo_file(model, tmp_path / "shape.safetensors", {**sd, "offset": torch.zeros(7)})
    with pytest.raises(RuntimeError, match="size mismatch"):
        load(shape)


def test_untrusted_class_path_is_not_imported(tmp_path: Path) -> None:
    f = tmp_path / "evil.safetensors"
    save_file({"w": torch.zeros(1)}, str(f), metadata={"class_path": "antigravity.Foo", "init_args": "{}"})
    with pytest.raises(ValueError, match="trusted"):
        load(f)
    assert "antigravity" not in sys.modules


# ---------------------------------------------------------------- Lightning checkpoints and export


def hand_written_ckpt(path: Path, model: TinyTask) -> Path:
    """The format `mmoe fit` writes, incl. the keys LightningCLI adds to hparams."""
    hp = {**dict(model.hparams), "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hp, "mmoe_class_path": CLASS_PATH}, path)
    return path


def trainer_ckpt(path: Path) -> TinyTask:
    model = TinyTask(dim=4, out=3, scale=2.0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 3))
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(path.parent),
    )
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
    trainer.save_checkpoint(path)
    return model.eval()


def test_load_lightning_ckpt(tmp_path: Path) -> None:
    model = make_model()
    ckpt = hand_written_ckpt(tmp_path / "m.ckpt", model)
    torch.testing.assert_close(load(ckpt).predict(X), model.predict(X), rtol=0, atol=0)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {}}, tmp_path / "nocls.ckpt")
    with pytest.raises(ValueError, match="mmoe_class_path"):
        load(tmp_path / "nocls.ckpt")


def test_export_from_trainer_ckpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    model = trainer_ckpt(tmp_path / "run.ckpt")
    out = tmp_path / "out"
    args = ["export", "--ckpt", str(tmp_path / "run.ckpt"), "--name", "tiny-v1", "--config", "toy/tiny.yaml",
            "--task", "toy", "--training-data", "8 random samples", "--out-dir", str(out)]
    assert main([*args, "--metrics", '{"mse": 0.25, "acc": 1}', "--description", "first"]) == 0
    metrics_file = tmp_path / "metrics.json"
    metrics_file.write_text('{"mse": 0.125}')
    assert main([*args, "--metrics", str(metrics_file)]) == 0  # replaces the row
    rows = json.loads((out / "manifest.json").read_text())["models"]
    assert len(rows) == 1
    (row,) = rows
    assert row["metrics"] == {"mse": 0.125} and row["file"] == "tiny-v1.safetensors" and row["config"] == "toy/tiny.yaml"
    assert row["sha256"] == zoo.file_sha256(out / "tiny-v1.safetensors")
    assert row["size_bytes"] == (out / "tiny-v1.safetensors").stat().st_size
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "tiny-v1.safetensors"]  # no temp files
    from safetensors import safe_open

    with safe_open(str(out / "tiny-v1.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["class_path"] == CLASS_PATH and meta["task"] == "toy" and "mmoe_version" in meta
    assert json.loads(meta["init_args"]) == {"dim": 4, "out": 3, "scale": 2.0}
    # served from a plain directory with the exported manifest
    monkeypatch.setenv("MMOE_ZOO_URL", str(out))
    monkeypatch.setenv("MMOE_ZOO_MANIFEST", str(out / "manifest.json"))
    torch.testing.assert_close(load("tiny-v1").predict(X), model.predict(X), rtol=0, atol=0)
    torch.testing.assert_close(load(str(tmp_path / "run.ckpt")).predict(X), model.predict(X), rtol=0, atol=0)


# ---------------------------------------------------------------- CLI and bad input


def test_cli_list_download_verify(env: Path, server: dict, capsys: pytest.CaptureFixture) -> None:
    publish(env, server)
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "tiny" in listed and "weights from http://127.0.0.1" in listed and "(MMOE_ZOO_URL)" in listed
    assert main(["list", "--json", "--task", "toy"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "tiny"
    assert main(["verify"]) == 0  # nothing cached yet
    assert main(["verify", "tiny"]) == 1  # named but not cached
    assert main(["download", "tiny"]) == 0
    cached = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["verify"]) == 0 and main(["verify", "tiny", str(cached)]) == 0
    cached.write_bytes(cached.read_bytes()[:-1] + b"\0")
    capsys.readouterr()
    assert main(["verify"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_bad_input_names_the_argument(env: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match=r"name: unknown model 'nope'; known models"):
        load("nope")
    with pytest.raises(FileNotFoundError, match="name_or_path"):
        load(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="name_or_path"):
        load("some/dir/missing.ckpt")
    with pytest.raises(TypeError, match="name_or_path"):
        load(3)  # type: ignore[arg-type]
    assert main(["download", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["verify", "nope"]) == 2
    base = ["export", "--name", "x", "--config", "toy/x.yaml", "--task", "toy", "--training-data", "d", "--out-dir", str(tmp_path)]
    assert main([*base, "--ckpt", str(tmp_path / "no.ckpt"), "--metrics", "{}"]) == 2
    assert "--ckpt" in capsys.readouterr().err
    hand_written_ckpt(tmp_path / "m.ckpt", make_model())
    assert main([*base, "--ckpt", str(tmp_path / "m.ckpt"), "--metrics", "[1]"]) == 2
    assert "--metrics" in capsys.readouterr().err
    assert main([*base, "--ckpt", str(tmp_path / "m.ckpt"), "--metrics", '{"a": "x"}']) == 2
    assert main([*base[:2], "bad name", *base[3:], "--ckpt", str(tmp_path / "m.ckpt"), "--metrics", "{}"]) == 2
    assert "--name" in capsys.readouterr().err
    assert not (tmp_path / "manifest.json").read_text().count('"x"')  # nothing written by the failures
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    with pytest.raises(SystemExit) as exc:
        main(["export", "--name", "x"])
    assert exc.value.code == 2
