"""BaseMoETask and the CLI around it: routing stats per split, weight decay by parameter kind,
optimizer config, recipes (planned steps), shipped config names, lazy task imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer
from torch import nn

from mmoe.settings import MoESettings
from mmoe.cli import cli_main
from mmoe.recipes import list_shipped, resolve_config, shipped_configs
from mmoe.datamodules import PDEDataModule
from mmoe.moe_layer import MoELayer
from mmoe.tasks import PDETask
from mmoe.tasks.base import OptimConfig
from mmoe.tasks.pde import PDEPreprocess

SMALL = dict(patch_size=4, dim=16, depth=2, num_heads=2, hidden_dim=16, moe=MoESettings(router="nested", groups=2, num_experts=6, top_k=1),
             mixer="spectral", modes=4)
ROOT = Path(__file__).resolve().parents[1]


class RecordBatches(Callback):
    """Keeps the batches each split saw."""

    def __init__(self) -> None:
        self.batches: dict[str, list] = {"train": [], "val": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches["train"].append({k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.batches["val"].append({k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})


def test_routing_stats_are_logged_per_split(tmp_path: Path) -> None:
    """The logged expert loads of each split equal the loads recomputed from that split's batches."""
    torch.manual_seed(0)
    pre = PDEPreprocess(family_names=["darcy", "heat", "advection", "allen_cahn"], resolution=16)
    task = PDETask(preprocess=pre, **SMALL)
    task.optim = OptimConfig(lr=1e-12, scheduler="none")  # weights stay put: loads can be recomputed
    dm = PDEDataModule(resolution=16, num_samples_per_family=30, batch_size=6, cache_dir=str(tmp_path))
    record = RecordBatches()
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=2,
                      num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[record])
    trainer.fit(task, dm)
    logged = trainer.logged_metrics
    layers = [n for n, m in task.named_modules() if isinstance(m, MoELayer)]
    for split, training in (("train", True), ("val", False)):
        assert len(record.batches[split]) == (3 if split == "train" else 2)
        loads = {n: 0 for n in layers}
        task.train(training)
        with torch.no_grad():
            for batch in record.batches[split]:
                task(batch)
                for n in layers:
                    loads[n] = loads[n] + task.get_submodule(n).stats.tokens_per_expert.float()
        for n in layers:
            expected = loads[n] / loads[n].sum()
            got = torch.tensor([float(logged[f"routing_{split}/{n}/load_e{e}"]) for e in range(len(expected))])
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # the splits differ in size and content: mixing them would have shown
    assert any(float(logged[f"routing_train/{layers[0]}/load_e{e}"]) != float(logged[f"routing_val/{layers[0]}/load_e{e}"])
               for e in range(6))


def test_weight_decay_by_parameter_kind() -> None:
    task = PDETask(**SMALL)
    decay, no_decay = task.parameter_groups()
    ids_decay, ids_no = {id(p) for p in decay}, {id(p) for p in no_decay}
    named = dict(task.named_parameters())
    # the patch-embedding conv ("embed" in its name) is a weight matrix: decayed
    assert id(named["model.embed.weight"]) in ids_decay
    assert id(named["model.embed.bias"]) in ids_no
    assert id(named["model.backbone.modality_embed"]) in ids_no  # a table the backbone lists
    for name, module in task.named_modules():
        if isinstance(module, nn.LayerNorm):
            assert id(module.weight) in ids_no, name
    assert id(named["model.backbone.blocks.0.ffn.experts.w_in"]) in ids_decay
    assert ids_decay.isdisjoint(ids_no) and len(ids_decay) + len(ids_no) == len(named)


def test_optim_config_rejects_bad_values() -> None:
    for kwargs, match in ((dict(lr=0.0), "optim.lr"), (dict(lr=float("nan")), "optim.lr"),
                          (dict(weight_decay=-1.0), "optim.weight_decay"), (dict(scheduler="step"), "optim.scheduler"),
                          (dict(warmup_steps=-1), "optim.warmup_steps")):
        with pytest.raises(ValueError, match=match):
            OptimConfig(**kwargs)


def test_shipped_configs_resolve_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = shipped_configs()
    assert {"pde/nested_moe_2d", "emotion/mister_e"} <= set(shipped)
    monkeypatch.chdir(tmp_path)  # outside the checkout: no local configs/ folder
    for value in ("pde/nested_moe_2d", "pde/nested_moe_2d.yaml", "configs/pde/nested_moe_2d.yaml"):
        assert Path(resolve_config(value)) == shipped["pde/nested_moe_2d"]
    local = tmp_path / "pde" / "nested_moe_2d.yaml"
    local.parent.mkdir()
    local.write_text("seed_everything: 1\n")
    assert resolve_config("pde/nested_moe_2d.yaml") == "pde/nested_moe_2d.yaml"  # a local file wins
    assert resolve_config("nope/none") == "nope/none"
    listing = list_shipped()
    assert "PDETask" in listing and "emotion/mister_e" in listing


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_shipped_configs_are_recipes(name: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["fit", "--config", name, "--print_config"])
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    trainer = cfg["trainer"]
    assert trainer["accelerator"] == "auto"
    assert trainer.get("max_time") is None  # a cap is the user's choice, not part of a recipe
    assert (trainer["max_steps"] or -1) > 0 or trainer["max_epochs"] > 0
    # what the data determines is not typed in the model section
    assert "preprocess" not in cfg["model"]["init_args"]


def test_capped_fit_says_it_stopped_early(tmp_path: Path) -> None:
    conf = yaml.safe_load((ROOT / "tests" / "conf" / "pde.yaml").read_text())
    conf.pop("harness")
    conf["trainer"] |= {"max_epochs": -1, "max_steps": 10_000, "max_time": "00:00:00:03", "limit_train_batches": None,
                        "limit_val_batches": 1}
    conf["data"]["init_args"]["cache_dir"] = str(tmp_path / "cache")
    path = tmp_path / "capped.yaml"
    path.write_text(yaml.safe_dump(conf))
    cli = cli_main(["fit", "--config", str(path), "--run_dir", str(tmp_path / "runs")])
    flag = Path(cli.trainer.log_dir) / "INCOMPLETE.json"
    info = json.loads(flag.read_text())
    assert info["planned_steps"] == 10_000 and 0 < info["done_steps"] < 10_000


def test_pde_run_does_not_import_audio_or_text_libraries() -> None:
    code = ("import sys; import mmoe, mmoe.cli; from mmoe.tasks import PDETask; PDETask(); "
            "print(sorted(m for m in ('torchaudio', 'open_clip', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_figures_without_routing_logs_and_without_sanity_batches(tmp_path: Path) -> None:
    """The confusion matrix is drawn with log_routing off, from the validation batches only."""
    from mmoe.datamodules import EmotionDataModule
    from mmoe.tasks import EmotionTask

    torch.manual_seed(0)
    dm = EmotionDataModule(num_conversations=40, batch_size=4, max_seconds=1.0)
    task = EmotionTask(preprocess=dm.preprocess, dim=16, depth=1, fusion_depth=1, num_heads=2, hidden_dim=16,
                       moe=MoESettings(num_experts=4), n_mels=16, log_routing=False)
    counted: list[int] = []
    original = task.validation_figures

    def spy() -> dict:
        if task.val_confusion.update_called:
            counted.append(int(task.val_confusion.compute().sum()))
        return original()

    task.validation_figures = spy
    record = RecordBatches()
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                      num_sanity_val_steps=2, default_root_dir=str(tmp_path), logger=True,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[record])
    trainer.fit(task, dm)
    # the sanity check ran the (one) validation batch too; the matrix holds only the real pass
    assert len(record.batches["val"]) == 2
    last = record.batches["val"][-1]
    assert counted[-1] == int((last["labels"][last["utterance_index"] >= 0] >= 0).sum())
    assert list(Path(trainer.log_dir).glob("figures/confusion_matrix_*.png"))
    assert not list(Path(trainer.log_dir).glob("figures/routing_*.png"))  # routing maps stay off


def test_default_root_dir_holds_the_run_when_no_run_dir_is_given(tmp_path: Path) -> None:
    conf = yaml.safe_load((ROOT / "tests" / "conf" / "pde.yaml").read_text())
    conf.pop("harness")
    conf["trainer"] |= {"max_epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1,
                        "default_root_dir": str(tmp_path / "elsewhere")}
    conf["data"]["init_args"]["cache_dir"] = str(tmp_path / "cache")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(conf))
    cli = cli_main(["fit", "--config", str(path), "--run_name", "r"])
    assert Path(cli.trainer.log_dir).is_relative_to(tmp_path / "elsewhere" / "r")


def test_mmoe_list_is_fast_and_whole(tmp_path: Path) -> None:
    """`mmoe list` imports neither torch nor Lightning, and every recipe's line is a whole sentence."""
    import subprocess
    import sys

    code = ("import sys; sys.argv = ['mmoe', 'list']; from mmoe.recipes import main; main(); "
            "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'heavy import'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    recipes = [ln for ln in run.stdout.splitlines() if ln.startswith("  ") and "/" in ln.split()[0]]
    assert len(recipes) == len(shipped_configs())
    for line in recipes:
        assert line.rstrip().endswith((".", "!", "?")), line


def test_mmoe_help_names_list_and_every_recipe(tmp_path: Path) -> None:
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "mmoe", "--help"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stdout.split())
    assert "`mmoe list`" in text
    for name in shipped_configs():
        assert name in text, name
