"""Continuing from footage (issue 14): the seam at the join, consistency with the footage, recall of footage frames.

    python benchmarks/footage.py --out benchmarks/results/footage_cpu.json                  # the full protocol
    python benchmarks/footage.py --steps 8 --cases 16 --world-clips 4 --out ...             # the 2-core CPU run
    python benchmarks/footage.py --model tiny-random --steps 1 --cases 2 --world-clips 1 --real-clips 0 --out /tmp/f.json

1. Seam (--world-clips world renders + the held-out real clips of Debian's opencv-doc, when installed): the
   footage (its last --footage-seconds, prepared exactly as `generate --from` prepares it) is encoded once and
   continued by 2 generated segments. d(t) = mean |frame t+1 - frame t| (0..255) over the film as exported (the
   footage's prepared pixels, then the decoded segments). Seam score = d at the join / the mean of d within the
   footage and within the generated segments (1.0 = no seam). Beside it: the same for the joins between two
   generated segments, and the join when the first segment is decoded WITHOUT the footage's last latents as the
   causal decoder's warm-up (what a join by pixels alone would look like).
2. Consistency with the footage (--cases procedural storyboards, ground truth known): the footage is a world
   render of "A in front of P" (4.1 s); the storyboard goes on with "B in front of Q" (one segment), then
   "A in front of P" (--return-segments, 2 by default). Each storyboard is generated twice with the same seeds: with the footage
   in memory (`generate(footage=...)`) and without (no history). The film scored is the footage followed by
   the generated part in both arms; benchmarks/consistency.py's `score_storyboard` scores A's re-entry against
   A in the footage (colour+pattern signature in the ground-truth box, and located by caption colour) and the
   return to P against the footage's view of P; fidelity (return vs the ground-truth render) and chance (a
   different character / place) beside them. Paired differences with − without, mean ± 95% interval.
3. Recall of footage frames after the generated part: from φ(footage + generated latents) alone, two footage
   frames per case, PSNR vs the true frame, beside the footage's mean frame (the baseline recall must beat).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import consistency as cs  # scoring functions of Table 2
from benchmarks import retrieval_ablation as ra  # mean ± interval, paired comparison, fmt, save_json
from benchmarks.world_scoring import shot_frames

REAL_CLIPS = [Path("/usr/share/doc/opencv-doc/examples/data") / f"{n}.avi" for n in ("Megamind", "Megamind_bugy", "tree", "vtest")]
REAL_PROMPT = "the gravel path, empty"  # the default model knows only its world's vocabulary
CONSISTENCY_FOOTAGE_LATENTS = 9  # 1 + 4 * 8 = 33 frames = 4.125 s at 8 fps


def frame_changes(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T - 1,) mean absolute change between consecutive frames (0..255)."""
    f = frames.astype(np.float32)
    return np.abs(f[1:] - f[:-1]).mean(axis=(1, 2, 3))


def seam_scores(footage: np.ndarray, segments: list[np.ndarray]) -> dict:
    """Seam at the footage/generated join and at generated/generated joins, each over the within-part mean."""
    film = np.concatenate([footage, *segments])
    d = frame_changes(film)
    joins = np.cumsum([len(footage)] + [len(s) for s in segments])[:-1] - 1  # index of the pair across each join
    within_f = d[: len(footage) - 1]
    gen_pairs = [i for i in range(len(footage), len(d)) if i not in set(joins)]
    within_g = d[gen_pairs]
    within = (within_f.mean() + within_g.mean()) / 2
    out = {"join_change": float(d[joins[0]]), "within_footage": float(within_f.mean()),
           "within_generated": float(within_g.mean()), "seam": float(d[joins[0]] / max(within, 1e-6))}
    if len(joins) > 1:
        out["seam_generated_joins"] = float(np.mean(d[joins[1:]]) / max(within_g.mean(), 1e-6))
    return out


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    from pfp_app.io.video import tensor_to_frames

    return tensor_to_frames(frames)


def seam_case(pipe, footage, prompt: str, steps: int, seed: int) -> dict:
    seg_s = pipe.segment_seconds
    t0 = time.time()
    res = pipe.generate(f"0s: {prompt}\nend: {2 * seg_s:g}s", seed, pipe.model.sampler.overridden(steps=steps),
                        footage=footage.latents)
    foot = to_uint8(footage.frames)
    out = seam_scores(foot, [to_uint8(r.frames) for r in res])
    with torch.no_grad():  # the first segment decoded alone: no warm-up on the footage's last latents
        cold = pipe.model.codec.decode(res[0].latents.to(pipe.device))[0].cpu()
    out["seam_without_warmup"] = seam_scores(foot, [to_uint8(cold), to_uint8(res[1].frames)])["seam"]
    out["seconds"] = round(time.time() - t0, 1)
    return out


def consistency_case(pipe, index: int, steps: int, storyboard_seed: int, ret: int = 2) -> dict:
    """Footage 'A in front of P', then 'B in front of Q', then 'A in front of P': with vs without the footage."""
    from pfp_app.data.world import PLACES, ShotScene, all_characters, caption_for, render_storyboard
    from pfp_app.film.footage import footage_from_frames
    from pfp_app.film.storyboard import parse_storyboard

    v, codec = pipe.model.video, pipe.model.codec
    t0 = time.time()
    rng = np.random.default_rng([storyboard_seed, index])
    chars = all_characters()
    a, b = (chars[i] for i in rng.choice(len(chars), 2, replace=False))
    p, q = (list(PLACES)[i] for i in rng.choice(len(PLACES), 2, replace=False))
    seg = pipe.segment_seconds
    n_foot = codec.pixel_frames(CONSISTENCY_FOOTAGE_LATENTS)
    t_f = n_foot / v.fps  # the storyboard starts here on the film's time line
    cap_a, cap_b = caption_for(ShotScene((a,), p)), caption_for(ShotScene((b,), q))
    whole = parse_storyboard(f"0s: {cap_a}\n{t_f:g}s: {cap_b}\n{t_f + seg:g}s: {cap_a}\ntotal: {t_f + (1 + ret) * seg:g}s")
    gt = render_storyboard(whole, size=v.height, fps=v.fps, seed=storyboard_seed + index)
    footage = footage_from_frames(pipe, gt.frames[:n_foot], f"world-{index}")
    assert footage.num_frames == n_foot
    story = f"0s: {cap_b}\n{seg:g}s: {cap_a}\ntotal: {(1 + ret) * seg:g}s"  # times count from the footage's end
    sampler = pipe.model.sampler.overridden(steps=steps)
    foot = to_uint8(footage.frames)
    end = t_f + (1 + ret) * seg
    shots = [(0.0, t_f), (0.0, t_f), (t_f, t_f + seg), (t_f + seg, end), (t_f + seg, end)]
    truth = {"A": a, "B": b, "shots": shots}
    out = {"A": a.phrase, "B": b.phrase, "P": p, "Q": q}
    for arm, prefix in (("with", footage.latents), ("without", None)):
        res = pipe.generate(story, index, sampler, footage=prefix)
        gen = np.concatenate([to_uint8(r.frames) for r in res])
        if prefix is None:  # without a history the first segment has r - 1 frames fewer: align on the time line
            gen = np.concatenate([np.repeat(gen[:1], codec.temporal_ratio - 1, axis=0), gen])
        film = np.concatenate([foot, gen])
        scores = cs.score_storyboard(film, gt, truth)
        if "place_chance" not in scores:  # the Q shot is shorter than the spread of offsets score_storyboard uses
            p_first, other = shot_frames(shots[0], v.fps, gt.num_frames), shot_frames(shots[2], v.fps, gt.num_frames)
            from pfp_app.evaluation.world_scores import view_agreement

            k = list(range(min(len(p_first), len(other))))
            scores["place_chance"] = float(np.mean([view_agreement(gt.frames[p_first[i]], gt.frames[other[i]]) for i in k]))
        out[arm] = scores
        if prefix is not None:
            history = torch.cat([footage.latents] + [r.latents.cpu() for r in res], dim=2)
            rec = []
            for frac in (1 / 3, 2 / 3):
                idx = int(round(frac * (n_foot - 1)))
                r = pipe.recall(history, idx, truth_frames=footage.frames, steps=steps, seed=index)
                rec.append({"frame": idx, "psnr": r.psnr, "footage_mean_psnr": r.baseline_psnr})
            out["recall"] = rec
    out["seconds"] = round(time.time() - t0, 1)
    return out


# ---------------------------------------------------------------------------------------------- table

def _mc(values, scale=1.0, digits=2) -> str:
    vals = [x * scale for x in values if x is not None and math.isfinite(x)]
    if not vals:
        return "(not measured)"
    m, h = ra.mean_ci(vals) if len(vals) > 1 else (vals[0], math.inf)
    return ra.fmt(m, h, digits)


def format_table(results: dict) -> str:
    p = results["protocol"]
    seams = list(results["seam"].values())
    cases = [c for c in results["consistency"].values()]
    lines = [f"### Continuing from footage: model `{p['model']}`, {p['steps']} sampler steps, {p['device']}", "",
             f"Command: `{p['command']}`", "",
             f"**Seam** ({len(seams)} clips: {sum(s['kind'] == 'world' for s in seams)} world renders, "
             f"{sum(s['kind'] == 'real' for s in seams)} real; footage = the last {p['footage_seconds']:g} s, then 2 "
             "segments). Mean change across the join / mean change within footage and generated segments "
             "(1.0 = no seam), mean ± 95% interval over clips:", "",
             "| clips | footage→generated | generated→generated | footage→generated, decoded without warm-up | "
             "change at the join | within footage | within generated |", "|---|---|---|---|---|---|---|"]
    for kind in ("world", "real", "all"):
        sel = [s for s in seams if kind == "all" or s["kind"] == kind]
        if not sel:
            continue
        lines.append(f"| {kind} ({len(sel)}) | {_mc([s['seam'] for s in sel])} | "
                     f"{_mc([s.get('seam_generated_joins') for s in sel])} | {_mc([s['seam_without_warmup'] for s in sel])} | "
                     f"{_mc([s['join_change'] for s in sel], digits=1)} | {_mc([s['within_footage'] for s in sel], digits=1)} | "
                     f"{_mc([s['within_generated'] for s in sel], digits=1)} |")
    if cases:
        lines += ["", f"**Consistency with the footage** ({len(cases)} storyboards; scores ×100, mean ± 95% interval):",
                  "", "| arm | " + " | ".join(t for _, t in cs.METRICS) + " | fidelity: "
                  + " / ".join(t for _, t in cs.FIDELITY) + " |", "|---|" + "---|" * len(cs.METRICS) + "---|"]
        for arm, name in (("with", "footage in memory"), ("without", "same storyboard, no footage")):
            lines.append(f"| {name} | " + " | ".join(_mc([c[arm].get(k) for c in cases], 100, 1) for k, _ in cs.METRICS)
                         + " | " + " / ".join(_mc([c[arm].get(k) for c in cases], 100, 1) for k, _ in cs.FIDELITY) + " |")
        ref = [c["with"] for c in cases]
        lines.append("| *ground-truth render (ceiling)* | " + " | ".join(_mc([r.get(k + "_gt") for r in ref], 100, 1)
                                                                         for k, _ in cs.METRICS) + " | – |")
        lines.append("| *chance: a different character / place* | " + _mc([r.get("character_chance") for r in ref], 100, 1)
                     + " | " + _mc([r.get("character_chance") for r in ref], 100, 1) + " | "
                     + _mc([r.get("place_chance") for r in ref], 100, 1) + " | – |")
        lines += ["", "With − without (paired per storyboard, ×100):", "", "| score | Δ | verdict |", "|---|---|---|"]
        for key, title in list(cs.METRICS) + list(cs.FIDELITY):
            pairs = [(c["with"].get(key), c["without"].get(key)) for c in cases]
            pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
            o = ra.compare([x for x, _ in pairs], [y for _, y in pairs], True)
            d = ra.fmt(o["diff"] * 100, o["ci95"] * 100, 1) if o["diff"] is not None else "(not measured)"
            lines.append(f"| {title} | {d} | {o['verdict']} |")
        rec = [r for c in cases for r in c.get("recall", [])]
        lines += ["", f"**Recall of footage frames** after the generated part, from φ(footage + {1 + p.get('return_segments', 2)} generated segments) "
                      f"alone ({len(rec)} frames, {len(cases)} storyboards): PSNR {_mc([r['psnr'] for r in rec])} dB vs "
                      f"the footage's mean frame {_mc([r['footage_mean_psnr'] for r in rec])} dB; paired difference "
                      f"{_mc([r['psnr'] - r['footage_mean_psnr'] for r in rec])} dB."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    ap.add_argument("--world-clips", type=int, default=6)
    ap.add_argument("--real-clips", type=int, default=len(REAL_CLIPS), help="how many of the opencv-doc clips (if installed)")
    ap.add_argument("--footage-seconds", type=float, default=4.0)
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--return-segments", type=int, default=2, help="segments of the shot where A returns")
    ap.add_argument("--storyboard-seed", type=int, default=30_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/footage.json")
    ap.add_argument("--report", action="store_true", help="only print the table of --out (and --merge)")
    ap.add_argument("--merge", nargs="*", default=[], help="with --report: results files of other calls (e.g. other "
                                                            "--first-case ranges run side by side) to add to --out's")
    ap.add_argument("--first-case", type=int, default=0, help="consistency cases --first-case .. --cases - 1")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.report:
        results = json.loads(out.read_text())
        for other in args.merge:
            more = json.loads(Path(other).read_text())
            if any(more["protocol"][k] != results["protocol"][k] for k in ("model", "steps", "return_segments")):
                raise SystemExit(f"{other}: another protocol than {out}")
            for part in ("seam", "consistency"):
                results[part].update(more[part])
        table = format_table(results)
        out.with_suffix(".md").write_text(table)
        print(table)
        return 0
    torch.set_num_threads(args.threads)
    from pfp_app.data.world import sample_clip
    from pfp_app.film.footage import footage_from_frames, video_tail
    from pfp_app.model.bundle import load_model
    from pfp_app.sampling.pipeline import PFPPipeline

    model = load_model(args.model)
    pipe = PFPPipeline(model.to("cpu"))
    v = model.video
    steps = args.steps or model.sampler.steps
    protocol = {"model": args.model, "steps": steps, "return_segments": args.return_segments, "device": "2-core CPU" if not torch.cuda.is_available() else "cuda",
                "footage_seconds": args.footage_seconds, "storyboard_seed": args.storyboard_seed,
                "command": "python benchmarks/footage.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    results = json.loads(out.read_text()) if out.is_file() else {}
    if any(results.get("protocol", {}).get(k) != protocol[k] for k in ("steps", "model", "return_segments")):
        results = {"seam": {}, "consistency": {}}
    results["protocol"] = protocol
    n_frames = int(args.footage_seconds * v.fps) + 1
    clips = [("world", f"world-{i}") for i in range(args.world_clips)]
    clips += [("real", str(p)) for p in REAL_CLIPS[: args.real_clips] if p.is_file()]
    for i, (kind, name) in enumerate(clips):
        if name in results["seam"]:
            continue
        if kind == "world":
            wc = sample_clip(args.storyboard_seed + 100 + i, seconds=20.0, size=v.height, fps=v.fps)
            footage = footage_from_frames(pipe, wc.frames[-n_frames:], name)
            prompt = wc.storyboard.shots[-1].prompt  # the shot the footage ends in goes on
        else:
            frames = video_tail(pipe, Path(name), cv_duration(name), args.footage_seconds)
            footage = footage_from_frames(pipe, to_uint8(frames), Path(name).name)
            prompt = REAL_PROMPT
        results["seam"][name] = dict(seam_case(pipe, footage, prompt, steps, seed=i), kind=kind)
        print(f"seam {name}: {results['seam'][name]}", flush=True)
        ra.save_json(out, results)
    for i in range(args.first_case, args.cases):
        if str(i) in results["consistency"]:
            continue
        results["consistency"][str(i)] = consistency_case(pipe, i, steps, args.storyboard_seed, args.return_segments)
        c = results["consistency"][str(i)]
        print(f"case {i}: {c['seconds']} s, with {c['with'].get('character_box')} without {c['without'].get('character_box')}",
              flush=True)
        ra.save_json(out, results)
    table = format_table(results)
    out.with_suffix(".md").write_text(table)
    print(table)
    return 0


def cv_duration(path: str) -> float:
    from pfp_app.io.video import video_info

    return video_info(path).duration


if __name__ == "__main__":
    sys.exit(main())
