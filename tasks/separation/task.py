"""SeparationTask: two-speaker speech separation with the time-frequency MoE separator (:mod:`.model`)."""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import torch
from torchmetrics import MetricCollection

from mmoe.settings import MoESettings, upgrade_legacy_moe
from mmoe.tasks.base import BaseMoETask
from mmoe.tasks.separation.io import SeparationPreprocess, finish_audio, prepare_audio
from mmoe.tasks.separation.metrics import SDRi, SISNRi, pit_si_snr
from mmoe.tasks.separation.model import SEPARATION_MOE, TFMoESeparator
from mmoe.tasks.separation.stream import SeparationStream
from mmoe.tasks.separation.writer import SeparationWriter
from mmoe.validation import check_choice, check_positive_int


class SeparationTask(BaseMoETask):
    """Speech separation trained with permutation-invariant negative SI-SNR (torchmetrics' PIT).

    Batches (see the datamodule): ``{"mixture": [B, L], "sources": [B, S, L]}``. Metrics: ``si_snri``
    (validation and test) and ``sdri`` (test), both with the best permutation
    (:mod:`.metrics`). Validation figures: spectrograms of a mixture, its estimates and references,
    and the experts chosen per band and per frame.

    Args:
        preprocess: the data's settings (sample rate, speakers, predict's chunking); the CLI links it
            from the datamodule, a zoo file carries it. None: 8 kHz, two speakers.
        n_fft: STFT size in samples. hop: STFT hop in samples.
        dim: token width. depth: pairs of (time-MoE block, band-MoE block). num_heads: attention heads.
        hidden_dim: hidden width of each expert.
        moe: the MoE settings of every block (:class:`mmoe.settings.MoESettings`); ``moe.dense`` gives
            the dense baseline (FFN width ``top_k * hidden_dim``: the same active compute).
        dense_hidden_dim: dense FFN width when ``moe.dense`` (None: ``top_k * hidden_dim``).
        mask_hidden: hidden width of the per-band mask heads.
        mixer: ``"attention"``, ``"lstm"`` or ``"frame_lstm"`` (see :class:`.model.TFMoESeparator`).
        frame_hidden: LSTM width per direction of the ``"frame_lstm"`` time mixer.
        mask_head: ``"band"`` (per-band MLP) or ``"frame"`` (one linear map per frame over all bands).
        mask: ``"complex"`` masks or real ``"softmax"`` masks that sum to one over the speakers.
        aux_loss_weight: weight of the MoE auxiliary losses. log_routing: log routing stats and maps.
    """

    monitor = "val/si_snri"
    mode = "max"
    prediction_writer = SeparationWriter
    preprocess_class = SeparationPreprocess
    default_moe = SEPARATION_MOE

    def __init__(
        self,
        preprocess: SeparationPreprocess | None = None,
        n_fft: int = 256,
        hop: int = 64,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        hidden_dim: int = 64,
        moe: MoESettings = SEPARATION_MOE,
        dense_hidden_dim: int | None = None,
        mask_hidden: int = 128,
        mixer: Literal["attention", "lstm", "frame_lstm"] = "attention",
        frame_hidden: int = 128,
        mask_head: Literal["band", "frame"] = "band",
        mask: Literal["complex", "softmax"] = "complex",
        aux_loss_weight: float = 1.0,
        log_routing: bool = True,
    ) -> None:
        for name, value in (("n_fft", n_fft), ("hop", hop), ("dim", dim), ("depth", depth),
                            ("num_heads", num_heads), ("hidden_dim", hidden_dim),
                            ("mask_hidden", mask_hidden), ("frame_hidden", frame_hidden)):
            check_positive_int(name, value)
        check_choice("mixer", mixer, ("attention", "lstm", "frame_lstm"))
        check_choice("mask_head", mask_head, ("band", "frame"))
        check_choice("mask", mask, ("complex", "softmax"))
        if dense_hidden_dim is not None:
            check_positive_int("dense_hidden_dim", dense_hidden_dim)
        super().__init__(aux_loss_weight=aux_loss_weight, log_routing=log_routing)

    @classmethod
    def upgrade_init_args(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        return upgrade_legacy_moe(init_args, cls.default_moe)

    def configure_models(self) -> None:
        hp = self.hparams
        self.model = TFMoESeparator(
            sample_rate=self.pre.sample_rate, num_speakers=self.pre.num_speakers, n_fft=hp.n_fft, hop=hp.hop,
            dim=hp.dim, depth=hp.depth, num_heads=hp.num_heads, hidden_dim=hp.hidden_dim,
            moe=self.moe, dense_hidden_dim=hp.dense_hidden_dim, mask_hidden=hp.mask_hidden, mixer=hp.mixer,
            frame_hidden=hp.frame_hidden, mask_head=hp.mask_head, mask=hp.mask)

    def configure_metrics(self) -> None:
        self.train_metrics = None
        self.val_metrics = MetricCollection({"si_snri": SISNRi()})
        self.test_metrics = MetricCollection({"si_snri": SISNRi(), "sdri": SDRi()})

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"sources": [B, S, L]}``; ``batch["chunked"]`` (set by predict) separates long inputs in
        overlapping chunks of ``preprocess.chunk_seconds``."""
        mix = batch["mixture"]
        if batch.get("chunked"):
            rate = self.pre.sample_rate
            chunk = int(round(self.pre.chunk_seconds * rate))
            overlap = int(round(self.pre.overlap_seconds * rate))
            return {"sources": self.model.separate_long(mix, chunk, overlap)}
        return {"sources": self.model(mix)}

    def task_loss(self, output: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        best, _ = pit_si_snr(output["sources"], batch["sources"])
        return -best.mean()

    def update_metrics(self, split: str, output: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        metrics = self.split_metrics(split)
        if metrics is None:
            return
        preds = output["sources"].detach()
        metrics.update(preds, batch["sources"], batch["mixture"])
        if split == "val" and self.collect_figures and "_val_figure" not in self.__dict__:
            _, perm = pit_si_snr(preds[:1], batch["sources"][:1])
            est = preds[0][perm[0]]
            self.__dict__["_val_figure"] = {
                "mixture": batch["mixture"][0].float().cpu(), "estimates": est.float().cpu(),
                "references": batch["sources"][0].float().cpu(), "routing": self._routing_figure_data()}

    def _routing_figure_data(self) -> dict[str, Any]:
        """For the first MoE time block and band block: experts per band (all tokens of the batch) and
        one chosen expert per (frame, band) token of the first sample."""
        out = {}
        maps = self.model.routing_maps()
        for i, layer in enumerate(self.model.moe_layers()):
            if layer.last_assignment is None or i > 1:
                continue
            pair_token, expert, per_sample = layer.last_assignment
            first = pair_token < per_sample
            grid = torch.full((per_sample,), -1, dtype=torch.long)
            grid[pair_token[first].cpu()] = expert[first].cpu()
            out["time" if i % 2 == 0 else "band"] = (maps[f"block{i}"].cpu(), grid.view(-1, self.model.K))
        return out

    def validation_figures(self) -> dict[str, Any]:
        data = self.__dict__.pop("_val_figure", None)
        if data is None:
            return {}
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rate, figures = self.pre.sample_rate, {}
        signals = [("mixture", data["mixture"])]
        signals += [(f"estimate {s + 1}", e) for s, e in enumerate(data["estimates"])]
        signals += [(f"reference {s + 1}", r) for s, r in enumerate(data["references"])]
        fig, axes = plt.subplots(len(signals), 1, figsize=(7, 1.6 * len(signals)), sharex=True)
        for ax, (name, sig) in zip(axes, signals):
            spec = torch.stft(sig, 256, 64, window=torch.hann_window(256), return_complex=True).abs()
            ax.imshow(20 * torch.log10(spec + 1e-5).numpy(), origin="lower", aspect="auto", cmap="magma",
                      extent=(0, len(sig) / rate, 0, rate / 2))
            ax.set_ylabel("Hz", fontsize=7)
            ax.set_title(name, fontsize=8)
        axes[-1].set_xlabel("seconds")
        fig.tight_layout()
        figures["separation_spectrograms"] = fig
        for kind, (per_band, grid) in data["routing"].items():
            fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 3.2))
            share = per_band / per_band.sum(1, keepdim=True).clamp_min(1)
            im = a0.imshow(share.numpy(), aspect="auto", cmap="viridis", origin="lower")
            a0.set_xlabel("expert")
            a0.set_ylabel("band")
            a0.set_title(f"{kind}-MoE block: experts per band", fontsize=8)
            fig.colorbar(im, ax=a0)
            im = a1.imshow(grid.T.numpy(), aspect="auto", cmap="tab10", origin="lower", interpolation="nearest")
            a1.set_xlabel("frame")
            a1.set_ylabel("band")
            a1.set_title(f"{kind}-MoE block: a chosen expert per token", fontsize=8)
            fig.colorbar(im, ax=a1)
            fig.tight_layout()
            figures[f"experts_per_band_and_frame_{kind}"] = fig
        return figures

    # ------------------------------------------------------------------ inference
    def predict(self, audio: np.ndarray | torch.Tensor | str | os.PathLike,
                sample_rate: int | None = None) -> np.ndarray | torch.Tensor:
        """Separate the speakers of ``audio``.

        Args:
            audio: mono audio ``[samples]``, a batch ``[N, samples]`` (numpy, float or integer PCM, or a
                torch tensor; ``[samples, channels]`` is refused), or a WAV/FLAC/OGG path. Any length:
                inputs longer than ``preprocess.chunk_seconds`` are separated in overlapping chunks with
                a consistent speaker order.
            sample_rate: the rate of ``audio`` in Hz (required for arrays and tensors; a file has its own).
                1000..384000; other rates than the model's are resampled in and back out.

        Returns the sources ``[S, samples]`` (``[N, S, samples]`` for a batch) at the input's rate and
        length: numpy for arrays and files, torch for tensors; the input's float dtype (float32 for
        integer PCM and files). Input rules: :mod:`mmoe.inputs.audio`.
        """
        return super().predict(audio, sample_rate)

    def stream(self, sample_rate: int, block_ms: float = 32.0, lookahead_ms: float = 32.0,
               context_seconds: float = 1.0) -> SeparationStream:
        """A low-latency stream: ``s.push(chunk) -> sources [S, n]``, then ``s.flush()``.

        Args:
            sample_rate: the rate of the pushed audio (the model's own; streams are not resampled).
            block_ms: samples emitted per model call, in milliseconds.
            lookahead_ms: future audio a block sees; latency is ``block_ms + lookahead_ms``.
            context_seconds: past audio each model call sees.
        """
        return SeparationStream(self, sample_rate, block_ms, lookahead_ms, context_seconds)

    def prepare_inputs(self, audio: Any, sample_rate: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        return prepare_audio(self.pre, audio, sample_rate)

    def finish_outputs(self, output: dict[str, torch.Tensor], context: dict[str, Any]) -> Any:
        return finish_audio(self.pre, output, context)
