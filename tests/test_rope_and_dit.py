"""RoPE at arbitrary coordinates and the memory-conditioned Wan forward, against diffusers' own code.

The memory path is checked against an independent reference built only from diffusers: memory
tokens that are the patch embedding of extra latent frames must give exactly what diffusers'
`WanTransformer3DModel` gives when those frames are appended in time and given timestep 0 through
its own per-token (Wan 2.2 TI2V) timestep path. Every DiT test runs twice: with the app's blocks
(`enable_memory_blocks`, two timestep groups) and with diffusers' plain blocks (per-token temb).
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from pfp_app.model.memory_dit import MemoryTokens, memory_dit_forward, patch_grid
from pfp_app.model.rope import grid_coords, rope_at_coords, rope_axis_dims

from conftest import small_transformer

TEXT_LEN = 5


BLOCKS = pytest.mark.parametrize("memory_blocks", [True, False], ids=["memory_blocks", "wan_blocks"])


@pytest.fixture(scope="module", params=[True, False], ids=["memory_blocks", "wan_blocks"])
def dit(request):
    return small_transformer(seed=0, memory_blocks=request.param)


def _inputs(dit, batch=2, frames=3, height=6, width=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = dit.config
    latents = torch.randn(batch, c.in_channels, frames, height, width, generator=g)  # (B, C, T, H, W)
    text = torch.randn(batch, TEXT_LEN, c.text_dim, generator=g)  # (B, L, text_dim)
    timestep = torch.tensor([150.0, 870.0])[:batch]  # a different t per sample
    return latents, timestep, text


def _random_memory(dit, n=6, batch=2, seed=1, t0=3.0):
    g = torch.Generator().manual_seed(seed)
    d = dit.config.num_attention_heads * dit.config.attention_head_dim
    tokens = torch.randn(batch, n, d, generator=g)
    coords = torch.stack([t0 + torch.arange(n) * 0.5, torch.rand(n, generator=g) * 3, torch.rand(n, generator=g) * 4], 1)
    return MemoryTokens(tokens=tokens, coords=coords.double())


# ---- RoPE ------------------------------------------------------------------------------------


def test_axis_split_matches_wan():
    assert rope_axis_dims(128) == (44, 42, 42)
    for hd in (32, 64, 96, 128):
        r = WanRotaryPosEmbed(hd, (1, 2, 2), 16)
        assert rope_axis_dims(hd) == (r.t_dim, r.h_dim, r.w_dim)


@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_rope_at_integer_coords_equals_wan_table(head_dim):
    wan = WanRotaryPosEmbed(head_dim, (1, 2, 2), max_seq_len=64)
    frames, height, width = 5, 7, 9  # token grid (T', H', W'), all axes different
    cos_ref, sin_ref = wan(torch.zeros(1, 4, frames, 2 * height, 2 * width))  # (1, N, 1, hd)
    cos, sin = rope_at_coords(grid_coords(torch.arange(frames), height, width), head_dim, dtype=wan.freqs_cos.dtype)
    assert cos.shape == cos_ref.shape == (1, frames * height * width, 1, head_dim)
    assert torch.equal(cos, cos_ref)
    assert torch.equal(sin, sin_ref)


@pytest.mark.parametrize("head_dim", [32, 128])
def test_rope_at_fractional_coords_is_the_direct_formula(head_dim):
    coords = torch.tensor([[2.5, 0.5, 7.25], [0.0, 13.5, 1.5], [39.5, 3.75, 0.5]], dtype=torch.float64)
    cos, sin = rope_at_coords(coords, head_dim)  # float64
    start = 0
    for axis, dim in enumerate(rope_axis_dims(head_dim)):
        for i in range(dim // 2):  # pair i of this axis: frequency theta^(-2i/dim), repeated for (re, im)
            freq = 10000.0 ** (-2 * i / dim)
            for n in range(coords.shape[0]):
                angle = coords[n, axis].item() * freq
                for j in (start + 2 * i, start + 2 * i + 1):
                    assert cos[0, n, 0, j].item() == pytest.approx(math.cos(angle), abs=1e-12)
                    assert sin[0, n, 0, j].item() == pytest.approx(math.sin(angle), abs=1e-12)
        start += dim
    assert start == head_dim


def test_rope_half_integer_lies_between_its_integer_neighbours():
    """Rotation at t + 1/2 composed with itself is the rotation from t to t + 1 (angles add)."""
    head_dim = 64
    c0, s0 = rope_at_coords(torch.tensor([[3.0, 4.0, 5.0]]), head_dim)
    ch, sh = rope_at_coords(torch.tensor([[0.5, 0.5, 0.5]]), head_dim)
    c1, s1 = rope_at_coords(torch.tensor([[4.0, 5.0, 6.0]]), head_dim)
    # cos(a + 2h) = cos a cos 2h - sin a sin 2h, with cos 2h = ch^2 - sh^2, sin 2h = 2 ch sh
    c2h, s2h = ch**2 - sh**2, 2 * ch * sh
    torch.testing.assert_close(c0 * c2h - s0 * s2h, c1, atol=1e-12, rtol=0)
    torch.testing.assert_close(s0 * c2h + c0 * s2h, s1, atol=1e-12, rtol=0)


# ---- the memory-conditioned forward --------------------------------------------------------


def test_no_memory_equals_plain_diffusers_forward(dit):
    latents, timestep, text = _inputs(dit)
    with torch.no_grad():
        ref = dit(latents, timestep, text).sample
        out = memory_dit_forward(dit, latents, timestep, text, memory=None)
        d = dit.config.num_attention_heads * dit.config.attention_head_dim
        empty = MemoryTokens(tokens=torch.zeros(2, 0, d), coords=torch.zeros(0, 3, dtype=torch.float64))
        out_empty = memory_dit_forward(dit, latents, timestep, text, memory=empty)
    assert out.shape == latents.shape
    assert torch.equal(out, ref), (out - ref).abs().max()
    assert torch.equal(out_empty, ref)
    assert not torch.allclose(ref[0], ref[1])  # the two samples really differ (t and inputs)


@BLOCKS
def test_no_memory_equals_plain_forward_for_a_wan_shaped_head_dim(memory_blocks):
    """head_dim 128 (Wan 2.1's; RoPE split 44/42/42), one layer, odd token grid."""
    dit = small_transformer(seed=3, heads=1, head_dim=128, layers=1, memory_blocks=memory_blocks)
    latents, timestep, text = _inputs(dit, frames=2, height=10, width=6, seed=3)
    with torch.no_grad():
        assert torch.equal(memory_dit_forward(dit, latents, timestep, text), dit(latents, timestep, text).sample)


def test_scalar_timestep_is_broadcast_to_the_batch(dit):
    latents, _, text = _inputs(dit)
    with torch.no_grad():
        one = memory_dit_forward(dit, latents, torch.tensor(400.0), text)
        both = memory_dit_forward(dit, latents, torch.tensor([400.0, 400.0]), text)
    assert torch.equal(one, both)


def test_per_token_timestep_path_with_one_t_equals_scalar_path(dit):
    """The premise of timestep-0 memory: Wan's 4-D temb path with every token at t is the 3-D path."""
    latents, timestep, text = _inputs(dit)
    n = math.prod(patch_grid(dit, latents.shape))
    with torch.no_grad():
        per_token = dit(latents, timestep[:, None].expand(2, n), text).sample  # timestep (B, N)
        scalar = memory_dit_forward(dit, latents, timestep, text)
    torch.testing.assert_close(per_token, scalar, atol=1e-5, rtol=1e-5)


def test_memory_path_equals_diffusers_on_frames_appended_at_timestep_zero(dit):
    """Memory = patch embedding of 2 clean frames, placed (by coordinates) right after the queries.

    Reference: diffusers' own forward on the concatenation [noisy queries | clean frames] with the
    per-token timestep (t for query tokens, 0 for the clean ones), output cropped to the queries.
    This checks token order, RoPE coordinates, timestep 0 for memory and the head in one go.
    """
    latents, timestep, text = _inputs(dit, frames=3)
    g = torch.Generator().manual_seed(7)
    clean = torch.randn(2, dit.config.in_channels, 2, 6, 8, generator=g)
    with torch.no_grad():
        mem_tokens = dit.patch_embedding(clean).flatten(2).transpose(1, 2)  # (B, 2*3*4, D)
        _, gh, gw = patch_grid(dit, clean.shape)
        memory = MemoryTokens(mem_tokens, grid_coords(torch.arange(3, 5), gh, gw))
        out = memory_dit_forward(dit, latents, timestep, text, memory)

        nq, nm = math.prod(patch_grid(dit, latents.shape)), mem_tokens.shape[1]
        per_token_t = torch.cat([timestep[:, None].expand(2, nq), torch.zeros(2, nm)], dim=1)  # (B, Nq + Nm)
        ref = dit(torch.cat([latents, clean], dim=2), per_token_t, text).sample[:, :, :3]
    assert out.shape == latents.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_memory_changes_the_output_and_never_its_shape(dit):
    latents, timestep, text = _inputs(dit)
    memory = _random_memory(dit)
    with torch.no_grad():
        base = memory_dit_forward(dit, latents, timestep, text)
        with_mem = memory_dit_forward(dit, latents, timestep, text, memory)
        more = memory_dit_forward(dit, latents, timestep, text, _random_memory(dit, n=40, seed=5))
    assert with_mem.shape == more.shape == latents.shape
    assert (with_mem - base).abs().mean() > 1e-3
    assert (more - with_mem).abs().mean() > 1e-3


def test_memory_coordinates_matter_and_travel_with_their_tokens(dit):
    latents, timestep, text = _inputs(dit)
    memory = _random_memory(dit)
    with torch.no_grad():
        out = memory_dit_forward(dit, latents, timestep, text, memory)
        moved = MemoryTokens(memory.tokens, memory.coords + torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64))
        out_moved = memory_dit_forward(dit, latents, timestep, text, moved)
        # the same tokens with the same coordinates in another order: attention is order-free
        perm = torch.randperm(memory.num_tokens, generator=torch.Generator().manual_seed(0))
        shuffled = MemoryTokens(memory.tokens[:, perm], memory.coords[perm])
        out_shuffled = memory_dit_forward(dit, latents, timestep, text, shuffled)
        # shuffling the tokens but not the coordinates is a different memory
        mismatched = MemoryTokens(memory.tokens[:, perm], memory.coords)
        out_mismatched = memory_dit_forward(dit, latents, timestep, text, mismatched)
    noise = (out_shuffled - out).abs().max()  # float reordering only
    torch.testing.assert_close(out_shuffled, out, atol=1e-5, rtol=1e-5)
    assert (out_moved - out).abs().mean() > max(1e-4, 100 * noise)
    assert (out_mismatched - out).abs().mean() > max(1e-4, 100 * noise)


def test_rope_is_relative_so_shifting_every_time_changes_nothing(dit):
    """Queries at 10.5, 11.5, 12.5 and the memory 10.5 frames later too: only relative time matters,
    so fractional coordinates are handled exactly like integer ones."""
    latents, timestep, text = _inputs(dit)
    memory = _random_memory(dit)
    shift = torch.tensor([10.5, 0.0, 0.0], dtype=torch.float64)
    with torch.no_grad():
        out = memory_dit_forward(dit, latents, timestep, text, memory)
        shifted = MemoryTokens(memory.tokens, memory.coords + shift)
        out_shifted = memory_dit_forward(dit, latents, timestep, text, shifted, frame_positions=torch.arange(3) + 10.5)
    torch.testing.assert_close(out_shifted, out, atol=1e-4, rtol=1e-4)


def test_frame_positions_must_match_the_token_frames(dit):
    latents, timestep, text = _inputs(dit)
    with pytest.raises(ValueError, match="frame_positions must have 3 entries"):
        memory_dit_forward(dit, latents, timestep, text, frame_positions=torch.arange(4.0))


def test_the_two_block_paths_agree_with_memory():
    """The app's two-group blocks and Wan's per-token blocks: same weights, same output."""
    app, wan = small_transformer(seed=6, memory_blocks=True), small_transformer(seed=6, memory_blocks=False)
    latents, timestep, text = _inputs(app)
    memory = _random_memory(app, n=17)
    with torch.no_grad():
        torch.testing.assert_close(memory_dit_forward(app, latents, timestep, text, memory),
                                   memory_dit_forward(wan, latents, timestep, text, memory), atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_memory_tokens(dit):
    latents, timestep, text = _inputs(dit)
    memory = _random_memory(dit)
    tokens = memory.tokens.clone().requires_grad_(True)
    out = memory_dit_forward(dit, latents, timestep, text, MemoryTokens(tokens, memory.coords))
    out.square().mean().backward()
    assert tokens.grad is not None
    assert torch.isfinite(tokens.grad).all()
    assert (tokens.grad.abs().sum(dim=-1) > 0).all()  # every memory token of every sample is used


@BLOCKS
def test_gradient_checkpointing_gives_the_same_output_and_gradients(memory_blocks):
    dit = small_transformer(seed=4, memory_blocks=memory_blocks)
    latents, timestep, text = _inputs(dit)
    memory = _random_memory(dit)

    def run():
        dit.zero_grad()
        tokens = memory.tokens.clone().requires_grad_(True)
        out = memory_dit_forward(dit, latents, timestep, text, MemoryTokens(tokens, memory.coords))
        out.square().mean().backward()
        return out.detach(), tokens.grad, dit.blocks[0].attn1.to_q.weight.grad.clone()

    plain = run()
    dit.enable_gradient_checkpointing()
    dit.train()
    checkpointed = run()
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@BLOCKS
def test_bfloat16_matches_plain_forward_and_keeps_its_dtype(memory_blocks):
    dit = small_transformer(seed=0, memory_blocks=memory_blocks).to(torch.bfloat16)
    latents, timestep, text = _inputs(dit)
    latents, text = latents.bfloat16(), text.bfloat16()
    memory = _random_memory(dit)  # float32 tokens: cast to the DiT's dtype inside
    with torch.no_grad():
        assert torch.equal(memory_dit_forward(dit, latents, timestep, text), dit(latents, timestep, text).sample)
        out = memory_dit_forward(dit, latents, timestep, text, memory)
        ref = memory_dit_forward(small_transformer(seed=0, memory_blocks=memory_blocks), latents.float(), timestep, text.float(), memory)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().mean() < 0.02 * ref.abs().mean()
