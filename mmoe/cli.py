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
(:mod:`mmoe.parallel`); ``ddp`` replicates them. Without ``--run_dir`` and
``--trainer.default_root_dir`` nothing is written into the working folder: runs without loggers
(``fast_dev_run``) also write under ``runs/<run_name>``.

What files choose is checked (the rules of :mod:`mmoe.loading`): ``--ckpt_path``'s
hyper-parameters are refused when they expand past a cap (shared references), name a class
outside the trusted modules (checked before importing it), or set an argument that reads other
files or the network, unless the user's own config sets the same value. A config's class paths
must lie in :data:`CONFIG_MODULES` or the trusted modules (``MMOE_TRUSTED_MODULES`` adds your
packages), checked before importing; YAML values that expand past a cap (anchors) are refused.
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO

import mmoe.parallel  # noqa: F401  registers --trainer.strategy ddp_expert_parallel
from mmoe.datamodules import DATAMODULES
from mmoe.progress import RecipeProgressBar
from mmoe.recipes import resolve_config, shipped_configs
from mmoe.routing_monitor import RoutingMonitor
from mmoe.loading import check_bounded, check_init_args, import_class, torch_load_weights_only, trusted_modules
from mmoe.safe_checkpoint import SafeCheckpointIO
from mmoe.tasks import TASKS
from mmoe.tasks.base import BaseMoETask, OptimConfig

log = logging.getLogger("mmoe")

#: packages whose classes a config may name (callbacks, loggers, plugins) besides the trusted
#: modules of :mod:`mmoe.loading`; any other class path is refused before its module is imported
CONFIG_MODULES: tuple[str, ...] = ("lightning", "pytorch_lightning", "torch", "torchmetrics")
_PARSER_MODE = "mmoe_yaml"


def _import_classes() -> None:
    """Import every task and datamodule module (light: heavy libraries load on use), so the
    CLI resolves short class names."""
    for module in {*TASKS.values(), *DATAMODULES.values()}:
        importlib.import_module(module)


def _bounded_yaml_load(stream: str, path: str | os.PathLike[str] = "") -> Any:
    """jsonargparse's YAML loader, refusing values that expand past a cap (a ``ValueError`` naming
    ``path``): anchors and aliases are shared references, so a 1 KB "billion laughs" file would
    expand when merged or printed."""
    from jsonargparse import get_loader

    value = get_loader("yaml")(stream)
    check_bounded(value, str(path) or "a config value", "the YAML values")
    return value


def _restrict_parsing() -> None:
    """Config class paths only from :data:`CONFIG_MODULES` and the trusted modules (checked before
    importing); the bounded YAML loader. Settings of jsonargparse, global to the process."""
    import yaml
    from jsonargparse import set_loader, set_parsing_settings

    set_parsing_settings(import_path_denylist=["*"], import_path_allowlist=[*CONFIG_MODULES, *trusted_modules()])
    set_loader(_PARSER_MODE, _bounded_yaml_load, exceptions=(yaml.YAMLError,))


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


def _parsed_class(model: Any) -> type | None:
    """The class of a parsed ``model`` section, looked up among the modules parsing imported (importing nothing)."""
    path = model.get("class_path") if hasattr(model, "get") else None
    if not isinstance(path, str) or "." not in path:
        return None
    module, _, name = path.rpartition(".")
    return getattr(sys.modules.get(module), name, None)


_MISSING = object()


def _equal(a: Any, b: Any) -> bool:
    """``a == b`` as a plain bool; values whose comparison is not one (tensors, arrays) differ."""
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - ambiguous truth values
        return False


def _init_args(model: Any) -> dict[str, Any]:
    """The parsed ``model.init_args`` as a plain dict (empty when there are none)."""
    args = model.get("init_args") if hasattr(model, "get") else None
    return args.as_dict() if hasattr(args, "as_dict") else dict(args or {})


def _loggers(save_dir: str, name: str) -> list:
    loggers = [CSVLogger(save_dir, name=name)]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        # same folder as the CSV logger: one run folder holds everything
        loggers.append(TensorBoardLogger(save_dir, name=name, version=loggers[0].version, default_hp_metric=False))
    return loggers


class CLIError(ValueError):
    """A command-line mistake: ``mmoe`` prints it as one line and exits with status 2."""


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
        # routing statistics and figures for every task (mmoe.routing_monitor): --routing.figures false
        parser.add_lightning_class_args(RoutingMonitor, "routing")
        parser.link_arguments("data.preprocess", "model.init_args.preprocess", apply_on="instantiate")

    def _resolve_ckpt_path(self, config: Any) -> None:
        """``--ckpt_path best|last`` name the newest run folder's file; a local file that is not
        there is a :class:`CLIError` before anything (a run folder) is made."""
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", str(ckpt_path)):
            return
        if ckpt_path in ("best", "last") and self.config.subcommand != "fit":
            run = Path(config.get("run_dir") or config["trainer"].get("default_root_dir") or "runs") / config["run_name"]
            found = sorted(run.glob(f"version_*/checkpoints/{ckpt_path}.ckpt"),
                           key=lambda p: int(p.parts[-3].split("_")[1]) if p.parts[-3].split("_")[1].isdigit() else -1)
            if not found:
                raise CLIError(f"--ckpt_path {ckpt_path}: no {ckpt_path}.ckpt in any {run}/version_*/checkpoints/ "
                               "(train first, or pass --run_dir/--run_name of the run, or a file)")
            config["ckpt_path"] = str(found[-1])
        elif ckpt_path not in ("best", "last", "hpc") and not Path(ckpt_path).is_file():
            raise CLIError(f"--ckpt_path: no such file {ckpt_path!r}")

    def _parse_ckpt_path(self) -> None:
        # Lightning re-reads model arguments from a checkpoint. They pass the checks `mmoe.load`
        # applies (mmoe.loading): the size of the data, the trusted class before importing it, no
        # argument that makes the model read other files or the network. `preprocess` comes from
        # the data (a link), so it is left out of what the checkpoint may set.
        if not self.config.get("subcommand"):
            return
        config = self.config[self.config.subcommand]
        self._resolve_ckpt_path(config)
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        source = f"ckpt_path {ckpt_path!r}"
        ckpt = torch_load_weights_only(ckpt_path, source)
        hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
        if not isinstance(hparams, dict) or "_class_path" not in hparams:
            return
        check_bounded(hparams, source, "hyper_parameters")
        class_path = hparams["_class_path"]
        try:
            cls = import_class(class_path)
        except (ValueError, TypeError, ImportError) as exc:
            raise ValueError(f"{source}: hyper_parameters: {exc}") from None
        init_args = {k: v for k, v in hparams.items() if not str(k).startswith("_") and k != "preprocess"}
        upgrade = getattr(cls, "upgrade_init_args", None)
        if upgrade is not None:  # a checkpoint written before a task's arguments changed
            try:
                init_args = upgrade(init_args)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{source}: hyper_parameters of an older mmoe do not map to today's arguments: "
                                 f"{exc}") from None
        # what the user's own config already sets for the same class is the user's choice, not the file's
        own = _init_args(config.get("model")) if _parsed_class(config.get("model")) is cls else {}
        check_init_args(cls, {k: v for k, v in init_args.items() if not _equal(own.get(k, _MISSING), v)}, source)
        model = {"class_path": class_path, "dict_kwargs": init_args}
        self.config = self.parser.parse_object({self.config.subcommand: {"model": model}}, self.config)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        if isinstance(self.model, BaseMoETask) and isinstance(config.get("optim"), OptimConfig):
            self.model.optim = config["optim"]

    def after_fit(self) -> None:
        callback = self.trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.dirpath and not callback.best_model_path \
                and not self.trainer.interrupted and self.trainer.global_step > 0:
            # no validation ran (a fit shorter than the validation interval): best.ckpt holds the last weights
            best = Path(callback.dirpath) / "best.ckpt"
            log.warning("no validation ran in this fit's %d steps, so no checkpoint was chosen by %s; %s holds the "
                        "final weights (unvalidated)", self.trainer.global_step, callback.monitor, best)
            self.trainer.save_checkpoint(best)
            callback.best_model_path = str(best)
        if self.config[self.subcommand].get("test_after_fit"):
            best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if subcommand == "predict" and kwargs.get("return_predictions") is None:
            kwargs["return_predictions"] = False  # the writer has them on disk; memory stays flat
        return kwargs

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_cfg = config["trainer"]
        run_dir = config.get("run_dir") or trainer_cfg.get("default_root_dir") or "runs"
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = _loggers(run_dir, config["run_name"])
        if not trainer_cfg.get("default_root_dir"):
            # Lightning's default is the working folder: without loggers (fast_dev_run,
            # logger=false) checkpoints and figures would land in ./checkpoints, the zoo's folder
            kwargs["default_root_dir"] = str(Path(run_dir) / config["run_name"])
        callbacks = list(trainer_cfg.get("callbacks") or [])
        model = self.model
        wants_checkpoints = trainer_cfg.get("enable_checkpointing", True) is not False
        if wants_checkpoints and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            monitor, mode = (model.monitor, model.mode) if isinstance(model, BaseMoETask) else ("val/loss", "min")
            callbacks.append(ModelCheckpoint(monitor=monitor, mode=mode, save_last=True, filename="best"))
        callbacks.append(RecipeCheck())
        if trainer_cfg.get("enable_progress_bar", True) is not False \
                and not any(isinstance(c, ProgressBar) for c in callbacks) and importlib.util.find_spec("rich"):
            callbacks.append(RecipeProgressBar())
        writer = getattr(model, "prediction_writer", None)
        if self.subcommand == "predict" and writer is not None \
                and not any(isinstance(c, BasePredictionWriter) for c in callbacks):
            callbacks.append(writer())
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
    _restrict_parsing()
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
        parser_kwargs={
            "parser_mode": _PARSER_MODE, **{c: {"parser_mode": _PARSER_MODE} for c in MMoECLI.subcommands()},
            "description": "mmoe: train, test and predict with the task models. `mmoe list` shows the tasks, "
                           "datamodules and shipped recipes with what each does; --config takes a file or a "
                           "recipe name. Shipped recipes: " + ", ".join(shipped_configs()) + ".",
        },
        auto_configure_optimizers=False,
    )


def main() -> None:
    """``mmoe ...``: the CLI (``mmoe list`` is answered by :func:`mmoe.recipes.main` before this is imported)."""
    try:
        cli_main()
    except CLIError as exc:
        print(f"mmoe: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
