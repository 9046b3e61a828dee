"""Second hardening round (issue 26) of what the CLI and ``mmoe.load`` read from files: a
checkpoint's hyper-parameters pass the same checks through ``--ckpt_path`` as through
``mmoe.load``, class paths are checked before anything is imported, shared-reference bombs are
refused before anything walks them, and a run never writes into the working folder (issue 37)."""

from __future__ import annotations

import functools
import json
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

import mmoe
from mmoe import loading
from mmoe.cli import cli_main
from mmoe.safe_checkpoint import SafeCheckpointIO

CONF = Path(__file__).parent / "conf"


def conf(tmp_path: Path, task: str, **top: Any) -> Path:
    """The shared harness config of ``task`` as a CLI config under ``tmp_path`` (``top`` overrides keys)."""
    cfg = yaml.safe_load((CONF / f"{task}.yaml").read_text())
    cfg.pop("harness")
    cfg.update(top)
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def bomb(levels: int) -> list:
    """``[a, a]`` nested ``levels`` times: a few hundred bytes in a file, ``2**levels`` leaves as a tree."""
    return functools.reduce(lambda a, _: [a, a], range(levels), ["a"])


def ckpt_file(path: Path, hparams: dict[str, Any], **extra: Any) -> Path:
    torch.save({"state_dict": {}, "hyper_parameters": hparams, **extra}, path)
    return path


def marker_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """An importable module whose import writes a marker file: what an unchecked class path runs."""
    marker = tmp_path / "imported"
    (tmp_path / "mmoe_evil_probe.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mmoe_evil_probe", raising=False)
    return "mmoe_evil_probe", marker


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any open_clip build or hub download fails the test: a refusal must come before them."""
    import open_clip

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("a model was built from the checkpoint's hyper-parameters")

    monkeypatch.setattr(open_clip, "create_model", refuse)
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub, "hf_hub_download", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------ 1. --ckpt_path hyper-parameters


@pytest.mark.parametrize("bad", [
    {"text_encoder": "hf-hub:attacker/evil-model"},
    {"text_encoder": "ViT-B-32", "text_pretrained": "/some/local/file.pt"},
])
def test_ckpt_hparams_that_fetch_are_refused_by_the_cli(tmp_path: Path, no_hub: None, bad: dict) -> None:
    cfg = conf(tmp_path, "emotion", run_dir=str(tmp_path / "runs"))
    ckpt = ckpt_file(tmp_path / "evil.ckpt", {"_class_path": "mmoe.tasks.emotion.EmotionTask", **bad})
    with pytest.raises(ValueError, match=r"evil\.ckpt.*(text_pretrained|reference to other files)"):
        cli_main(["test", "--config", str(cfg), "--ckpt_path", str(ckpt)])


def test_ckpt_hparams_equal_to_the_users_own_config_are_accepted(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """What the user's config already says is not the file's choice: only what the file changes is
    checked, and the checkpoint's other arguments still win (the merge happens while parsing)."""
    from mmoe.cli import MMoECLI

    monkeypatch.setattr(loading, "FORBIDDEN_INIT_ARGS", (*loading.FORBIDDEN_INIT_ARGS, "mixer"))
    cfg = conf(tmp_path, "pde", run_dir=str(tmp_path / "runs"))
    init_args = yaml.safe_load(cfg.read_text())["model"]["init_args"]
    ckpt = ckpt_file(tmp_path / "own.ckpt", {"_class_path": "mmoe.tasks.pde.PDETask", **init_args, "depth": 1})
    merged: dict[str, Any] = {}

    def capture(self: MMoECLI) -> None:
        merged.update(self.config["test"]["model"]["init_args"].as_dict())
        raise SystemExit(0)

    monkeypatch.setattr(MMoECLI, "instantiate_classes", capture)
    with pytest.raises(SystemExit):
        cli_main(["test", "--config", str(cfg), "--ckpt_path", str(ckpt)])
    assert merged["depth"] == 1 and merged["mixer"] == init_args["mixer"]
    other = ckpt_file(tmp_path / "other.ckpt",
                      {"_class_path": "mmoe.tasks.pde.PDETask", **init_args, "mixer": "attention"})
    with pytest.raises(ValueError, match=r"other\.ckpt'?: init_args sets mixer='attention'"):
        cli_main(["test", "--config", str(cfg), "--ckpt_path", str(other)])


def test_ckpt_class_path_outside_trusted_modules_is_not_imported(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    module, marker = marker_module(tmp_path, monkeypatch)
    cfg = conf(tmp_path, "pde", run_dir=str(tmp_path / "runs"))
    ckpt = ckpt_file(tmp_path / "evil.ckpt", {"_class_path": f"{module}.Nope"})
    with pytest.raises(ValueError, match=r"evil\.ckpt.*outside the trusted modules"):
        cli_main(["test", "--config", str(cfg), "--ckpt_path", str(ckpt)])
    assert not marker.exists() and module not in sys.modules


# ------------------------------------------------------------------ 2. reference bombs


def test_reference_bomb_in_ckpt_hparams_is_refused_by_the_cli(tmp_path: Path) -> None:
    cfg = conf(tmp_path, "pde", run_dir=str(tmp_path / "runs"))
    ckpt = ckpt_file(tmp_path / "bomb.ckpt", {"_class_path": "mmoe.tasks.pde.PDETask", "x": bomb(60)})
    assert ckpt.stat().st_size < 4000
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"bomb\.ckpt.*expand to more than"):
        cli_main(["test", "--config", str(cfg), "--ckpt_path", str(ckpt)])
    assert time.perf_counter() - t0 < 30


@pytest.mark.parametrize("where", ["hyper_parameters", "init_arg", "cycle"])
def test_reference_bomb_or_cycle_is_refused_by_mmoe_load(tmp_path: Path, where: str) -> None:
    cyclic: list = []
    cyclic.append(cyclic)
    value = cyclic if where == "cycle" else bomb(60)
    hparams = ({"_class_path": "mmoe.tasks.pde.PDETask", "_extra": value} if where == "hyper_parameters"
               else {"_class_path": "mmoe.tasks.pde.PDETask", "label": value})
    ckpt = ckpt_file(tmp_path / "bomb.ckpt", hparams)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"bomb\.ckpt: (hyper_parameters|init_args) (expand to more|nest deeper) than"):
        mmoe.load(str(ckpt))
    assert time.perf_counter() - t0 < 10


def test_deep_nesting_in_init_args_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    deep: Any = "x"
    for _ in range(200):
        deep = [deep]
    f = tmp_path / "deep.safetensors"
    save_file({"w": torch.zeros(1)}, str(f), metadata={"class_path": "mmoe.tasks.pde.PDETask",
                                                        "init_args": json.dumps({"label": deep})})
    with pytest.raises(ValueError, match=r"deep\.safetensors: init_args nest deeper than"):
        mmoe.load(f)


def test_check_bounded_accepts_real_arguments_and_counts_long_strings() -> None:
    loading.check_bounded({"a": [1, 2, {"b": "c" * 50}], "t": torch.zeros(3)}, "f")
    with pytest.raises(ValueError, match="f: init_args expand"):
        loading.check_bounded(["x" * 10_000] * 1000, "f")  # a 10 kB string referenced 1000 times


def test_safe_checkpoint_io_refuses_a_bomb_anywhere_in_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "loops.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "loops": {"fit_loop": bomb(60)}}, path)
    with pytest.raises(ValueError, match=r"loops\.ckpt.*expand to more than"):
        SafeCheckpointIO().load_checkpoint(path)


# ------------------------------------------------------------------ 3. the user's own YAML


def test_config_class_path_outside_the_allowed_modules_is_not_imported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    module, marker = marker_module(tmp_path, monkeypatch)
    cfg = yaml.safe_load(conf(tmp_path, "pde").read_text())
    cfg["model"]["class_path"] = f"{module}.Nope"
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(path), "--print_config"])
    assert not marker.exists() and module not in sys.modules
    assert "mmoe_evil_probe.Nope" in capsys.readouterr().err


def test_billion_laughs_config_is_refused_before_it_expands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "laughs.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load((CONF / "pde.yaml").read_text()) | {"harness": None})
                    .replace("harness: null\n", "") + "\n".join(lines) + "\n")
    assert path.stat().st_size < 3000
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"laughs\.yaml: the YAML values expand to more than"):
        cli_main(["fit", "--config", str(path), "--print_config"])
    assert time.perf_counter() - t0 < 30
    assert capsys.readouterr().out == ""  # nothing printed half


# ------------------------------------------------------------------ 4. files the tools write


class Tiny(nn.Module):
    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.net = nn.Linear(dim, 2)


def test_zoo_export_writes_weights_0644(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmoe.zoo_cli import export_checkpoint

    monkeypatch.setattr(loading, "TRUSTED_MODULES", ["mmoe", __name__])
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": Tiny().state_dict(), "hyper_parameters": {"_class_path": f"{__name__}.Tiny", "dim": 4}},
               ckpt)
    row = export_checkpoint(ckpt, "tiny", "pde/nested_moe_2d.yaml", "pde", "none", {}, tmp_path / "out")
    weights = tmp_path / "out" / row["file"]
    assert stat.S_IMODE(weights.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "out" / "manifest.json").stat().st_mode) == 0o644


def test_fast_dev_run_without_a_run_folder_writes_under_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = conf(tmp_path, "pde")
    cli_main(["fit", "--config", str(cfg), "--trainer.fast_dev_run", "true"])
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {"pde.yaml", "runs"}, written  # no checkpoints/, figures/ or lightning_logs/ here
