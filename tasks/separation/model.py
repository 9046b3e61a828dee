"""TFMoESeparator: band-split time-frequency separator with MoE along time and along frequency (after TF-MoE).

mixture ``[B, L]`` -> RMS normalisation -> STFT ``[B, F, T]`` -> band split (K bands of a few bins,
narrow at low frequencies) -> one token per (frame, band) ``[B, T*K, dim]`` -> the shared
:class:`mmoe.backbone.MultimodalMoEBackbone` whose blocks alternate a **time** mixer and a **band**
mixer (attention over the bands of one frame: tokens = bands within a frame), each followed by an
MoE FFN over the (frame, band) tokens (or a dense FFN of the same active width for the baseline) ->
masks per speaker -> masked mixture STFT -> inverse STFT -> ``[B, S, L]``, rescaled to the input's
level.

Time mixers: attention over the frames of one band (``mixer="attention"``), a bidirectional LSTM over
them (``"lstm"``), or a bidirectional LSTM over frames that sees every band of a frame
(``"frame_lstm"``, :class:`FrameLSTM`, the shipped recipe). Mask heads: a small MLP per band
(``mask_head="band"``) or one linear map per frame from all band tokens (``"frame"``, the recipe).
On the embedded data the per-band paths learned slowly (about 2 dB SI-SNRi after 1500 steps) where
the frame-level ones pass 4 dB by step 1000 (BENCHMARKS.md): which bins belong to which speaker is
decided by the whole frame (a common pitch across bands), not one band.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmoe.backbone import BlockSpec, MultimodalMoEBackbone, sinusoidal_positions
from mmoe.mixers import SelfAttention, register_mixer
from mmoe.moe_layer import MoELayer
from mmoe.progress import predict_progress
from mmoe.settings import MoESettings
from mmoe.validation import check_choice, check_positive_int


def along_axis(fn, x: torch.Tensor, grid: tuple[int, ...] | None, axis: int) -> torch.Tensor:
    """Apply the sequence map ``fn [S, n, D] -> [S, n, D]`` along one axis of the ``(T, K)`` token grid of
    ``x [B, T*K, D]``: axis 0 (time), sequences are the frames of one band; axis 1 (band), the bands of
    one frame."""
    if grid is None or len(grid) != 2:
        raise ValueError(f"grid: expected (frames, bands) for a time/band mixer, got {grid!r}")
    B, N, D = x.shape
    T, K = grid
    g = x.view(B, T, K, D)
    if axis == 0:
        return fn(g.transpose(1, 2).reshape(B * K, T, D)).view(B, K, T, D).transpose(1, 2).reshape(B, N, D)
    return fn(g.reshape(B * T, K, D)).reshape(B, N, D)


class _AxisAttention(SelfAttention):
    """Self-attention (:class:`mmoe.mixers.SelfAttention`) along one axis of the ``(T, K)`` token
    grid (``grid`` passed by the backbone)."""

    axis: int = 0

    def forward(self, x: torch.Tensor, grid: tuple[int, ...] | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return along_axis(super().forward, x, grid, self.axis)


@register_mixer("tf_time")
class TimeAttention(_AxisAttention):
    """Attention over the frames of each band (tokens = frames within a band).

    Args:
        dim: token width.
        num_heads: attention heads (a divisor of ``dim``).
    """

    axis = 0


@register_mixer("tf_band")
class BandAttention(_AxisAttention):
    """Attention over the bands of each frame (tokens = bands within a frame).

    Args:
        dim: token width.
        num_heads: attention heads (a divisor of ``dim``).
    """

    axis = 1


class _AxisLSTM(nn.Module):
    """Bidirectional LSTM along one axis of the ``(T, K)`` token grid (after TF-GridNet's intra- and
    inter-frame modules). On the embedded data it learned no faster than attention (BENCHMARKS.md)."""

    axis: int = 0

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = dim if hidden is None else hidden
        check_positive_int("hidden", hidden)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, ...] | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return along_axis(lambda seq: self.proj(self.lstm(seq)[0]), x, grid, self.axis)


@register_mixer("tf_time_lstm")
class TimeLSTM(_AxisLSTM):
    """Bidirectional LSTM over the frames of each band.

    Args:
        dim: token width.
        hidden: LSTM width per direction (None: ``dim``).
    """

    axis = 0


@register_mixer("tf_band_lstm")
class BandLSTM(_AxisLSTM):
    """Bidirectional LSTM over the bands of each frame.

    Args:
        dim: token width.
        hidden: LSTM width per direction (None: ``dim``).
    """

    axis = 1


@register_mixer("tf_frame_lstm")
class FrameLSTM(nn.Module):
    """Bidirectional LSTM over frames that sees every band of a frame at once: the ``K`` band tokens of a
    frame are flattened and projected to ``hidden``, run through the LSTM along time, and projected back
    to one update per band token. Full-band context over time is what a frame-level BLSTM separator learns
    from quickly; the per-band mixers alone learn the speakers' grouping across bands slowly.

    Args:
        dim: token width.
        bands: bands per frame ``K``.
        hidden: LSTM width per direction.
    """

    def __init__(self, dim: int, bands: int, hidden: int = 128) -> None:
        super().__init__()
        check_positive_int("bands", bands)
        check_positive_int("hidden", hidden)
        self.bands = bands
        self.inp = nn.Linear(bands * dim, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, bands * dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, ...] | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if grid is None or len(grid) != 2 or grid[1] != self.bands:
            raise ValueError(f"grid: expected (frames, {self.bands}) for a frame mixer, got {grid!r}")
        B, N, D = x.shape
        T, K = grid
        out = self.proj(self.lstm(self.inp(x.reshape(B, T, K * D)))[0])
        return out.reshape(B, N, D)


def band_widths(num_bins: int, sample_rate: int, n_fft: int) -> list[int]:
    """Bins per band: 125 Hz bands up to 1 kHz, 250 Hz up to 3 kHz, 500 Hz up to 6 kHz, then 1 kHz
    (at least one bin each); the last band takes what is left."""
    hz_per_bin = sample_rate / n_fft
    widths, start = [], 0
    while start < num_bins:
        f = start * hz_per_bin
        band_hz = 125 if f < 1000 else 250 if f < 3000 else 500 if f < 6000 else 1000
        w = max(1, round(band_hz / hz_per_bin))
        if num_bins - (start + w) < max(1, w // 2):  # too small a remainder: merge it
            w = num_bins - start
        widths.append(w)
        start += w
    return widths


#: the recipe's MoE: softmax top-2 of 8 experts per time and band block, dropless
SEPARATION_MOE = MoESettings(router="softmax", num_experts=8, top_k=2)


class TFMoESeparator(nn.Module):
    """Band-split TF separator on the shared MoE backbone (see the module docstring).

    Args:
        sample_rate: the audio rate (sets the band layout).
        num_speakers: sources S.
        n_fft: STFT size (Hann window of this length).
        hop: STFT hop in samples.
        dim: token width.
        depth: pairs of (time block, band block).
        num_heads: attention heads of the mixers.
        hidden_dim: hidden width of each expert.
        moe: the MoE settings of every time and band block; ``moe.dense`` gives the dense baseline
            (FFN hidden width ``top_k * hidden_dim``: equal active compute).
        dense_hidden_dim: hidden width of the dense FFN when ``moe.dense`` (None: ``top_k * hidden_dim``).
        mask_hidden: hidden width of the per-band mask heads.
        mixer: the time and band mixers: ``"attention"`` (``num_heads`` heads), ``"lstm"``
            (bidirectional LSTMs of width ``dim`` per direction) or ``"frame_lstm"`` (time blocks: a
            bidirectional LSTM over frames that sees all bands of a frame, :class:`FrameLSTM`; band
            blocks: attention).
        frame_hidden: LSTM width per direction of the ``"frame_lstm"`` time mixer.
        mask_head: ``"band"`` (a small MLP per band from that band's token) or ``"frame"`` (one linear
            map from all band tokens of a frame to every band's masks: each mask sees the whole frame).
        mask: ``"complex"`` (an unbounded complex mask per speaker) or ``"softmax"`` (real masks in
            [0, 1] that sum to one over the speakers, so the estimates add up to the mixture).
    """

    def __init__(self, *, sample_rate: int = 8000, num_speakers: int = 2, n_fft: int = 256, hop: int = 64,
                 dim: int = 64, depth: int = 2, num_heads: int = 4, hidden_dim: int = 64,
                 moe: MoESettings = SEPARATION_MOE, dense_hidden_dim: int | None = None, mask_hidden: int = 128,
                 mixer: Literal["attention", "lstm", "frame_lstm"] = "attention", frame_hidden: int = 128,
                 mask_head: Literal["band", "frame"] = "band",
                 mask: Literal["complex", "softmax"] = "complex") -> None:
        super().__init__()
        check_choice("mixer", mixer, ("attention", "lstm", "frame_lstm"))
        check_choice("mask", mask, ("complex", "softmax"))
        check_choice("mask_head", mask_head, ("band", "frame"))
        check_positive_int("frame_hidden", frame_hidden)
        self.mask_kind, self.mask_head = mask, mask_head
        for name, value in (("sample_rate", sample_rate), ("num_speakers", num_speakers), ("n_fft", n_fft),
                            ("hop", hop), ("dim", dim), ("depth", depth), ("hidden_dim", hidden_dim),
                            ("mask_hidden", mask_hidden)):
            check_positive_int(name, value)
        if hop > n_fft:
            raise ValueError(f"hop: expected at most n_fft={n_fft}, got {hop}")
        self.sample_rate, self.num_speakers, self.n_fft, self.hop = sample_rate, num_speakers, n_fft, hop
        self.num_bins = n_fft // 2 + 1
        widths = band_widths(self.num_bins, sample_rate, n_fft)
        self.widths, self.K, self.wmax = widths, len(widths), max(widths)
        # bin index of each (band, slot) with slot >= width pointing at a zero pad bin (index F)
        index = torch.full((self.K, self.wmax), self.num_bins, dtype=torch.long)
        valid = torch.zeros(self.K, self.wmax, dtype=torch.bool)
        start = 0
        for k, w in enumerate(widths):
            index[k, :w] = torch.arange(start, start + w)
            valid[k, :w] = True
            start += w
        self.register_buffer("band_index", index, persistent=False)
        self.register_buffer("band_valid", valid, persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        S, K, W = num_speakers, self.K, self.wmax
        # per-band projections as stacked weights (one einsum, no loop over bands)
        self.in_norm = nn.LayerNorm(2 * W)
        # the log power spectrum normalised over all bins of a frame (as a frame-level BLSTM separator
        # sees it): which bins stand out in this frame, the grouping cue the band tokens share
        self.frame_norm = nn.LayerNorm(self.num_bins)
        # features per band token: the normalised real/imaginary bins (2W) and the log magnitudes (W),
        # which keep the level of the band relative to the others that the normalisation removes
        self.in_weight = nn.Parameter(torch.randn(K, 3 * W, dim) / math.sqrt(3 * W))
        self.in_bias = nn.Parameter(torch.zeros(K, dim))
        self.band_embed = nn.Parameter(torch.randn(K, dim) * 0.02)
        blocks = []
        for _ in range(depth):
            for name in ("tf_time", "tf_band"):
                options: dict[str, Any] = {"num_heads": num_heads}
                if mixer == "lstm":
                    name, options = f"{name}_lstm", {}
                elif mixer == "frame_lstm" and name == "tf_time":
                    name, options = "tf_frame_lstm", {"bands": self.K, "hidden": frame_hidden}
                blocks.append(BlockSpec(mixer=name, mixer_options=options, hidden_dim=hidden_dim,
                                        dense_hidden_dim=dense_hidden_dim, **moe.block_fields()))
        self.backbone = MultimodalMoEBackbone(["audio"], dim, blocks=blocks, positions=False)
        if mask_head == "frame":
            self.frame_head = nn.Linear(K * dim, K * S * 2 * W)
            nn.init.zeros_(self.frame_head.bias)  # mask_b2 holds the offset
            nn.init.normal_(self.frame_head.weight, std=0.01 / math.sqrt(K * dim))
        else:
            self.mask_w1 = nn.Parameter(torch.randn(K, dim, mask_hidden) / math.sqrt(dim))
            self.mask_b1 = nn.Parameter(torch.zeros(K, mask_hidden))
            self.mask_w2 = nn.Parameter(torch.randn(K, mask_hidden, S * 2 * W) * 0.01 / math.sqrt(mask_hidden))
        # the masks start at 1/S (real part): an untrained model splits the mixture evenly
        b2 = torch.zeros(K, S, 2, W)
        b2[:, :, 0] = 1.0 / S
        self.mask_b2 = nn.Parameter(b2.reshape(K, S * 2 * W))

    def no_weight_decay(self) -> list[str]:
        return ["band_embed", "in_bias", "mask_b2"] + (["mask_b1"] if self.mask_head == "band" else [])

    # ------------------------------------------------------------------ transforms
    def stft(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stft(x, self.n_fft, self.hop, window=self.window, center=True, return_complex=True)

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        return torch.istft(spec, self.n_fft, self.hop, window=self.window, center=True, length=length)

    def moe_layers(self) -> list[MoELayer]:
        return [b.ffn for b in self.backbone.blocks if isinstance(b.ffn, MoELayer)]

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        """``mixture [B, L]`` -> estimates ``[B, S, L]``."""
        if mixture.ndim != 2:
            raise ValueError(f"mixture: expected [B, samples], got shape {tuple(mixture.shape)}")
        B, L = mixture.shape
        x = mixture.float()
        if L < self.n_fft:  # the centred STFT reflects n_fft // 2 samples: zero-pad very short inputs
            x = F.pad(x, (0, self.n_fft - L))
        scale = x.pow(2).mean(-1, keepdim=True).add(1e-8).sqrt()
        x = x / scale  # the model is level-independent; the level is put back at the end
        spec = self.stft(x)  # [B, F, T]
        T = spec.shape[-1]
        ri = torch.view_as_real(spec).permute(0, 2, 1, 3)  # [B, T, F, 2]
        ri = F.pad(ri, (0, 0, 0, 1))  # a zero bin at index F for the padded band slots
        bands = ri[:, :, self.band_index]  # [B, T, K, W, 2]
        feats = bands.permute(0, 1, 2, 4, 3).reshape(B, T, self.K, 2 * self.wmax)
        logpow = self.frame_norm(torch.log(spec.abs().pow(2).add(1e-6)).transpose(1, 2))  # [B, T, F]
        logmag = F.pad(logpow, (0, 1))[:, :, self.band_index] * self.band_valid  # [B, T, K, W]
        feats = torch.cat([self.in_norm(feats), logmag], -1)
        tokens = torch.einsum("btkw,kwd->btkd", feats, self.in_weight) + self.in_bias
        pos = sinusoidal_positions(T, tokens.shape[-1], x.device)[:, None, :] + self.band_embed  # [T, K, dim]
        out = self.backbone({"audio": tokens.reshape(B, T * self.K, -1)},
                            positions={"audio": pos.reshape(T * self.K, -1)}, grid=(T, self.K))["audio"]
        if self.mask_head == "frame":
            m = self.frame_head(out.reshape(B, T, -1)).view(B, T, self.K, -1) + self.mask_b2
        else:
            h = torch.tanh(torch.einsum("btkd,kdh->btkh", out.view(B, T, self.K, -1), self.mask_w1) + self.mask_b1)
            m = torch.einsum("btkh,khm->btkm", h, self.mask_w2) + self.mask_b2  # [B, T, K, S*2*W]
        m = m.view(B, T, self.K, self.num_speakers, 2, self.wmax)
        if self.mask_kind == "softmax":  # the real part's slot as logits; the imaginary slot is unused
            mask = torch.softmax(m[:, :, :, :, 0], dim=3).to(spec.dtype)
        else:
            mask = torch.complex(m[:, :, :, :, 0], m[:, :, :, :, 1])  # [B, T, K, S, W]
        mask = mask.permute(0, 3, 1, 2, 4)[..., self.band_valid]  # [B, S, T, F] (bands in bin order)
        est = mask.transpose(-1, -2) * spec[:, None]  # [B, S, F, T]
        wav = self.istft(est.reshape(B * self.num_speakers, self.num_bins, T), x.shape[-1])
        return wav.view(B, self.num_speakers, -1)[..., :L] * scale[:, None]

    @torch.no_grad()
    def separate_long(self, mixture: torch.Tensor, chunk: int, overlap: int) -> torch.Tensor:
        """``mixture [B, L]`` of any length in chunks of ``chunk`` samples overlapping by ``overlap``:
        each chunk's speakers are reordered to best match the previous chunk on the overlap
        (correlation), then chunks are cross-faded linearly. Memory is bounded by one chunk."""
        B, L = mixture.shape
        if L <= chunk:
            return self(mixture)
        step = chunk - overlap
        starts = list(range(0, max(L - overlap, 1), step))
        if starts[-1] + chunk < L:
            starts.append(L - chunk)
        out = mixture.new_zeros(B, self.num_speakers, L)
        weight = mixture.new_zeros(L)
        prev: torch.Tensor | None = None
        prev_start = 0
        import itertools

        perms = [list(p) for p in itertools.permutations(range(self.num_speakers))]
        bar = predict_progress(len(starts), "separating chunks")
        for s in starts:
            e = min(s + chunk, L)
            est = self(mixture[:, s:e])  # [B, S, n]
            bar.update()
            if prev is not None:
                o0, o1 = s, min(prev_start + prev.shape[-1], e)  # the overlap in absolute samples
                a = prev[..., o0 - prev_start:o1 - prev_start]
                b = est[..., : o1 - o0]
                scores = torch.stack([(a * b[:, p]).sum(-1).sum(-1) for p in perms], -1)  # [B, P]
                best = scores.argmax(-1)
                order = torch.tensor(perms, device=est.device)[best]  # [B, S]
                est = torch.gather(est, 1, order[:, :, None].expand_as(est))
            n = e - s
            ramp = torch.ones(n, device=mixture.device)
            if s > 0:
                fade = min(overlap, n)
                ramp[:fade] = torch.linspace(0, 1, fade + 2, device=mixture.device)[1:-1]
            if e < L:
                fade = min(overlap, n)
                ramp[n - fade:] = torch.minimum(ramp[n - fade:], torch.linspace(1, 0, fade + 2,
                                                                                device=mixture.device)[1:-1])
            out[..., s:e] += est * ramp
            weight[s:e] += ramp
            prev, prev_start = est, s
        bar.close()
        return out / weight.clamp_min(1e-6)

    def routing_maps(self) -> dict[str, torch.Tensor]:
        """Per MoE layer of the last forward, the top-1 expert histogram per band ``[K, E]`` and per frame
        position (tokens of the time blocks ordered ``(frame, band)``); empty for dense models."""
        maps = {}
        for i, layer in enumerate(self.moe_layers()):
            if layer.last_assignment is None:
                continue
            pair_token, expert, per_sample = layer.last_assignment
            E = layer.num_experts
            band = (pair_token % per_sample) % self.K
            keep = expert < E
            table = torch.zeros(self.K * E, device=expert.device)
            table.index_add_(0, band[keep] * E + expert[keep], torch.ones_like(band[keep], dtype=table.dtype))
            maps[f"block{i}"] = table.view(self.K, E)
        return maps
