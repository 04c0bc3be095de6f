"""The memory encoder φ: token counts, branches, gradients, coordinates, incremental encoding."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from pfp_app.model.memory_dit import memory_dit_forward
from pfp_app.sampling.flow import retrieval_loss
from pfp_app.model.memory_encoder import RATES, VARIANTS, MemoryEncoder, memory_grid, memory_token_count

from conftest import report, small_transformer

C, D = 4, 64  # latent channels, DiT width of the small test DiT (2 heads x 32)
SMALL_HR = dict(hr_base_channels=8, hr_channels=16, hr_attention_layers=2, hr_heads=2)


def make_encoder(variant: str, rate: str, dit=None, seed: int = 0, open_gate: bool = False) -> MemoryEncoder:
    torch.manual_seed(seed)
    enc = MemoryEncoder(latent_channels=C, hidden_dim=D, patch_size=(1, 2, 2), rate=rate, variant=variant, **SMALL_HR)
    if dit is not None:
        enc.init_from_transformer(dit.patch_embedding)
    if open_gate and enc.use_hr:  # the proposed gate starts at zero; open it so the HR path shows
        with torch.no_grad():
            enc.hr_gate.copy_(0.5 + torch.rand(D, generator=torch.Generator().manual_seed(seed)))
    return enc.eval()


def latents(t, h, w, batch=1, seed=0):
    return torch.randn(batch, C, t, h, w, generator=torch.Generator().manual_seed(seed))  # (B, C, T, H, W)


@pytest.fixture(scope="module")
def dit():
    return small_transformer(seed=0, in_channels=C)


# ---- token counts ----------------------------------------------------------------------------

WAN_FPS, WAN_SECONDS, WAN_SIZE = 16, 20, (480, 832)
WAN_FRAMES = WAN_FPS * WAN_SECONDS  # 320 pixel frames
WAN_LATENT = (1 + (WAN_FRAMES - 1) // 4, WAN_SIZE[0] // 8, WAN_SIZE[1] // 8)  # 4x time, 8x space: (80, 60, 104)
WAN_TOKEN_GRID = (WAN_LATENT[0], WAN_LATENT[1] // 2, WAN_LATENT[2] // 2)  # patch 1x2x2: (80, 30, 52)
WAN_TOKENS = {rate: memory_token_count(WAN_TOKEN_GRID, rate) for rate in RATES}

report(f"memory tokens for {WAN_SECONDS} s of {WAN_SIZE[0]}x{WAN_SIZE[1]} at {WAN_FPS} fps (Wan 2.1: latents "
       f"{WAN_LATENT[0]}x{WAN_LATENT[1]}x{WAN_LATENT[2]}, DiT token grid {'x'.join(map(str, WAN_TOKEN_GRID))} "
       f"= {math.prod(WAN_TOKEN_GRID)} tokens):")
for _rate, _n in WAN_TOKENS.items():
    report(f"  {_rate:>6}: memory grid {'x'.join(map(str, memory_grid(WAN_TOKEN_GRID, _rate)))} = {_n:>6} tokens "
           f"({math.prod(WAN_TOKEN_GRID) / _n:.0f}x fewer than the history's DiT tokens)")


def test_wan_20s_token_counts():
    assert WAN_LATENT == (80, 60, 104)
    assert WAN_TOKENS == {"4x4x2": 40 * 8 * 13, "2x2x2": 40 * 15 * 26, "2x2x1": 80 * 15 * 26}
    assert 4000 <= WAN_TOKENS["4x4x2"] <= 5500  # the paper: ~5k tokens for 20 s at 4x4x2


def test_wan_20s_token_count_from_a_real_forward():
    """φ itself (narrow but Wan-shaped input: 16 channels, 80x60x104 latents) emits the counted tokens."""
    enc = MemoryEncoder(latent_channels=16, hidden_dim=8, rate="4x4x2", variant="large_patchifier")
    with torch.no_grad():
        mem = enc(torch.zeros(1, 16, *WAN_LATENT))
    assert mem.tokens.shape == (1, WAN_TOKENS["4x4x2"], 8)
    assert mem.coords.shape == (WAN_TOKENS["4x4x2"], 3)


@pytest.mark.parametrize("variant,rate", list(itertools.product(VARIANTS, RATES)))
def test_shapes_and_counts_for_every_variant_and_rate(variant, rate):
    enc = make_encoder(variant, rate, open_gate=True)
    for t, h, w in [(8, 16, 16), (7, 12, 20), (1, 8, 8)]:  # divisible, ragged (edge padding), one frame
        with torch.no_grad():
            mem = enc(latents(t, h, w, batch=2))
        n = memory_token_count((t, h // 2, w // 2), rate)
        assert mem.tokens.shape == (2, n, D), (t, h, w)
        assert mem.coords.shape == (n, 3)
        assert mem.num_tokens == n
        assert torch.isfinite(mem.tokens).all()
    assert memory_grid((8, 8, 8), rate) == tuple(8 // r for r in (RATES[rate][2], RATES[rate][0], RATES[rate][1]))


def test_bad_rate_and_variant_are_value_errors():
    with pytest.raises(ValueError, match=r"unknown memory rate '3x3x3'; choose one of 4x4x2, 2x2x2, 2x2x1"):
        MemoryEncoder(latent_channels=C, hidden_dim=D, rate="3x3x3")
    with pytest.raises(ValueError, match=r"unknown memory encoder variant 'big'; choose one of proposed, only_lr"):
        MemoryEncoder(latent_channels=C, hidden_dim=D, variant="big")


def test_token_count_of_a_bad_rate_is_a_value_error():
    with pytest.raises(ValueError, match="unknown memory rate"):
        memory_token_count((8, 8, 8), "3x3x3")


# ---- branches ----------------------------------------------------------------------------------


def _param_prefixes(enc):
    return {name.split(".")[0] for name, _ in enc.named_parameters()}


def test_each_variant_owns_only_its_branches():
    assert _param_prefixes(make_encoder("only_lr", "4x4x2")) == {"lr_embed"}
    assert _param_prefixes(make_encoder("large_patchifier", "4x4x2")) == {"large_patchifier"}
    hr = {"hr_stages", "hr_in", "hr_attention", "hr_norm", "hr_out", "hr_gate"}
    assert _param_prefixes(make_encoder("without_lr", "4x4x2")) == hr
    assert _param_prefixes(make_encoder("proposed", "4x4x2")) == hr | {"lr_embed"}
    # only the proposed (dual-branch) gate starts closed; without LR there is nothing to protect
    assert torch.all(make_encoder("proposed", "2x2x2").hr_gate == 0)
    assert torch.all(make_encoder("without_lr", "2x2x2").hr_gate == 1)


@pytest.mark.parametrize("rate", list(RATES))
def test_lr_branch_is_the_pooled_history_through_the_dits_patch_embedding(dit, rate):
    rh, rw, rt = RATES[rate]
    x = latents(2 * rt, 8 * rh // 2 * 2, 12 * rw // 2 * 2, batch=2, seed=1)  # divisible by the memory stride
    with torch.no_grad():
        expected = dit.patch_embedding(F.avg_pool3d(x, (rt, rh, rw))).flatten(2).transpose(1, 2)  # (B, N, D)
        only_lr = make_encoder("only_lr", rate, dit)(x).tokens
        large = make_encoder("large_patchifier", rate, dit)(x).tokens
        proposed = make_encoder("proposed", rate, dit)(x).tokens  # zero gate: LR alone at init
        opened = make_encoder("proposed", rate, dit, open_gate=True)(x).tokens
    torch.testing.assert_close(only_lr, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(large, expected, atol=1e-5, rtol=1e-5)  # FramePack init == pooling + base kernel
    assert torch.equal(proposed, only_lr)
    assert (opened - only_lr).abs().mean() > 1e-3  # the opened HR branch adds its residual


def _retrieval_grads(enc, dit):
    """Gradients of the stage-1 loss through G, exactly as training computes it."""
    enc.train()
    enc.zero_grad()
    g = torch.Generator().manual_seed(0)
    history = latents(6, 16, 16, batch=2, seed=2)
    text = torch.randn(2, 5, dit.config.text_dim, generator=g)
    model = lambda x, t, txt, mem, pos: memory_dit_forward(dit, x, t, txt, mem, pos)  # noqa: E731
    retrieval_loss(model, enc, history, text, num_query=2, shift=3.0, generator=g).backward()
    return {name: p.grad for name, p in enc.named_parameters()}


def _nonzero(grad):
    return grad is not None and grad.abs().sum() > 0


def test_gradients_reach_both_branches_and_the_closed_gate(dit):
    grads = _retrieval_grads(make_encoder("proposed", "2x2x2", dit), dit)
    assert _nonzero(grads["lr_embed.weight"])
    assert _nonzero(grads["hr_gate"])  # a zero gate still learns to open...
    hr_inner = [n for n in grads if n.startswith(("hr_stages", "hr_in", "hr_attention", "hr_out"))]
    assert all(grads[n] is None or grads[n].abs().sum() == 0 for n in hr_inner)  # ...behind a closed gate

    grads = _retrieval_grads(make_encoder("proposed", "2x2x2", dit, open_gate=True), dit)
    for name in ["lr_embed.weight", "hr_gate", "hr_stages.0.down.weight", "hr_stages.1.conv.weight", "hr_in.weight",
                 "hr_attention.0.qkv.weight", "hr_attention.1.mlp.2.weight", "hr_out.weight"]:
        assert _nonzero(grads[name]), name


@pytest.mark.parametrize("variant", ["only_lr", "without_lr", "large_patchifier"])
def test_gradients_reach_every_parameter_of_the_single_branch_variants(dit, variant):
    grads = _retrieval_grads(make_encoder(variant, "4x4x2", dit), dit)
    missing = [n for n, g in grads.items() if not _nonzero(g) and not n.endswith("norm.bias")]
    assert not missing


# ---- coordinates -------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", list(RATES))
def test_coordinates_are_block_centres_in_the_dit_token_grid(rate):
    rh, rw, rt = RATES[rate]
    t, h, w = 4 * rt, 3 * rh * 2, 2 * rw * 2  # latent grid divisible by the memory stride
    mem = make_encoder("only_lr", rate)(latents(t, h, w))
    tm, hm, wm = memory_grid((t, h // 2, w // 2), rate)
    expected = []
    for a, b, c in itertools.product(range(tm), range(hm), range(wm)):  # the flatten order of the tokens
        block = list(itertools.product(range(a * rt, (a + 1) * rt), range(b * rh, (b + 1) * rh), range(c * rw, (c + 1) * rw)))
        expected.append(torch.tensor(block, dtype=torch.float64).mean(0))  # mean of the token cells it covers
    torch.testing.assert_close(mem.coords, torch.stack(expected), atol=1e-12, rtol=0)


@pytest.mark.parametrize("rate", list(RATES))
def test_each_token_summarises_the_block_at_its_coordinate(dit, rate):
    """An impulse in one latent pixel changes exactly one LR token, the one whose block holds it."""
    rh, rw, rt = RATES[rate]
    enc = make_encoder("only_lr", rate, dit)
    t, h, w = 3 * rt, 4 * rh, 6 * rw
    with torch.no_grad():
        base = enc(torch.zeros(1, C, t, h, w))
        for ti, yi, xi in [(0, 0, 0), (t - 1, h - 1, w - 1), (t // 2, h // 2 + 1, 3), (1, 5, w - 2)]:
            x = torch.zeros(1, C, t, h, w)
            x[0, :, ti, yi, xi] = 5.0
            mem = enc(x)
            changed = ((mem.tokens - base.tokens).abs().sum(-1) > 1e-6)[0].nonzero().flatten()
            assert changed.numel() == 1
            centre = mem.coords[changed[0]]
            cell = torch.tensor([ti, yi // 2, xi // 2], dtype=torch.float64)  # the DiT token holding the pixel
            half = torch.tensor([(rt - 1) / 2, (rh - 1) / 2, (rw - 1) / 2], dtype=torch.float64)
            assert torch.all((cell - centre).abs() <= half + 1e-9), (cell, centre)


# ---- incremental encoding ------------------------------------------------------------------------


@pytest.mark.parametrize("variant,rate", list(itertools.product(VARIANTS, RATES)))
def test_incremental_encoding_in_uneven_steps_equals_a_full_pass(variant, rate):
    """Long enough (41 latent frames) that the HR convolutions' cached-context window is truncated."""
    rh, rw, _ = RATES[rate]
    enc = make_encoder(variant, rate, open_gate=True, seed=3)
    history = latents(41, 2 * rh * 2, 3 * rw * 2 - 2, batch=2, seed=4)  # ragged width: edge padding
    cache = None
    with torch.no_grad():
        for end in (11, 12, 29, 41):  # uneven steps, ending on and off memory-frame boundaries
            inc, cache = enc.encode_incremental(history[:, :, :end], cache)
            full = enc(history[:, :, :end])
            assert inc.tokens.shape == full.tokens.shape
            torch.testing.assert_close(inc.tokens, full.tokens, atol=1e-5, rtol=1e-5)
            assert torch.equal(inc.coords, full.coords)
            assert cache.frames_done == end - end % enc.stride[0]


@pytest.mark.parametrize("variant", ["proposed", "large_patchifier"])
def test_incremental_encoding_of_an_unchanged_history_returns_the_cached_memory(variant):
    enc = make_encoder(variant, "2x2x2", open_gate=True)
    history = latents(8, 8, 8)
    with torch.no_grad():
        first, cache = enc.encode_incremental(history, None)
        again, _ = enc.encode_incremental(history, cache)
    torch.testing.assert_close(again.tokens, first.tokens)


def test_incremental_encoding_rejects_a_history_that_does_not_extend_the_cache():
    enc = make_encoder("proposed", "2x2x1")
    with torch.no_grad():
        _, cache = enc.encode_incremental(latents(6, 8, 8, batch=2), None)
        with pytest.raises(ValueError, match="covers 6 latent frames but the history has only 4"):
            enc.encode_incremental(latents(4, 8, 8, batch=2), cache)
        with pytest.raises(ValueError, match="another batch size"):
            enc.encode_incremental(latents(8, 8, 8, batch=1), cache)


def test_hr_branch_is_causal_in_time():
    """Appending frames never changes the tokens of complete memory frames (what makes caching valid)."""
    enc = make_encoder("without_lr", "2x2x2", seed=5)
    x = latents(12, 8, 8, seed=6)
    with torch.no_grad():
        short = enc(x[:, :, :6]).tokens  # 3 complete memory frames
        long = enc(x).tokens
    torch.testing.assert_close(long[:, : short.shape[1]], short, atol=1e-5, rtol=1e-5)
    assert (long[:, short.shape[1]:]).abs().sum() > 0
