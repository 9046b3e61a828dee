"""BaseMoETask: the LightningModule every mmoe task builds on.

A task fills in three hooks (TorchGeo style) and a few methods:

* ``configure_models()`` builds ``self.model`` (a plain ``nn.Module``: embedders, backbone, head),
* ``configure_losses()`` and ``configure_metrics()`` (``train_metrics``, ``val_metrics``,
  ``test_metrics``: torchmetrics),
* ``task_loss(output, batch)`` returns the task's scalar loss,
* ``update_metrics(split, output, batch)`` feeds the split's metrics (and, when
  :attr:`collect_figures` is true, whatever ``validation_figures()`` will draw),
* optionally ``routing_classes(batch)`` (class id per sample, for the experts x class map),
* ``prepare_inputs(...)`` / ``finish_outputs(output, context)`` for :meth:`predict`; they
  live in the task's ``io.py``.

Class attributes: ``monitor`` and ``mode`` (the metric the checkpoint callback follows),
``preprocess_class`` (the task's typed preprocessing config, a dataclass: whatever predict needs
to treat inputs as training did; the datamodule provides it as ``datamodule.preprocess``),
``oracle_weight_hparam`` (the hparam holding the weight O of the task's supervised routing loss,
for the expert ecology ``E = T·H/(O+B)`` of every MoE layer; None: the task has none, O = 0).

The training loss is the task loss plus ``aux_loss_weight`` times the sum of the aux losses
of every MoE layer. Routing statistics and routing figures are kept by a
:class:`mmoe.routing_monitor.RoutingMonitor` callback: the CLI adds one (its ``routing:``
section), and :meth:`BaseMoETask.configure_callbacks` adds a default one to a trainer that has
none (``log_routing=False`` turns it off). The task's own ``validation_figures()`` are saved in
the run folder at validation end. The optimizer is AdamW with the :class:`OptimConfig` in
``self.optim`` (the CLI's ``optim:`` section).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import nn

from mmoe.moe_layer import MoELayer, collect_moe
from mmoe.routing_monitor import RoutingMonitor, save_figure
from mmoe.settings import MoESettings, as_moe_settings

SPLITS = ("train", "val", "test")
#: module types whose parameters are never weight-decayed (normalisation layers, lookup tables)
NO_DECAY_MODULES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm, nn.Embedding, nn.EmbeddingBag,
)


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (one config for every task: the CLI's ``optim:``).

    Args:
        lr: peak learning rate.
        weight_decay: AdamW weight decay (not applied to norms, biases, embedding and positional tables).
        scheduler: ``"cosine"`` (over the run's planned optimizer steps, after ``warmup_steps``),
            ``"plateau"`` (halve on a plateau of the task's ``monitor``) or ``"none"``.
        warmup_steps: linear warm-up steps of the cosine schedule.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-2
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"optim.lr: expected a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise ValueError(f"optim.weight_decay: expected a finite number >= 0, got {self.weight_decay!r}")
        if self.scheduler not in ("cosine", "plateau", "none"):
            raise ValueError(f"optim.scheduler: expected 'cosine', 'plateau' or 'none', got {self.scheduler!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps: expected an int >= 0, got {self.warmup_steps!r}")


def as_config(cls: type, value: Any, name: str) -> Any:
    """``value`` as dataclass ``cls``: None gives the defaults, a dict (from a file) is checked
    for unknown keys."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{name}: unknown keys {unknown}; expected keys from {sorted(known)}")
        return cls(**value)
    raise TypeError(f"{name}: expected a {cls.__name__} or a dict, got {type(value).__name__}")


class BaseMoETask(LightningModule):
    """Base class of the task modules; see the module docstring for the hooks.

    Args:
        aux_loss_weight: weight of the summed MoE auxiliary losses in the training loss.
        log_routing: keep routing statistics and figures (:class:`mmoe.routing_monitor.RoutingMonitor`).
    """

    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    preprocess_class: type | None = None
    #: init args that make the task read files or the network: ``mmoe.load`` never takes them from a file
    load_forbidden_args: tuple[str, ...] = ()
    #: the task's MoE settings when its ``moe`` argument is None (a dict overrides them field by field)
    default_moe: MoESettings = MoESettings()
    #: what the task's model sets on its routers before a forward (see ``mmoe.routers.Router.context``)
    router_context: tuple[str, ...] = ()
    #: the hparam holding O, the weight of the task's supervised (oracle) routing loss, e.g.
    #: ``"family_loss_weight"``; None: no such loss (O = 0)
    oracle_weight_hparam: str | None = None
    #: the writer ``mmoe predict`` attaches (a :class:`mmoe.prediction.PredictionWriter` subclass)
    prediction_writer: type | None = None

    def __init__(self, aux_loss_weight: float = 1.0, log_routing: bool = True) -> None:
        super().__init__()
        if not (isinstance(aux_loss_weight, (int, float)) and math.isfinite(aux_loss_weight) and aux_loss_weight >= 0):
            raise ValueError(f"aux_loss_weight: expected a finite number >= 0, got {aux_loss_weight!r}")
        self.save_hyperparameters()
        if self.preprocess_class is not None:
            self.pre = as_config(self.preprocess_class, self.hparams.get("preprocess"), "preprocess")
            self._hparams["preprocess"] = self._hparams_initial["preprocess"] = self.pre
        if "moe" in self.hparams:
            self.moe = as_moe_settings(self.hparams["moe"], type(self).default_moe)
            self._hparams["moe"] = self._hparams_initial["moe"] = self.moe
        # typed configs are stored as plain dicts: checkpoints stay loadable with weights_only=True
        for store in (self._hparams, self._hparams_initial):
            for key, value in list(store.items()):
                if dataclasses.is_dataclass(value) and not isinstance(value, type):
                    store[key] = dataclasses.asdict(value)
        self.optim = OptimConfig()
        self.model: nn.Module
        self.configure_models()
        self._check_router_context()
        self.sync_oracle_weight()
        self.configure_losses()
        self.configure_metrics()

    @classmethod
    def upgrade_init_args(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        """``init_args`` recorded by an older mmoe (a checkpoint or zoo file) in today's form; a task
        whose arguments changed maps the old names here, so released files keep loading."""
        return init_args

    def _check_router_context(self) -> None:
        for layer in self.modules():
            if isinstance(layer, MoELayer) and layer.router.context not in (None, *self.router_context):
                raise ValueError(f"moe.router: {layer.router_kind!r} needs {layer.router.context!r} set by its task "
                                 f"model, which {type(self).__name__} does not provide")

    @property
    def oracle_weight(self) -> float:
        """O: the current value of :attr:`oracle_weight_hparam` (0 when the task has none)."""
        name = type(self).oracle_weight_hparam
        if name is None:
            return 0.0
        if name not in self.hparams:
            raise ValueError(f"oracle_weight_hparam: {type(self).__name__} names {name!r}, which is not one of "
                             f"its hparams {sorted(self.hparams)}")
        return float(self.hparams[name])

    def sync_oracle_weight(self) -> None:
        """Give every MoE layer O in the units of its aux loss (``O / aux_loss_weight``: the aux losses
        enter the training loss scaled by ``aux_loss_weight``, the oracle loss is not), so that E and
        an ``moe.ecology_target`` follow O. Called at construction and before every training step."""
        O, scale = self.oracle_weight, float(self.hparams.aux_loss_weight)
        layers = [m for m in self.modules() if isinstance(m, MoELayer)]
        if scale == 0 and any(m.ecology_target is not None for m in layers):
            raise ValueError("moe.ecology_target: the MoE aux losses are off (aux_loss_weight=0), so no entropy "
                             "weight can hold E; expected aux_loss_weight > 0 or moe.ecology_target null")
        for layer in layers:
            layer.oracle_weight = O / scale if scale > 0 else (math.inf if O > 0 else 0.0)
            if layer.ecology_target is not None and not layer.oracle_weight + layer.balance_weight > 0:
                raise ValueError(
                    f"moe.ecology_target: E = T·H/(O+B) cannot be held in {type(self).__name__} with O + B = 0 "
                    f"(O: {type(self).oracle_weight_hparam or 'no supervised routing loss'} = {O}, B: "
                    f"moe.load_balance_weight in effect for router {layer.router_kind!r} = {layer.balance_weight}); "
                    f"expected a load_balance_weight > 0 or a task with a supervised routing loss")

    # ------------------------------------------------------------------ hooks
    def configure_models(self) -> None:
        raise NotImplementedError

    def configure_losses(self) -> None:
        """Build loss modules; the default has none."""

    def configure_metrics(self) -> None:
        """Set ``self.train_metrics``, ``self.val_metrics``, ``self.test_metrics`` (torchmetrics)."""

    def split_metrics(self, split: str):
        """The metric (or MetricCollection) of ``split``, or None."""
        return getattr(self, f"{split}_metrics", None)

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.model(batch)

    def task_loss(self, output: Any, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def update_metrics(self, split: str, output: Any, batch: dict[str, Any]) -> None:
        if self.split_metrics(split) is not None:
            raise NotImplementedError("update_metrics must feed the metrics the task configured")

    def routing_classes(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """Class id per sample ``[B]`` (e.g. PDE family), or None when the task has no classes."""
        return None

    def class_names(self) -> list[str] | None:
        return None

    def validation_figures(self) -> dict[str, Any]:
        """Extra matplotlib figures to log at validation end (name -> figure); tasks collect
        what they show during ``update_metrics("val", ...)`` while :attr:`collect_figures`."""
        return {}

    @property
    def collect_figures(self) -> bool:
        """False during Lightning's sanity-check batches, whose content stays out of the figures."""
        return not self._sanity_checking()

    # ------------------------------------------------------------------ steps
    def _shared_step(self, split: str, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        if split == "train":  # O may be scheduled by a callback: E and its target follow
            self.sync_oracle_weight()
        output = self(batch)
        task = self.task_loss(output, batch)
        moe = collect_moe(self)
        loss = task + self.hparams.aux_loss_weight * moe.aux_loss
        bs = _batch_size(batch)
        self.log(f"{split}/loss", loss, batch_size=bs, prog_bar=split != "train", on_epoch=True,
                 on_step=split == "train")
        self.log(f"{split}/task_loss", task, batch_size=bs, on_epoch=True, on_step=False)
        self.log(f"{split}/aux_loss", moe.aux_loss, batch_size=bs, on_epoch=True, on_step=False)
        return loss, output

    def _sanity_checking(self) -> bool:
        trainer = getattr(self, "_trainer", None)
        return bool(trainer is not None and trainer.sanity_checking)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, output = self._shared_step("train", batch)
        self.update_metrics("train", output, batch)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, output = self._shared_step("val", batch)
        self.update_metrics("val", output, batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, output = self._shared_step("test", batch)
        self.update_metrics("test", output, batch)

    def configure_callbacks(self) -> list:
        """A default :class:`RoutingMonitor` when the trainer has none (the CLI adds its own) and
        ``log_routing`` is on."""
        trainer = getattr(self, "_trainer", None)
        if not self.hparams.log_routing or trainer is None \
                or any(isinstance(c, RoutingMonitor) for c in trainer.callbacks):
            return []
        return [RoutingMonitor()]

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        sanity = self._sanity_checking()
        self._log_metrics("val", log=not sanity)
        figures = self.validation_figures()  # always called: it also clears what the task collected
        if sanity:
            _close(figures)
            return
        for name, fig in figures.items():
            save_figure(getattr(self, "_trainer", None), name, fig, self.current_epoch, self.global_step)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, split: str, log: bool = True) -> None:
        metric = self.split_metrics(split)
        if metric is None or not _updated(metric):
            return
        values = metric.compute()
        metric.reset()
        if not log:
            return
        values = values if isinstance(values, dict) else {type(metric).__name__: values}
        names = self.class_names() or []
        for name, value in values.items():
            if value.numel() == 1:
                self.log(f"{split}/{name}", value.float(), prog_bar=split != "train")
            else:
                for i, v in enumerate(value.flatten()):
                    self.log(f"{split}/{name}_{names[i] if i < len(names) else i}", v.float())

    # ------------------------------------------------------------- optimizers
    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``(decay, no_decay)``: biases, parameters of :data:`NO_DECAY_MODULES` and those a module
        lists in ``no_weight_decay()`` (positional / modality tables) are not decayed."""
        no_decay: set[int] = set()
        for mod_name, module in self.named_modules():
            if isinstance(module, NO_DECAY_MODULES):
                no_decay.update(id(p) for p in module.parameters(recurse=False))
            if hasattr(module, "no_weight_decay"):
                no_decay.update(id(module.get_parameter(n)) for n in module.no_weight_decay())
            bias = getattr(module, "bias", None)
            if isinstance(bias, nn.Parameter):
                no_decay.add(id(bias))
        params = [p for p in self.parameters() if p.requires_grad]
        return [p for p in params if id(p) not in no_decay], [p for p in params if id(p) in no_decay]

    def configure_optimizers(self):
        cfg = self.optim
        decay, no_decay = self.parameter_groups()
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        if cfg.scheduler == "none":
            return opt
        if cfg.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=self.mode, factor=0.5, patience=3)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self.monitor}}
        sched = warmup_cosine(opt, cfg.warmup_steps, max(1, int(self.trainer.estimated_stepping_batches)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -------------------------------------------------------------- inference
    def prepare_inputs(self, *args: Any, **kwargs: Any) -> tuple[dict[str, torch.Tensor], Any]:
        """Check and pre-process predict's inputs: ``(batch on the CPU, context for finish_outputs)``."""
        raise NotImplementedError(f"{type(self).__name__} has no predict")

    def finish_outputs(self, output: Any, context: Any) -> Any:
        """Post-process the model output of :meth:`prepare_inputs`' batch into plain results."""
        raise NotImplementedError(f"{type(self).__name__} has no predict")

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        """Inference on plain inputs (the task's ``predict`` documents them): eval mode, no_grad,
        the model's device and floating dtype; the training mode found is restored. Non-finite
        outputs raise ``ValueError``."""
        batch, context = self.prepare_inputs(*args, **kwargs)
        param = next((p for p in self.parameters() if p.is_floating_point()), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        batch = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) if isinstance(v, torch.Tensor)
                 else v for k, v in batch.items()}
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                output = self(batch)
        finally:
            self.train(was_training)
        for key, value in (output.items() if isinstance(output, dict) else [("output", output)]):
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"predict: the model produced NaN or inf ({key}); the input is outside the range "
                                 "the model can handle (check its scale and dtype)")
        return self.finish_outputs(output, context)

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int = 0, dataloader_idx: int = 0
                     ) -> list[dict[str, Any]]:
        """``mmoe predict``: :meth:`predict` on each predict item of the batch (see
        :mod:`mmoe.prediction`); returns the items with their ``result``."""
        if not isinstance(batch, list) or not all(isinstance(b, dict) and "inputs" in b for b in batch):
            raise TypeError(f"{type(self).__name__}.predict_step: expected predict items from the datamodule's "
                            f"predict_dataloader (mmoe.prediction.predict_loader), got {type(batch).__name__}")
        return [{**item, "result": self.predict(**item["inputs"])} for item in batch]

    # -------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mmoe_class_path"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["mmoe_optim"] = dataclasses.asdict(self.optim)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
                  ) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's schedulers: the rate rises linearly over ``warmup_steps`` (``1/w, 2/w, ..., 1`` times
    the base rate), then follows a cosine to 0 at ``total_steps``.

    Args:
        optimizer: the optimizer.
        warmup_steps: steps of the linear warm-up (at most ``total_steps - 1``; 0: none).
        total_steps: all optimizer steps of the run.
    """
    warm = max(0, min(warmup_steps, total_steps - 1))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warm))
    if warm == 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warm, end_factor=1.0,
                                               total_iters=max(1, warm - 1))
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warm])


def _close(figures: dict[str, Any]) -> None:
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)


def _updated(metric: Any) -> bool:
    """Whether a Metric (or any metric of a MetricCollection) has seen an update."""
    if hasattr(metric, "values") and not hasattr(metric, "update_called"):
        return any(m.update_called for m in metric.values())
    return bool(metric.update_called)


def _batch_size(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim:
            return int(value.shape[0])
    return 1
