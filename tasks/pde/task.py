"""PDETask: operator learning on PDE fields with the nested-MoE operator (:mod:`.model`)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Accuracy

from mmoe.moe_layer import MoELayer
from mmoe.settings import MoESettings, upgrade_legacy_moe
from mmoe.tasks.base import BaseMoETask
from mmoe.datamodules.pde.preprocess import PERIODIC_FAMILIES, PDEPreprocess
from mmoe.tasks.pde.io import finish_field, prepare_field
from mmoe.tasks.pde.metrics import RelativeL2
from mmoe.tasks.pde.model import NestedMoEOperator
from mmoe.tasks.pde.writer import PDEWriter
from mmoe.validation import check_choice, check_positive_int


#: the recipe's MoE: nested routing, 4 groups (one per embedded family) of 3 routed + 1 shared experts
PDE_MOE = MoESettings(router="nested", groups=4, num_experts=16, top_k=1)


class PDETask(BaseMoETask):
    """Operator learning on PDE fields with a nested MoE operator.

    Args:
        preprocess: the data's settings (channels, families, training resolution, unit scales);
            the CLI links it from the datamodule, a zoo file carries it. None: the embedded 2D data.
        patch_size: grid points per patch side. dim: token width. depth: backbone blocks.
        num_heads: attention heads. hidden_dim: expert hidden width.
        moe: the MoE settings (:class:`mmoe.settings.MoESettings`); the default is the nested router
            (one of ``groups`` expert groups per sample, ``top_k`` of the group's routed experts plus
            its shared expert per token); ``moe.dense`` gives the dense baseline with equal active
            parameters (FFN width ``(top_k + 1) * hidden_dim``).
        mixer: token mixer: ``"spectral"``, ``"attention"`` or ``"hybrid"`` (both).
        modes: Fourier modes of the spectral mixer.
        conditioned_channels: copies of the field filtered in Fourier space by a translation and a
            diffusion predicted from each sample's parameter channels, appended to the input
            (:class:`~mmoe.tasks.pde.model.ConditionedFourierChannels`); they let the operator
            represent parameter-dependent shifts such as advection. 0: none.
        family_loss_weight: weight of the cross-entropy between the sample-level group logits
            and the family label (samples with family -1 are ignored; routers with no sample-level
            decision have none).
        aux_loss_weight: weight of the MoE auxiliary losses. log_routing: log routing stats and maps.
    """

    monitor = "val/rel_l2"
    mode = "min"
    prediction_writer = PDEWriter
    preprocess_class = PDEPreprocess
    default_moe = PDE_MOE
    oracle_weight_hparam = "family_loss_weight"  # the supervised-routing weight O of the ecology E = T*H/(O+B)

    def __init__(
        self,
        preprocess: PDEPreprocess | None = None,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        hidden_dim: int = 128,
        moe: MoESettings = PDE_MOE,
        mixer: Literal["spectral", "attention", "hybrid"] = "spectral",
        modes: int = 8,
        conditioned_channels: int = 0,
        family_loss_weight: float = 0.1,
        aux_loss_weight: float = 1.0,
        log_routing: bool = True,
    ) -> None:
        for name, value in (("patch_size", patch_size), ("dim", dim), ("depth", depth), ("num_heads", num_heads),
                            ("hidden_dim", hidden_dim), ("modes", modes)):
            check_positive_int(name, value)
        check_positive_int("conditioned_channels", conditioned_channels, minimum=0)
        check_choice("mixer", mixer, ("spectral", "attention", "hybrid"))
        if not family_loss_weight >= 0:
            raise ValueError(f"family_loss_weight: expected >= 0, got {family_loss_weight!r}")
        super().__init__(aux_loss_weight=aux_loss_weight, log_routing=log_routing)

    @classmethod
    def upgrade_init_args(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        return upgrade_legacy_moe(init_args, cls.default_moe, groups_key="num_groups", per_group_key="experts_per_group")

    def configure_models(self) -> None:
        hp, pre = self.hparams, self.pre
        self.model = NestedMoEOperator(
            in_channels=pre.in_channels, out_channels=pre.out_channels, spatial_dims=pre.spatial_dims,
            patch_size=hp.patch_size, dim=hp.dim, depth=hp.depth, num_heads=hp.num_heads, hidden_dim=hp.hidden_dim,
            moe=self.moe, mixer=hp.mixer, modes=hp.modes, resolution=pre.resolution,
            conditioned_channels=hp.get("conditioned_channels", 0),
        )

    def configure_metrics(self) -> None:
        names = list(self.pre.family_names)
        self.train_metrics, self.val_metrics, self.test_metrics = (RelativeL2(names) for _ in range(3))
        groups = max(2, self.moe.groups if self.moe.grouped else self.moe.num_experts)
        self.val_routing_acc, self.test_routing_acc = (Accuracy(task="multiclass", num_classes=groups) for _ in range(2))

    def class_names(self) -> list[str] | None:
        return list(self.pre.family_names) or None

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        resample = batch.get("resample")
        if resample is None:  # on another grid than the training one, periodic families resample spectrally
            family, names = batch.get("family"), self.pre.family_names
            codes = family.tolist() if family is not None else [-1] * batch["input"].shape[0]
            resample = torch.tensor([0 <= f < len(names) and names[f] in PERIODIC_FAMILIES for f in codes],
                                    device=batch["input"].device)
        return self.model(batch["input"], resample)

    def _group_logits(self) -> list[torch.Tensor]:
        return [m.last_sample_logits for m in self.modules()
                if isinstance(m, MoELayer) and m.last_sample_logits is not None]

    def task_loss(self, output: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        target = batch["target"]
        B = target.shape[0]
        diff = (output - target).reshape(B, -1).norm(dim=1)
        loss = (diff / target.reshape(B, -1).norm(dim=1).clamp_min(1e-8)).mean()  # relative L2, as measured
        family = batch.get("family")
        logits = self._group_logits()
        if self.hparams.family_loss_weight and family is not None and logits and logits[0].shape[1] > 1:
            known = family >= 0
            if bool(known.any()):
                ce = torch.stack([F.cross_entropy(g[known], family[known] % g.shape[1]) for g in logits]).mean()
                loss = loss + self.hparams.family_loss_weight * ce
        return loss

    def update_metrics(self, split: str, output: torch.Tensor, batch: dict[str, Any]) -> None:
        family = batch.get("family")
        self.split_metrics(split).update(output, batch["target"], family)
        if split == "val" and self.collect_figures:  # the first sample of each family, for the figure
            samples = self.__dict__.setdefault("_val_samples", {})
            for i in range(output.shape[0]):
                key = int(family[i]) if family is not None else -1
                if key not in samples:
                    samples[key] = tuple(t[i, 0].detach().float().cpu()
                                         for t in (batch["input"], output, batch["target"]))
        logits = self._group_logits()
        acc = getattr(self, f"{split}_routing_acc", None)
        if acc is not None and logits and logits[0].shape[1] > 1 and family is not None and bool((family >= 0).any()):
            known = family >= 0
            acc.update(logits[0][known].argmax(-1), family[known] % logits[0].shape[1])

    def _log_metrics(self, split: str, log: bool = True) -> None:
        super()._log_metrics(split, log)
        acc = getattr(self, f"{split}_routing_acc", None)
        if acc is not None and acc.update_called:
            if log:
                self.log(f"{split}/family_routing_acc", acc.compute())
            acc.reset()

    def routing_classes(self, batch: dict[str, Any]) -> torch.Tensor | None:
        family = batch.get("family")
        return family.clamp_min(0) if family is not None and self.pre.family_names else None

    def validation_figures(self) -> dict[str, Any]:
        """Input, prediction, truth and |error| of the first validation sample of each family."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        samples = self.__dict__.pop("_val_samples", {})
        if not samples:
            return {}
        names = self.class_names() or []
        fig, axes = plt.subplots(len(samples), 4, figsize=(10, 2.4 * len(samples)), squeeze=False)
        for row, key in enumerate(sorted(samples)):
            inp, pred, true = samples[key]
            name = names[key] if 0 <= key < len(names) else "sample"
            panels = [inp, pred, true, (pred - true).abs()]
            for col, (title, img) in enumerate(zip(["input", "prediction", "truth", "|error|"], panels)):
                ax = axes[row, col]
                if img.ndim == 1:
                    ax.plot(img.numpy())
                else:
                    ax.imshow(img.numpy(), cmap="viridis")
                    ax.axis("off")
                ax.set_title(f"{name}: {title}", fontsize=8)
        fig.tight_layout()
        return {"pde_samples": fig}

    # ------------------------------------------------------------------ inference
    def predict(self, field: np.ndarray | torch.Tensor, family: str | None = None, *,
                nu: float | np.ndarray | torch.Tensor | None = None, eps2: float | np.ndarray | torch.Tensor | None = None,
                velocity: tuple[float, float] | np.ndarray | torch.Tensor | None = None) -> np.ndarray | torch.Tensor:
        """Solution operator on ``field``, in the layout, array type and physical units it came in.

        The embedded 2D families (unit square, cell-centred grid, periodic except darcy):
        ``darcy``: coefficient ``a`` (3 to 12) -> pressure ``u`` of ``-div(a grad u) = 1``, ``u = 0`` on the
        boundary; ``heat``: ``u0 -> u(t=1)`` of ``u_t = nu lap u``, ``nu`` in [3e-3, 3e-2];
        ``advection``: ``u0 -> u(t=0.5)`` of ``u_t + c.grad u = 0``, ``velocity`` c in [-1, 1]^2;
        ``allen_cahn``: ``u0 -> u(t=2)`` of ``u_t = eps2 lap u + u - u^3``, ``eps2`` in [1e-3, 4e-3].
        1D ``burgers``: ``u0 -> u(t=1)`` of ``u_t + (u^2/2)_x = nu u_xx``, ``nu`` in [2e-3, 5e-2].
        A model's own ranges are in ``preprocess.parameter_ranges``.

        Args:
            field: 2D ``[H, W]``, ``[N, H, W]`` or ``[N, C, H, W]``; 1D ``[X]``, ``[N, X]`` or
                ``[N, C, X]``; any resolution of at least one patch. Without a channel axis it is the
                field (channel 0) and the parameters come by name; with one, channels 1.. are the
                parameter maps as the datamodule encodes them.
            family: the PDE family of every sample (a name from ``preprocess.family_names``); needed
                for a field without a channel axis and where families' units differ.
            nu: heat diffusivity or burgers viscosity: a scalar or one per sample.
            eps2: allen_cahn interface energy: a scalar or one per sample.
            velocity: advection velocity ``(c_x, c_y)``: a pair or ``[N, 2]``.
        """
        return super().predict(field, family, {"nu": nu, "eps2": eps2, "velocity": velocity})

    def prepare_inputs(self, field: Any, family: str | None = None, parameters: dict[str, Any] | None = None
                       ) -> tuple[dict[str, torch.Tensor], Any]:
        return prepare_field(self.pre, self.hparams.patch_size, field, family, parameters)

    def finish_outputs(self, output: torch.Tensor, context: Any) -> np.ndarray | torch.Tensor:
        return finish_field(self.pre, output, context)
