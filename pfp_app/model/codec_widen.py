"""Widen a trained codec's decoder without losing what it learned (function-preserving, "Net2Wider"-style).

Why: the default codec's decoder must rebuild four 128x128 frames from each latent frame; on fine texture
(grass, gravel) it stays near 23 dB while the latents hold more than it uses. A wider decoder has the
capacity, but training one from scratch would cost the GPU minutes the current one took. Widening keeps the
encoder, the latents and therefore G untouched, and the wider decoder starts as the trained one: every old
channel keeps its weights, new channels start small, and old channels read nothing from new ones until
training teaches them to. diffusers has no such tool; `AutoencoderKLWan`'s `decoder_base_dim` gives the
wider architecture and this module fills it in.

Two layouts are not one-channel-per-index and are mapped block by block: an attention's `to_qkv`
(out channels [q | k | v]) and an up-sampling `time_conv` (out channels [frame 0 | frame 1]). Two scales
depend on the width and are compensated: Wan's RMS norm multiplies by sqrt(channels), and attention divides
q.k by sqrt(channels).
"""

from __future__ import annotations

import math

import torch
from diffusers import AutoencoderKLWan

NEW_CHANNEL_GAIN = 0.05  # new channels start at ~5% of an old channel's size: learnable, and nearly invisible


def decoder_width(vae: AutoencoderKLWan) -> int:
    return vae.config.decoder_base_dim or vae.config.base_dim


def _out_groups(name: str) -> int:
    """How many equal blocks a parameter's out-channel axis holds (see the module docstring)."""
    if ".to_qkv." in name:
        return 3
    if ".time_conv." in name:  # the decoder's time_convs all up-sample: dim -> 2 dim
        return 2
    return 1


def _old_positions(old: int, new: int, groups: int) -> torch.Tensor:
    """Indices in the widened axis where the old channels go: the first old/groups of each of `groups` blocks."""
    if old == new:
        return torch.arange(old)
    if old % groups or new % groups:
        raise ValueError(f"cannot split {old} -> {new} channels into {groups} blocks")
    o, n = old // groups, new // groups
    return torch.cat([torch.arange(o) + g * n for g in range(groups)])


def _widen_tensor(name: str, old: torch.Tensor, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    rows = _old_positions(old.shape[0], shape[0], _out_groups(name))
    if name.endswith(".gamma"):  # RMS norm: out = x / |x| * sqrt(C) * gamma, and |x| is unchanged by ~0 channels
        scale = math.sqrt(old.shape[0] / shape[0])
        new = torch.full(shape, float(old.mean()) * scale, dtype=old.dtype)
        new[rows] = old * scale
        return new
    if old.dim() == 1:  # a bias: new channels start at 0
        new = torch.zeros(shape, dtype=old.dtype)
        new[rows] = old
        return new
    # a conv weight (out, in, *kernel): new out channels read everything a little, old ones read only old inputs
    fan_in = math.prod(shape[1:])
    new = torch.randn(shape, generator=gen, dtype=torch.float32).mul_(NEW_CHANNEL_GAIN / math.sqrt(fan_in)).to(old.dtype)
    cols = _old_positions(old.shape[1], shape[1], 1)
    new[rows] = 0
    new[rows[:, None], cols[None, :]] = old
    return new


@torch.no_grad()
def widen_decoder(vae: AutoencoderKLWan, base_dim: int, seed: int = 0) -> AutoencoderKLWan:
    """A new `AutoencoderKLWan` equal to `vae` but with its decoder at base width `base_dim` (>= the current).

    The encoder (hence every latent) is copied exactly; the decoder computes nearly the same frames (new
    channels add a small term through the RMS norms: ~40 dB below the signal, see tests/test_codec_widen.py).
    """
    old_width = decoder_width(vae)
    if base_dim < old_width:
        raise ValueError(f"the decoder is already {old_width} wide; widening can only grow it (asked {base_dim})")
    config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    wide = AutoencoderKLWan.from_config({**config, "decoder_base_dim": base_dim}).to(vae.dtype)
    old_sd = vae.state_dict()
    gen = torch.Generator().manual_seed(seed)
    new_sd = {}
    for name, t in wide.state_dict().items():
        old = old_sd[name]
        new_sd[name] = old.clone() if old.shape == t.shape else _widen_tensor(name, old, t.shape, gen)
    for name in [n for n in new_sd if n.endswith(".to_qkv.weight") or n.endswith(".to_qkv.bias")]:
        # attention divides q.k by sqrt(channels): scale q up so the old logits are unchanged
        c_old, c_new = old_sd[name].shape[0] // 3, new_sd[name].shape[0] // 3
        if c_new != c_old:
            new_sd[name][:c_new] *= math.sqrt(c_new / c_old)
    wide.load_state_dict(new_sd)
    return wide
