"""BaseMoETask: the LightningModule every mmoe task builds on.

A task fills in three hooks (TorchGeo style) and two methods:

* ``configure_models()`` builds ``self.model`` (embedders, backbone, head),
* ``configure_losses()`` and ``configure_metrics()`` (``train_metrics``, ``val_metrics``,
  ``test_metrics``: torchmetrics),
* ``forward(batch)`` returns the model output for a batch dict,
* ``task_loss(output, batch)`` returns the task's scalar loss,
* ``update_metrics(split, output, batch)`` feeds the split's metrics,
* optionally ``routing_classes(batch)`` (class id per sample, for the experts x class map)
  and ``validation_figures()`` (extra figures at validation end),
* ``predict(...)`` for the Python inference API.

The training loss is the task loss plus ``aux_loss_weight`` times the sum of the aux losses
of every MoE layer. Routing stats are accumulated over each epoch and logged per layer;
at validation end an experts x layers (and experts x class) heat map is saved as a PNG in
the run folder and sent to a TensorBoard logger when one is attached.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Timer
from torch import nn

from mmoe.moe_layer import MoELayer
from mmoe.stats import collect_moe
from mmoe.validation import check_choice

SCHEDULERS = ("cosine", "plateau", "none")


class BaseMoETask(LightningModule):
    """Base class of the task modules; see the module docstring for the hooks.

    Args:
        lr: AdamW learning rate. weight_decay: AdamW weight decay.
        scheduler: ``"cosine"`` (over the run's optimizer steps or its ``max_time``, whichever
            is further along, after ``warmup_steps``),
            ``"plateau"`` (on ``val/loss``) or ``"none"``.
        warmup_steps: linear warm-up steps for the cosine schedule.
        aux_loss_weight: weight of the summed MoE auxiliary losses in the training loss.
        log_routing: log routing stats and heat maps.
    """

    monitor = "val/loss"

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        scheduler: str = "cosine",
        warmup_steps: int = 0,
        aux_loss_weight: float = 1.0,
        log_routing: bool = True,
    ) -> None:
        super().__init__()
        check_choice("scheduler", scheduler, SCHEDULERS)
        if lr <= 0:
            raise ValueError(f"lr: expected > 0, got {lr}")
        self.save_hyperparameters()
        self.model: nn.Module
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()
        self._routing: dict[str, dict[str, torch.Tensor]] = {}
        self._class_routing: dict[str, torch.Tensor] = {}

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
        what they show during ``update_metrics("val", ...)``."""
        return {}

    # ------------------------------------------------------------------ steps
    def _shared_step(self, split: str, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        output = self(batch)
        task = self.task_loss(output, batch)
        moe = collect_moe(self)
        loss = task + self.hparams.aux_loss_weight * moe.aux_loss
        bs = _batch_size(batch)
        self.log(f"{split}/loss", loss, batch_size=bs, prog_bar=split != "train", on_epoch=True,
                 on_step=split == "train")
        self.log(f"{split}/task_loss", task, batch_size=bs, on_epoch=True, on_step=False)
        self.log(f"{split}/aux_loss", moe.aux_loss, batch_size=bs, on_epoch=True, on_step=False)
        if self.hparams.log_routing:
            self._accumulate_routing(moe.stats, batch)
        return loss, output

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

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")
        self._log_routing("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        if self.hparams.log_routing and not self.trainer.sanity_checking:
            self._log_routing("val", figures=True)
            for name, fig in self.validation_figures().items():
                self._save_figure(name, fig)
        self._routing, self._class_routing = {}, {}

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        self._log_routing("test")

    def _log_metrics(self, split: str) -> None:
        metric = self.split_metrics(split)
        if metric is None or not _updated(metric):
            return
        values = metric.compute()
        values = values if isinstance(values, dict) else {type(metric).__name__: values}
        for name, value in values.items():
            if value.numel() == 1:
                self.log(f"{split}/{name}", value.float(), prog_bar=split != "train")
            else:
                for i, v in enumerate(value.flatten()):
                    label = (self.class_names() or [])[i] if i < len(self.class_names() or []) else str(i)
                    self.log(f"{split}/{name}_{label}", v.float())
        metric.reset()

    # ---------------------------------------------------------------- routing
    def _accumulate_routing(self, stats: dict, batch: dict[str, Any]) -> None:
        classes = self.routing_classes(batch)
        for name, s in stats.items():
            acc = self._routing.setdefault(name, {})
            for key in ("tokens_per_expert", "dropped_per_modality", "tokens_per_modality"):
                value = getattr(s, key).detach().float()
                acc[key] = acc[key] + value if key in acc else value
            acc["dead_experts"] = s.dead_experts.detach().float()
            layer = self.get_submodule(name)
            if classes is not None and isinstance(layer, MoELayer) and layer.last_assignment is not None:
                per_class = layer.class_load(classes, int(classes.max()) + 1 if classes.numel() else 1)
                prev = self._class_routing.get(name)
                if prev is not None and prev.shape[0] < per_class.shape[0]:
                    prev = torch.nn.functional.pad(prev, (0, 0, 0, per_class.shape[0] - prev.shape[0]))
                elif prev is not None and prev.shape[0] > per_class.shape[0]:
                    per_class = torch.nn.functional.pad(per_class, (0, 0, 0, prev.shape[0] - per_class.shape[0]))
                self._class_routing[name] = per_class if prev is None else prev + per_class

    def _log_routing(self, split: str, figures: bool = False) -> None:
        if not self.hparams.log_routing or not self._routing:
            return
        for name, acc in self._routing.items():
            load = acc["tokens_per_expert"]
            frac = load / load.sum().clamp_min(1)
            self.log(f"routing_{split}/{name}/max_over_mean_load", float(load.max() / load.mean().clamp_min(1e-12)))
            self.log(f"routing_{split}/{name}/dead_experts", float(acc["dead_experts"]))
            for e, f in enumerate(frac.tolist()):
                self.log(f"routing_{split}/{name}/load_e{e}", f)
            pairs = acc["tokens_per_modality"].clamp_min(1)
            for m, d in enumerate((acc["dropped_per_modality"] / pairs).tolist()):
                self.log(f"routing_{split}/{name}/drop_rate_m{m}", d)
        if figures:
            self._save_figure("routing_experts_x_layers", self._heatmap(
                {n: a["tokens_per_expert"] for n, a in self._routing.items()}, "layer"))
            for name, table in self._class_routing.items():
                rows = {(self.class_names() or [])[c] if c < len(self.class_names() or []) else f"class {c}": table[c]
                        for c in range(table.shape[0])}
                self._save_figure(f"routing_experts_x_class_{name}", self._heatmap(rows, "class"))
        if split != "val":
            self._routing, self._class_routing = {}, {}

    @staticmethod
    def _heatmap(rows: dict[str, torch.Tensor], ylabel: str):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(rows)
        width = max(int(r.numel()) for r in rows.values())
        data = torch.zeros(len(names), width)
        for i, n in enumerate(names):
            r = rows[n].detach().float().cpu()
            data[i, : r.numel()] = r / r.sum().clamp_min(1e-12)
        fig, ax = plt.subplots(figsize=(1 + 0.4 * width, 1 + 0.35 * len(names)))
        im = ax.imshow(data.numpy(), aspect="auto", cmap="viridis")
        ax.set_xlabel("expert")
        ax.set_ylabel(ylabel)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        fig.colorbar(im, ax=ax, label="share of routed tokens")
        fig.tight_layout()
        return fig

    def _save_figure(self, name: str, fig) -> None:
        import matplotlib.pyplot as plt

        trainer = getattr(self, "_trainer", None)
        if trainer is None or not trainer.loggers:  # no run folder to write into
            plt.close(fig)
            return
        root = Path(trainer.log_dir or trainer.default_root_dir) / "figures"
        root.mkdir(parents=True, exist_ok=True)
        fig.savefig(root / f"{name}_epoch{self.current_epoch:03d}.png", dpi=80)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):
                experiment.add_figure(name, fig, global_step=self.global_step, close=False)
        plt.close(fig)

    # ------------------------------------------------------------- optimizers
    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "norm" in name or "embed" in name else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=hp.lr)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self.monitor}}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = min(hp.warmup_steps, total - 1)
        # With a wall-clock budget (trainer max_time) the run ends before the step horizon:
        # follow whichever of steps and time is further along, so the schedule completes.
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / max(1, warm)
            progress = (step - warm) / max(1, total - warm)
            if timer is not None and timer.time_remaining("train") is not None:
                elapsed = timer.time_elapsed("train")
                progress = max(progress, elapsed / max(1e-9, elapsed + timer.time_remaining("train")))
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mmoe_class_path"] = f"{type(self).__module__}.{type(self).__qualname__}"


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
