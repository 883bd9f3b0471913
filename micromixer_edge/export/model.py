"""MicroMixerV2: an attention-free byte-level language model, read top to bottom.

Each layer mixes tokens through the running mean of its normalized inputs, so the whole context of
a layer is one sum of H floats: `step` carries those sums (the `state`) from call to call and each
new token costs O(1). `forward` reproduces the original recompute-the-window behaviour.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..format import MixerConfig


class RoPE(nn.Module):
    """Rotary position: frequencies laid out by halves, rotation pairs interleaved (as trained)."""

    def __init__(self, dim: int):
        super().__init__()
        inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        self.register_buffer("inv_freq", inv_freq)  # (H/2,), part of the published state_dict
        # r(x)[2j] = -x[2j+1], r(x)[2j+1] = x[2j]: a fixed permutation and sign, not in state_dict.
        perm = torch.arange(dim).view(-1, 2).flip(-1).reshape(-1)
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("sign", torch.tensor([-1.0, 1.0]).repeat(dim // 2), persistent=False)

    def forward(self, table: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # table (V, H) embedding, idx (T, B), pos (T, B, 1) float -> (T, B, H)
        # r(E[idx]) = r(E)[idx]: rotating the table is a constant folded at export, where rotating
        # the gathered rows is a last-axis gather on every call (slow in onnxruntime).
        x = F.embedding(idx, table)  # (T, B, H)
        xr = F.embedding(idx, table[:, self.perm] * self.sign)  # (T, B, H), r(x)
        g = pos * self.inv_freq  # (T, B, H/2): both halves of the frequencies are equal, so
        cos, sin = torch.cos(g), torch.sin(g)  # cos and sin at half width
        return x * torch.cat([cos, cos], -1) + xr * torch.cat([sin, sin], -1)


class TokenMixer(nn.Module):
    """Per-token weights from the running mean of the context: out = n*w1 + w2."""

    def __init__(self, cfg: MixerConfig):
        super().__init__()
        self.hyper = nn.Sequential(nn.Linear(cfg.hidden_dim, cfg.hyper_hidden_dim), nn.GELU(),
                                   nn.Linear(cfg.hyper_hidden_dim, 2 * cfg.hidden_dim))

    def forward(self, n, s0, count):
        # n (T, B, H) normalized inputs, s0 (1, B, H) sum of earlier positions, count (T, B, 1)
        # (T, B, H) running sums, added in the order a token-by-token run adds them (s0 + n0, + n1,
        # ...), so that any chunking of a sequence gives bit-identical sums, and so identical
        # inputs to the int8 activation quantizers downstream.
        s = torch.cumsum(torch.cat([s0, n], 0), dim=0)[1:]
        w1, w2 = self.hyper(s / count).chunk(2, dim=-1)  # (T, B, H) each
        return n * w1 + w2, s[-1:]


class ChannelMLP(nn.Module):
    def __init__(self, cfg: MixerConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_dim, cfg.channel_mlp_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.channel_mlp_dim, cfg.hidden_dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class MixerLayer(nn.Module):
    """Pre-norm residual block: token mixing, then a channel MLP."""

    def __init__(self, cfg: MixerConfig, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_dim)
        self.token_mixer = TokenMixer(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_dim)
        self.channel_mlp = ChannelMLP(cfg)
        self.drop = nn.Dropout(dropout)  # training only; an identity in eval and in the export

    def forward(self, x, s0, count):
        # x (T, B, H) -> (T, B, H), and this layer's new running sum (1, B, H)
        mixed, s = self.token_mixer(self.norm1(x), s0, count)
        x = x + self.drop(mixed)
        return x + self.drop(self.channel_mlp(self.norm2(x))), s


class MicroMixerV2(nn.Module):
    def __init__(self, cfg: MixerConfig, dropout: float = 0.0):
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_dim)
        self.rope = RoPE(cfg.hidden_dim)
        self.mixer_layers = nn.ModuleList(MixerLayer(cfg, dropout) for _ in range(cfg.num_layers))
        self.layer_norm = nn.LayerNorm(cfg.hidden_dim)
        self.lm_head = nn.Linear(cfg.hidden_dim, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # tied

    def step(self, idx, position, state):
        """The exported function. idx (B, T) int64, position (B,) int64, state (L, B, H).

        Returns logits (B, T, V) and the state with these T positions added (L, B, H).
        """
        # Inside, sequence comes first: a layer's state slice (1, B, H) then broadcasts over T and
        # the new sums concatenate straight into (L, B, H), with no transposes of the state.
        t = torch.arange(idx.shape[1], device=idx.device).view(-1, 1, 1)  # (T, 1, 1)
        dtype = self.token_embedding.weight.dtype  # float32 when exported; float64 for drift checks
        pos = (position.view(1, -1, 1) + t).to(dtype)  # (T, B, 1) absolute positions
        count = pos + 1.0  # (T, B, 1) tokens in each running mean
        x = self.rope(self.token_embedding.weight, idx.t(), pos)  # (T, B, H)
        sums = []
        for i, layer in enumerate(self.mixer_layers):
            x, s = layer(x, state[i:i + 1], count)
            sums.append(s)
        return self.lm_head(self.layer_norm(x)).transpose(0, 1), torch.cat(sums, 0)

    def forward(self, idx):
        """The original model: logits for the last max_seq_len tokens, positions from 0."""
        idx = idx[:, -self.config.max_seq_len:]  # (B, T<=W)
        b = idx.shape[0]
        zeros = idx.new_zeros(b)
        state = torch.zeros(self.config.num_layers, b, self.config.hidden_dim)
        return self.step(idx, zeros, state)[0]
