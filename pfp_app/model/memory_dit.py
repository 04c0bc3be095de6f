"""Memory-conditioned Wan DiT: diffusers' `WanTransformer3DModel` run with extra clean memory tokens.

We do not fork the model: its own patch embedding, condition embedder, blocks, output norm
and head are called in order, so published Wan 2.1 weights load and behave as released. What
changes is the token sequence: memory tokens (already in the DiT's hidden width, produced by
the memory encoder φ) are appended after the patch embedding, every token gets RoPE from its
own (t, h, w) coordinate, memory tokens get timestep 0 through the per-token timestep path
(the 4-D `temb` that Wan's blocks accept), and they are dropped before the output head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from .rope import grid_coords, rope_at_coords


@dataclass
class MemoryTokens:
    """The compressed history φ(H): tokens in the DiT's hidden width and their grid coordinates."""

    tokens: torch.Tensor  # (B, N, D)
    coords: torch.Tensor  # (N, 3) float (t, h, w) in the DiT's token grid of the history

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[1]


@dataclass
class TwoGroupTimestep:
    """adaLN inputs for a sequence of `num_query` noisy tokens followed by clean memory tokens."""

    query: torch.Tensor  # (B, 6, D) timestep projection at the queries' t
    memory: torch.Tensor  # (B, 6, D) timestep projection at t = 0
    num_query: int


class MemoryWanTransformerBlock(WanTransformerBlock):
    """Wan's block, plus one more accepted `temb`: a `TwoGroupTimestep`.

    Wan's own per-token path (a 4-D temb) would need a (B, N, 6, D) float32 tensor per block: 2.2 GB
    for a 14B DiT over a 480p segment and 20 s of memory, more than the whole offloaded model. With two
    groups only two (B, 6, D) modulations exist and are applied to each part of the sequence. Blocks are
    given this class in place (`enable_memory_blocks`), before any offload hook wraps their forward;
    parameters and weight names are unchanged, and any other temb takes Wan's own path unchanged.
    """

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb):
        if not isinstance(temb, TwoGroupTimestep):
            return super().forward(hidden_states, encoder_hidden_states, temb, rotary_emb)
        x, n = hidden_states, temb.num_query
        q = (self.scale_shift_table + temb.query.float()).chunk(6, dim=1)  # 6 x (B, 1, D)
        m = (self.scale_shift_table + temb.memory.float()).chunk(6, dim=1)

        def modulate(h, i):  # h (B, N, D) float32: scale index i + 1, shift index i
            return torch.cat([h[:, :n] * (1 + q[i + 1]) + q[i], h[:, n:] * (1 + m[i + 1]) + m[i]], dim=1)

        def gate(h, i):
            return torch.cat([h[:, :n] * q[i], h[:, n:] * m[i]], dim=1)

        # 1. Self-attention
        norm = modulate(self.norm1(x.float()), 0).type_as(x)
        x = (x.float() + gate(self.attn1(norm, None, None, rotary_emb), 2)).type_as(x)
        # 2. Cross-attention (no timestep modulation in Wan)
        norm = self.norm2(x.float()).type_as(x)
        x = x + self.attn2(norm, encoder_hidden_states, None, None)
        # 3. Feed-forward
        norm = modulate(self.norm3(x.float()), 3).type_as(x)
        return (x.float() + gate(self.ffn(norm).float(), 5)).type_as(x)


def enable_memory_blocks(transformer: WanTransformer3DModel) -> WanTransformer3DModel:
    """Give the transformer's blocks the two-group timestep path (in place; weights untouched)."""
    for block in transformer.blocks:
        if type(block) is WanTransformerBlock:
            block.__class__ = MemoryWanTransformerBlock
    return transformer


def patch_grid(transformer: WanTransformer3DModel, latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Token grid (T', H', W') of latents (B, C, T, H, W) under the DiT's patch size."""
    p_t, p_h, p_w = transformer.config.patch_size
    _, _, t, h, w = latent_shape
    return t // p_t, h // p_h, w // p_w


def recent_tokens(transformer: WanTransformer3DModel, recent: torch.Tensor, frame_positions: torch.Tensor) -> MemoryTokens:
    """The last latent frames of the history as clean tokens at full resolution, beside φ's compressed memory.

    recent (B, C, k, H, W) clean latents; frame_positions (k,) their latent times (just before the segment).
    They go through G's own patch embedding, so each is a token G denoises every step, at timestep 0 and at its
    exact grid coordinate: the frame a segment continues, which φ's 4x4x2 memory holds only blurred. FramePack
    keeps its latest frame at full resolution for the same reason. G must be trained with them
    (`train --recent-latents`); a shot's first segment gets none, since a cut is meant to change the picture.
    """
    grid_t, grid_h, grid_w = patch_grid(transformer, recent.shape)
    if frame_positions.shape != (grid_t,):
        raise ValueError(f"frame_positions must have {grid_t} entries, got {tuple(frame_positions.shape)}")
    x = transformer.patch_embedding(recent.to(transformer.patch_embedding.weight.dtype))  # (B, D, k', H', W')
    tokens = x.flatten(2).transpose(1, 2)  # (B, k' H' W', D)
    return MemoryTokens(tokens, grid_coords(frame_positions.to(recent.device).float(), grid_h, grid_w).float())


def history_recent_tokens(transformer: WanTransformer3DModel, history: torch.Tensor, k: int,
                          end: int | None = None, at: int | None = None) -> MemoryTokens | None:
    """`recent_tokens` of the k latent frames of history (B, C, T, H, W), which starts at time 0, before `end` (default
    T), so they sit at times end - k .. end - 1 (or, given `at`, at - k .. at - 1: where the frames a segment
    starting at `at` continues would be); None when k or that part of the history is empty. The app and the
    trainer both give G the last ones; the app gives a returning shot frames of the shot it returns to."""
    end = history.shape[2] if end is None else min(end, history.shape[2])
    k = min(k, end)
    if k <= 0:
        return None
    last = end if at is None else at
    times = torch.arange(last - k, last, dtype=torch.float32, device=history.device)
    return recent_tokens(transformer, history[:, :, end - k : end], times)


def join_memory(*parts: MemoryTokens | None) -> MemoryTokens | None:
    """One memory from several (φ's tokens, recent frames' tokens); None parts are skipped."""
    parts = [p for p in parts if p is not None and p.num_tokens > 0]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    dtype = parts[0].tokens.dtype
    return MemoryTokens(torch.cat([p.tokens.to(dtype) for p in parts], dim=1),
                        torch.cat([p.coords.to(parts[0].coords.device, parts[0].coords.dtype) for p in parts], dim=0))


def memory_dit_forward(
    transformer: WanTransformer3DModel,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    text_embeddings: torch.Tensor,
    memory: MemoryTokens | None = None,
    frame_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Predict the flow velocity of noisy latents given text and (optionally) memory tokens.

    latents (B, C, T, H, W) noisy; timestep (B,) in Wan's 0..1000 scale; text_embeddings (B, L, text_dim);
    frame_positions (T // p_t,) temporal coordinate of each latent token frame (default 0..T'-1):
    for a next segment after a 40-frame history these are 40, 41, ...; for a retrieval query,
    the queried frames' own times. Returns the velocity (B, C, T, H, W).
    """
    cfg = transformer.config
    batch, _, num_frames, height, width = latents.shape
    p_t, p_h, p_w = cfg.patch_size
    grid_t, grid_h, grid_w = patch_grid(transformer, latents.shape)
    if frame_positions is None:
        frame_positions = torch.arange(grid_t, device=latents.device)
    if frame_positions.shape != (grid_t,):
        raise ValueError(f"frame_positions must have {grid_t} entries, got {tuple(frame_positions.shape)}")

    x = transformer.patch_embedding(latents)  # (B, D, T', H', W')
    x = x.flatten(2).transpose(1, 2).contiguous()  # (B, Nq, D)
    num_query = x.shape[1]
    coords = grid_coords(frame_positions, grid_h, grid_w)  # (Nq, 3)

    if memory is not None and memory.num_tokens > 0:
        x = torch.cat([x, memory.tokens.to(x.dtype)], dim=1)  # (B, Nq + Nm, D)
        coords = torch.cat([coords, memory.coords.to(coords.device, coords.dtype)], dim=0)
        has_memory = True
    else:
        has_memory = False

    rope_dtype = transformer.rope.freqs_cos.dtype
    rotary_emb = rope_at_coords(coords, cfg.attention_head_dim, dtype=rope_dtype)
    rotary_emb = tuple(r.to(latents.device) for r in rotary_emb)  # (1, N, 1, head_dim) each

    timestep = timestep.reshape(-1).expand(batch) if timestep.numel() == 1 else timestep
    if has_memory:
        # Two timesteps per sample: the noisy queries' t and the clean memory's 0, each embedded once.
        ts_pair = torch.stack([timestep, torch.zeros_like(timestep)], dim=1)  # (B, 2)
        temb, timestep_proj, text, _ = transformer.condition_embedder(
            ts_pair.flatten(), text_embeddings, None, timestep_seq_len=2
        )  # temb (B, 2, D), timestep_proj (B, 2, 6D)
        proj = timestep_proj.unflatten(2, (6, -1))  # (B, 2, 6, D)
        if all(isinstance(b, MemoryWanTransformerBlock) for b in transformer.blocks):
            block_temb = TwoGroupTimestep(proj[:, 0], proj[:, 1], num_query)
        else:  # plain diffusers blocks: Wan 2.2 TI2V's per-token path, (B, N, 6, D)
            token_kind = torch.zeros(x.shape[1], dtype=torch.long, device=x.device)
            token_kind[num_query:] = 1
            block_temb = proj[:, token_kind]
        head_temb = temb[:, 0]  # (B, D): the head only sees query tokens
    else:
        head_temb, timestep_proj, text, _ = transformer.condition_embedder(timestep, text_embeddings, None)
        block_temb = timestep_proj.unflatten(1, (6, -1))  # (B, 6, D)

    for block in transformer.blocks:
        if torch.is_grad_enabled() and transformer.gradient_checkpointing:
            x = transformer._gradient_checkpointing_func(block, x, text, block_temb, rotary_emb)
        else:
            x = block(x, text, block_temb, rotary_emb)  # (B, N, D)

    x = x[:, :num_query]  # memory tokens leave before the output head
    shift, scale = (transformer.scale_shift_table.to(head_temb.device) + head_temb.unsqueeze(1)).chunk(2, dim=1)
    x = (transformer.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
    x = transformer.proj_out(x)  # (B, Nq, C * p_t * p_h * p_w)
    x = x.reshape(batch, grid_t, grid_h, grid_w, p_t, p_h, p_w, -1)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)  # (B, C, T, H, W)
