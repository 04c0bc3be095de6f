"""Issue 6's paper benchmarks run end to end on the CPU in --tiny mode, and their verdicts are computed.

Both scripts train (through the app's trainer, in this process), evaluate and write a table with every
row; the ordering verdicts are recomputed here from the stored per-clip numbers, and the ordering and
table functions are fed synthetic numbers to see each outcome (reproduced / reversed / not separated).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import consistency as cons
from benchmarks import merge_results
from benchmarks import retrieval_ablation as ra
from conftest import report

ROOT = Path(__file__).resolve().parent.parent

VERDICTS = {"reproduced", "reversed", "not separated", "not measured"}


# ---- the ordering function on synthetic numbers ------------------------------------------------

def test_compare_gives_each_outcome_from_the_numbers():
    better, worse = [20.0, 21.0, 19.5, 20.5], [18.0, 18.5, 18.2, 18.1]
    assert ra.compare(better, worse)["verdict"] == "reproduced"
    assert ra.compare(worse, better)["verdict"] == "reversed"
    noisy = [18.0, 21.0, 17.0, 22.0]
    assert ra.compare(noisy, [19.5] * 4)["verdict"] == "not separated"
    r = ra.compare(better, worse)
    assert r["diff"] == pytest.approx(sum(better) / 4 - sum(worse) / 4) and r["n"] == 4 and r["ci95"] > 0
    # lower is better (LPIPS): the smaller values win
    assert ra.compare([0.10, 0.12, 0.11], [0.30, 0.31, 0.33], higher_is_better=False)["verdict"] == "reproduced"
    assert ra.compare([0.30, 0.31, 0.33], [0.10, 0.12, 0.11], higher_is_better=False)["verdict"] == "reversed"
    assert ra.compare([], [1.0])["verdict"] == "not measured"
    assert ra.chain_verdict(["reproduced", "reproduced"]) == "reproduced"
    assert ra.chain_verdict(["reversed", "reversed"]) == "reversed"
    assert ra.chain_verdict(["reproduced", "not separated"]).startswith("partly")


def _fake_ablation(psnr_by_cfg: dict, clips: int = 6) -> dict:
    """Results with per-clip PSNR = given mean + a clip effect shared by all runs (paired design)."""
    runs = {}
    for (variant, rate), base in psnr_by_cfg.items():
        for seed in (0, 1):
            clip = [base + 0.5 * ((i * 7) % 5) + 0.05 * seed for i in range(clips)]
            runs[f"{variant}_{rate}_s{seed}"] = {
                "variant": variant, "rate": rate, "seed": seed, "trained": True,
                "eval": {"per_clip": {"psnr": clip, "ssim": [v / 40 for v in clip],
                                      "zeroed_psnr": [v - 3 for v in clip], "zeroed_ssim": [0.1] * clips,
                                      "mean_psnr": [14.0 + 0.5 * ((i * 7) % 5) for i in range(clips)],
                                      "mean_ssim": [0.2] * clips, "codec_psnr": [25.0] * clips,
                                      "codec_ssim": [0.8] * clips}}}
    return {"protocol": ra.Settings().protocol(), "runs": runs,
            "calls": [{"device": "NVIDIA H100 80GB HBM3", "date": "2026-11-24T00:00:00", "wall_s": 60}]}


def _ordering_cells(table: str, label: str) -> list[str]:
    line = next(l for l in table.splitlines() if l.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_ablation_table_verdicts_follow_the_numbers():
    paper_like = {("large_patchifier", "4x4x2"): 13.0, ("only_lr", "4x4x2"): 15.0, ("without_lr", "4x4x2"): 15.5,
                  ("proposed", "4x4x2"): 17.0, ("proposed", "2x2x2"): 19.0, ("proposed", "2x2x1"): 20.0}
    table = ra.format_table(_fake_ablation(paper_like))
    assert ra.NOT_ON_GPU not in table  # measured on a GPU (in this fake)
    for label, _, _ in ra.ORDERINGS:
        assert _ordering_cells(table, label)[3] == "reproduced", label
    assert _ordering_cells(table, ra.CHAIN[0])[3] == "reproduced"

    flipped = {k: 30.0 - v for k, v in paper_like.items()}  # every ordering reversed
    table = ra.format_table(_fake_ablation(flipped))
    for label, _, _ in ra.ORDERINGS:
        assert _ordering_cells(table, label)[3] == "reversed", label
    assert _ordering_cells(table, ra.CHAIN[0])[3] == "reversed"

    partial = {k: v for k, v in paper_like.items() if k != ("proposed", "2x2x1")}
    table = ra.format_table(_fake_ablation(partial))
    assert _ordering_cells(table, "Proposed 2×2×1 > 2×2×2")[3] == "not measured"
    assert "| Proposed | 2×2×1 | (not measured) |" in table


# ---- retrieval ablation, end to end ------------------------------------------------------------

ROWS = ["| Large Patchifier (FramePack-style) | 4×4×2 |", "| Only LR | 4×4×2 |", "| Without LR | 4×4×2 |",
        "| Proposed | 4×4×2 |", "| Proposed | 2×2×2 |", "| Proposed | 2×2×1 |", "| *history mean frame (baseline)* |",
        "| *φ output zeroed (baseline, Proposed 4×4×2)* |", "| *codec reconstruction (ceiling)* |"]


def test_retrieval_ablation_tiny_on_cpu(tmp_path):
    t0 = time.time()
    assert ra.main(["--tiny", "--out", str(tmp_path), "--seeds", "0"]) == 0
    elapsed = time.time() - t0
    res = json.loads((tmp_path / "results.json").read_text())
    assert len(res["runs"]) == 6 and all("eval" in r for r in res["runs"].values())
    for r in res["runs"].values():
        pc = r["eval"]["per_clip"]
        assert len(pc["psnr"]) == len(pc["zeroed_psnr"]) == len(pc["mean_psnr"]) == ra.TINY["eval_clips"]
        assert r["train"]["step"] == ra.TINY["steps"]
    table = (tmp_path / "table.md").read_text()
    for row in ROWS:
        assert row in table, row
    assert "(not measured)" not in table and ra.NOT_ON_GPU in table
    # the verdicts in the table are the ones the numbers give
    summary = ra.summarise(res)
    for label, better, worse in ra.ORDERINGS:
        want = ra.compare(summary["rows"][better]["per_clip"]["psnr"], summary["rows"][worse]["per_clip"]["psnr"])
        cells = _ordering_cells(table, label)
        assert cells[3] == want["verdict"] and cells[3] in VERDICTS, label
    # the init folders hold the variant and rate asked for, and one seed's G is the same for every variant
    from safetensors.torch import load_file

    for rid, r in res["runs"].items():
        cfg = json.loads((tmp_path / "inits" / rid / "memory_encoder" / "config.json").read_text())
        assert (cfg["variant"], cfg["rate"]) == (r["variant"], r["rate"])
    g = [load_file(next((tmp_path / "inits" / rid / "transformer").glob("*.safetensors"))) for rid in
         ("proposed_4x4x2_s0", "without_lr_4x4x2_s0", "proposed_2x2x1_s0")]
    assert all(g[0].keys() == x.keys() and all((g[0][k] == x[k]).all() for k in g[0]) for x in g[1:])

    # --resume: nothing left to train or evaluate; without it, existing results are refused
    t1 = time.time()
    assert ra.main(["--tiny", "--out", str(tmp_path), "--seeds", "0", "--resume"]) == 0
    res2 = json.loads((tmp_path / "results.json").read_text())
    assert res2["calls"][-1]["trained"] == [] and res2["calls"][-1]["evaluated"] == []
    assert res2["runs"] == res["runs"]
    with pytest.raises(SystemExit):
        ra.main(["--tiny", "--out", str(tmp_path), "--seeds", "0"])
    with pytest.raises(SystemExit, match="another protocol"):  # never mixes step budgets
        ra.main(["--tiny", "--out", str(tmp_path), "--seeds", "0", "--resume", "--steps", "5"])
    report(f"retrieval_ablation --tiny: {elapsed:.1f} s (6 runs), resume {time.time() - t1:.1f} s")


def test_ablation_plan_lists_every_run(tmp_path, capsys):
    assert ra.main(["--plan", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("12 runs")
    for v, r in [(v, "4x4x2") for v in ra.VARIANTS] + [("proposed", "2x2x2"), ("proposed", "2x2x1")]:
        for seed in (0, 1):
            assert f"| {v}_{r}_s{seed} |" in out
    assert re.search(r"≈ \d+ call\(s\)", out)


# ---- consistency, end to end -----------------------------------------------------------------

def test_consistency_storyboards_have_the_returns_asked_for():
    from pfp_app.data.world import storyboard_returns

    s = cons.Settings()
    for i in range(4):
        sb, truth = cons.make_storyboard(i, s, 2.5)
        r = storyboard_returns(sb, min_gap=10.0)
        gaps = [g for phrase, _, shot, g in r["character_returns"] if phrase == truth["A"].phrase and shot == 4]
        assert gaps and gaps[0] >= 10.0
        assert (truth["P1"], 0, 3) in r["place_returns"]
        assert all(abs(st / 2.5 - round(st / 2.5)) < 1e-9 for st, _ in truth["shots"])  # segment-aligned


def test_consistency_tiny_on_cpu(tmp_path):
    t0 = time.time()
    assert cons.main(["--tiny", "--out", str(tmp_path)]) == 0
    elapsed = time.time() - t0
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["runs"]) == {"with_pretrain_s0", "without_pretrain_s0"}
    for r in res["runs"].values():
        assert r["trained"] and len(r["storyboards"]) == cons.TINY["storyboards"]
        for sc in r["storyboards"].values():
            for k, _ in cons.METRICS:
                assert 0.0 <= sc[k] <= 1.0, k
    with_ = res["runs"]["with_pretrain_s0"]["train"]
    without = res["runs"]["without_pretrain_s0"]["train"]
    assert with_["stage1"]["step"] + with_["stage2"]["step"] == without["stage2"]["step"]  # equal budgets
    table = (tmp_path / "table.md").read_text()
    for row in ("| Proposed (with stage-1 pretraining) | 0 |", "| Without pretrain | 0 |",
                "| *ground-truth render (ceiling)* |", "| *chance: a different character / place* |"):
        assert row in table, row
    summary = cons.summarise(res)
    for key, title in cons.METRICS:
        line = next(l for l in table.splitlines() if l.startswith(f"| {title} |") and l.count("|") == 4)
        assert line.split("|")[3].strip() == summary["orderings"][key]["verdict"]
    assert cons.main(["--tiny", "--out", str(tmp_path), "--resume"]) == 0  # all done: no work
    report(f"consistency --tiny: {elapsed:.1f} s (3 trainer sessions, 6 generations)")


def test_consistency_generates_with_the_protocols_sampler_overrides(tmp_path, monkeypatch):
    """--gen-sampler FIELD=VALUE (the paper scale's text guidance) reaches every generation of both arms, is part of
    the protocol and the table, and a bad field stops the run before any training."""
    from benchmarks import fidelity

    seen = []
    real = fidelity.generate

    def spy(pipe, sb, seed, sampler=None):
        seen.append(sampler)
        return real(pipe, sb, seed, sampler)

    monkeypatch.setattr(fidelity, "generate", spy)
    out = tmp_path / "cons"
    assert cons.main(["--tiny", "--out", str(out), "--arms", "without_pretrain", "--gen-sampler", "guidance_scale=3",
                      "--gen-sampler", "shot_start_guidance_scale=6"]) == 0
    assert len(seen) == cons.TINY["storyboards"]
    assert all(s.guidance_scale == 3.0 and s.shot_start_guidance_scale == 6.0 and s.steps == cons.TINY["gen_steps"]
               for s in seen)
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["gen_sampler"] == ["guidance_scale=3", "shot_start_guidance_scale=6"]
    assert "(guidance_scale=3, shot_start_guidance_scale=6)" in (out / "table.md").read_text()
    assert "gen_sampler" not in cons.Settings().protocol()  # older results files (none) still match
    with pytest.raises(ValueError, match="bogus=1"):
        cons.main(["--tiny", "--out", str(tmp_path / "bad"), "--gen-sampler", "bogus=1"])
    assert not (tmp_path / "bad" / "s0").exists()
    paper = cons.Settings(**cons.PAPER)  # the paper's protocol: G starts memory-free, not from a trained model
    assert paper.base_steps > 0 and not paper.g_from and paper.gen_sampler
    with pytest.raises(SystemExit, match="--g-from and --base-steps"):
        cons.main(["--scale", "paper", "--out", str(tmp_path / "x"), "--g-from", str(tmp_path), "--plan"])


def test_consistency_verdicts_follow_the_numbers():
    def fake(delta):
        runs = {}
        for arm, shift in (("with_pretrain", delta), ("without_pretrain", 0.0)):
            sbs = {str(i): {"character_box": 0.6 + 0.05 * (i % 3) + shift, "character_located": 0.5 + shift,
                            "place": 0.4 + 0.02 * i + shift} for i in range(5)}
            runs[f"{arm}_s0"] = {"arm": arm, "seed": 0, "trained": True, "storyboards": sbs}
        s = cons.Settings(storyboards=5)
        return {"protocol": s.protocol(), "runs": runs, "calls": []}

    for delta, verdict in ((0.1, "reproduced"), (-0.1, "reversed")):
        summary = cons.summarise(fake(delta))
        assert all(summary["orderings"][k]["verdict"] == verdict for k, _ in cons.METRICS)
        assert verdict in cons.format_table(fake(delta))


# ---- the memory-free G that every run of a seed starts from (the CPU scale) ----------------------

def test_runs_of_a_seed_start_from_one_memory_free_g_shared_by_both_benchmarks(tmp_path):
    from safetensors.torch import load_file

    from pfp_app.model.bundle import build_random_model

    abl, cons_out, base_dir = tmp_path / "abl", tmp_path / "cons", tmp_path / "base"
    common = ["--tiny", "--base-steps", "3", "--base-dir", str(base_dir), "--latent-cache", str(tmp_path / "lat")]
    assert ra.main([*common, "--out", str(abl), "--seeds", "0", "--variants", "proposed,only_lr",
                    "--rates", "4x4x2"]) == 0
    res = json.loads((abl / "results.json").read_text())
    assert res["runs"]["base_s0"]["trained"] and "eval" not in res["runs"]["base_s0"]
    assert all("eval" in r for k, r in res["runs"].items() if k != "base_s0")
    assert json.loads((base_dir / "s0" / "state" / "state.json").read_text())["stage"] == "base"

    def g(folder):
        return load_file(next((folder / "transformer").glob("*.safetensors")))

    base_g, fresh = g(base_dir / "s0" / "model"), build_random_model("tiny", seed=0).transformer.state_dict()
    assert any(not torch_equal(base_g[k], fresh[k]) for k in base_g)  # the base run trained G
    for rid in ("proposed_4x4x2_s0", "only_lr_4x4x2_s0"):
        init = g(abl / "inits" / rid)
        assert all(torch_equal(init[k], base_g[k]) for k in base_g), rid
    table = (abl / "table.md").read_text()
    assert "first trained alone (no memory, stage `base`) for 3 steps" in table

    # consistency.py with the same settings and --base-dir finds that G trained and does not train it again
    before = (base_dir / "s0" / "metrics.jsonl").read_text()
    assert cons.main([*common, "--out", str(cons_out)]) == 0
    assert (base_dir / "s0" / "metrics.jsonl").read_text() == before
    init = g(cons_out / "s0" / "init")
    assert all(torch_equal(init[k], base_g[k]) for k in base_g)
    assert len(list((tmp_path / "lat").glob("*.safetensors"))) == 1  # one encoding of the clips for every run
    # a G trained under other settings is never taken
    with pytest.raises(SystemExit, match="other settings"):
        cons.main(["--tiny", "--base-steps", "5", "--base-dir", str(base_dir), "--out", str(tmp_path / "c2")])


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_cpu_scale_tables_say_so():
    p = ra.Settings(**ra.CPU).protocol()
    assert ra.scale_note(p, ["cpu"]) == ra.CPU_SCALE
    assert ra.scale_note(ra.Settings().protocol(), ["cpu"]) == ra.NOT_ON_GPU
    assert ra.scale_note(ra.Settings().protocol(), ["NVIDIA H100 80GB HBM3"]) is None
    assert ra.scale_note(ra.Settings(**ra.TINY).protocol(), ["cpu"]) == ra.NOT_ON_GPU


# ---- on a user's own videos ------------------------------------------------------------------

def _video_folder(root: Path, n: int, seed: int) -> Path:
    """n 5-s MP4s of world clips (any videos would do; these have texture and cuts)."""
    from pfp_app.data.world import WorldClipDataset
    from pfp_app.io.video import write_mp4

    root.mkdir(parents=True)
    ds = WorldClipDataset(n, seconds=5.0, size=64, fps=8, seed=seed)
    for i in range(n):
        write_mp4(root / f"clip{i}.mp4", ds[i]["frames"], fps=8)
    return root


def test_retrieval_ablation_on_a_folder_of_videos(tmp_path):
    train_dir, eval_dir = _video_folder(tmp_path / "train", 3, 1), _video_folder(tmp_path / "heldout", 3, 2)
    out = tmp_path / "abl"
    assert ra.main(["--tiny", "--data", str(train_dir), "--eval-data", str(eval_dir), "--out", str(out),
                    "--seeds", "0", "--variants", "proposed", "--rates", "4x4x2"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["data"] == str(train_dir) and res["protocol"]["eval_data"] == str(eval_dir)
    run = res["runs"]["proposed_4x4x2_s0"]
    assert len(run["eval"]["per_clip"]["psnr"]) == ra.TINY["eval_clips"]
    train_cfg = json.loads((out / "runs" / "proposed_4x4x2_s0" / "model" / "training.json").read_text())["config"]
    assert train_cfg["data"] == str(train_dir)
    assert "`heldout/` video" in (out / "table.md").read_text()

    with pytest.raises(SystemExit, match="needs --eval-data"):
        ra.main(["--tiny", "--data", str(train_dir), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="another folder than --data"):
        ra.main(["--tiny", "--data", str(train_dir), "--eval-data", str(train_dir), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="does not exist"):
        ra.main(["--tiny", "--data", str(tmp_path / "nope"), "--eval-data", str(eval_dir), "--out", str(tmp_path / "x")])


def test_results_written_before_a_protocol_field_existed_resume(tmp_path):
    """A results file from before `data` existed resumes while `data` keeps its default, and only then."""
    s = ra.Settings(**ra.TINY)
    old = {k: v for k, v in s.protocol().items() if k not in ("data", "eval_data")}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"benchmark": "retrieval_ablation", "protocol": old, "runs": {}, "calls": []}))
    assert ra.load_results(path, "retrieval_ablation", s.protocol(), True, ra.Settings().protocol())["runs"] == {}
    other = dict(s.protocol(), data="/videos")
    with pytest.raises(SystemExit, match="another protocol"):
        ra.load_results(path, "retrieval_ablation", other, True, ra.Settings().protocol())


# ---- runs side by side on one GPU (benchmarks/parallel_gpu.sh): merging their results ----------

def _part(runs: dict, protocol: dict, start: str, wall_s: float) -> dict:
    return {"benchmark": "retrieval_ablation", "protocol": protocol, "runs": runs,
            "calls": [{"date": start, "wall_s": wall_s, "device": "NVIDIA H200", "argv": [start]}]}


def test_merged_parts_keep_every_run_the_most_complete_record_and_real_wall_time():
    proto = {"steps": 800, "batch_size": 32}
    a = _part({"proposed_4x4x2_s0": {"trained": True, "eval": {"per_clip": [1.0]}}}, proto,
              "2026-12-02T01:00:00+00:00", 540)
    b = _part({"only_lr_4x4x2_s0": {"trained": True, "eval": {"per_clip": [2.0]}},
               "proposed_4x4x2_s0": {"trained": False}}, proto, "2026-12-02T01:01:00+00:00", 480)
    merged = merge_results.merge(None, [a, b])
    assert set(merged["runs"]) == {"proposed_4x4x2_s0", "only_lr_4x4x2_s0"}
    assert merged["runs"]["proposed_4x4x2_s0"]["eval"] == {"per_clip": [1.0]}  # not replaced by the unfinished one
    assert len(merged["calls"]) == 2
    # the two calls overlap from 01:01 to 01:09: 9 minutes of wall time, not 17
    assert ra.calls_wall_min(merged["calls"]) == pytest.approx(9.0)
    # merging the same part again adds nothing
    assert len(merge_results.merge(merged, [a])["calls"]) == 2


def test_parts_of_different_protocols_are_never_merged():
    a = _part({}, {"steps": 800}, "2026-12-02T01:00:00+00:00", 10)
    b = _part({}, {"steps": 400}, "2026-12-02T01:00:00+00:00", 10)
    with pytest.raises(SystemExit, match=r"different protocols are never mixed: \{'steps': \(800, 400\)\}"):
        merge_results.merge(None, [a, b])


def test_merge_refuses_a_file_that_is_not_results(tmp_path):
    bad = tmp_path / "part-0.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match=r"part-0.json: not a readable results file"):
        merge_results.main([str(tmp_path / "merged.json"), str(bad)])
    bad.write_text('{"runs": {}}')
    with pytest.raises(SystemExit, match=r"part-0.json: not a results file of retrieval_ablation.py or consistency"):
        merge_results.main([str(tmp_path / "merged.json"), str(bad)])
    assert not (tmp_path / "merged.json").exists()


def test_consistency_arms_option_checks_its_names(tmp_path):
    with pytest.raises(SystemExit, match="--arms: choose from with_pretrain, without_pretrain"):
        cons.main(["--tiny", "--arms", "with", "--out", str(tmp_path), "--plan"])


def test_parallel_gpu_driver_runs_groups_side_by_side_on_one_latent_cache(tmp_path):
    """benchmarks/parallel_gpu.sh, the command behind the H200 numbers, on the CPU with two tiny groups."""
    env = {**os.environ, "PYTHON": sys.executable}
    common = "--tiny --seeds 0 --rates 4x4x2 --in-process --workers 0"
    groups = [f"retrieval_ablation.py {common} --variants proposed", f"retrieval_ablation.py {common} --variants only_lr"]
    proc = subprocess.run(["bash", "benchmarks/parallel_gpu.sh", "5", str(tmp_path / "p"), *groups], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list((tmp_path / "p" / "latents").glob("latents-*.safetensors"))) == 1  # encoded once, shared
    parts = sorted((tmp_path / "p").glob("part-*.json"))
    merged = merge_results.merge(None, [json.loads(p.read_text()) for p in parts])
    assert {k for k, r in merged["runs"].items() if r.get("eval")} == {"proposed_4x4x2_s0", "only_lr_4x4x2_s0"}
    # the same call again: everything is measured, group 0 builds no cache, and the others start once it
    # has ended rather than after the 4-minute wait for a cache
    proc = subprocess.run(["bash", "benchmarks/parallel_gpu.sh", "5", str(tmp_path / "p"), *groups], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    started = int(re.search(r"group 1 at \+(\d+) s", proc.stdout).group(1))
    assert started < 200, proc.stdout
    assert "all done" in (tmp_path / "p" / "part-1.log").read_text()
    # too many groups for one GPU: refused with the reason, nothing started
    proc = subprocess.run(["bash", "benchmarks/parallel_gpu.sh", "5", str(tmp_path / "q"), *groups * 4], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "8 groups, at most 6 side by side" in proc.stderr
    assert not list((tmp_path / "q").glob("part-*"))
    proc = subprocess.run(["bash", "benchmarks/parallel_gpu.sh", "5"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: parallel_gpu.sh BUDGET_MIN DIR")


def test_consistency_arms_can_start_from_a_trained_g(tmp_path):
    """--g-from: both arms start from that folder's G (a fresh φ per seed); the protocol and table say so, and
    a memory-free G (--base-steps) cannot be asked for as well."""
    import torch

    from pfp_app.model.bundle import build_random_model, load_model

    g_dir = tmp_path / "trained"
    build_random_model("tiny", seed=7).save(g_dir)
    shutil.rmtree(g_dir / "memory_encoder")  # only its G is used: a folder without φ (a slim GPU carry) loads too,
    (g_dir / "memory_encoder").mkdir()  # also where the copied tree kept φ's folder, empty (the device call of 12-05)
    out = tmp_path / "cons"
    assert cons.main(["--tiny", "--out", str(out), "--g-from", str(g_dir)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["g_from"] == str(g_dir)
    assert all(r["trained"] for r in res["runs"].values())
    init = load_model(out / "s0" / "init", torch_dtype=torch.float32).transformer.state_dict()
    source = load_model(g_dir, torch_dtype=torch.float32, new_memory={}).transformer.state_dict()
    fresh = build_random_model("tiny", seed=0).transformer.state_dict()
    assert all(torch.equal(init[k], source[k]) for k in source)
    assert any(not torch.equal(init[k], fresh[k]) for k in fresh)
    assert f"G from the trained model `{g_dir}`" in (out / "table.md").read_text()
    with pytest.raises(SystemExit, match="--g-from and --base-steps"):
        cons.main(["--tiny", "--out", str(tmp_path / "x"), "--g-from", str(g_dir), "--base-steps", "2"])


def test_consistency_recent_latents_reach_stage_2_and_generation_only(tmp_path):
    """--recent-latents K (the shipped model's recipe): both arms' stage 2 trains with it and the exported model
    generates with it; stage 1 (retrieval) does not. The protocol records it, and every storyboard carries
    prompt fidelity beside the ground truth's, in the table's own column."""
    from pfp_app.model.bundle import load_model

    out = tmp_path / "cons"
    assert cons.main(["--tiny", "--out", str(out), "--recent-latents", "1"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["recent_latents"] == 1
    assert load_model(out / "s0" / "with_pretrain" / "stage1" / "model").sampler.recent_latents == 0
    for arm in cons.ARMS:
        assert load_model(out / "s0" / arm / "stage2" / "model").sampler.recent_latents == 1
        for sc in res["runs"][f"{arm}_s0"]["storyboards"].values():
            for k, _ in cons.PROMPT_FIDELITY:
                assert 0.0 <= sc[k] <= 1.0 and 0.0 <= sc[k + "_gt"] <= 1.0, (k, sc)
    table = (out / "table.md").read_text()
    assert "prompt fidelity: place drawn as asked / character colour as asked" in table
    assert "| *chance: a different character / place* |" in table and "| – | 14.3 / 12.5 |" in table
    assert "recent_latents" not in cons.Settings().protocol()  # older results files (none) still match


def test_consistency_prompt_fidelity_reads_the_storyboard_back_from_its_render():
    """Prompt fidelity on Table 2's storyboards: the ground-truth render is read back as asked, a video that shows
    the first shot throughout is not (its later shots show the wrong place and no character)."""
    import numpy as np

    from pfp_app.data.world import render_storyboard

    s = cons.Settings()
    hits = {"gt": [], "frozen": []}
    for i in range(3):
        sb, truth = cons.make_storyboard(i, s, 2.5)
        gt = render_storyboard(sb, size=64, fps=8, seed=truth["render_seed"])
        segments = [(a, min(a + 20, gt.num_frames), int(gt.shot_index[a])) for a in range(0, gt.num_frames, 20)]
        hits["gt"].append(cons.prompt_fidelity(gt.frames, gt, segments))
        frozen = np.repeat(gt.frames[4:5], gt.num_frames, axis=0)  # shot 0 (P1, empty) for the whole film
        hits["frozen"].append(cons.prompt_fidelity(frozen, gt, segments))
    mean = lambda arm, k: float(np.mean([h[k] for h in hits[arm]]))  # noqa: E731
    assert mean("gt", "place_asked") >= 0.8 and mean("gt", "colour_asked") >= 0.6, hits["gt"]
    # P1 is drawn in shots 0 and 3 alone: 2 of 5 places at most, and no character's colour beyond chance
    assert mean("frozen", "place_asked") <= 0.45 and mean("frozen", "colour_asked") <= 0.4, hits["frozen"]
