"""The CipherDM-architecture MNIST U-Net (PyTorch), in the family of abarankab/DDPM's UNet that CipherDM used.

Layout for ``channel_mults=(1, 2)``, ``num_res_blocks=2`` at 28x28 (``C`` = ``base_channels``)::

    init Conv3x3(1 -> C)                                             28x28
    down: Res(C->C), Res(C->C), Conv3x3 stride 2                     28x28 -> 14x14
          Res(C->2C)+Attn, Res(2C->2C)+Attn                          14x14
    mid:  Res(2C->2C)+Attn, Res(2C->2C)                              14x14
    up:   3 x Res(concat skip -> 2C)+Attn, ConvTranspose3x3 stride 2 14x14 -> 28x28
          3 x Res(concat skip -> C)                                  28x28
    out:  GroupNorm -> act -> Conv3x3(C -> 1)

Every residual block: GroupNorm(2) -> act -> Conv3x3 -> + Linear(act(temb)) [+ class embedding] ->
GroupNorm(2) -> act -> Conv3x3 -> + skip (1x1 conv when the width changes). The time embedding is sinusoidal
(``time_sin_dim`` = C by default) -> Linear(2C) -> act -> Linear(2C); CipherDM's exact sizes are C = 4,
i.e. 4-dim sinusoid -> Linear(8) -> act -> Linear(8).

ONNX interface (the sampler and the compiler rely on it):

- ``sample``   float32 [B, 1, 28, 28]: x_t, the user's secret.
- ``timestep`` float32 [B]: public. Float, not int64, so the graph needs no Cast and the sinusoid is a plain
  Mul -> Sin/Cos on a public value.
- ``class_labels`` float32 [B, num_classes] one-hot (conditional models only): the user's secret. An int64 label
  would be looked up with Gather, which on a secret index under MPC needs an oblivious selection over all rows
  (a comparison per row plus a multiplexer); a one-hot vector turns the lookup into one small MatMul (a
  Linear without bias), which costs one secret multiplication. The all-zero vector is the "no label" input
  that classifier-free guidance needs: its embedding is exactly zero.
- output ``eps`` float32 [B, 1, 28, 28].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    base_channels: int = 4
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (1,)  # level 1 of mults (1, 2) is 14x14
    num_groups: int = 2
    time_sin_dim: int | None = None  # default: base_channels
    time_emb_dim: int | None = None  # default: 2 * base_channels
    num_classes: int | None = None  # None: unconditional
    act: str = "silu"  # "silu" or "mish"
    dropout: float = 0.0
    image_channels: int = 1
    image_size: int = 28

    @property
    def sin_dim(self) -> int:
        return self.time_sin_dim or self.base_channels

    @property
    def emb_dim(self) -> int:
        return self.time_emb_dim or 2 * self.base_channels

    def to_json(self) -> dict:
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["attention_levels"] = list(self.attention_levels)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "UNetConfig":
        d = dict(d)
        d["channel_mults"] = tuple(d["channel_mults"])
        d["attention_levels"] = tuple(d["attention_levels"])
        return cls(**d)


# CipherDM's exact MNIST sizes: the benchmark baseline architecture.
CIPHERDM_CONFIG = UNetConfig()


def make_act(name: str) -> nn.Module:
    if name == "silu":
        return nn.SiLU()
    if name == "mish":
        return nn.Mish()
    raise ValueError(f"unknown activation {name!r}; expected 'silu' or 'mish'")


class SinusoidalEmbedding(nn.Module):
    """[B] -> [B, dim]: sin and cos of t times a constant frequency table (a buffer, so no Exp in the graph)."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"sinusoidal embedding needs an even dimension, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, channels: int, num_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        self.scale = channels ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q = self.q(n).reshape(b, c, h * w).permute(0, 2, 1)  # [B, HW, C]
        k = self.k(n).reshape(b, c, h * w)  # [B, C, HW]
        v = self.v(n).reshape(b, c, h * w).permute(0, 2, 1)  # [B, HW, C]
        attn = torch.softmax(torch.bmm(q, k) * self.scale, dim=-1)
        out = torch.bmm(attn, v).permute(0, 2, 1).reshape(b, c, h, w)
        return x + self.out(out)


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, cfg: UNetConfig, use_attention: bool):
        super().__init__()
        self.act = make_act(cfg.act)
        self.norm1 = nn.GroupNorm(cfg.num_groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_bias = nn.Linear(cfg.emb_dim, out_ch)
        # One-hot [B, K] @ W: a bias-free Linear is exactly an embedding lookup, and zero for the null label.
        self.class_bias = nn.Linear(cfg.num_classes, out_ch, bias=False) if cfg.num_classes else None
        self.norm2 = nn.GroupNorm(cfg.num_groups, out_ch)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attention = AttentionBlock(out_ch, cfg.num_groups) if use_attention else nn.Identity()

    def forward(self, x, temb, y):
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.time_bias(self.act(temb))[:, :, None, None]
        if self.class_bias is not None:
            h = h + self.class_bias(y)[:, :, None, None]
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return self.attention(h + self.skip(x))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x, temb, y):
        return self.conv(x)


class Upsample(nn.Module):
    """ConvTranspose 3x3 stride 2; padding 1 + output_padding 1 gives exactly 2H, so no Slice is needed."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x, temb, y):
        return self.conv(x)


class MnistUNet(nn.Module):
    def __init__(self, cfg: UNetConfig = CIPHERDM_CONFIG):
        super().__init__()
        self.cfg = cfg
        base = cfg.base_channels
        self.time_mlp = nn.Sequential(
            SinusoidalEmbedding(cfg.sin_dim),
            nn.Linear(cfg.sin_dim, cfg.emb_dim),
            make_act(cfg.act),
            nn.Linear(cfg.emb_dim, cfg.emb_dim),
        )
        self.init_conv = nn.Conv2d(cfg.image_channels, base, 3, padding=1)
        self.downs = nn.ModuleList()
        channels = [base]
        now = base
        last = len(cfg.channel_mults) - 1
        for level, mult in enumerate(cfg.channel_mults):
            out = base * mult
            for _ in range(cfg.num_res_blocks):
                self.downs.append(ResidualBlock(now, out, cfg, level in cfg.attention_levels))
                now = out
                channels.append(now)
            if level != last:
                self.downs.append(Downsample(now))
                channels.append(now)
        self.mid = nn.ModuleList([ResidualBlock(now, now, cfg, True), ResidualBlock(now, now, cfg, False)])
        self.ups = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            out = base * mult
            for _ in range(cfg.num_res_blocks + 1):
                self.ups.append(ResidualBlock(channels.pop() + now, out, cfg, level in cfg.attention_levels))
                now = out
            if level != 0:
                self.ups.append(Upsample(now))
        assert not channels
        self.out_norm = nn.GroupNorm(cfg.num_groups, base)
        self.out_act = make_act(cfg.act)
        self.out_conv = nn.Conv2d(base, cfg.image_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None):
        if (class_labels is None) != (self.cfg.num_classes is None):
            raise ValueError("class_labels must be given exactly when the model is class-conditional")
        temb = self.time_mlp(timestep)
        x = self.init_conv(sample)
        skips = [x]
        for layer in self.downs:
            x = layer(x, temb, class_labels)
            skips.append(x)
        for layer in self.mid:
            x = layer(x, temb, class_labels)
        for layer in self.ups:
            if isinstance(layer, ResidualBlock):
                x = torch.cat([x, skips.pop()], dim=1)
            x = layer(x, temb, class_labels)
        return self.out_conv(self.out_act(self.out_norm(x)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
