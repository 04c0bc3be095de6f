"""The memory encoder φ of arXiv 2512.23851 (Fig. 3): history latents -> memory tokens in the DiT's width.

Two branches over the history latents (B, C, T, H, W) of the video codec:
- low-resolution (LR): the history pooled to the memory grid and embedded by a copy of the DiT's own
  patch embedding: global layout and motion, cheap, and meaningful to the DiT from step 0;
- high-resolution (HR): causal 3D convolutions + SiLU that widen while striding down to the memory
  grid, then block-causal spatio-temporal self-attention, then a linear projection to the DiT width
  through a zero-initialised gate: the "residual enhancing vectors" (texture, faces, small text).
Everything is causal in time, so the tokens of frames already seen never change when a segment is
appended: `MemoryEncoder.encode_incremental` only computes the new ones (tested equal to a full pass).

Compression rates are named H x W x T relative to the DiT's token grid (Wan: 1x2x2 patches of latents):
4x4x2 (default), 2x2x2 and 2x2x1. Each memory token's coordinate is the centre of the block of the
token grid it summarises, so the DiT gives it RoPE in the same coordinate system as its own tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .memory_dit import MemoryTokens
from .rope import grid_coords, rope_at_coords

RATES: dict[str, tuple[int, int, int]] = {"4x4x2": (4, 4, 2), "2x2x2": (2, 2, 2), "2x2x1": (2, 2, 1)}  # (h, w, t)
VARIANTS = ("proposed", "only_lr", "without_lr", "large_patchifier")


def memory_grid(token_grid: tuple[int, int, int], rate: str) -> tuple[int, int, int]:
    """(T', H', W') token grid of the history -> (Tm, Hm, Wm) memory grid (ceil: edges are padded)."""
    if rate not in RATES:
        raise ValueError(f"unknown memory rate {rate!r}; choose one of {', '.join(RATES)}")
    rh, rw, rt = RATES[rate]
    t, h, w = token_grid
    return math.ceil(t / rt), math.ceil(h / rh), math.ceil(w / rw)


def memory_token_count(token_grid: tuple[int, int, int], rate: str) -> int:
    return math.prod(memory_grid(token_grid, rate))


class CausalConv3d(nn.Conv3d):
    """3D convolution that only looks back in time (left padding in t, symmetric in h and w)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__(cin, cout, kernel, stride=stride, padding=0)
        self.time_pad = kernel - stride[0]  # block j of stride s sees frames up to s*j + s - 1
        self.space_pad = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.space_pad
        x = F.pad(x, (s, s, s, s, self.time_pad, 0))
        return super().forward(x)


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels at each (t, h, w): unlike GroupNorm it never mixes frames, keeping φ causal."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        x = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return x * self.weight[None, :, None, None, None]


class HRStage(nn.Module):
    """Strided causal conv (downsample + widen) followed by a residual causal conv, SiLU throughout."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int, int]):
        super().__init__()
        self.down = CausalConv3d(cin, cout, 3, stride)
        self.norm = ChannelRMSNorm(cout)
        self.conv = CausalConv3d(cout, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.down(x))
        return x + self.conv(F.silu(self.norm(x)))


class CausalAttentionBlock(nn.Module):
    """Pre-norm self-attention + MLP over memory tokens; a token sees tokens of its own or earlier times."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def forward(self, x, rope, mask, past_kv=None):
        """x (B, Nn, C) new tokens; past_kv: (k, v) (B, heads, Np, C/heads) of earlier tokens, already roped.

        Returns (x, (k, v)) with k, v of the new tokens only, for the incremental cache.
        """
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        cos, sin = rope  # (1, Nn, 1, hd) -> (1, 1, Nn, hd)
        q, k = apply_rope(q, cos.transpose(1, 2), sin.transpose(1, 2)), apply_rope(k, cos.transpose(1, 2), sin.transpose(1, 2))
        k_all, v_all = (k, v) if past_kv is None else (torch.cat([past_kv[0], k], 2), torch.cat([past_kv[1], v], 2))
        h = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)  # (B, heads, Nn, hd)
        x = x + self.proj(h.transpose(1, 2).reshape(b, n, c))
        x = x + self.mlp(self.norm2(x))
        return x, (k, v)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved real pairs, as Wan's attention processor does."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2].float(), sin[..., 1::2].float()
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2).type_as(x)


@dataclass
class MemoryCache:
    """What `encode_incremental` keeps between calls: everything about complete memory frames."""

    frames_done: int = 0  # latent frames fully summarised (a multiple of the rate's t)
    tokens: torch.Tensor | None = None  # (B, Nd, D) tokens of complete memory frames
    coords: torch.Tensor | None = None  # (Nd, 3)
    kv: list = field(default_factory=list)  # per attention layer (k, v) of complete memory frames


class MemoryEncoder(ModelMixin, ConfigMixin):
    """φ: history latents (B, C, T, H, W) -> MemoryTokens (B, N, D) with (t, h, w) coordinates."""

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 16,
        hidden_dim: int = 1536,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        rate: str = "4x4x2",
        variant: str = "proposed",
        hr_base_channels: int = 128,
        hr_channels: int = 512,
        hr_attention_layers: int = 1,
        hr_heads: int = 8,
    ):
        super().__init__()
        if rate not in RATES:
            raise ValueError(f"unknown memory rate {rate!r}; choose one of {', '.join(RATES)}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown memory encoder variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        rh, rw, rt = RATES[rate]
        p_t, p_h, p_w = patch_size
        self.stride = (rt * p_t, rh * p_h, rw * p_w)  # latent frames / rows / cols per memory token
        self.use_lr = variant in ("proposed", "only_lr")
        self.use_hr = variant in ("proposed", "without_lr")

        if self.use_lr:
            self.lr_embed = nn.Conv3d(latent_channels, hidden_dim, patch_size, stride=patch_size)
        if variant == "large_patchifier":
            self.large_patchifier = nn.Conv3d(latent_channels, hidden_dim, self.stride, stride=self.stride)
        if self.use_hr:
            n_stages = int(math.log2(self.stride[1]))
            if 2**n_stages != self.stride[1] or self.stride[1] != self.stride[2]:
                raise ValueError("the HR branch needs a square power-of-two spatial stride")
            stages, cin = [], latent_channels
            for i in range(n_stages):
                cout = min(hr_base_channels * 2**i, hr_channels)
                stages.append(HRStage(cin, cout, (self.stride[0] if i == 0 else 1, 2, 2)))
                cin = cout
            self.hr_stages = nn.ModuleList(stages)
            self.hr_in = nn.Linear(cin, hr_channels)
            self.hr_attention = nn.ModuleList(CausalAttentionBlock(hr_channels, hr_heads) for _ in range(hr_attention_layers))
            self.hr_norm = nn.LayerNorm(hr_channels)
            self.hr_out = nn.Linear(hr_channels, hidden_dim)
            # Zero gate: training starts from the LR branch alone (without LR there is nothing to
            # protect, so the HR branch starts open).
            self.hr_gate = nn.Parameter(torch.zeros(hidden_dim) if variant == "proposed" else torch.ones(hidden_dim))
            # Temporal lookback of the conv stack, in memory frames, plus one for safety: incremental
            # encoding re-runs the convs over this many earlier memory frames and drops their outputs.
            self.context_memory_frames = 2 * (2 * n_stages - 1) + 2

    # ---- initialisation -------------------------------------------------------------------
    @torch.no_grad()
    def init_from_transformer(self, patch_embedding: nn.Conv3d) -> None:
        """Copy the DiT's patch embedding into the LR branch / large patchifier (FramePack's init)."""
        w, b = patch_embedding.weight, patch_embedding.bias  # (D, C, p_t, p_h, p_w)
        if self.use_lr:
            self.lr_embed.weight.copy_(w)
            self.lr_embed.bias.copy_(b)
        if self.config.variant == "large_patchifier":
            rh, rw, rt = RATES[self.config.rate]
            big = w.repeat_interleave(rt, 2).repeat_interleave(rh, 3).repeat_interleave(rw, 4) / (rt * rh * rw)
            self.large_patchifier.weight.copy_(big)  # equals pooling + the base kernel at init
            self.large_patchifier.bias.copy_(b)

    # ---- geometry ---------------------------------------------------------------------------
    def _pad(self, latents: torch.Tensor) -> torch.Tensor:
        """Replicate-pad (B, C, T, H, W) so T, H, W are multiples of the memory stride."""
        st, sh, sw = self.stride
        _, _, t, h, w = latents.shape
        pt, ph, pw = (-t) % st, (-h) % sh, (-w) % sw
        if pt or ph or pw:
            latents = F.pad(latents, (0, pw, 0, ph, 0, pt), mode="replicate")
        return latents

    def token_coords(self, num_memory_frames: int, hm: int, wm: int, first_frame: int = 0) -> torch.Tensor:
        """(Tm*Hm*Wm, 3) centre of each memory token's block in the DiT token grid."""
        rh, rw, rt = RATES[self.config.rate]
        t_pos = (torch.arange(first_frame, first_frame + num_memory_frames, dtype=torch.float64) * rt) + (rt - 1) / 2
        coords = grid_coords(t_pos, hm, wm)
        coords[:, 1] = coords[:, 1] * rh + (rh - 1) / 2
        coords[:, 2] = coords[:, 2] * rw + (rw - 1) / 2
        return coords

    # ---- forward ----------------------------------------------------------------------------
    def _hr_features(self, latents: torch.Tensor) -> torch.Tensor:
        x = latents
        for stage in self.hr_stages:
            x = stage(x)
        return x  # (B, Chr, Tm, Hm, Wm)

    def _lr_and_patch(self, latents: torch.Tensor) -> torch.Tensor | None:
        """Branches without time mixing beyond one memory frame: (B, D, Tm, Hm, Wm) or None."""
        out = None
        if self.use_lr:
            rh, rw, rt = RATES[self.config.rate]
            pooled = F.avg_pool3d(latents, (rt, rh, rw))  # (B, C, Tm, H/rh, W/rw)
            out = self.lr_embed(pooled)
        if self.config.variant == "large_patchifier":
            out = self.large_patchifier(latents)
        return out

    def _attend(self, feats: torch.Tensor, first_frame: int, cache: MemoryCache | None, keep_frames: int):
        """HR attention over new memory frames (B, Chr, Tn, Hm, Wm) given cached earlier frames."""
        b, c, tn, hm, wm = feats.shape
        x = self.hr_in(feats.flatten(2).transpose(1, 2))  # (B, Tn*Hm*Wm, Chr)
        coords = grid_coords(torch.arange(first_frame, first_frame + tn, dtype=torch.float64), hm, wm)
        rope = rope_at_coords(coords, x.shape[-1] // self.config.hr_heads, dtype=torch.float32)
        rope = tuple(r.to(x.device) for r in rope)
        past = cache.kv if cache is not None and cache.kv else [None] * len(self.hr_attention)
        n_past = 0 if past[0] is None else past[0][0].shape[2]
        t_new = torch.arange(first_frame, first_frame + tn, device=x.device).repeat_interleave(hm * wm)
        t_past = torch.arange(first_frame, device=x.device).repeat_interleave(hm * wm)[-n_past:] if n_past else t_new[:0]
        mask = torch.cat([t_past, t_new])[None, :] <= t_new[:, None]  # (Nn, Np + Nn) block-causal
        new_kv = []
        for block, kv in zip(self.hr_attention, past):
            x, (k, v) = block(x, rope, mask, kv)
            keep = keep_frames * hm * wm  # only complete memory frames enter the cache
            new_kv.append((k[:, :, :keep], v[:, :, :keep]) if kv is None else
                          (torch.cat([kv[0], k[:, :, :keep]], 2), torch.cat([kv[1], v[:, :, :keep]], 2)))
        return self.hr_out(self.hr_norm(x)) * self.hr_gate, new_kv  # (B, Nn, D)

    def forward(self, history_latents: torch.Tensor) -> MemoryTokens:
        """history_latents (B, C, T, H, W) -> MemoryTokens (B, Tm*Hm*Wm, D)."""
        tokens, _ = self._encode(history_latents, None)
        return tokens

    def encode_incremental(self, history_latents: torch.Tensor, cache: MemoryCache | None) -> tuple[MemoryTokens, MemoryCache]:
        """Same result as `forward(history_latents)`, computing only what the cache does not hold.

        history_latents must extend the history the cache was built from (new frames appended).
        """
        return self._encode(history_latents, cache)

    def _encode(self, history_latents: torch.Tensor, cache: MemoryCache | None):
        st = self.stride[0]
        total = history_latents.shape[2]
        done = 0 if cache is None else cache.frames_done
        if done > total:
            raise ValueError(f"the memory cache covers {done} latent frames but the history has only {total}")
        if cache is not None and cache.tokens is not None and cache.tokens.shape[0] != history_latents.shape[0]:
            raise ValueError("the memory cache was built for another batch size")
        if cache is not None and cache.tokens is not None and done == total:  # nothing new to summarise
            return MemoryTokens(tokens=cache.tokens, coords=cache.coords), cache
        ctx = min(done, self.context_memory_frames * st) if self.use_hr else 0
        window = self._pad(history_latents[:, :, done - ctx :])  # (B, C, ctx + new (+pad), H, W)
        first_mf, ctx_mf = done // st, ctx // st
        complete_mf = (total - done) // st  # new memory frames that are complete (cacheable)

        parts = []
        lr = self._lr_and_patch(window[:, :, ctx:])  # (B, D, Tn, Hm, Wm)
        hr_kv = []
        if self.use_hr:
            feats = self._hr_features(window)[:, :, ctx_mf:]  # drop the context's outputs
            hr, hr_kv = self._attend(feats, first_mf, cache, complete_mf)
            parts.append(hr)
        if lr is not None:
            parts.append(lr.flatten(2).transpose(1, 2))
        new_tokens = parts[0] if len(parts) == 1 else parts[0] + parts[1]  # (B, Nn, D)
        grid_ref = lr if lr is not None else feats
        tn, hm, wm = grid_ref.shape[2:]
        new_coords = self.token_coords(tn, hm, wm, first_mf)

        old_tokens = cache.tokens if cache is not None and cache.tokens is not None else new_tokens[:, :0]
        old_coords = cache.coords if cache is not None and cache.coords is not None else new_coords[:0]
        tokens = torch.cat([old_tokens, new_tokens], dim=1)
        coords = torch.cat([old_coords, new_coords], dim=0)
        keep = complete_mf * hm * wm
        new_cache = MemoryCache(
            frames_done=done + complete_mf * st,
            tokens=torch.cat([old_tokens, new_tokens[:, :keep]], dim=1).detach(),
            coords=torch.cat([old_coords, new_coords[:keep]], dim=0),
            kv=[(k.detach(), v.detach()) for k, v in hr_kv],
        )
        return MemoryTokens(tokens=tokens, coords=coords), new_cache
