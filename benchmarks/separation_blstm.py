"""A simple peer for the separation benchmark: a frame-level uPIT BLSTM mask estimator.

The classic recipe (log-power spectrum of a frame, a stack of bidirectional LSTMs over frames, one
softmax mask per speaker and bin, permutation-invariant training on negative SI-SNR), trained here
for a wall-clock budget on the same embedded training mixtures as the shipped configs. It is not
part of the library: it is the baseline a user could write in an afternoon, kept beside the
MoE rows so the table says where the MoE model stands.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from mmoe.datamodules.separation.datamodule import SeparationDataModule
from mmoe.tasks.separation.metrics import pit_si_snr


class BLSTMSeparator(nn.Module):
    """``mixture [B, L]`` -> ``[B, S, L]``: log-power frames -> BLSTM stack -> softmax masks over speakers.

    Args:
        n_fft: STFT size (Hann window). hop: STFT hop.
        hidden: LSTM width per direction. layers: stacked LSTM layers. num_speakers: sources S.
    """

    def __init__(self, n_fft: int = 512, hop: int = 128, hidden: int = 256, layers: int = 2,
                 num_speakers: int = 2) -> None:
        super().__init__()
        self.n_fft, self.hop, self.S = n_fft, hop, num_speakers
        bins = n_fft // 2 + 1
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.norm = nn.LayerNorm(bins)
        self.lstm = nn.LSTM(bins, hidden, layers, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, num_speakers * bins)

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        B, L = mixture.shape
        scale = mixture.pow(2).mean(-1, keepdim=True).add(1e-8).sqrt()
        spec = torch.stft(mixture / scale, self.n_fft, self.hop, window=self.window, return_complex=True)
        frames = self.norm(torch.log(spec.abs().pow(2) + 1e-6).transpose(1, 2))  # [B, T, F]
        masks = self.out(self.lstm(frames)[0]).view(B, -1, self.S, spec.shape[1]).softmax(2)
        est = masks.permute(0, 2, 3, 1) * spec[:, None]  # [B, S, F, T]
        wav = torch.istft(est.flatten(0, 1), self.n_fft, self.hop, window=self.window, length=L)
        return wav.view(B, self.S, L) * scale[:, None]


def train_blstm(seconds: float, dm: SeparationDataModule | None = None, seed: int = 0, lr: float = 2e-3,
                **model_options) -> tuple[BLSTMSeparator, int]:
    """Train :class:`BLSTMSeparator` for ``seconds`` of wall time (AdamW, 50 warm-up steps, gradient clip
    5) on ``dm``'s training mixtures (None: the default :class:`SeparationDataModule`, the shipped
    configs' data); returns ``(model, steps)``."""
    torch.manual_seed(seed)
    dm = SeparationDataModule(seed=seed) if dm is None else dm
    dm.setup("fit")
    model = BLSTMSeparator(**model_options)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    loader = dm.train_dataloader()  # one loader: its sampler draws new mixtures each pass
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for batch in loader:
            best, _ = pit_si_snr(model(batch["mixture"]), batch["sources"])
            loss = -best.mean()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            steps += 1
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"BLSTM peer: non-finite loss at step {steps}")
            if time.perf_counter() - start >= seconds:
                break
    return model.eval(), steps
