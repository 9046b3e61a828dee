"""`mmoe fit|validate|test|predict --config configs/<task>/<exp>.yaml`: LightningCLI over mmoe tasks.

Subclass mode over :class:`mmoe.tasks.BaseMoETask` and ``LightningDataModule``: configs name
classes by short name (``class_path: PDETask``). A run writes its config, checkpoints, CSV
logs (and TensorBoard logs when a TensorBoard writer is installed) and figures under one
folder, ``<run_dir>/<run_name>/version_<n>``. ``--test_after_fit true`` tests the best
checkpoint right after ``fit``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

import mmoe.datamodules  # noqa: F401  (registers the datamodules for short names)
import mmoe.tasks  # noqa: F401  (registers the tasks for short names)
from mmoe.tasks.base import BaseMoETask


def _loggers(save_dir: str, name: str) -> list:
    loggers = [CSVLogger(save_dir, name=name)]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        # same folder as the CSV logger: one run folder holds everything
        loggers.append(TensorBoardLogger(save_dir, name=name, version=loggers[0].version, default_hp_metric=False))
    return loggers


class MMoECLI(LightningCLI):
    """LightningCLI with mmoe's defaults: run folder loggers, a best-checkpoint callback."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_name", type=str, default="mmoe", help="run folder name under --run_dir")
        parser.add_argument("--run_dir", type=str, default="runs", help="root folder of the runs")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, test the best checkpoint on the test split")

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        if config["trainer"].get("logger") in (None, True):
            kwargs["logger"] = _loggers(config["run_dir"], config["run_name"])
        return super().instantiate_trainer(**kwargs)


def cli_main(args: list[str] | None = None, run: bool = True) -> MMoECLI:
    """Run the CLI (``args`` as on the command line; ``run=False`` only instantiates)."""
    return MMoECLI(
        BaseMoETask,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [ModelCheckpoint(monitor="val/loss", save_last=True, filename="best")]},
        auto_configure_optimizers=False,
    )


def main() -> None:
    cli_main()


if __name__ == "__main__":
    main()
