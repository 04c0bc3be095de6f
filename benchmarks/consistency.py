"""Paper Table 2 on our data (issue 6): consistency of generated videos with vs without stage-1 pretraining.

    python benchmarks/consistency.py --plan
    python benchmarks/consistency.py --resume --budget-min 9 --text-table .carry/captions.safetensors \
        --results benchmarks/results/consistency.json          # one GPU call; repeat until all done
    python benchmarks/consistency.py --scale cpu --budget-min 600 --resume --base-dir runs/ablation-cpu/base
                                                                # the reduced protocol on a CPU (shares Table 1's G)
    python benchmarks/consistency.py --tiny --out /tmp/consistency    # CPU smoke test

Two arms per seed, from the SAME init folder (the shipped frozen codec + G `default` + the proposed φ at
4x4x2, both freshly initialised from the seed, as in retrieval_ablation.py) and the same total budget in
optimizer steps:
- with pretrain:    stage 1 (retrieval) for P steps, then stage 2 (next segment) for F steps from its result;
- without pretrain: stage 2 alone for P + F steps (φ enters stage 2 randomly initialised, as in the paper).
With `base_steps` > 0 (the CPU scale) both arms start from the seed's memory-free G, as in
retrieval_ablation.py (and, with the same --base-dir and settings, the very same one).
Stage 2 keeps no retrieval batches here (--retrieval-share 0, the paper's stage 2): with the app's 0.3
the "without" arm would get retrieval training too. Caption dropout and everything else: trainer defaults.

Evaluation: procedural storyboards whose ground truth is known, generated with `PFPPipeline.generate`
(one generation seed per storyboard, the same for both arms), shots aligned to segment boundaries:
  0 "the P1, empty" | 1 "A in front of P2" | 2 "B in front of P3" | 3 "the P1, empty" | 4 "A in front of P2"
so character A leaves and re-enters after >= --min-gap s (10 by default) and the camera returns to P1
(the world starts every shot at a place from the same view), checked with `storyboard_returns`.
- Character consistency: `appearance_signature` (colour + pattern) of A in the generated re-entry shot vs
  in its first shot (`signature_agreement`), averaged over frames where A is fully in view. WHERE A is in a
  generated frame is not known; two proxies: (a) the ground-truth track box of the same storyboard rendered
  by `render_storyboard` (the world moves a character on a path fixed by (seed, identity), the same in both
  shots, so a model that remembers A can put it there, but one that draws A elsewhere scores background);
  (b) the window of the sprite's size whose pixels best match the caption's colour (prompt-driven, blind to
  the first appearance). Shape is not scored (no shape metric in the core).
- Place consistency: `view_agreement` of the generated return to P1 vs its first view, frame by frame at the
  same offsets into the shot.
References: the ground-truth render scored the same way (ceiling), and chance levels (two different
characters' ground-truth signatures; two different places' first views). Mean ± 95% interval over
storyboards (scores averaged over seeds first); with > without as paired per-storyboard differences.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import retrieval_ablation as ra  # shared: init folders, trainer calls, statistics, results files
from benchmarks.world_scoring import locate_by_colour, shot_frames, spread
from pfp_app.sampling.settings import SamplerSettings

ARMS = ("with_pretrain", "without_pretrain")
ARM_NAMES = {"with_pretrain": "Proposed (with stage-1 pretraining)", "without_pretrain": "Without pretrain"}
METRICS = (  # (key, column title)
    ("character_box", "Character colour+pattern, ground-truth box ↑"),
    ("character_located", "Character colour+pattern, located by caption colour ↑"),
    ("place", "Place view on return ↑"),
)
FIDELITY = (("character_box_fidelity", "character vs ground truth"), ("place_fidelity", "place vs ground truth"))
# prompt fidelity (fidelity.py's classifiers): the share of shots whose place is drawn as asked, and of characters
# drawn in the asked colour. Unlike FIDELITY above they do not ask for the ground truth's exact camera or path.
PROMPT_FIDELITY = (("place_asked", "place drawn as asked"), ("colour_asked", "character colour as asked"))
# arXiv 2512.23851, Table 2 (consistency, higher is better)
PAPER_TABLE2 = {"with_pretrain": {"cloth": 96.12, "identity": 70.73, "object": 89.89},
                "without_pretrain": {"cloth": 87.12, "identity": 66.99, "object": 81.13}}
SHOT_SEGMENTS_MIN = 2  # segments in a shot where a character enters (it enters during up to 1 s)


@dataclass
class Settings(ra.Settings):
    """Consistency protocol: the training fields of retrieval_ablation.Settings plus stage 2 and storyboards."""

    rate: str = "4x4x2"
    pretrain_steps: int = 800  # P
    finetune_steps: int = 800  # F; "without" trains stage 2 for P + F
    retrieval_share: float = 0.0
    storyboards: int = 16
    storyboard_seed: int = 20_000
    min_gap: float = 10.0
    gen_steps: int = 16
    g_from: str = ""  # a model folder whose trained G both arms start from (each with a fresh φ of the seed)
    recent_latents: int = 0  # stage 2 and generation: within a shot, G also sees the last k latents (v7's recipe)
    gradient_checkpointing: bool = False  # memory, not results: several runs side by side on an 80-GB GPU
    # generation: the arms' sampler settings as `FIELD=VALUE` overrides of the model's (sampling/settings.py)
    gen_sampler: tuple[str, ...] = ()

    def protocol(self) -> dict:
        base = super().protocol()
        for k in ("steps", "num_query", "eval_clips", "eval_seconds", "eval_seed", "eval_steps", "eval_queries",
                  "eval_batch"):
            base.pop(k, None)
        base["num_query"] = self.num_query
        base.update(rate=self.rate, pretrain_steps=self.pretrain_steps, finetune_steps=self.finetune_steps,
                    retrieval_share=self.retrieval_share, storyboards=self.storyboards,
                    storyboard_seed=self.storyboard_seed, min_gap=self.min_gap, gen_steps=self.gen_steps)
        if self.g_from:
            base["g_from"] = self.g_from
        if self.recent_latents:  # absent from older results files, whose runs had none
            base["recent_latents"] = self.recent_latents
        if self.gen_sampler:  # likewise
            base["gen_sampler"] = list(self.gen_sampler)
        return base


TINY = dict(ra.TINY, pretrain_steps=2, finetune_steps=2, storyboards=3, min_gap=3.0, gen_steps=2)
CPU = dict(ra.CPU, pretrain_steps=600, finetune_steps=600, storyboards=16)
# The paper's protocol in 10 minutes on one GPU: G starts memory-free (trained alone first, stage `base`, as the paper's
# base video model never read a memory), then stage 1 + stage 2 against stage 2 alone from that G. The shipped
# architecture (G `default`, φ 4x4x2, the shipped codec) at 64x64, a quarter of the tokens, so that two seeds'
# three trainings and their generations fit in 10 minutes on one GPU (benchmarks/table2_paper_gpu.sh).
# Generation with the shipped model's text guidance (3; 6 at a shot's start above 0.6) and no return mechanism:
# the question is what φ's pretraining gives G, not what the sampler adds.
PAPER = dict(size=64, base_steps=2000, pretrain_steps=500, finetune_steps=500, gen_steps=16,
             gen_sampler=("guidance_scale=3", "shot_start_guidance_scale=6", "shot_start_guidance_scale_2=1",
                          "boundary_ratio=0.6"))
SCALES = {"gpu": {}, "paper": PAPER, "cpu": CPU, "tiny": TINY}


# ---------------------------------------------------------------------------------------------- storyboards

def make_storyboard(index: int, s: Settings, segment_seconds: float):
    """Storyboard `index` (text and ground truth): shots aligned to segments, A re-entering after >= min_gap s
    and a return to P1. Returns (storyboard, truth) with truth = {A, B, P1, P2, P3, shots: [(start, end)]}."""
    import numpy as np

    from pfp_app.data.world import PLACES, ShotScene, all_characters, caption_for, storyboard_returns
    from pfp_app.film.storyboard import parse_storyboard

    rng = np.random.default_rng([s.storyboard_seed, index])
    chars = all_characters()
    a, b = (chars[i] for i in rng.choice(len(chars), 2, replace=False))
    p1, p2, p3 = (list(PLACES)[i] for i in rng.choice(len(PLACES), 3, replace=False))
    away = max(2, math.ceil(s.min_gap / segment_seconds - 1e-9))  # segments A is away (shots 2 and 3)
    lengths = [SHOT_SEGMENTS_MIN, SHOT_SEGMENTS_MIN, away - away // 2, away // 2, SHOT_SEGMENTS_MIN]
    scenes = [ShotScene((), p1), ShotScene((a,), p2), ShotScene((b,), p3), ShotScene((), p1), ShotScene((a,), p2)]
    starts = [sum(lengths[:i]) * segment_seconds for i in range(len(lengths))]
    total = sum(lengths) * segment_seconds
    text = "\n".join(f"{t:g}s: {caption_for(sc)}" for t, sc in zip(starts, scenes)) + f"\ntotal: {total:g}s"
    sb = parse_storyboard(text)
    returns = storyboard_returns(sb, min_gap=s.min_gap)
    assert any(r[0] == a.phrase and r[2] == 4 for r in returns["character_returns"]), returns
    assert any(r[0] == p1 and r[1] == 0 and r[2] == 3 for r in returns["place_returns"]), returns
    shots = [(starts[i], starts[i] + lengths[i] * segment_seconds) for i in range(len(lengths))]
    return sb, {"A": a, "B": b, "P1": p1, "P2": p2, "P3": p3, "shots": shots, "render_seed": s.storyboard_seed + index}


# ---------------------------------------------------------------------------------------------- scoring

def _mean_signature(frames, boxes):
    import numpy as np

    from pfp_app.evaluation.world_scores import appearance_signature

    return np.mean([appearance_signature(frames[i], box) for i, box in boxes], axis=0)


def score_storyboard(gen, gt, truth: dict) -> dict:
    """gen, gt: (T, H, W, 3) uint8 of the generated and ground-truth videos -> consistency scores."""
    from pfp_app.data.world import COLOURS
    from pfp_app.evaluation.world_scores import signature_agreement, view_agreement

    fps = gt.fps
    t_max = min(len(gen), gt.num_frames)
    gt_frames = gt.frames
    shots = truth["shots"]
    a, b = truth["A"].phrase, truth["B"].phrase
    out: dict[str, float | None] = {}

    def visible(phrase, shot):
        track = gt.tracks[phrase]
        return spread([i for i in shot_frames(shot, fps, t_max) if track[i, 0] >= 0.999])

    first, ret = visible(a, shots[1]), visible(a, shots[4])
    b_first = visible(b, shots[2])
    if first and ret:
        box = lambda idx: [(i, gt.tracks[a][i, 1:]) for i in idx]  # noqa: E731
        g_first, g_ret = _mean_signature(gen, box(first)), _mean_signature(gen, box(ret))
        t_first, t_ret = _mean_signature(gt_frames, box(first)), _mean_signature(gt_frames, box(ret))
        out["character_box"] = signature_agreement(g_first, g_ret)
        out["character_box_gt"] = signature_agreement(t_first, t_ret)
        out["character_box_fidelity"] = signature_agreement(g_ret, t_ret)
        side = int(round(gt.tracks[a][first[0], 3] - gt.tracks[a][first[0], 1]))
        rgb = COLOURS[truth["A"].colour]
        loc = lambda frames, idx: [(i, locate_by_colour(frames[i], rgb, side)) for i in idx]  # noqa: E731
        out["character_located"] = signature_agreement(_mean_signature(gen, loc(gen, first)),
                                                       _mean_signature(gen, loc(gen, ret)))
        out["character_located_gt"] = signature_agreement(_mean_signature(gt_frames, loc(gt_frames, first)),
                                                          _mean_signature(gt_frames, loc(gt_frames, ret)))
        if b_first:
            t_b = _mean_signature(gt_frames, [(i, gt.tracks[b][i, 1:]) for i in b_first])
            out["character_chance"] = signature_agreement(t_first, t_b)
    p_first, p_ret = shot_frames(shots[0], fps, t_max), shot_frames(shots[3], fps, t_max)
    offsets = spread(list(range(min(len(p_first), len(p_ret)))))
    if offsets:
        pairs = [(p_first[k], p_ret[k]) for k in offsets]
        out["place"] = sum(view_agreement(gen[i], gen[j]) for i, j in pairs) / len(pairs)
        out["place_gt"] = sum(view_agreement(gt_frames[i], gt_frames[j]) for i, j in pairs) / len(pairs)
        out["place_fidelity"] = sum(view_agreement(gen[j], gt_frames[j]) for _, j in pairs) / len(pairs)
        other = shot_frames(shots[2], fps, t_max)  # P3's first view: a different place
        if len(other) > max(offsets):
            out["place_chance"] = sum(view_agreement(gt_frames[p_first[k]], gt_frames[other[k]])
                                      for k in offsets) / len(offsets)
    return out


_REFERENCES: dict = {}


def prompt_fidelity(video, gt, segments) -> dict:
    """Share of shots whose place is drawn as asked, and of characters drawn in the asked colour (fidelity.py's
    per-shot classifiers; references rendered once per process). video: (T, H, W, 3) uint8."""
    from benchmarks import fidelity  # imports this module: imported here, not at the top

    key = (int(gt.frames.shape[1]), float(gt.fps))
    if key not in _REFERENCES:
        _REFERENCES[key] = fidelity.References(*key)
    shots = fidelity.score_shots(video, gt, _REFERENCES[key], segments)
    chars = [c["colour_ok"] for sh in shots for c in sh["characters"]]
    return {"place_asked": sum(sh["place_drawn"] == sh["place"] for sh in shots) / len(shots) if shots else None,
            "colour_asked": sum(chars) / len(chars) if chars else None}


def generate_and_score(pipe, index: int, s: Settings, sampler=None) -> dict:
    """Storyboard `index` generated by `pipe` (seed `index`; `sampler`, default: the model's with s.gen_steps) and
    scored: consistency, fidelity to the ground truth, prompt fidelity (and their ceilings)."""
    from benchmarks import fidelity

    from pfp_app.data.world import render_storyboard

    t0 = time.time()
    sb, truth = make_storyboard(index, s, pipe.segment_seconds)
    sampler = sampler or pipe.model.sampler.overridden(steps=s.gen_steps or None).with_text_overrides(list(s.gen_sampler))
    gen, segments = fidelity.generate(pipe, sb, index, sampler)
    v = pipe.model.video
    gt = render_storyboard(sb, size=v.height, fps=v.fps, seed=truth["render_seed"])
    scores = score_storyboard(gen, gt, truth)
    scores.update(prompt_fidelity(gen, gt, segments))
    scores.update({k + "_gt": x for k, x in prompt_fidelity(gt.frames, gt, segments).items()})
    scores["seconds"] = round(time.time() - t0, 1)
    return scores


def timing_records(results: dict, s: Settings) -> list[dict]:
    """Every trainer session so far, for retrieval_ablation.estimate_train_s."""
    return [dict(st, rate=s.rate) for r in results["runs"].values() for st in r.get("train", {}).values() if st]


def load_arm_model(model_dir: Path, s: Settings, device: str):
    import torch

    from pfp_app.model.bundle import load_model

    model = load_model(model_dir, torch_dtype=torch.float32).to(device)
    if s.text_table:  # GPU machines carry precomputed caption embeddings instead of the text encoder
        from pfp_app.train.data import use_caption_table

        use_caption_table(model, s.text_table)
    return model


# ---------------------------------------------------------------------------------------------- table

def summarise(results: dict) -> dict:
    """Per arm: mean ± CI over storyboards (seed-averaged) of every score; orderings with > without, paired."""
    per_arm: dict[str, dict[str, list[float]]] = {}
    n_sb = results["protocol"]["storyboards"]
    for arm in ARMS:
        recs = [r for r in results["runs"].values() if r["arm"] == arm and len(r.get("storyboards", {})) == n_sb]
        per_arm[arm] = {"seeds": sorted(r["seed"] for r in recs)}
        keys = {k for r in recs for sc in r["storyboards"].values() for k in sc if k != "seconds"}
        for k in keys:
            cols = []
            for i in range(n_sb):
                vals = [r["storyboards"][str(i)].get(k) for r in recs]
                vals = [v for v in vals if v is not None]
                cols.append(sum(vals) / len(vals) if vals else None)
            per_arm[arm][k] = cols
    rows = {}
    for arm in ARMS:
        rows[arm] = {"seeds": per_arm[arm]["seeds"]}
        for k, v in per_arm[arm].items():
            if k != "seeds":
                vals = [x for x in v if x is not None]
                rows[arm][k] = ra.mean_ci(vals) if vals else (None, None)
    orderings = {}
    for key, _ in METRICS:
        a, b = per_arm["with_pretrain"].get(key, []), per_arm["without_pretrain"].get(key, [])
        pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
        orderings[key] = ra.compare([x for x, _ in pairs], [y for _, y in pairs], True)
    return {"rows": rows, "orderings": orderings}


FIDELITY_NOTE = (
    "A video that draws nothing, or the same frame throughout, agrees with itself: read consistency together with "
    "fidelity. *Fidelity* compares the generated re-entry / return with the ground-truth render, camera start and "
    "path included, which nothing in the storyboard gives; *prompt fidelity* asks only what the storyboard says "
    "(`benchmarks/fidelity.py`'s classifiers over all 5 shots: the place among the 7, the characters' colours among "
    "the 8, one character per shot here; chance 1/7 and 1/8).")


def score_header() -> str:
    """The score columns of a Table 2-style table (after the row's own first columns)."""
    return (" | ".join(t for _, t in METRICS) + " | fidelity: " + " / ".join(t for _, t in FIDELITY)
            + " | prompt fidelity: " + " / ".join(t for _, t in PROMPT_FIDELITY) + " |")


def score_cells(row: dict, x100) -> str:
    """A row's score cells under score_header(); row: key -> (mean, half-width)."""
    return (" | ".join(x100(row.get(k)) for k, _ in METRICS) + " | " + " / ".join(x100(row.get(k)) for k, _ in FIDELITY)
            + " | " + " / ".join(x100(row.get(k)) for k, _ in PROMPT_FIDELITY) + " |")


def reference_cells(row: dict, x100) -> tuple[str, str]:
    """The ground truth's cells (the ceiling) and chance's, under score_header()."""
    gt = (" | ".join(x100(row.get(k + "_gt")) for k, _ in METRICS) + " | – | "
          + " / ".join(x100(row.get(k + "_gt")) for k, _ in PROMPT_FIDELITY) + " |")
    chance = (" | ".join(x100(row.get("character_chance")) for _ in range(2)) + " | " + x100(row.get("place_chance"))
              + " | – | 14.3 / 12.5 |")  # 1 of 7 places, 1 of 8 colours
    return gt, chance


def format_table(results: dict) -> str:
    summ = summarise(results)
    p = results["protocol"]
    calls = results.get("calls", [])
    devices = sorted({c.get("device", "?") for c in calls})
    note = ra.scale_note(p, devices)
    x100 = lambda mh: ra.fmt(mh[0] * 100, mh[1] * 100, 1) if mh and mh[0] is not None else "(not measured)"  # noqa: E731
    lines = ["### Table 2 (ours): consistency of generated videos, with vs without stage-1 pretraining", ""]
    if note:
        lines += [note, ""]
    size = f" at {p['size']}×{p['size']}" if p.get("size") else ""
    lines += [
        f"{ra.start_of_g(p)} + proposed φ {p['rate']} (fresh, same seed for both arms), shared frozen codec of "
        f"`{p['codec']}`{size}. With: stage 1 for {p['pretrain_steps']} steps then stage 2 for {p['finetune_steps']}; "
        f"without: stage 2 for {p['pretrain_steps'] + p['finetune_steps']} steps; batch {p['batch_size']}, lr "
        f"{p['lr']}, stage-2 retrieval share {p['retrieval_share']}, {p['num_clips']} training clips (data seed "
        f"{p['data_seed']}). {p['storyboards']} storyboards (character re-enters after ≥ {p['min_gap']:g} s, "
        f"camera returns to the first place), {p['gen_steps']} sampler steps"
        + (f" ({', '.join(p['gen_sampler'])})" if p.get("gen_sampler") else "") + ". Scores ×100, mean ± 95% interval "
        "over storyboards (averaged over seeds).",
        ra.calls_summary(calls),
        "",
        "| Method | seeds | " + score_header(),
        "|---|---|" + "---|" * (len(METRICS) + 2),
    ]
    for arm in ARMS:
        r = summ["rows"][arm]
        lines.append(f"| {ARM_NAMES[arm]} | {', '.join(map(str, r['seeds'])) or '-'} | " + score_cells(r, x100))
    ref = summ["rows"]["with_pretrain"] if summ["rows"]["with_pretrain"].get("place_gt") else summ["rows"]["without_pretrain"]
    gt, chance = reference_cells(ref, x100)
    lines += ["| *ground-truth render (ceiling)* | – | " + gt, "| *chance: a different character / place* | – | " + chance]
    lines += ["", "With > without pretrain (paired per storyboard, ×100, mean ± 95% interval):", "",
              "| score | Δ (with − without) | verdict |", "|---|---|---|"]
    for key, title in METRICS:
        o = summ["orderings"][key]
        d = ra.fmt(o["diff"] * 100, o["ci95"] * 100, 1) if o["diff"] is not None else "(not measured)"
        lines.append(f"| {title} | {d} | {o['verdict']} |")
    lines += ["", FIDELITY_NOTE]
    pw, po = PAPER_TABLE2["with_pretrain"], PAPER_TABLE2["without_pretrain"]
    lines += ["", "Paper (Table 2, their metrics on real video: cloth / identity / object consistency): with pretrain "
              f"{pw['cloth']} / {pw['identity']} / {pw['object']}, without {po['cloth']} / {po['identity']} / "
              f"{po['object']}. Ours maps cloth and identity to the character's colour+pattern signature and object "
              "to the returning place's view."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", action="store_true")
    ap.add_argument("--report", action="store_true", help="only rewrite the table from the results JSON")
    ap.add_argument("--scale", choices=tuple(SCALES), default="gpu",
                    help="gpu: G from a trained model (default); paper: a memory-free G first, at 64x64 (one GPU "
                         "call); cpu: shrunk to hours on a 2-core CPU; tiny: smoke test")
    ap.add_argument("--tiny", action="store_true", help="the same as --scale tiny")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--arms", default=",".join(ARMS),
                    help="arms this call trains and scores (default both; one each lets two calls run side by side)")
    ap.add_argument("--pretrain-steps", type=int, default=None)
    ap.add_argument("--finetune-steps", type=int, default=None)
    ap.add_argument("--storyboards", type=int, default=None)
    ap.add_argument("--retrieval-share", type=float, default=None, help="stage-2 share of retrieval batches (default 0)")
    ap.add_argument("--gen-steps", type=int, default=None, help="sampler steps per segment (default 16)")
    ap.add_argument("--gen-sampler", action="append", default=None, metavar="FIELD=VALUE",
                    help="generation: any sampler setting over the model's (sampling/settings.py), repeatable")
    ap.add_argument("--budget-min", type=float, default=9.0)
    ap.add_argument("--out", default=None, help="run folders (default runs/consistency[-tiny])")
    ap.add_argument("--results", default=None, help="results JSON (default OUT/results.json); table beside it")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--text-table", default=None)
    ap.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)  # Table 1's; unused here
    ap.add_argument("--eval-clips", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--base-steps", type=int, default=None, help="steps of the memory-free G per seed (0: none)")
    ap.add_argument("--g-from", default=None, help="start both arms' G from this model folder's trained G (a fresh "
                    "φ per seed): fidelity well above chance within a short budget; the paper starts from Wan")
    ap.add_argument("--recent-latents", type=int, default=None, help="stage 2 and generation: within a shot, G also "
                    "sees the history's last K latents at full resolution (the shipped model's recipe; default 0)")
    ap.add_argument("--gradient-checkpointing", action="store_true", default=None,
                    help="trade speed for GPU memory (several runs side by side on an 80-GB GPU); not in the protocol")
    ap.add_argument("--latent-cache", default=None, help="encoded training clips (default OUT/latents)")
    ap.add_argument("--base-dir", default=None, help="memory-free Gs (default OUT/base); share Table 1's with "
                                                     "its OUT/base")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--num-clips", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--in-process", action="store_true")
    return ap.parse_args(argv)


def stages(arm: str, s: Settings) -> list[tuple[str, str, int]]:
    """(stage, folder name, max_steps) in order; each stage starts from the previous one's model."""
    if arm == "with_pretrain":
        return [("pretrain", "stage1", s.pretrain_steps), ("finetune", "stage2", s.finetune_steps)]
    return [("finetune", "stage2", s.pretrain_steps + s.finetune_steps)]


def main(argv=None) -> int:
    args = parse_args(argv)
    t_call = time.time()
    deadline = t_call + args.budget_min * 60
    s = ra.settings_from_args(args, Settings, SCALES, extra=("pretrain_steps", "finetune_steps", "storyboards",
                                                             "retrieval_share", "gen_steps", "g_from",
                                                             "recent_latents", "gradient_checkpointing"))
    if args.gen_sampler is not None:
        s.gen_sampler = tuple(args.gen_sampler)
    SamplerSettings().with_text_overrides(list(s.gen_sampler))  # a bad override stops here, before any training
    if s.g_from and s.base_steps:
        raise SystemExit("--g-from and --base-steps both say where G starts: give one")
    out = ra.default_out(args, "consistency")
    s.latent_cache = s.latent_cache or str(out / "latents")
    results_path = Path(args.results) if args.results else out / "results.json"
    seeds = [int(x) for x in args.seeds.split(",")]
    if args.report:  # the table of an existing results file, whatever its protocol
        print(write_tables(json.loads(results_path.read_text()), results_path, out))
        return 0
    results = ra.load_results(results_path, "consistency", s.protocol(), args.resume or args.plan,
                              Settings().protocol())
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or any(a not in ARMS for a in arms):
        raise SystemExit(f"--arms: choose from {', '.join(ARMS)} (got {args.arms!r})")
    jobs = [(seed, arm) for seed in seeds for arm in ARMS if arm in arms]

    if args.plan:
        print(f"{len(jobs)} arms; per seed: with = stage 1 {s.pretrain_steps} + stage 2 {s.finetune_steps} steps, "
              f"without = stage 2 {s.pretrain_steps + s.finetune_steps} steps; then {s.storyboards} storyboards each")
        for seed, arm in jobs:
            rec = results["runs"].get(f"{arm}_s{seed}", {})
            done = len(rec.get("storyboards", {}))
            est = sum(ra.estimate_train_s(timing_records(results, s), s.rate, s.batch_size, n)
                      for _, _, n in stages(arm, s))
            print(f"  {arm}_s{seed}: trained={bool(rec.get('trained'))}, storyboards {done}/{s.storyboards}, "
                  f"training ~{est / 60:.1f} min (H100 guess)")
        return 0

    device = ra.default_device() if args.device == "auto" else args.device
    call = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": ra.device_name() if device == "cuda" else "cpu", "budget_min": args.budget_min,
            "argv": sys.argv[1:] if argv is None else list(argv)}
    results["calls"].append(call)

    def checkpoint() -> None:  # rewritten after every step of work: a call killed at its limit keeps it
        call["wall_s"] = round(time.time() - t_call, 1)
        ra.save_json(results_path, results)

    reserve = 5 if s.tiny else 60
    for seed, arm in jobs:
        rid = f"{arm}_s{seed}"
        rec = results["runs"].setdefault(rid, {"arm": arm, "seed": seed, "storyboards": {}})
        base = out / f"s{seed}"
        final = base / arm / stages(arm, s)[-1][1]
        if len(rec["storyboards"]) < s.storyboards and (not rec.get("trained") or not (final / "model").exists()):
            rec["trained"] = False

            def train_stage(src: Path, run_dir: Path, stage: str, steps: int, name: str) -> bool:
                """One trainer session within what is left of the call; True once `run_dir` is trained."""
                if ra.is_trained(run_dir, steps):
                    return True
                st = ra.train_state(run_dir)
                left = deadline - time.time() - reserve
                est = ra.estimate_train_s(timing_records(results, s), s.rate, s.batch_size,
                                          steps - (st["step"] if st else 0))
                if left < reserve or (not s.tiny and args.budget_min * 60 - reserve > est > left):
                    print(f"  {rid}/{name}: needs ~{est / 60:.1f} min, {left / 60:.1f} left: next call", flush=True)
                    return False
                print(f"  training {rid}/{name} ({stage}, {steps} steps)", flush=True)
                t0 = time.time()
                st = ra.run_training(src, run_dir, stage, s, seed, max(left / 60, 0.1), steps,
                                     retrieval_share=s.retrieval_share,
                                     recent_latents=s.recent_latents if stage == "finetune" else 0,
                                     gradient_checkpointing=s.gradient_checkpointing)
                rec.setdefault("train", {})[name] = dict(st or {}, wall_s_this_call=round(time.time() - t0, 1))
                checkpoint()
                return ra.is_trained(run_dir, steps)

            g = ra.base_run_dir(s, out, seed) if s.base_steps else None  # both arms' memory-free G
            if g is None or train_stage(ra.base_init_folder(s, out, seed), g, ra.BASE, s.base_steps, "base"):
                src = ra.build_init_folder(base / "init", s, "proposed", s.rate, seed, f"consistency-s{seed}",
                                           transformer_from=g / "model" if g else (Path(s.g_from) if s.g_from else None))
                for stage, name, steps in stages(arm, s):
                    if not train_stage(src, base / arm / name, stage, steps, name):
                        break
                    src = base / arm / name / "model"
            rec["trained"] = ra.is_trained(final, stages(arm, s)[-1][2])
            checkpoint()
            if not rec["trained"]:
                break  # arms in order: the next call continues here
        if len(rec["storyboards"]) < s.storyboards:
            from pfp_app.sampling.pipeline import PFPPipeline

            model = load_arm_model(final / "model", s, device)
            pipe = PFPPipeline(model, device=device)
            per = max([v.get("seconds", 0) for v in rec["storyboards"].values()] + [5.0 if s.tiny else 30.0])
            for i in range(s.storyboards):
                if str(i) in rec["storyboards"]:
                    continue
                if time.time() + per > deadline:
                    break
                print(f"  generating {rid}: storyboard {i + 1}/{s.storyboards}", flush=True)
                rec["storyboards"][str(i)] = generate_and_score(pipe, i, s)
                per = max(per, rec["storyboards"][str(i)]["seconds"])
                checkpoint()
            del model, pipe
        if len(rec["storyboards"]) < s.storyboards:
            break
    checkpoint()
    table = write_tables(results, results_path, out)
    print(table)
    todo = [f"{a}_s{sd}" for sd, a in jobs
            if len(results["runs"].get(f"{a}_s{sd}", {}).get("storyboards", {})) < s.storyboards]
    print(f"results: {results_path}"
          + (f"; still to do: {', '.join(todo)} (rerun with --resume)" if todo else "; all done"))
    return 0


def write_tables(results: dict, results_path: Path, out: Path) -> str:
    return ra.write_tables(results, results_path, out, format_table)


if __name__ == "__main__":
    sys.exit(main())
