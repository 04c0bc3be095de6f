"""Tests of the storyboard world (pfp_app.data.world)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pfp_app.data.world import (
    COMPANIONS,
    PLACES,
    ShotScene,
    WorldClipDataset,
    all_captions,
    all_characters,
    canonical_caption,
    caption_for,
    collate_clips,
    frames_for_seconds,
    parse_caption,
    render_storyboard,
    sample_clip,
    sample_storyboard,
    storyboard_returns,
)
from pfp_app.evaluation.world_scores import appearance_signature, signature_agreement, view_agreement
from pfp_app.film.storyboard import format_storyboard, parse_storyboard

PRESETS = sorted((Path(__file__).resolve().parents[1] / "presets" / "storyboards").glob("*.txt"))


def _preset(name: str):
    return parse_storyboard((PRESETS[0].parent / name).read_text())


@pytest.fixture(scope="module")
def returning_clip():
    return render_storyboard(_preset("returning_circle.txt"), size=128, fps=8, seed=0)


# ----------------------------------------------------------------------------- vocabulary

def test_caption_count_and_forms():
    caps = all_captions()
    assert len(caps) == 2457 == len(set(caps))
    assert caps == sorted(caps)
    assert len(all_captions(0)) == len(PLACES) == 7
    assert len(all_captions(1)) == 7 + 72 * 7
    assert "a red striped circle in front of the brick wall" in caps
    assert "the grass field, empty" in caps
    assert "an orange dotted triangle and a white solid circle in front of the coffee table" in caps


def test_caption_round_trip_every_caption():
    for cap in all_captions():
        scene = parse_caption(cap)
        assert scene is not None, cap
        assert caption_for(scene) == cap
        assert parse_caption(caption_for(scene)) == scene


def test_parse_caption_unknown_and_lenient():
    for bad in [
        "",
        "a fox in the snow",
        "a purple striped circle in front of the brick wall",
        "a red striped circle in front of the moon",
        "a red striped circle and a green dotted square in front of the brick wall",  # no companion
        "a red striped circle and a red striped circle in front of the brick wall",
        "the brick wall",
    ]:
        assert parse_caption(bad) is None, bad
    # case, spaces, trailing period and the order of a pair are tolerated
    canon = "a red striped circle and a white solid circle in front of the brick wall"
    assert canonical_caption("  A white solid circle and a red  striped circle in front of the Brick Wall. ") == canon
    assert canonical_caption("a orange solid square in front of the gravel path") == (
        "an orange solid square in front of the gravel path"
    )
    with pytest.raises(ValueError):
        caption_for(ShotScene((all_characters()[0], all_characters()[1]), "brick wall"))
    assert len(COMPANIONS) == 4


def test_presets_parse_and_use_vocabulary():
    assert len(PRESETS) >= 3
    vocab = set(all_captions())
    for path in PRESETS:
        text = path.read_text()
        assert text.startswith("# "), path.name
        assert "total:" in text, path.name
        sb = parse_storyboard(text)
        assert 15 <= sb.duration <= 30, path.name
        assert len(sb.shots) >= 3, path.name
        for shot in sb.shots:
            assert shot.prompt in vocab, (path.name, shot.prompt)
        r = storyboard_returns(sb)
        assert r["place_returns"] or r["character_returns"], path.name


# ----------------------------------------------------------------------------- rendering

def test_frames_for_seconds():
    assert frames_for_seconds(20, 8) == 161
    assert frames_for_seconds(1, 8) == 9
    assert frames_for_seconds(0.5, 8) == 5
    assert frames_for_seconds(2.1, 8) == 21  # 16.8 frames -> 1 + 4*5
    for s in [0.3, 1, 7.7, 22]:
        assert (frames_for_seconds(s, 8) - 1) % 4 == 0


def test_render_shapes_and_determinism(returning_clip):
    clip = returning_clip
    sb = clip.storyboard
    T = frames_for_seconds(sb.duration, 8)
    assert clip.frames.shape == (T, 128, 128, 3) and clip.frames.dtype == np.uint8
    assert len(clip.places) == T
    assert clip.places[0] == "brick wall" and clip.places[-1] == "brick wall"
    assert set(clip.tracks) == {"a red striped circle", "a green dotted square"}
    for tr in clip.tracks.values():
        assert tr.shape == (T, 5)
    again = render_storyboard(sb, size=128, fps=8, seed=0)
    assert np.array_equal(clip.frames, again.frames)
    other = render_storyboard(sb, size=128, fps=8, seed=1)
    assert not np.array_equal(clip.frames, other.frames)
    a, b = sample_clip(3, seconds=6.0, size=64), sample_clip(3, seconds=6.0, size=64)
    assert np.array_equal(a.frames, b.frames)
    assert format_storyboard(a.storyboard) == format_storyboard(b.storyboard)


def test_character_absent_between_shots_and_enters_from_edge(returning_clip):
    clip = returning_clip
    tr = clip.tracks["a red striped circle"]
    shot = clip.shot_index
    assert (tr[shot == 1, 0] == 0).all() and (tr[shot == 2, 0] == 0).all()
    ret = np.nonzero(shot == 3)[0]
    assert tr[ret[0], 0] < 1.0  # entering through an edge
    assert (tr[ret[len(ret) // 2 :], 0] > 0).all()
    # leaves through an edge at the end of shot 0
    first = np.nonzero(shot == 0)[0]
    assert tr[first[-1], 0] < 1.0 and tr[first[0], 0] == 1.0


def test_frames_change_at_cuts(returning_clip):
    f = returning_clip.frames.astype(np.float32)
    diff = np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3))
    cut = returning_clip.shot_index[1:] != returning_clip.shot_index[:-1]
    assert cut.sum() == 3
    assert diff[cut].min() > 2.0 * diff[~cut].mean()
    assert diff[cut].min() > diff[~cut].max()


def test_unknown_caption_renders_previous_place():
    sb = parse_storyboard("0s: a blue solid square in front of the grass field\n3s: a dragon flies over\ntotal: 5s")
    clip = render_storyboard(sb, size=64, fps=8)
    assert clip.unknown_shots == (1,)
    assert clip.scenes[1] is None
    assert set(clip.places) == {"grass field"}
    tr = clip.tracks["a blue solid square"]
    assert (tr[clip.shot_index == 1, 0] == 0).all()


def _fully_visible_frames(clip, phrase, shot):
    tr = clip.tracks[phrase]
    others = [t for p, t in clip.tracks.items() if p != phrase]
    out = []
    for i in np.nonzero(clip.shot_index == shot)[0]:
        if tr[i, 0] < 1.0:
            continue
        x0, y0, x1, y1 = tr[i, 1:]
        if any(o[i, 0] > 0 and not (o[i, 3] <= x0 or o[i, 1] >= x1 or o[i, 4] <= y0 or o[i, 2] >= y1) for o in others):
            continue  # overlapped by another character
        out.append(int(i))
    return out


def test_reentering_character_keeps_appearance():
    for name, phrase, shots, other in [
        ("returning_circle.txt", "a red striped circle", (0, 3), "a green dotted square"),
        ("two_friends.txt", "an orange dotted triangle", (0, 3), "a white solid circle"),
        ("cat_and_rocket.txt", "a cyan striped square", (0, 3), "a magenta solid square"),
    ]:
        clip = render_storyboard(_preset(name), size=128, fps=8, seed=0)
        fa = _fully_visible_frames(clip, phrase, shots[0])
        fb = _fully_visible_frames(clip, phrase, shots[1])
        fo = [i for i in range(clip.num_frames) if clip.tracks[other][i, 0] >= 1.0]
        assert fa and fb and fo, name
        sig = lambda ph, i: appearance_signature(clip.frames[i], clip.tracks[ph][i])  # noqa: E731
        first = sig(phrase, fa[len(fa) // 2])
        back = sig(phrase, fb[len(fb) // 2])
        different = sig(other, fo[len(fo) // 2])
        same_score = signature_agreement(first, back)
        diff_score = signature_agreement(first, different)
        assert same_score > 0.8, (name, same_score)
        assert diff_score < same_score - 0.3, (name, same_score, diff_score)
        assert signature_agreement(first, first) == pytest.approx(1.0)


def test_returning_place_has_same_view():
    clip = render_storyboard(_preset("cat_and_rocket.txt"), size=128, fps=8, seed=0)
    start = [int(np.nonzero(clip.shot_index == k)[0][0]) for k in range(5)]
    # cat portrait: shots 0 and 3; rocket launch: shots 1 and 4; astronaut: shot 2
    same_cat = view_agreement(clip.frames[start[0]], clip.frames[start[3]])
    same_rocket = view_agreement(clip.frames[start[1]], clip.frames[start[4]])
    diff = [
        view_agreement(clip.frames[start[0]], clip.frames[start[1]]),
        view_agreement(clip.frames[start[0]], clip.frames[start[2]]),
        view_agreement(clip.frames[start[1]], clip.frames[start[2]]),
    ]
    assert same_cat > 0.6 and same_rocket > 0.6, (same_cat, same_rocket)
    assert max(diff) < 0.35, diff
    assert view_agreement(clip.frames[0], clip.frames[0]) == pytest.approx(1.0)


def test_sample_storyboard_has_returns():
    n_return = n_char = 0
    N = 100
    for s in range(N):
        sb = sample_storyboard(np.random.default_rng(s), seconds=20.0)
        assert 3 <= len(sb.shots) <= 5
        assert sb.duration == 20.0
        lens = [sh.end - sh.start for sh in sb.shots]
        assert min(lens) >= 2.0 - 1e-9 and max(lens) <= 8.0 + 1e-9, lens
        vocab_ok = all(parse_caption(sh.prompt) is not None for sh in sb.shots)
        assert vocab_ok
        assert all(a.prompt != b.prompt for a, b in zip(sb.shots, sb.shots[1:]))
        r = storyboard_returns(sb)
        n_return += bool(r["place_returns"] or r["character_returns"])
        n_char += bool(r["character_returns"])
    assert n_return >= 0.7 * N
    assert n_char >= 0.25 * N


def test_dataset_item_and_collate():
    ds = WorldClipDataset(4, seconds=4.0, size=32, fps=8, seed=5)
    it = ds[1]
    T = frames_for_seconds(4.0, 8)
    assert it["frames"].shape == (3, T, 32, 32) and it["frames"].dtype == torch.float32
    assert it["frames"].min() >= -1.0 and it["frames"].max() <= 1.0
    sb = parse_storyboard(it["storyboard"])
    assert [s.prompt for s in sb.shots] == it["captions"]
    assert it["shot_starts"].tolist() == [s.start for s in sb.shots]
    again = WorldClipDataset(4, seconds=4.0, size=32, fps=8, seed=5)[1]
    assert torch.equal(it["frames"], again["frames"]) and it["storyboard"] == again["storyboard"]
    assert not torch.equal(it["frames"], ds[2]["frames"])
    batch = collate_clips([ds[0], ds[1]])
    assert batch["frames"].shape == (2, 3, T, 32, 32)
    assert isinstance(batch["captions"], list) and isinstance(batch["storyboard"][0], str)


def test_render_speed_report(capsys):
    """Not a timing assertion: prints ms/frame (about 0.1 ms per 128x128 frame on one core,
    budget 2 ms)."""
    sample_clip(0)  # warm the caches
    t0 = time.perf_counter()
    n = 0
    for s in range(1, 6):
        n += sample_clip(s).num_frames
    ms = (time.perf_counter() - t0) / n * 1000
    with capsys.disabled():
        print(f"\n[world] render: {ms:.3f} ms per 128x128 frame")
