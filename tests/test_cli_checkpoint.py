"""``SafeCheckpointIO``: Lightning reads ``ckpt_path`` (local or http) with
``torch.load(weights_only=True)``, so a checkpoint's pickle cannot run code; checkpoints that
``mmoe fit`` writes still resume fit and test."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from torch import nn

import mmoe
from mmoe.cli import cli_main
from mmoe.safe_checkpoint import SafeCheckpointIO

SMALL = dict(patch_size=4, dim=16, depth=1, num_heads=2, hidden_dim=16, moe=dict(router="nested", groups=4, num_experts=8, top_k=1),
             modes=3)
PLUGIN = '--trainer.plugins={"class_path": "mmoe.safe_checkpoint.SafeCheckpointIO"}'


class Payload:
    """Unpickling calls ``os.system``: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test/mse", nn.functional.mse_loss(self.net(x), y))


def loader() -> torch.utils.data.DataLoader:
    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 1))
    return torch.utils.data.DataLoader(data, batch_size=4)


def trainer(tmp_path: Path, **kw: Any) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=str(tmp_path), **kw)


def evil_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint Lightning would otherwise restore fine, plus an object whose unpickling runs a command."""
    torch.save({"state_dict": Tiny().state_dict(), "pytorch-lightning_version": L.__version__,
                "epoch": 0, "global_step": 0, "evil": Payload(marker)}, path)
    return path


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """127.0.0.1 HTTP server of ``files`` (name -> body); the torch hub cache goes to tmp_path."""
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(urllib.parse.unquote(self.path.lstrip("/")))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.timeout = 10
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", files
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_stock_lightning_runs_code_from_a_remote_checkpoint(tmp_path: Path, server: tuple) -> None:
    """The attack: without the plugin, Lightning unpickles http(s) checkpoints with weights_only=False."""
    url, files = server
    marker = tmp_path / "pwned"
    files["x.ckpt"] = evil_checkpoint(tmp_path / "x.ckpt", marker).read_bytes()
    trainer(tmp_path).test(Tiny(), loader(), ckpt_path=f"{url}/x.ckpt", verbose=False)
    assert marker.exists()


@pytest.mark.parametrize("where", ["remote", "local"])
def test_safe_io_refuses_code_in_a_checkpoint(tmp_path: Path, server: tuple, where: str) -> None:
    url, files = server
    marker = tmp_path / "pwned"
    path = evil_checkpoint(tmp_path / "x.ckpt", marker)
    files["x.ckpt"] = path.read_bytes()
    ckpt_path = f"{url}/x.ckpt" if where == "remote" else str(path)
    with pytest.raises(ValueError, match=r"x\.ckpt: the checkpoint holds objects that torch.load\(weights_only=True\)"):
        trainer(tmp_path, plugins=[SafeCheckpointIO()]).test(Tiny(), loader(), ckpt_path=ckpt_path, verbose=False)
    assert not marker.exists()
    assert not (tmp_path / "torch_home").exists()  # nothing went into the torch hub cache


def test_safe_io_remote_limits_and_bad_files(tmp_path: Path, server: tuple) -> None:
    url, files = server
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": Tiny().state_dict()}, good)
    files["good.ckpt"], files["empty.ckpt"], files["junk.ckpt"] = good.read_bytes(), b"", b"not a checkpoint"
    io = SafeCheckpointIO()
    assert set(io.load_checkpoint(f"{url}/good.ckpt")["state_dict"]) == {"net.weight", "net.bias"}
    with pytest.raises(FileNotFoundError, match="404"):
        io.load_checkpoint(f"{url}/missing.ckpt")
    with pytest.raises(ValueError, match="max_download_bytes"):
        SafeCheckpointIO(max_download_bytes=100).load_checkpoint(f"{url}/good.ckpt")
    for name in ("empty.ckpt", "junk.ckpt"):
        with pytest.raises(ValueError, match=f"{name}: not a readable PyTorch checkpoint"):
            io.load_checkpoint(f"{url}/{name}")
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        io.load_checkpoint(tmp_path / "list.ckpt")
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(tmp_path / "absent.ckpt")
    with pytest.raises(ValueError, match="max_download_bytes"):
        SafeCheckpointIO(max_download_bytes=0)


def tiny_config(tmp_path: Path) -> Path:
    """A tiny PDE run that also saves a Timer, EarlyStopping and plateau-scheduler state."""
    cfg = {
        "seed_everything": 0, "run_name": "tiny", "run_dir": str(tmp_path / "runs"),
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1,
                    "limit_test_batches": 1, "log_every_n_steps": 1, "enable_model_summary": False,
                    "enable_progress_bar": False, "max_time": "00:00:30:00",
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.EarlyStopping",
                                   "init_args": {"monitor": "val/loss", "patience": 5}}]},
        "optim": {"scheduler": "plateau"},
        "model": {"class_path": "PDETask", "init_args": SMALL},
        "data": {"class_path": "PDEDataModule", "init_args": {
            "spatial_dims": 2, "resolution": 16, "num_samples_per_family": 8, "batch_size": 8,
            "cache_dir": str(tmp_path / "cache")}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_mmoe_fit_checkpoints_resume_and_remote_code_is_refused_through_the_cli(tmp_path: Path, server: tuple) -> None:
    config = tiny_config(tmp_path)
    first = cli_main(["fit", "--config", str(config), PLUGIN])
    assert isinstance(first.trainer.strategy.checkpoint_io, SafeCheckpointIO)
    run = Path(first.trainer.log_dir)
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)  # every part Lightning writes is plain data
    assert {"optimizer_states", "lr_schedulers", "loops", "callbacks", "hyper_parameters",
            "datamodule_hyper_parameters"} <= set(saved)
    assert any(k.startswith("Timer") for k in saved["callbacks"]) and any(
        k.startswith("EarlyStopping") for k in saved["callbacks"])
    steps = first.trainer.global_step
    resumed = cli_main(["fit", "--config", str(config), PLUGIN, "--trainer.max_epochs", "2", "--ckpt_path", str(last)])
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == 2 * steps
    tested = cli_main(["test", "--config", str(config), PLUGIN, "--ckpt_path", str(last)])
    assert "test/rel_l2" in tested.trainer.callback_metrics
    assert not mmoe.load(str(last)).training  # and mmoe.load's checks accept what mmoe fit writes

    url, files = server
    marker = tmp_path / "pwned"
    evil = dict(saved, evil=Payload(marker))
    torch.save(evil, tmp_path / "evil.ckpt")
    files["evil.ckpt"] = (tmp_path / "evil.ckpt").read_bytes()
    with pytest.raises(ValueError, match="weights_only=True"):
        cli_main(["test", "--config", str(config), PLUGIN, "--ckpt_path", f"{url}/evil.ckpt"])
    assert not marker.exists()


def test_cli_uses_safe_checkpoint_io_by_default(tmp_path: Path) -> None:
    cli = cli_main(["--config", str(tiny_config(tmp_path))], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)


def test_plugin_is_serialisable_in_the_saved_run_config(tmp_path: Path) -> None:
    cli = cli_main(["--config", str(tiny_config(tmp_path)), PLUGIN], run=False)
    dumped = cli.parser.dump(cli.config, skip_link_targets=False)
    assert "class_path: mmoe.safe_checkpoint.SafeCheckpointIO" in dumped


def test_a_fit_shorter_than_the_validation_interval_leaves_best_and_test_best_resolves(tmp_path: Path) -> None:
    """No validation ran (val every 10 epochs, 1 epoch of 2 steps): best.ckpt still exists (the
    final weights, with a warning), and `test --ckpt_path best` finds it in the newest run folder."""
    config = tiny_config(tmp_path)
    fit = cli_main(["fit", "--config", str(config), PLUGIN, "--trainer.check_val_every_n_epoch", "10",
                    "--optim.scheduler", "none"])
    assert fit.trainer.global_step == 2 and "val/rel_l2" not in fit.trainer.callback_metrics
    best = Path(fit.trainer.log_dir) / "checkpoints" / "best.ckpt"
    assert best.is_file()
    torch.testing.assert_close(torch.load(best, weights_only=True)["state_dict"], fit.model.state_dict())
    tested = cli_main(["test", "--config", str(config), PLUGIN, "--ckpt_path", "best"])
    assert tested.trainer.ckpt_path == str(best) and "test/rel_l2" in tested.trainer.callback_metrics
    last = cli_main(["test", "--config", str(config), PLUGIN, "--ckpt_path", "last"])
    assert last.trainer.ckpt_path == str(best.with_name("last.ckpt"))


def test_a_missing_checkpoint_is_one_line_and_makes_no_run_folder(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "MMOE_HOME"} | {"MMOE_HOME": str(tmp_path / "home")}
    for ckpt in (str(tmp_path / "absent.ckpt"), "best"):
        run = subprocess.run([sys.executable, "-m", "mmoe", "test", "--config", str(config), "--ckpt_path", ckpt],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert run.returncode == 2, run.stderr[-2000:]
        assert "Traceback" not in run.stderr
        assert run.stderr.strip().splitlines()[-1].startswith("mmoe: error: --ckpt_path")
        assert not (tmp_path / "runs").exists()
