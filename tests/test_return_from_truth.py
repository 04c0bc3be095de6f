"""benchmarks/return_from_truth.py: each return of the drift storyboard drawn after the true history."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks import return_from_truth as rft
from benchmarks.fidelity import drift_storyboard
from pfp_app.data.world import render_storyboard


def test_the_history_is_the_latents_wholly_before_the_shot():
    # latent 0 is frame 0, latent j >= 1 frames 4(j-1)+1 .. 4j
    assert rft.history_latents_before(1, 4) == 1
    assert rft.history_latents_before(96, 4) == 24  # latent 24 (frames 93-96) holds the shot's first frame
    assert rft.history_latents_before(97, 4) == 25
    assert rft.history_latents_before(100, 4) == 25


def test_a_return_is_drawn_after_the_true_history_and_the_rest_is_the_ground_truth(tiny_pipeline, monkeypatch):
    """The drawn video equals the ground truth before the history's last frame and after the shot, differs inside
    it, and the pipeline got the codec's latents of exactly the frames before the shot as its footage."""
    pipe = tiny_pipeline
    size, fps = pipe.model.video.height, pipe.model.video.fps
    sb, ch, place = drift_storyboard(12.0, 6.0, 0)
    gt = render_storyboard(sb, size, fps, seed=999)
    frames = torch.from_numpy(gt.frames).permute(3, 0, 1, 2).float().div(127.5).sub(1)
    latents = pipe.model.codec.encode(frames[None])
    shot = [s for s, sc in zip(sb.shots, gt.scenes) if sc is not None and sc.place == place][1]
    seen = []
    real = pipe.generate

    def spy(storyboard, seed=0, sampler=None, footage=None, **kw):
        seen.append(footage)
        return real(storyboard, seed, sampler, footage=footage, **kw)

    monkeypatch.setattr(pipe, "generate", spy)
    video = rft.return_from_history(pipe, latents, gt, shot, 0, pipe.model.sampler.overridden(steps=2))
    first, end = int(round(float(shot.start) * fps)), int(round(float(shot.end) * fps))
    k = rft.history_latents_before(first, 4)
    torch.testing.assert_close(seen[0], latents[:, :, :k])
    footage_frames = 1 + 4 * (k - 1)
    assert video.shape == gt.frames.shape and video.dtype == np.uint8
    assert np.array_equal(video[:footage_frames], gt.frames[:footage_frames])
    assert np.array_equal(video[end:], gt.frames[end:])
    assert not np.array_equal(video[first:end], gt.frames[first:end])


def test_the_table_pairs_memory_and_zeroed_per_return():
    rows = [{"return": 1, "at_s": 12.0, "place_memory": a, "place_zeroed": b, "place_truth": 0.1, "place_colour_memory": 0.5,
             "place_colour_zeroed": 0.5, "place_colour_truth": 0.0, "character_memory": 0.3,
             "character_zeroed": 0.3, "character_truth": 0.0} for a, b in ((0.9, 0.95), (0.5, 0.6), (0.7, 0.72))]
    s = rft.summarise({"returns": rows})
    mean, _ = s["place"]["delta"]
    assert abs(mean - np.mean([-0.05, -0.1, -0.02])) < 1e-9
    assert s["place"]["film"][0] != s["place"]["film"][0]  # no film: nan, shown as a dash
    meta = {"storyboards": 1, "seconds": 12, "period": 6, "machine": "cpu", "argv": []}
    table = rft.format_table({"returns": rows, "meta": meta})
    assert "| place view | 0.700" in table
    assert "| 1 | 12 s | 0.70 / 0.76 | 0.50 / 0.50 | 0.30 / 0.30 |" in table  # by return: memory / zeroed means
