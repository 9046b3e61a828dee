"""`mmoe fit|validate|test|predict --config pde/nested_moe_2d`: LightningCLI over mmoe tasks.

Subclass mode over :class:`mmoe.tasks.BaseMoETask` and ``LightningDataModule``: configs name
classes by short name (``class_path: PDETask``). ``--config`` takes a file, or the name of a
shipped recipe (``pde/nested_moe_2d``, with or without ``.yaml``) that resolves into the
installed ``mmoe.configs`` when no such local file exists; ``mmoe list`` prints the tasks and
the shipped recipes. What the data determines (channels, class names, resolution, sample rate:
the task's preprocess config) is linked from ``data.preprocess`` to ``model.preprocess``; the
optimizer is the ``optim:`` section (:class:`mmoe.tasks.base.OptimConfig`). The checkpoint
callback follows the task's ``monitor`` and ``mode``.

A run writes its config, checkpoints, CSV logs (and TensorBoard logs when a TensorBoard writer
is installed) and figures under ``<run_dir>/<run_name>/version_<n>`` (``run_dir`` defaults to
``--trainer.default_root_dir``, else ``runs``). A fit that stops before its planned steps (a
``max_time`` cap, an interruption) says so in a warning and writes ``INCOMPLETE.json`` into the
run folder. ``--test_after_fit true`` tests the best checkpoint right after ``fit``.
``--trainer.strategy ddp_expert_parallel`` shards the MoE experts over the processes
(:mod:`mmoe.parallel`); ``ddp`` replicates them.
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO

import mmoe.parallel  # noqa: F401  registers --trainer.strategy ddp_expert_parallel
from mmoe.datamodules import DATAMODULES
from mmoe.safe_checkpoint import SafeCheckpointIO
from mmoe.tasks import TASKS
from mmoe.tasks.base import BaseMoETask, OptimConfig

log = logging.getLogger("mmoe")


def _import_classes() -> None:
    """Import every task and datamodule module (light: heavy libraries load on use), so the
    CLI resolves short class names."""
    for module in {*TASKS.values(), *DATAMODULES.values()}:
        importlib.import_module(module)


def shipped_configs() -> dict[str, Path]:
    """Shipped recipes: ``"<task>/<name>"`` -> path inside the installed ``mmoe.configs``."""
    root = Path(str(importlib.resources.files("mmoe.configs")))
    return {str(p.relative_to(root).with_suffix("")): p for p in sorted(root.glob("*/*.yaml"))}


def resolve_config(value: str) -> str:
    """A local file wins; otherwise a shipped recipe name (``pde/nested_moe_2d[.yaml]``, also
    ``configs/pde/nested_moe_2d.yaml``); otherwise ``value`` unchanged (the CLI reports it)."""
    if os.path.exists(value):
        return value
    name = value.removeprefix("configs/").removesuffix(".yaml").removesuffix(".yml")
    return str(shipped_configs().get(name, value))


def _resolve_args(args: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a == "--config" and i + 1 < len(args):
            out += [a, resolve_config(args[i + 1])]
            i += 2
            continue
        if a.startswith("--config="):
            a = "--config=" + resolve_config(a.split("=", 1)[1])
        out.append(a)
        i += 1
    return out


def list_shipped() -> str:
    """One line per task and per shipped recipe (its first comment line)."""
    lines = ["tasks:"]
    for name, module in TASKS.items():
        lines.append(f"  {name:<18} {module}")
    lines.append("datamodules:")
    for name, module in DATAMODULES.items():
        lines.append(f"  {name:<18} {module}")
    lines.append("configs (mmoe fit --config NAME):")
    for name, path in shipped_configs().items():
        first = next((ln.lstrip("# ").strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
        lines.append(f"  {name:<24} {first}")
    return "\n".join(lines)


def _loggers(save_dir: str, name: str) -> list:
    loggers = [CSVLogger(save_dir, name=name)]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        # same folder as the CSV logger: one run folder holds everything
        loggers.append(TensorBoardLogger(save_dir, name=name, version=loggers[0].version, default_hp_metric=False))
    return loggers


class RecipeCheck(Callback):
    """Warns, and writes ``INCOMPLETE.json`` in the run folder, when fit ends before its planned
    optimizer steps (a ``max_time`` cap or an interruption): the recipe's quality is not what
    such a run gets."""

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        planned = trainer.estimated_stepping_batches
        done = trainer.global_step
        if planned == float("inf") or done >= planned:
            return
        reason = "interrupted" if trainer.interrupted else "stopped early (max_time cap or early stopping)"
        msg = (f"fit ended after {done} of the {int(planned)} planned optimizer steps ({reason}); "
               "the recipe's documented quality assumes all of them")
        log.warning(msg)
        if trainer.is_global_zero:
            folder = Path(trainer.log_dir or trainer.default_root_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "INCOMPLETE.json").write_text(json.dumps(
                {"planned_steps": int(planned), "done_steps": int(done), "reason": reason}, indent=2) + "\n")


class MMoECLI(LightningCLI):
    """LightningCLI with mmoe's defaults: run-folder loggers, the task's checkpoint metric,
    data-to-model links and one optimizer config."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_name", type=str, default="mmoe", help="run folder name under --run_dir")
        parser.add_argument("--run_dir", type=str | None, default=None,
                            help="root folder of the runs (default: --trainer.default_root_dir, else ./runs)")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, test the best checkpoint on the test split")
        parser.add_class_arguments(OptimConfig, "optim")
        parser.link_arguments("data.preprocess", "model.init_args.preprocess", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        # Lightning re-reads model arguments from a checkpoint; `preprocess` comes from the data
        # (a link), so it is left out of what the checkpoint may set.
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        import torch

        try:
            ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets one clear message
            raise ValueError(f"ckpt_path: cannot read {ckpt_path!r} as a checkpoint: {exc}") from None
        hparams = dict(ckpt.get("hyper_parameters", {})) if isinstance(ckpt, dict) else {}
        for key in ("_instantiator", "preprocess"):
            hparams.pop(key, None)
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
            self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        if isinstance(self.model, BaseMoETask) and isinstance(config.get("optim"), OptimConfig):
            self.model.optim = config["optim"]

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_cfg = config["trainer"]
        if trainer_cfg.get("logger") in (None, True):
            run_dir = config.get("run_dir") or trainer_cfg.get("default_root_dir") or "runs"
            kwargs["logger"] = _loggers(run_dir, config["run_name"])
        callbacks = list(trainer_cfg.get("callbacks") or [])
        model = self.model
        wants_checkpoints = trainer_cfg.get("enable_checkpointing", True) is not False
        if wants_checkpoints and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            monitor, mode = (model.monitor, model.mode) if isinstance(model, BaseMoETask) else ("val/loss", "min")
            callbacks.append(ModelCheckpoint(monitor=monitor, mode=mode, save_last=True, filename="best"))
        callbacks.append(RecipeCheck())
        kwargs["callbacks"] = callbacks
        # every checkpoint the CLI reads (local or http) is read with weights_only=True
        plugins = trainer_cfg.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(SafeCheckpointIO())
        elif not any(isinstance(p, SafeCheckpointIO) for p in plugins):
            raise ValueError("trainer.plugins: a CheckpointIO other than mmoe.safe_checkpoint.SafeCheckpointIO would "
                             "read checkpoints with full unpickling; subclass SafeCheckpointIO instead")
        kwargs["plugins"] = plugins
        return super().instantiate_trainer(**kwargs)


def cli_main(args: list[str] | None = None, run: bool = True) -> MMoECLI:
    """Run the CLI (``args`` as on the command line; ``run=False`` only instantiates)."""
    _import_classes()
    if args is None:  # rewritten in place: LightningCLI warns when given both args and sys.argv
        sys.argv[1:] = _resolve_args(sys.argv[1:])
    else:
        args = _resolve_args(list(args))
    return MMoECLI(
        BaseMoETask,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def main() -> None:
    if sys.argv[1:2] == ["list"]:
        print(list_shipped())
        return
    cli_main()


if __name__ == "__main__":
    main()
