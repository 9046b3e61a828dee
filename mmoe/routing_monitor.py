"""Routing statistics and routing figures of a training run, as a Lightning callback.

:class:`RoutingMonitor` works on any LightningModule holding :class:`mmoe.MoELayer` s. After each
train / validation / test batch it adds up, per split and MoE layer, what the layers' ``stats``
report for the forward just run (computed pairs per expert, dropped and total pairs per modality,
router entropy, dead experts, the expert ecology E and the H in use); at the split's epoch end it
logs them under ``routing_<split>/<layer>/...`` (``load_e<i>``: share of computed pairs per expert,
``max_over_mean_load``, ``dead_experts``, ``router_entropy``, ``ecology``, ``entropy_weight``,
``drop_rate_m<m>``). At validation end it saves an experts x layers heat map beside E and the dead
experts per layer over the training steps and, when the module has ``routing_classes(batch)``
(class id per sample, e.g. PDE family), one experts x class map per layer; PNGs go to the run
folder's ``figures/`` and to a TensorBoard logger when one is attached.

Every mmoe task gets one: the CLI adds it (``--routing.figures false``, ``--routing.enabled false``;
the ``routing:`` section of a config), and :class:`mmoe.tasks.base.BaseMoETask` adds a default one
to a plain ``Trainer`` that has none. A task's ``log_routing=False`` turns it off too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from mmoe.moe_layer import MoELayer

SPLITS = ("train", "val", "test")


def save_figure(trainer: Trainer | None, name: str, fig: Any, epoch: int, step: int) -> None:
    """Write ``fig`` as ``<run folder>/figures/<name>_epoch<epoch>_step<global step>.png`` (two validations in
    one epoch keep both) and to TensorBoard loggers;
    closed in any case (without loggers there is no run folder to write into)."""
    import matplotlib.pyplot as plt

    if trainer is None or not trainer.loggers:
        plt.close(fig)
        return
    root = Path(trainer.log_dir or trainer.default_root_dir) / "figures"
    root.mkdir(parents=True, exist_ok=True)
    fig.savefig(root / f"{name}_epoch{epoch:03d}_step{step:07d}.png", dpi=80)
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_figure"):
            experiment.add_figure(name, fig, global_step=step, close=False)
    plt.close(fig)


def heatmap(rows: dict[str, torch.Tensor], ylabel: str, ax: Any = None) -> Any:
    """Rows of counts (each normalised to shares) as an experts x ``ylabel`` heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    width = max(int(r.numel()) for r in rows.values())
    data = torch.zeros(len(names), width)
    for i, n in enumerate(names):
        r = rows[n].detach().float().cpu()
        data[i, : r.numel()] = r / r.sum().clamp_min(1e-12)
    if ax is None:
        fig, ax = plt.subplots(figsize=(1 + 0.4 * width, 1 + 0.35 * len(names)))
    else:
        fig = ax.figure
    im = ax.imshow(data.numpy(), aspect="auto", cmap="viridis")
    ax.set_xlabel("expert")
    ax.set_ylabel(ylabel)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    fig.colorbar(im, ax=ax, label="share of routed tokens")
    fig.tight_layout()
    return fig


class RoutingMonitor(Callback):
    """Per-split routing statistics and validation-end routing figures (see the module docstring).

    Args:
        enabled: False turns the monitor off (nothing accumulated, logged or drawn).
        figures: draw the routing figures at validation end.
        ecology_history_size: training steps of (E, dead experts) kept per layer for the figure;
            beyond it every other point goes, so the history spans the run at half the resolution.
    """

    def __init__(self, enabled: bool = True, figures: bool = True, ecology_history_size: int = 4096) -> None:
        if isinstance(ecology_history_size, bool) or not isinstance(ecology_history_size, int) \
                or ecology_history_size < 2:
            raise ValueError(f"ecology_history_size: expected an int >= 2, got {ecology_history_size!r}")
        self.enabled, self.figures, self.ecology_history_size = bool(enabled), bool(figures), ecology_history_size
        self.routing: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in SPLITS}
        self.class_routing: dict[str, dict[str, torch.Tensor]] = {s: {} for s in SPLITS}
        #: per MoE layer: (training step, E, dead experts) of each training step
        self.ecology_history: dict[str, list[tuple[int, float, torch.Tensor]]] = {}
        self._step = 0

    def active(self, pl_module: LightningModule) -> bool:
        hparams = getattr(pl_module, "hparams", {})
        return self.enabled and bool(hparams.get("log_routing", True))

    # ------------------------------------------------------------ accumulate
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step = trainer.global_step  # the step this batch belongs to (global_step moves on after it)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.accumulate(trainer, pl_module, "train", batch)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:  # the sanity-check batches stay out of the statistics
            self.accumulate(trainer, pl_module, "val", batch)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self.accumulate(trainer, pl_module, "test", batch)

    def accumulate(self, trainer: Trainer, pl_module: LightningModule, split: str, batch: Any) -> None:
        """Add the routing of the forward just run (each layer's ``stats``) to ``split``'s totals."""
        if not self.active(pl_module):
            return
        routing_classes = getattr(pl_module, "routing_classes", None)
        classes = routing_classes(batch) if routing_classes is not None and isinstance(batch, dict) else None
        routing, class_routing = self.routing[split], self.class_routing[split]
        for name, layer in pl_module.named_modules():
            if not isinstance(layer, MoELayer) or layer.aux_loss is None or layer.stats is None:
                continue
            s = layer.stats
            acc = routing.setdefault(name, {})
            for key in ("tokens_per_expert", "dropped_per_modality", "tokens_per_modality"):
                value = getattr(s, key).detach().float()
                acc[key] = acc[key] + value if key in acc else value
            acc["dead_experts"] = s.dead_experts.detach().float()
            entropy = s.router_entropy.detach().float()
            acc["router_entropy"] = acc["router_entropy"] + entropy if "router_entropy" in acc else entropy
            acc["batches"] = acc.get("batches", 0) + 1
            acc["ecology"], acc["entropy_weight"] = layer.ecology, layer.router.entropy_weight
            if split == "train":
                self._record_ecology(name, acc["ecology"], acc["dead_experts"])
            if classes is not None and layer.last_assignment is not None:
                per_class = layer.class_load(classes, int(classes.max()) + 1 if classes.numel() else 1)
                prev = class_routing.get(name)
                if prev is not None:
                    rows = max(prev.shape[0], per_class.shape[0])
                    prev = nn.functional.pad(prev, (0, 0, 0, rows - prev.shape[0]))
                    per_class = nn.functional.pad(per_class, (0, 0, 0, rows - per_class.shape[0])) + prev
                class_routing[name] = per_class

    def _record_ecology(self, name: str, ecology: float, dead: torch.Tensor) -> None:
        history = self.ecology_history.setdefault(name, [])
        if history and history[-1][0] == self._step:  # gradient accumulation: one point per step
            history[-1] = (self._step, ecology, dead)
        else:
            history.append((self._step, ecology, dead))
        if len(history) > self.ecology_history_size:
            history[:] = history[::2]

    # ------------------------------------------------------------------ log
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.log_split(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            self.routing["val"], self.class_routing["val"] = {}, {}
            return
        self.log_split(trainer, pl_module, "val", figures=self.figures)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.log_split(trainer, pl_module, "test")

    def log_split(self, trainer: Trainer, pl_module: LightningModule, split: str, figures: bool = False) -> None:
        """Log ``split``'s totals (and draw its figures) and start afresh."""
        routing, class_routing = self.routing[split], self.class_routing[split]
        self.routing[split], self.class_routing[split] = {}, {}
        if not self.active(pl_module) or not routing:
            return
        metrics: dict[str, float] = {}
        for name, acc in routing.items():
            load = acc["tokens_per_expert"]
            frac = load / load.sum().clamp_min(1)
            prefix = f"routing_{split}/{name}"
            metrics[f"{prefix}/max_over_mean_load"] = float(load.max() / load.mean().clamp_min(1e-12))
            metrics[f"{prefix}/dead_experts"] = float(acc["dead_experts"])
            metrics[f"{prefix}/router_entropy"] = float(acc["router_entropy"]) / acc["batches"]
            metrics[f"{prefix}/ecology"] = float(acc["ecology"])
            metrics[f"{prefix}/entropy_weight"] = float(acc["entropy_weight"])
            for e, f in enumerate(frac.tolist()):
                metrics[f"{prefix}/load_e{e}"] = f
            pairs = acc["tokens_per_modality"].clamp_min(1)
            for m, d in enumerate((acc["dropped_per_modality"] / pairs).tolist()):
                metrics[f"{prefix}/drop_rate_m{m}"] = d
        if split == "test":
            # straight to the loggers: through pl_module.log they would fill the printed test table
            # with dozens of near-identical rows
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        else:
            for key, value in metrics.items():
                pl_module.log(key, value)
        if not figures:
            return
        epoch, step = pl_module.current_epoch, pl_module.global_step
        save_figure(trainer, "routing_experts_x_layers",
                    self.routing_figure({n: a["tokens_per_expert"] for n, a in routing.items()}), epoch, step)
        class_names = getattr(pl_module, "class_names", None)
        names = (class_names() if class_names is not None else None) or []
        for name, table in class_routing.items():
            rows = {names[c] if c < len(names) else f"class {c}": table[c] for c in range(table.shape[0])}
            save_figure(trainer, f"routing_experts_x_class_{name}", heatmap(rows, "class"), epoch, step)

    def routing_figure(self, rows: dict[str, torch.Tensor]) -> Any:
        """The experts x layers heat map, beside E and dead experts per layer over the training steps."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        width = max(int(r.numel()) for r in rows.values())
        history = {n: h for n, h in self.ecology_history.items() if h}
        if not history:
            return heatmap(rows, "layer")
        fig, axes = plt.subplots(1, 3, figsize=(3 + 0.4 * width + 8, 1.5 + 0.35 * max(len(rows), 6)),
                                 gridspec_kw={"width_ratios": [max(2.0, 0.4 * width), 3, 3]})
        heatmap(rows, "layer", ax=axes[0])
        for name, points in history.items():
            steps = [p[0] for p in points]
            # the dead counts stay tensors until drawn: recording them costs no host sync per step
            dead = torch.stack([p[2] for p in points]).cpu().tolist()
            axes[1].plot(steps, [p[1] for p in points], label=name)
            axes[2].plot(steps, dead, label=name)
        axes[1].set(xlabel="training step", ylabel="E = T·H/(O+B)", title="expert ecology")
        axes[2].set(xlabel="training step", ylabel="dead experts", title="dead experts")
        axes[2].legend(fontsize=6)
        fig.tight_layout()
        return fig
