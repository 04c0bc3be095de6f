"""The GPU benchmark runs end to end on the CPU with tiny shapes and writes every row of its tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_bench_tiny_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--tiny", "--out", str(out),
                           "--budget-s", "50"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["errors"] == [], res["errors"]
    assert res["meta"]["total_s"] < 60

    steps = res["steps"]["tiny"]
    for row in ("segment", "4x4x2", "2x2x2", "2x2x1", "full", "shared_t_4x4x2"):
        assert steps[row]["median_s"] > 0, row
    assert steps["segment"]["memory_tokens"] == 0 and steps["full"]["memory_tokens"] > steps["2x2x1"]["memory_tokens"]

    for rate in ("4x4x2", "2x2x2", "2x2x1"):
        phi = res["phi"]["tiny"][rate]
        assert phi["encode_20s"]["median_s"] > 0 and phi["add_segment"]["median_s"] > 0
        assert phi["incremental_vs_full_rel_err"] < 1e-5  # the incremental memory is exact

    profiles = res["profiles"]["tiny"]
    assert set(profiles) == {"resident", "offload+fp8", "fp8", "offload", "lowvram", "cpu"}
    for name, rec in profiles.items():
        assert rec["step_s"] > 0 and rec["output_finite"], name
        assert rec["check_vs_resident"] == "reference" or rec["check_vs_resident"] < (0.05 if "fp8" in name else 1e-5)

    md = (tmp_path / "bench.md").read_text()
    assert md.strip() in proc.stdout  # printed last, and written beside the JSON
    for label in ("segment alone", "+ φ memory 4x4x2", "+ φ memory 2x2x2", "+ φ memory 2x2x1",
                  "+ full 20 s history, uncompressed", "one shared timestep", "**(b) φ", "**(c) Whole pipeline",
                  "**Targets (issue 5)**"):
        assert label in md, label
    for name in profiles:
        assert f"| tiny | {name} |" in md


def _fidelity():
    from benchmarks import fidelity

    return fidelity


def test_fidelity_scoring_reads_the_ground_truth_back_and_finds_a_seam():
    """The fidelity benchmark's scorers on ground-truth renders (their ceiling): places, colours and patterns
    are read back far above chance; a jump inserted at a segment join is a seam, a smooth render is not."""
    import numpy as np

    from pfp_app.data.world import render_storyboard

    F = _fidelity()
    refs = F.References(64, 8)
    shots = []
    for i in range(3):
        sb, seed = F.heldout_storyboard(i, 50_000, 12.0)
        gt = render_storyboard(sb, 64, 8, seed=seed)
        starts = list(range(0, gt.num_frames, 12))
        segments = [(a, min(a + 12, gt.num_frames), int(gt.shot_index[a])) for a in starts]
        shots += F.score_shots(gt.frames, gt, refs, segments)
        smooth = F.seam_scores(gt.frames, starts, gt)
        assert smooth["joins"] > 0 and 0.6 < smooth["frames"] < 1.5, smooth
        jumpy = gt.frames.copy()
        for k, s0 in enumerate(starts[1:]):  # every segment after a join a little brighter than the one before
            jumpy[s0:] = np.clip(jumpy[s0:].astype(np.int16) + (30 if k % 2 == 0 else -30), 0, 255).astype(np.uint8)
        seam = F.seam_scores(jumpy, starts, gt)
        assert seam["frames"] > 1.5 * smooth["frames"] and seam["colour"] > 3 * smooth["colour"], (seam, smooth)
    places = [s["place_drawn"] == s["place"] for s in shots]
    chars = [c for s in shots for c in s["characters"]]
    assert len(places) >= 6 and sum(places) / len(places) >= 0.8, shots
    assert chars and sum(c["colour_ok"] for c in chars) / len(chars) >= 0.6, chars
    assert sum(c["pattern_ok"] for c in chars) / len(chars) >= 0.5, chars
    # an empty grey frame is not read as the asked place or character
    grey = np.full((64, 64, 3), 128, np.uint8)
    assert F.wilson_ci95(0, 10)[2] < 0.35 and F.wilson_ci95(10, 10)[1] > 0.65
    assert F.classify_place([grey], refs) in F.PLACES


def test_fidelity_paired_comparison_counts_shots_won_and_lost():
    """Two runs of the same storyboards compared shot by shot: the discordant shots and an exact McNemar p
    (checked against values worked by hand), shots missing from one run left out."""
    F = _fidelity()

    def run(places_ok: list[bool], colour_ok: list[bool]) -> dict:
        gen = [{"shot": i, "place": "brick wall", "place_drawn": "brick wall" if ok else "cat portrait",
                "characters": [{"colour_ok": c, "pattern_ok": False, "shape_ok": False}]}
               for i, (ok, c) in enumerate(zip(places_ok, colour_ok))]
        return {"storyboards": [{"index": 0, "gen": gen}]}

    base = run([False] * 8 + [True] * 2, [True] * 10)
    new = run([True] * 7 + [False] + [False, True], [True] * 10)
    rows = {r["attribute"]: r for r in F.paired_comparison(base, new)}
    assert (rows["Place"]["base"], rows["Place"]["new"], rows["Place"]["won"], rows["Place"]["lost"]) == (2, 8, 7, 1)
    assert abs(rows["Place"]["p"] - 18 / 256) < 1e-12  # 2 * (C(8,0) + C(8,1)) / 2^8
    assert rows["Character colour"]["won"] == rows["Character colour"]["lost"] == 0
    assert rows["Character colour"]["p"] == 1.0
    assert F.mcnemar_exact(0, 5) == 2 / 32 and F.mcnemar_exact(3, 3) == 1.0
    new["storyboards"][0]["gen"] = new["storyboards"][0]["gen"][:5]  # a run stopped part-way
    assert F.paired_comparison(base, new)[0]["n"] == 5
    assert "| Place | 5 |" in F.format_comparison(F.paired_comparison(base, new), "a.json", "b.json")


def test_fidelity_bench_tiny_on_cpu(tmp_path):
    """The tiny run end to end, with its prompts' embeddings precomputed (as a GPU machine without MiniLM runs
    it) and guidance on."""
    out, table = tmp_path / "fidelity.json", tmp_path / "captions.safetensors"
    bench = [sys.executable, str(ROOT / "benchmarks" / "fidelity.py"), "--tiny"]
    proc = subprocess.run(bench + ["--write-captions", str(table)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and table.exists(), proc.stderr[-3000:]
    proc = subprocess.run(bench + ["--text-table", str(table), "--guidance", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["meta"]["model"] == "tiny-random" and len(res["storyboards"]) == 1
    assert res["meta"]["sampler_settings"]["guidance_scale"] == 2.0
    fid = res["summary"]["fidelity"]
    assert fid["place"]["gt"]["n"] >= 1 and fid["place"]["chance"] == 1 / 7
    assert [r["return"] for r in res["drift"]["returns"]] == [1]
    assert res["drift"]["returns"][0]["character_gt"] < 0.05  # the ground truth's character does not drift
    md = (tmp_path / "fidelity.md").read_text()
    assert md.strip() in proc.stdout
    for label in ("| Place |", "| Character colour |", "| Character pattern |", "| Character shape |",
                  "seam score", "Drift:", "ground-truth render (ceiling)"):
        assert label in md, label


def test_g_throughput_tiny_on_cpu(tmp_path):
    """The trainer-throughput benchmark times the v2 loop and the current one through the trainer's own step."""
    out = tmp_path / "gt.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "g_throughput.py"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["loop"] for r in rows] == ["as v2 (legacy)", "now"]
    assert all(r["samples_per_s"] > 0 and r["tflop_per_step"] > 0 for r in rows)
    assert "| next segment (stage 2) | now | 2 |" in (tmp_path / "gt.md").read_text()


def test_device_carry_slims_the_wheel_and_splits_the_bank(tmp_path, monkeypatch):
    """The slim wheel keeps the packages' top modules and drops their subpackages, with a RECORD that matches;
    the bank's subsets hold the right split and crops."""
    import base64
    import hashlib
    import zipfile

    from benchmarks import device_carry

    src = tmp_path / "full" / "diffusers-0.0-py3-none-any.whl"
    src.parent.mkdir()
    files = {"diffusers/__init__.py": b"x", "diffusers/models/wan.py": b"model", "diffusers/pipelines/__init__.py": b"p",
             "diffusers/pipelines/wan/pipeline_wan.py": b"big", "diffusers/modular_pipelines/flux/a.py": b"big",
             "diffusers-0.0.dist-info/RECORD": b"stale"}
    with zipfile.ZipFile(src, "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    dst = tmp_path / ".whl" / src.name
    device_carry.slim_wheel(src, dst)
    with zipfile.ZipFile(dst) as z:
        names = set(z.namelist())
        record = z.read("diffusers-0.0.dist-info/RECORD").decode()
    assert names == {"diffusers/__init__.py", "diffusers/models/wan.py", "diffusers/pipelines/__init__.py",
                     "diffusers-0.0.dist-info/RECORD"}
    digest = base64.urlsafe_b64encode(hashlib.sha256(b"model").digest()).rstrip(b"=").decode()
    assert f"diffusers/models/wan.py,sha256={digest},5" in record and "pipeline_wan" not in record

    bank = tmp_path / "bank"
    for rel in ("photos/train/a-0.jpg", "photos/train/a-1.jpg", "photos/train/a-3.jpg", "photos/heldout/b-0.jpg",
                "clips/train/c.mp4", "clips/heldout/d.mp4", "bank.json"):
        (bank / rel).parent.mkdir(parents=True, exist_ok=True)
        (bank / rel).write_bytes(b"0")
    lite, held = tmp_path / "lite", tmp_path / "eval"
    device_carry.subset_bank(bank, lite, "train", 2)
    device_carry.subset_bank(bank, held, "heldout", None)
    listing = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())  # noqa: E731
    assert listing(lite) == ["bank.json", "clips/train/c.mp4", "photos/train/a-0.jpg", "photos/train/a-1.jpg"]
    assert listing(held) == ["bank.json", "clips/heldout/d.mp4", "photos/heldout/b-0.jpg"]
    try:
        device_carry.subset_bank(tmp_path / "nobank", lite, "train", 2)
        raise AssertionError("a folder without bank.json was accepted")
    except SystemExit as e:
        assert "not a bank" in str(e)


def test_codec_modes_separates_the_time_path_from_the_spatial_one():
    from benchmarks.codec_modes import clip_modes
    from diffusers import AutoencoderKLWan

    from pfp_app.model.codec import WanLatentCodec, init_temporal_identity

    torch = __import__("torch")
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True])
    still = torch.rand(3, 1, 16, 16).mul(2).sub(1).expand(3, 5, 16, 16)
    moving = torch.rand(3, 5, 16, 16).mul(2).sub(1)
    model = SimpleNamespace(codec=WanLatentCodec(vae))  # all that clip_modes and codec_clip_scores read
    video, image = clip_modes(model, moving, chunk=2)
    assert abs(video - image) > 0.01  # random time taps: the modes differ
    init_temporal_identity(vae)  # video mode = image mode on a still clip (its time path passes each frame on)
    video, image = clip_modes(SimpleNamespace(codec=WanLatentCodec(vae)), still, chunk=2)
    assert abs(video - image) < 1e-3, (video, image)


def test_codec_frames_marks_the_latent_chunk_that_holds_a_cut():
    from benchmarks.codec_frames import cut_chunk_mask, frame_psnrs

    torch = __import__("torch")
    x = torch.zeros(1, 3, 21, 8, 8)
    x[:, :, 16:] = 0.5  # a cut at frame 16: the last frame of chunk 13..16
    x[:, :, :, 0, 0] += torch.linspace(0, 0.2, 21)  # slow motion within the shots is no cut
    assert cut_chunk_mask(x, 4).nonzero().flatten().tolist() == [13, 14, 15, 16]
    assert not cut_chunk_mask(x[:, :, :16], 4).any()
    p = frame_psnrs(x + 0.02, x)
    assert p.shape == (21,) and torch.allclose(p, torch.full((21,), 10 * torch.log10(torch.tensor(4 / 0.0004))))


def test_device_carry_encoder_only_vae_encodes_exactly_as_the_full_codec(tmp_path):
    """The stand-in a G-training call carries: same latents and latent statistics, a far smaller file."""
    from benchmarks import device_carry
    from diffusers import AutoencoderKLWan

    from pfp_app.model.codec import WanLatentCodec
    from pfp_app.model.bundle import MODEL_CONFIGS

    torch.manual_seed(0)
    full = AutoencoderKLWan(**MODEL_CONFIGS["default"].vae)
    full.register_to_config(latents_mean=[0.1] * 32, latents_std=[2.0] * 32)
    full.save_pretrained(tmp_path / "vae")
    size = device_carry.encoder_only_vae(tmp_path / "vae", tmp_path / "enc")
    small = AutoencoderKLWan.from_pretrained(tmp_path / "enc", torch_dtype=torch.float32)
    assert small.config.latents_mean == [0.1] * 32 and small.config.decoder_base_dim == 4
    clip = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = WanLatentCodec(full.half().float()).encode(clip), WanLatentCodec(small).encode(clip)
    assert torch.equal(a, b)
    full_size = sum(f.stat().st_size for f in (tmp_path / "vae").iterdir())
    assert size < 0.5 * full_size / 2  # fp16 and without the decoder: under half of the fp32 full codec's half


def test_return_consistency_zeroes_phi_only_inside_its_block_and_pairs_the_arms(tmp_path):
    """`zeroed_memory` empties φ's tokens (positions kept) and restores φ after; the tiny run scores both arms on
    the same storyboards and writes the paired table."""
    from benchmarks.return_consistency import zeroed_memory

    from pfp_app.model.bundle import load_model

    model = load_model("tiny-random", torch_dtype=torch.float32)
    c = model.codec.latent_channels
    history = torch.randn(1, c, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    real, _ = model.memory_encoder.encode_incremental(history, None)
    with zeroed_memory(model):
        zeroed, _ = model.memory_encoder.encode_incremental(history, None)
    after, _ = model.memory_encoder.encode_incremental(history, None)
    assert real.tokens.abs().sum() > 0 and zeroed.tokens.abs().sum() == 0
    torch.testing.assert_close(zeroed.coords, real.coords)
    torch.testing.assert_close(after.tokens, real.tokens)

    out = tmp_path / "rc.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "return_consistency.py"), "--tiny", "--out",
                           str(out)], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert len(res["storyboards"]) == 2 and res["meta"]["total_s"] > 0
    sb = res["storyboards"][0]
    assert sb["memory"]["place_gt"] == sb["zeroed"]["place_gt"]  # the same storyboard and render in both arms
    md = (tmp_path / "rc.md").read_text()
    for label in ("| as shipped (φ's memory) |", "| φ's output zeroed |", "Δ (memory − zeroed)"):
        assert label in md, label


def test_return_consistency_compares_two_runs_memory_arms_per_storyboard():
    """--compare: Δ is the mean of the per-storyboard differences of the memory arms over the storyboards both
    runs scored, and the zeroed arms' largest difference is reported."""
    from benchmarks import consistency as cons
    from benchmarks.return_consistency import format_comparison

    keys = [k for k, _ in cons.METRICS]

    def run(memory, zeroed, indices):
        return {"storyboards": [{"index": i, "memory": {k: m for k in keys}, "zeroed": {k: z for k in keys}}
                                for i, m, z in zip(indices, memory, zeroed)]}

    this = run([0.5, 0.6, 0.7], [0.2, 0.2, 0.2], [0, 1, 2])
    that = run([0.3, 0.5, 0.4, 0.9], [0.2, 0.2, 0.203, 0.2], [0, 1, 2, 3])  # storyboard 3: this run lacks it
    text = format_comparison(this, that, "base.json")
    assert "paired over 3 storyboards" in text and "differ by at most 0.30" in text
    # Δ = mean(0.2, 0.1, 0.3) = 0.2 -> 20.0 ×100; means 60.0 against 40.0
    assert f"| {cons.METRICS[0][1]} | 60.0 | 40.0 | 20.0 ±" in text


def test_return_consistency_memory_only_run_pairs_with_another_runs_zeroed_arm(tmp_path):
    """--memory-only generates the memory arm alone (a sampler variant); its table says so, and --compare-arm zeroed
    pairs it with another run's φ-zeroed arm per storyboard."""
    from benchmarks import consistency as cons
    from benchmarks.return_consistency import format_comparison, format_table

    out = tmp_path / "rc.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "return_consistency.py"), "--tiny", "--memory-only",
                           "--out", str(out)], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert all(set(sb) == {"index", "memory"} for sb in res["storyboards"])
    table = format_table(res)
    assert "| as shipped (φ's memory) |" in table and "| φ's output zeroed |" not in table
    assert "No φ-zeroed arm in this run" in table
    keys = [k for k, _ in cons.METRICS]
    other = {"storyboards": [{"index": sb["index"], "memory": {k: 1.0 for k in keys}, "zeroed": {k: 0.25 for k in keys}}
                             for sb in res["storyboards"]]}
    text = format_comparison(res, other, "base.json", arm="zeroed")
    assert "paired over 2 storyboards" in text and "no φ-zeroed arm" in text
    mine = [sb["memory"][keys[2]] for sb in res["storyboards"]]
    assert f"| {100 * sum(mine) / 2:.1f} | 25.0 |" in text  # this run's memory arm against that run's zeroed arm
