"""Shared fixtures: small random Wan DiTs, the session-wide `tiny-random` model bundle and its pipeline."""

from __future__ import annotations

import os

import pytest
import torch
from diffusers import WanTransformer3DModel

from pfp_app.model.memory_dit import enable_memory_blocks

# One intra-op thread: every tensor here is tiny, so a second thread gains little, while on a busy
# 2-core machine torch's spinning worker threads slowed the learning test more than tenfold
# (measured: 24 s with 1 thread vs 323 s with 2, same numbers). PFP_TEST_THREADS overrides.
TEST_THREADS = int(os.environ.get("PFP_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)


def small_transformer(
    seed: int = 0,
    in_channels: int = 4,
    heads: int = 2,
    head_dim: int = 32,
    layers: int = 2,
    text_dim: int = 16,
    memory_blocks: bool = True,
    **overrides,
) -> WanTransformer3DModel:
    """A random Wan 2.1-style DiT (patch 1x2x2), small enough for CPU tests.

    memory_blocks: give the blocks the two-group timestep path as the app's models have it
    (`enable_memory_blocks`); False keeps diffusers' plain blocks (Wan's per-token temb path).

    diffusers' own init (nothing zeroed in Wan), with the norms' affine weights and biases moved
    off 1 and 0 so that those paths are exercised too.
    """
    torch.manual_seed(seed)
    cfg = dict(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=in_channels,
        out_channels=in_channels, text_dim=text_dim, freq_dim=32, ffn_dim=64, num_layers=layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=128,
    )
    cfg.update(overrides)
    model = WanTransformer3DModel(**cfg).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm" in name and name.endswith(".weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif ".norm" in name and name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return enable_memory_blocks(model) if memory_blocks else model


@pytest.fixture(scope="session")
def tiny_model():
    """The `tiny-random` bundle (G, φ, VAE, MiniLM text encoder), built once per session. Read-only!"""
    from pfp_app.model.bundle import build_random_model

    return build_random_model("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model):
    from pfp_app.sampling.pipeline import PFPPipeline

    return PFPPipeline(tiny_model)


# ---- numbers worth seeing in every run (printed after the test summary, no `-s` needed) -------

REPORT: list[str] = []


def report(line: str) -> None:
    """Queue a line for the terminal summary (token counts, learning-test PSNRs)."""
    REPORT.append(line)


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("PFP numbers")
        for line in REPORT:
            terminalreporter.write_line(line)
