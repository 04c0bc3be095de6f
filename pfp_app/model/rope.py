"""Wan's 3-axis rotary embedding evaluated at arbitrary (t, h, w) token coordinates.

diffusers' `WanRotaryPosEmbed` tabulates frequencies only at the integer positions of the
grid being denoised. Memory tokens sit at the centres of the blocks of the token grid they
summarise (fractional coordinates) and at past times, so we evaluate the same frequencies
(same theta, same t/h/w split of the head dimension, same repeat-interleaved real pairs) at
any coordinate. At integer coordinates this equals Wan's table exactly (tested).
"""

from __future__ import annotations

import torch


def rope_axis_dims(attention_head_dim: int) -> tuple[int, int, int]:
    """Split of the head dimension into t/h/w parts, as in `WanRotaryPosEmbed` (128 -> 44/42/42)."""
    h_dim = w_dim = 2 * (attention_head_dim // 6)
    t_dim = attention_head_dim - h_dim - w_dim
    return t_dim, h_dim, w_dim


def rope_at_coords(
    coords: torch.Tensor,
    attention_head_dim: int,
    theta: float = 10000.0,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """coords (N, 3) float (t, h, w) -> (cos, sin), each (1, N, 1, attention_head_dim)."""
    coords = coords.to(torch.float64)
    cos_parts, sin_parts = [], []
    for axis, dim in enumerate(rope_axis_dims(attention_head_dim)):
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=coords.device)[: dim // 2] / dim))
        angles = coords[:, axis : axis + 1] * inv_freq[None, :]  # (N, dim/2)
        cos_parts.append(angles.cos().repeat_interleave(2, dim=1))  # (N, dim)
        sin_parts.append(angles.sin().repeat_interleave(2, dim=1))
    cos = torch.cat(cos_parts, dim=1)[None, :, None, :].to(dtype)  # (1, N, 1, head_dim)
    sin = torch.cat(sin_parts, dim=1)[None, :, None, :].to(dtype)
    return cos, sin


def grid_coords(
    frame_positions: torch.Tensor, height: int, width: int, h_offset: float = 0.0, w_offset: float = 0.0
) -> torch.Tensor:
    """Coordinates of a (T, H, W) token grid in the flatten order of Wan's patch embedding.

    frame_positions (T,) float: the temporal coordinate of each token frame (need not be contiguous:
    a retrieval query may ask for frames 3, 7 and 19 of the history). Returns (T*H*W, 3).
    """
    t = frame_positions.to(torch.float64)
    h = torch.arange(height, dtype=torch.float64, device=t.device) + h_offset
    w = torch.arange(width, dtype=torch.float64, device=t.device) + w_offset
    tt, hh, ww = torch.meshgrid(t, h, w, indexing="ij")
    return torch.stack([tt, hh, ww], dim=-1).reshape(-1, 3)  # (T*H*W, 3)
