"""benchmarks/return_loss.py: stage 2's loss at shot starts, with φ vs φ zeroed, paired."""

from __future__ import annotations

import json

import numpy as np
import torch

from benchmarks import return_loss as rl
from pfp_app.data.world import sample_clip
from pfp_app.model.bundle import build_random_model
from pfp_app.film.storyboard import format_storyboard
from pfp_app.train.data import character_returns_at, latent_prompts


def test_the_box_mask_covers_the_characters_box_in_latent_cells():
    clip = sample_clip(3, 12.0, 64, 8)
    phrase, track = next((p, t) for p, t in clip.tracks.items() if (t[:, 0] > 0.5).any())
    f = int(np.argmax(track[:, 0] > 0.5))
    j = max(1, -(-f // 4))  # the latent frame holding pixel frame f (f in 4(j-1)+1 .. 4j)
    mask = rl.latent_box_mask(clip.tracks, [phrase], j, 1, 4, 4, (16, 16))[0]
    x0, y0, x1, y1 = track[f, 1:]
    cx, cy = int((x0 + x1) / 2) // 4, int((y0 + y1) / 2) // 4
    assert mask[cy, cx]  # the box's centre cell
    # and nothing far from every box of that latent's frames
    frames = range(4 * (j - 1) + 1, 4 * j + 1)
    xs = [v for g in frames if track[g, 0] > 0 for v in (track[g, 1], track[g, 3])]
    assert not mask[:, : int(min(xs)) // 4 - 1].any() and not mask[:, -(-int(max(xs)) // 4) + 1 :].any()
    assert not rl.latent_box_mask(clip.tracks, [], j, 1, 4, 4, (16, 16)).any()


def test_shot_starts_are_the_apps_and_returns_are_the_trainers():
    clip = sample_clip(5, 20.0, 64, 8)
    prompts = latent_prompts(format_storyboard(clip.storyboard), 41, 8, 4)
    starts = rl.shot_starts(prompts, 5)
    assert starts
    for s, kind, _ in starts:
        assert prompts[s] != prompts[s - 1] and len(set(prompts[s : s + 5])) == 1
        assert (kind == "return") == character_returns_at(prompts, s)


def test_the_arms_are_paired_a_phi_that_gives_nothing_changes_nothing():
    """With φ's tokens already 0, 'memory' and 'zeroed' see the same input: Δ must be exactly 0 (the same noise and
    t in both arms); with a real φ they differ."""
    model = build_random_model("tiny", seed=0)
    latents = torch.randn(model.codec.vae.config.z_dim, 12, 8, 8)
    mask = torch.zeros(3, 8, 8, dtype=torch.bool)
    mask[:, 2:5, 2:5] = True
    ts = rl.train_t_quantiles()
    real = rl.losses_at(model, latents, "", 6, 3, mask, ts, torch.Generator().manual_seed(1))
    assert real["memory"][0] != real["zeroed"][0]
    forward = model.memory_encoder.forward

    def nothing(history, *a, **k):
        m = forward(history, *a, **k)
        return type(m)(m.tokens * 0, m.coords)

    model.memory_encoder.forward = nothing
    none = rl.losses_at(model, latents, "", 6, 3, mask, ts, torch.Generator().manual_seed(1))
    assert none["memory"] == none["zeroed"]
    assert none["zeroed"] == real["zeroed"]  # and the zeroed arm is the same as before: same noise, same t


def test_tiny_run_writes_a_table(tmp_path):
    out = tmp_path / "rl.json"
    assert rl.main(["--tiny", "--out", str(out), "--latent-cache", str(tmp_path / "cache")]) == 0
    res = json.loads(out.read_text())
    assert {"return/segment", "new/segment"} <= set(res["summary"])
    row = res["summary"]["new/segment"]
    deltas = [it["memory"][0] - it["zeroed"][0] for it in res["items"] if it["kind"] == "new"]
    assert row["n"] == len(deltas) and abs(row["delta"][0] - float(np.mean(deltas))) < 1e-12
    assert "| return | whole segment |" in out.with_suffix(".md").read_text()


def test_a_caption_table_stands_in_for_the_text_encoder(tmp_path):
    """A GPU machine has no MiniLM: the clips' captions, written here, are what MiniLM gives (fp16), and a run that
    reads them scores the same shot starts."""
    from pfp_app.train.data import caption_table_from_file

    table = tmp_path / "captions.safetensors"
    assert rl.main(["--tiny", "--write-captions", str(table)]) == 0
    rows = caption_table_from_file(str(table))
    model = build_random_model("tiny", seed=0)
    prompts = sorted(rows)
    live = model.text_encoder.encode(prompts)
    stored = torch.stack([rows[p] for p in prompts])
    assert len(prompts) >= 4 and torch.allclose(stored, live, atol=2e-3)
    runs = {}
    for name, extra in (("live", []), ("table", ["--text-table", str(table)])):
        out = tmp_path / f"{name}.json"
        rl.main(["--tiny", "--out", str(out), "--latent-cache", str(tmp_path / "cache"), "--device", "cpu", *extra])
        runs[name] = [(it["clip"], it["s"], it["kind"]) for it in json.loads(out.read_text())["items"]]
    assert runs["live"] == runs["table"]


def test_recall_characters_reads_characters_where_they_are_in_view(tmp_path):
    """benchmarks/recall_characters.py: the frames it asks for show a character whole, and its table pairs the arms."""
    from benchmarks import recall_characters as rch

    clip = sample_clip(7, 20.0, 64, 8)
    queries = rch.query_frames(clip.tracks, 41, 4, 3)
    assert 1 <= len(queries) <= 3 and len({j for j, _ in queries}) == len(queries)
    for j, phrases in queries:
        assert phrases and all(clip.tracks[p][4 * j, 0] >= 0.95 for p in phrases)
    every = rch.query_frames(clip.tracks, 41, 4, 1000)  # all candidates: a spread-out 3 is among them
    assert all(q in every for q in queries) and len(every) > len(queries)
    out = tmp_path / "rch.json"
    assert rch.main(["--tiny", "--out", str(out), "--latent-cache", str(tmp_path / "cache")]) == 0
    res = json.loads(out.read_text())
    diffs = [r["memory"] - r["zeroed"] for r in res["rows"]]
    assert res["meta"]["frames"] == len(diffs) > 0
    assert abs(res["summary"]["memory_minus_zeroed"][0] - float(np.mean(diffs))) < 1e-12
    assert all(0.0 <= r["codec"] <= 1.0 for r in res["rows"])


def test_place_returns_and_history_buckets():
    a, b = "a red striped circle in front of the brick wall", "a blue dotted square in front of the grass field"
    c = "the brick wall, empty"
    prompts = [a] * 3 + [b] * 3 + [c] * 3
    assert rl.place_returns_at(prompts, 6)  # the brick wall again, after the grass field
    assert not rl.place_returns_at(prompts, 3)  # a new place
    assert not rl.place_returns_at([a] * 3 + [c] * 3, 3)  # the same place as the shot before: not a return

    def item(h, mem, place=True):
        return {"kind": "new", "history_s": h, "place_return": place, "memory": (mem, None), "zeroed": (1.0, None)}

    items = [item(5, 0.5), item(12, 0.7), item(25, 0.9), item(33, 0.95), item(45, 1.0, place=False), item(50, 1.1)]
    rows = rl.summarise(items)
    early, mid = rows["place return, history 0-20 s/segment"], rows["place return, history 20-40 s/segment"]
    assert early["n"] == 2 and abs(early["delta"][0] + 0.4) < 1e-9
    assert mid["n"] == 2 and abs(mid["delta"][0] + 0.075) < 1e-9
    assert "place return, history 40-60 s/segment" not in rows  # one place return there: no interval
    assert "place return" not in " ".join(rl.summarise(items[:2]))  # short clips: no buckets


def test_return_frames_arm_adds_the_repeated_shots_opening_just_before_the_segment():
    """--return-frames: the 'frame' arm's memory is φ's tokens plus G's tokens of the repeated shot's first latent,
    placed at time s - 1 (as the trainer places them); the 'memory' arm is the default mode's, same noise and t."""
    from pfp_app.model.memory_dit import recent_tokens

    model = build_random_model("tiny", seed=0)
    latents = torch.randn(model.codec.vae.config.z_dim, 12, 8, 8)
    mask = torch.zeros(3, 8, 8, dtype=torch.bool)
    ts = rl.train_t_quantiles()
    seen = []
    velocity = model.velocity

    def spy(x, t, text, memory, positions):
        seen.append(memory)
        return velocity(x, t, text, memory, positions)

    model.velocity = spy
    out = rl.losses_at(model, latents, "", 8, 3, mask, ts, torch.Generator().manual_seed(1), return_frames=1, opening=2)
    base = rl.losses_at(model, latents, "", 8, 3, mask, ts, torch.Generator().manual_seed(1))
    assert set(out) == {"memory", "frame"} and out["memory"] == base["memory"]
    assert out["frame"][0] != out["memory"][0]
    mem, frame = seen[0], seen[1]
    extra = frame.num_tokens - mem.num_tokens
    want = recent_tokens(model.transformer, latents[None, :, 2:3], torch.tensor([7.0]))
    assert extra == want.num_tokens > 0
    assert torch.equal(frame.tokens[:, : mem.num_tokens], mem.tokens)
    assert torch.allclose(frame.tokens[:1, mem.num_tokens :], want.tokens) and torch.equal(frame.coords[mem.num_tokens :], want.coords)


def test_return_frames_rows_pair_frame_against_memory():
    items = [{"kind": "repeat", "history_s": 10.0, "place_return": True, "frame": (f, None), "memory": (1.0, None)}
             for f in (0.5, 0.7, 0.6)]
    rows = rl.summarise(items, arms=("frame", "memory"))
    assert set(rows) == {"repeat/segment"} and rows["repeat/segment"]["n"] == 3
    assert abs(rows["repeat/segment"]["delta"][0] + 0.4) < 1e-9
    res = {"meta": {"model": "m", "clips": 1, "seconds": 20.0, "device": "cpu", "date": "d", "wall_s": 1.0,
                    "return_frames": 1, "arms": ["frame", "memory"]}, "summary": rows}
    assert "| repeat | whole segment | 3 | 60.00" in rl.format_table(res)
