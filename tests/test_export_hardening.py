"""`mmoe-zoo export` publishes nothing half and reports bad files and names without a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmoe.settings import MoESettings
from mmoe.tasks import PDETask
from mmoe.zoo_cli import main

SMALL = dict(patch_size=4, dim=16, depth=1, num_heads=2, hidden_dim=16, moe=MoESettings(router="nested", groups=2, num_experts=4, top_k=1))


def _ckpt(path: Path) -> Path:
    task = PDETask(**SMALL)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "mmoe_class_path": "mmoe.tasks.pde.task.PDETask"}, path)
    return path


def _export(ckpt: Path, out: Path, name: str = "m") -> int:
    return main(["export", "--ckpt", str(ckpt), "--name", name, "--config", "pde/nested_moe_2d.yaml", "--task", "pde",
                 "--training-data", "test", "--metrics", "{}", "--out-dir", str(out)])


def test_export_writes_weights_and_row(tmp_path: Path) -> None:
    assert _export(_ckpt(tmp_path / "a.ckpt"), tmp_path / "zoo") == 0
    assert (tmp_path / "zoo" / "m.safetensors").is_file() and (tmp_path / "zoo" / "manifest.json").is_file()


def test_corrupt_manifest_publishes_no_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "zoo"
    out.mkdir()
    (out / "manifest.json").write_text("{not json")
    assert _export(_ckpt(tmp_path / "a.ckpt"), out) != 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]  # no weights without a row, no temp files
    assert "manifest.json" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", None])
def test_unreadable_checkpoint_is_an_error_not_a_traceback(tmp_path: Path, content: bytes | None,
                                                           capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.ckpt"
    if content is None:
        torch.save(torch.zeros(3), bad)  # a tensor, not a checkpoint
    else:
        bad.write_bytes(content)
    assert _export(bad, tmp_path / "zoo") == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err and str(bad) in err
    assert not (tmp_path / "zoo").exists() or not list((tmp_path / "zoo").glob("*.safetensors"))


def test_name_with_a_newline_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _export(_ckpt(tmp_path / "a.ckpt"), tmp_path / "zoo", name="m\n") == 2
    assert "--name" in capsys.readouterr().err
