"""Held-out recall scores (`python -m pfp_app evaluate`, the benchmarks' evaluation): the references are the
numbers they claim to be, intervals are over clips, and LPIPS joins only where it is installed."""

from __future__ import annotations

import torch

from pfp_app.evaluation import metrics
from pfp_app.evaluation.evaluate import evaluate_recall, format_scores, query_latents, recall_clip_batch


def _frames(n: int = 2, t: int = 17, size: int = 64) -> torch.Tensor:
    from pfp_app.data.world import WorldClipDataset

    ds = WorldClipDataset(n, seconds=t / 8, size=size, fps=8, seed=123)
    return torch.stack([ds[i]["frames"] for i in range(n)])  # (B, 3, T, H, W)


def test_recall_references_match_a_direct_computation(tiny_model):
    frames = _frames()
    res = recall_clip_batch(tiny_model, frames, queries=3, steps=2, seed=0, device="cpu")
    t_lat = tiny_model.codec.encode(frames).shape[2]
    js = query_latents(t_lat, 3)
    r = tiny_model.codec.temporal_ratio
    # query-major order: value q * B + b is clip b's frame of query q
    want = [metrics.psnr(frames[b].mean(dim=1), frames[b, :, r * j]) for j in js for b in range(frames.shape[0])]
    assert len(res["mean_psnr"]) == len(want)
    assert all(abs(a - w) < 1e-4 for a, w in zip(res["mean_psnr"], want))
    assert set(res) == {"psnr", "ssim", "mean_psnr", "mean_ssim", "codec_psnr", "codec_ssim"}  # no LPIPS here


def test_lpips_is_reported_where_it_is_installed(tiny_model, monkeypatch):
    class FakeLPIPS(torch.nn.Module):  # stands in for lpips.LPIPS: a distance of (N, 3, H, W) pairs
        def forward(self, a, b):
            return (a - b).abs().mean(dim=(1, 2, 3))

    monkeypatch.setattr(metrics, "_load_lpips", lambda: FakeLPIPS())
    frames = _frames()
    res = recall_clip_batch(tiny_model, frames, queries=2, steps=2, seed=0, device="cpu")
    assert {"lpips", "mean_lpips", "codec_lpips"} <= set(res)
    r, js = tiny_model.codec.temporal_ratio, query_latents(tiny_model.codec.encode(frames).shape[2], 2)
    want = [float((frames[b].mean(dim=1) - frames[b, :, r * j]).abs().mean()) for j in js for b in range(2)]
    assert all(abs(a - w) < 1e-5 for a, w in zip(res["mean_lpips"], want))

    scores = evaluate_recall(tiny_model, num_clips=2, seconds=2.0, steps=2, queries=2, batch=2)
    assert scores["zeroed_lpips"]["n_clips"] == 2
    table = format_scores(scores)
    assert "| | PSNR (dB) | SSIM | LPIPS |" in table and table.count("|---") == 4


def test_evaluate_intervals_are_over_clips(tiny_model):
    scores = evaluate_recall(tiny_model, num_clips=3, seconds=2.0, steps=2, queries=2, batch=2)
    for key in ("psnr", "zeroed_psnr", "mean_psnr", "codec_ssim"):
        assert scores[key]["n_clips"] == 3 and scores[key]["ci95"] >= 0
    table = format_scores(scores)
    assert "LPIPS" not in table and "| history mean frame |" in table


def test_memory_guidance_reaches_the_recall_sampler_and_is_reported(tiny_model, monkeypatch):
    """`evaluate --memory-guidance 2` recalls as the studio's inspector does (G's answer with the memory pushed away
    from its answer without it): each step asks G twice, with and without the memory, and the table says so."""
    from pfp_app.evaluation import evaluate as ev

    calls = []
    real_velocity = tiny_model.velocity

    def counting(x, t, text, memory, positions):
        calls.append(memory is None)
        return real_velocity(x, t, text, memory, positions)

    monkeypatch.setattr(tiny_model, "velocity", counting)
    frames = _frames(n=1)
    plain = recall_clip_batch(tiny_model, frames, queries=2, steps=2, seed=0, device="cpu")
    assert calls == [False, False]  # unguided: one pass per step, with the memory
    calls.clear()
    guided = recall_clip_batch(tiny_model, frames, queries=2, steps=2, seed=0, device="cpu", memory_guidance=2.0)
    assert calls == [False, True, False, True]
    assert guided["psnr"] != plain["psnr"] and guided["mean_psnr"] == plain["mean_psnr"]
    scores = ev.evaluate_recall(tiny_model, num_clips=1, seconds=2.0, steps=1, queries=1, memory_guidance=2.0)
    assert scores["settings"]["memory_guidance"] == 2.0 and "memory guidance 2)" in format_scores(scores)
