"""`mmoe fit|validate|test|predict --config configs/<task>/<exp>.yaml`: LightningCLI over mmoe tasks.

Subclass mode over :class:`mmoe.tasks.BaseMoETask` and ``LightningDataModule``: configs name
classes by short name (``class_path: PDETask``). A run writes its config, checkpoints, CSV
logs (and TensorBoard logs when a TensorBoard writer is installed) and figures under one
folder, ``<save_dir>/<name>/version_<n>``.
"""

from __future__ import annotations

import importlib.util

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

import mmoe.datamodules  # noqa: F401  (registers the datamodules for short names)
import mmoe.tasks  # noqa: F401  (registers the tasks for short names)
from mmoe.tasks.base import BaseMoETask


def _loggers(save_dir: str = "runs", name: str = "mmoe") -> list[dict]:
    loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": save_dir, "name": name}}]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        loggers.append({"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                        "init_args": {"save_dir": save_dir, "name": name, "default_hp_metric": False}})
    return loggers


class MMoECLI(LightningCLI):
    """LightningCLI with mmoe's defaults: loggers, a best-checkpoint callback, progress bar."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_name", type=str, default="mmoe", help="run folder name under --run_dir")
        parser.add_argument("--run_dir", type=str, default="runs", help="root folder of the runs")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if not config.trainer.get("logger") or config.trainer.logger is True:
            config.trainer.logger = _loggers(config.run_dir, config.run_name)


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
        trainer_defaults={
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"monitor": "val/loss", "save_last": True, "filename": "best"}},
            ],
        },
        auto_configure_optimizers=False,
    )


def main() -> None:
    cli_main()


if __name__ == "__main__":
    main()
