"""Tiny diffusion models for the end-to-end test fixtures, built from configs with seeded random weights.

Each builder returns ``(module, example_args, input_names)``: an eval-mode ``torch.nn.Module`` whose ``forward``
takes plain tensors and returns one tensor, the example inputs, and the names the ONNX inputs get. Sizes are chosen
so every export stays well under 1 MB while still exercising every construct a real Stable-Diffusion-like model
uses (GroupNorm, SiLU/Mish/GELU, self- and cross-attention, GEGLU, sinusoidal and Fourier time embeddings,
nearest-neighbour upsampling, stride-2 downsampling, adaLN modulation).

torch and diffusers are imported here only: tests and the compiler never import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class FixtureModel:
    kind: str
    description: str
    build: Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...], list[str]]]
    seed: int


class _UNetSample(nn.Module):
    """``forward(sample, timestep[, encoder_hidden_states]) -> tensor``: strips diffusers' output dataclass."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, *extra):
        return self.unet(sample, timestep, *extra, return_dict=False)[0]


class _VaeDecode(nn.Module):
    """The AutoencoderKL decoder path as a pipeline uses it: post-quant conv, then the decoder."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent).sample


class DiTBlock(nn.Module):
    """A DiT block (Peebles & Xie 2023) with adaLN-Zero conditioning, written out so every op is visible.

    LayerNorm without affine parameters, multi-head self-attention through ``scaled_dot_product_attention``
    (what diffusers' AttnProcessor2_0 calls), a GELU(tanh) MLP, and shift/scale/gate vectors regressed from the
    conditioning vector by ``SiLU -> Linear``. The adaLN linear is randomly initialised (not zero) so the gates
    are not trivially zero in the fixture.
    """

    def __init__(self, dim: int = 32, heads: int = 4, mlp_ratio: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    @staticmethod
    def _modulate(x, shift, scale):
        return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    def _attention(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def forward(self, hidden_states, conditioning):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(conditioning).chunk(6, dim=1)
        x = hidden_states
        x = x + gate_msa.unsqueeze(1) * self._attention(self._modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(self._modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


def _generator(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _normal(rng: np.random.Generator, shape) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))


def _unet2d(seed: int, batch: int, act_fn: str, attention: bool, size: int = 8, head_dim: int = 4, **config):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    down = ("DownBlock2D", "AttnDownBlock2D") if attention else ("DownBlock2D", "DownBlock2D")
    up = ("AttnUpBlock2D", "UpBlock2D") if attention else ("UpBlock2D", "UpBlock2D")
    unet = UNet2DModel(
        sample_size=size, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=down, up_block_types=up, norm_num_groups=4, attention_head_dim=head_dim, act_fn=act_fn,
        add_attention=attention, **config,
    ).eval()
    rng = _generator(seed)
    sample = _normal(rng, (batch, 3, size, size))
    if config.get("time_embedding_type") == "fourier":
        # Score-SDE style: a continuous noise level sigma > 0 (the Fourier projection takes its log).
        timestep = torch.from_numpy(rng.uniform(0.05, 50.0, size=(batch,)).astype(np.float32))
    else:
        timestep = torch.from_numpy(rng.integers(1, 1000, size=(batch,)).astype(np.int64))
    return _UNetSample(unet), (sample, timestep), ["sample", "timestep"]


def build_unet2d_attn(seed: int = 1, batch: int = 2):
    return _unet2d(seed, batch, "silu", attention=True)


def build_unet2d_attn_32(seed: int = 1, batch: int = 2):
    # The unet2d_attn fixture's architecture and weights at 32x32 (attention over 16x16 = 256 tokens, two heads of
    # 8): the benchmark's diffusers model, big enough that cost follows the tensors rather than SPU's per-op and
    # per-round overheads (which dominate 8x8 images).
    return _unet2d(seed, batch, "silu", attention=True, size=32, head_dim=8)


def build_ddpm_cifar10(seed: int = 0, batch: int = 1):
    # google/ddpm-cifar10-32's UNet2DModel configuration (35.7M parameters; one attention head of 256 over 16x16
    # tokens, down and up), with seeded random weights: no hub download. Too big to ship (143 MB): exported on
    # demand for `make bench-large`.
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
        downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, mid_block_scale_factor=1, norm_eps=1e-6,
        norm_num_groups=32, act_fn="silu", time_embedding_type="positional",
    ).eval()
    rng = _generator(seed)
    sample = _normal(rng, (batch, 3, 32, 32))
    timestep = torch.from_numpy(rng.integers(1, 1000, size=(batch,)).astype(np.int64))
    return _UNetSample(unet), (sample, timestep), ["sample", "timestep"]


def build_unet2d_mish(seed: int = 2, batch: int = 1):
    return _unet2d(seed, batch, "mish", attention=True)


def build_unet2d_gelu(seed: int = 3, batch: int = 1):
    return _unet2d(seed, batch, "gelu", attention=True)


def build_unet2d_fourier(seed: int = 4, batch: int = 2):
    # No attention anywhere (add_attention=False drops the mid-block one too), a Gaussian Fourier time
    # embedding (log, constant random frequencies, sin/cos with flip_sin_to_cos) and scale-shift ResNet
    # conditioning (GroupNorm output * (1 + scale) + shift) instead of the default additive one.
    return _unet2d(seed, batch, "silu", attention=False, time_embedding_type="fourier",
                   flip_sin_to_cos=True, freq_shift=0, resnet_time_scale_shift="scale_shift")


def build_unet2d_cond(seed: int = 5, batch: int = 2):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn", norm_num_groups=4, cross_attention_dim=16,
        attention_head_dim=2, act_fn="silu",  # UNet2DConditionModel reads attention_head_dim as the head count
    ).eval()
    rng = _generator(seed)
    sample = _normal(rng, (batch, 4, 8, 8))
    timestep = torch.from_numpy(rng.integers(1, 1000, size=(batch,)).astype(np.int64))
    encoder_hidden_states = _normal(rng, (batch, 4, 16))
    return (_UNetSample(unet), (sample, timestep, encoder_hidden_states),
            ["sample", "timestep", "encoder_hidden_states"])


def build_vae_decoder(seed: int = 6, batch: int = 1):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16,
    ).eval()
    latent = _normal(_generator(seed), (batch, 4, 8, 8))
    return _VaeDecode(vae), (latent,), ["latent"]


def build_dit_block(seed: int = 7, batch: int = 2):
    torch.manual_seed(seed)
    block = DiTBlock(dim=32, heads=4, mlp_ratio=4).eval()
    rng = _generator(seed)
    hidden_states = _normal(rng, (batch, 16, 32))  # 16 tokens: a 4x4 grid of patches
    conditioning = _normal(rng, (batch, 32))       # timestep + class embedding, already summed
    return block, (hidden_states, conditioning), ["hidden_states", "conditioning"]


MODELS: dict[str, FixtureModel] = {m.kind: m for m in [
    FixtureModel("unet2d_attn", "UNet2DModel, AttnDownBlock2D/AttnUpBlock2D + mid attention, SiLU, "
                 "sinusoidal timestep (int64)", build_unet2d_attn, 1),
    FixtureModel("unet2d_attn_32", "the unet2d_attn model at 32x32 with attention heads of 8 (benchmark model, "
                 "not a test fixture)", build_unet2d_attn_32, 1),
    FixtureModel("ddpm_cifar10", "google/ddpm-cifar10-32's UNet2DModel architecture (35.7M parameters) with random "
                 "weights (benchmark model, exported on demand, not shipped)", build_ddpm_cifar10, 0),
    FixtureModel("unet2d_mish", "UNet2DModel with attention, act_fn mish", build_unet2d_mish, 2),
    FixtureModel("unet2d_gelu", "UNet2DModel with attention, act_fn gelu (erf)", build_unet2d_gelu, 3),
    FixtureModel("unet2d_fourier", "UNet2DModel without attention, Gaussian Fourier time embedding of a float "
                 "sigma (log, flip_sin_to_cos), scale_shift ResNet time conditioning, output divided by sigma",
                 build_unet2d_fourier, 4),
    FixtureModel("unet2d_cond", "UNet2DConditionModel: CrossAttnDownBlock2D/CrossAttnUpBlock2D/"
                 "UNetMidBlock2DCrossAttn, Transformer2DModel with self- and cross-attention (dim 16) and "
                 "GEGLU feed-forward", build_unet2d_cond, 5),
    FixtureModel("vae_decoder", "AutoencoderKL decode(z).sample: post_quant_conv, decoder with mid "
                 "attention, GroupNorm eps 1e-6, nearest upsampling", build_vae_decoder, 6),
    FixtureModel("dit_block", "DiT block: LayerNorm without affine, 4-head self-attention (SDPA), "
                 "GELU(tanh) MLP, adaLN-Zero shift/scale/gate from a conditioning vector", build_dit_block, 7),
]}

