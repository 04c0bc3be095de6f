"""Cuts land where the storyboard says (to the codec's time step) and the film is exactly `total` long."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pfp_app.model.causal_decode import StreamingDecoder
from pfp_app.film.project import Project
from pfp_app.film.session import GenerationSession
from pfp_app.film.storyboard import StoryboardError, parse_storyboard
from pfp_app.film.timeline import TimeGrid, real_shot_times, shot_aligned_schedule
from pfp_app.io.video import read_video

CUTS = "0s: a red circle\n3.5s: a blue square\n6s: a green triangle\n11s: a white circle\ntotal: 14s\n"
DEFAULT_GRID = TimeGrid(fps=8, temporal_ratio=4, lead_frames=1, segment_latent_frames=5)


def _s(pipe, **override):
    """The model's sampler settings with `override`."""
    return replace(pipe.model.sampler, **override)


def frame_prompts(segments) -> list[str]:
    """The prompt of every film frame, from the segments' frame ranges."""
    out = []
    for seg in segments:
        assert seg.first_frame == len(out)  # back to back, no gap, no overlap
        out += [seg.prompt] * seg.num_frames
    return out


def first_frames(prompts: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, p in enumerate(prompts):
        out.setdefault(p, i)
    return out


def test_default_grid_cuts_exactly_at_half_seconds_and_film_is_total_long():
    sb = parse_storyboard(CUTS)
    segs = shot_aligned_schedule(sb, DEFAULT_GRID)
    prompts = frame_prompts(segs)
    assert len(prompts) == 14 * 8
    starts = first_frames(prompts)
    assert [starts[s.prompt] / 8 for s in sb.shots] == [0.0, 3.5, 6.0, 11.0]
    assert all(1 <= s.num_latents <= 5 for s in segs)
    # latent frames are contiguous from 0: latent 0 is the lead frame, then 4 film frames per latent
    assert [s.first_latent for s in segs] == [0] + [sum(x.num_latents for x in segs[:i]) for i in range(1, len(segs))]
    assert segs[-1].first_latent + segs[-1].num_latents == 1 + 14 * 8 // 4


def test_times_off_the_grid_are_rounded_to_the_nearest_step_and_reported():
    sb = parse_storyboard("0s: a\n3.3s: b\n6.9s: c\ntotal: 10.3s\n")
    real = real_shot_times(sb, DEFAULT_GRID)
    assert real == [(0.0, 3.5), (3.5, 7.0), (7.0, 10.25)]  # the film ends at its exact length (82 frames)
    prompts = frame_prompts(shot_aligned_schedule(sb, DEFAULT_GRID))
    assert len(prompts) == round(10.3 * 8)
    for shot, (start, _) in zip(sb.shots, real):
        assert abs(first_frames(prompts)[shot.prompt] / 8 - shot.start) <= DEFAULT_GRID.step_seconds / 2


def test_shots_closer_than_a_step_are_refused_naming_both():
    with pytest.raises(StoryboardError, match=r"3.2s and 3s are closer than the codec's time step \(0.5s\)"):
        shot_aligned_schedule(parse_storyboard("0s: a\n3s: b\n3.2s: c\ntotal: 5s\n"), DEFAULT_GRID)


def test_grid_is_read_from_the_model(tiny_pipeline):
    g = tiny_pipeline.grid
    c = tiny_pipeline.model.codec
    assert (g.temporal_ratio, g.lead_frames) == (c.temporal_ratio, c.pixel_frames(1)) == (4, 1)
    assert g.segment_latent_frames == tiny_pipeline.model.video.segment_latent_frames


@pytest.fixture(scope="module")
def cut_film(tiny_pipeline, tmp_path_factory):
    project = Project(tmp_path_factory.mktemp("cuts"))
    session = GenerationSession(tiny_pipeline, project)
    session.run(session.plan(CUTS, 0, _s(tiny_pipeline, steps=1)))
    results = tiny_pipeline.generate(CUTS, 0, _s(tiny_pipeline, steps=1))
    assert torch.equal(project.load_history(), torch.cat([r.latents for r in results], dim=2))
    return project, results


def test_generated_film_has_exactly_total_frames_and_prompts_start_at_typed_times(tiny_pipeline, cut_film):
    project, results = cut_film
    fps = tiny_pipeline.model.video.fps
    step = tiny_pipeline.grid.step_seconds
    n_frames = sum(r.frames.shape[1] for r in results)
    assert n_frames == 14 * fps  # exactly 14 s
    on_disk = sum(len(read_video(project.segment_video_path(i))[0]) for i in range(project.finished_segments()))
    assert on_disk == n_frames
    prompts = []
    for r in results:
        prompts += [r.segment.prompt] * r.frames.shape[1]
    starts = first_frames(prompts)
    for shot in parse_storyboard(CUTS).shots:
        assert abs(starts[shot.prompt] / fps - shot.start) <= step
    # the latents on disk are the whole history the memory sees: 1 lead latent + 4 film frames per latent
    assert project.load_history().shape[2] == 1 + n_frames // tiny_pipeline.grid.temporal_ratio
    assert project.read_storyboard() == CUTS  # the text as typed, comments and `total:` kept


def test_segments_decoded_once_equal_a_decode_of_the_whole_history(tiny_pipeline, cut_film):
    project, results = cut_film
    whole = tiny_pipeline.decode_history(project.load_history())  # (3, 1 + 4 (T' - 1), H, W)
    film = torch.cat([r.frames for r in results], dim=1)
    assert torch.allclose(whole[:, 1 : 1 + film.shape[1]], film, atol=1e-5)


def test_streaming_decoder_after_a_warm_up_matches_the_old_context_decode(tiny_pipeline):
    codec = tiny_pipeline.model.codec
    z = torch.randn(1, codec.latent_channels, 6, 16, 16, generator=torch.Generator().manual_seed(0))
    dec = StreamingDecoder(codec)
    dec.warm_up(z[:, :, :3])
    got = dec.decode(z[:, :, 3:])
    want = codec.decode_continuation(z[:, :, 1:3], z[:, :, 3:])
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)


def test_continuing_a_project_uses_the_schedule_of_latent_frames(tiny_pipeline, cut_film, tmp_path):
    project, results = cut_film
    copy = Project(tmp_path / "copy")
    for i in range(3):
        for src in (project.segment_latents_path(i), project.segment_video_path(i)):
            (copy.segments_dir / src.name).write_bytes(src.read_bytes())
    segments = tiny_pipeline.schedule(CUTS)
    more = list(tiny_pipeline.generate_segments(segments, lambda k: 0, lambda k: _s(tiny_pipeline, steps=1), start=3,
                                                history=copy.load_history(3)))
    assert [r.segment.index for r in more] == list(range(3, len(results)))
    assert torch.allclose(torch.cat([r.latents for r in more], 2), torch.cat([r.latents for r in results[3:]], 2), atol=1e-4)
