"""Is the drift the generated history's fault, or G's at a return? Each return of the drift storyboard drawn from
the true history.

    python benchmarks/return_from_truth.py --out benchmarks/results/return_from_truth_cpu_v7.json   # 2-core CPU
    python benchmarks/return_from_truth.py --tiny --out /tmp/rft.json                                # smoke test

`fidelity.py`'s drift storyboard (60 s; the same character at the same place every 12 s, other places between)
finds the shipped model's returns far from their first appearance (4th return: place view distance 0.96 against
the ground truth's 0.18), already at the first return (0.94). Two causes would look alike there: the film's own
generated history drifting away from what G was trained on (true clips), or G not drawing a place as the memory
holds it at a shot start, whatever the history. This draws every return shot (both of its segments, with the
shipped sampler) after the ground-truth render's own history, encoded by the codec, as the app continues a
creator's footage; the rest of the video is the ground truth. It is scored as `fidelity.drift_scores` scores the
film (place view, place colours and the character against their first appearance, here the true one), with the
memory and with φ's tokens × 0 (paired, per return), beside the ground truth's own return (the ceiling) and,
with `--films K`, the whole generated film of the first K storyboards (the drift measure itself).

If the returns drawn from the true history come back close to the first appearance, the drift comes from the
generated history; if they stay as far as in the film, G does not read the place from its memory at a return.
Each return is drawn as a new shot after footage, so a model that gives a return its earlier shot's frames or
memory guidance (`return_latents`, `return_memory_guidance_scale`) cannot be measured here: it is refused.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.fidelity import drift_scores, drift_storyboard, generate
from benchmarks.return_consistency import zeroed_memory

from pfp_app.data.world import clip_to_item, render_storyboard
from pfp_app.film.footage import encode_frames
from pfp_app.evaluation.metrics import mean_and_ci95
from pfp_app.film.storyboard import parse_storyboard
from pfp_app.io.video import tensor_to_frames

MEASURES = ("place", "place_colour", "character")


def history_latents_before(frame: int, temporal: int) -> int:
    """How many latent frames lie wholly before pixel frame `frame` >= 1 (latent 0 is frame 0, latent j >= 1
    frames temporal*(j-1)+1 .. temporal*j): the history a shot starting at that frame continues."""
    if frame < 1:
        raise ValueError("a return starts after the first frame")
    return 1 + (frame - 1) // temporal


def return_from_history(pipe, latents: torch.Tensor, gt, shot, seed: int, sampler=None) -> np.ndarray:
    """The ground truth's video with return shot `shot` (a Shot of gt.storyboard) drawn by the pipeline after the
    true history before it: (T, H, W, 3) uint8, the ground truth outside that shot."""
    from pfp_app.film.timeline import TimeGrid

    fps, temporal = gt.fps, TimeGrid.of(pipe.model, after_footage=True).temporal_ratio
    first = int(round(float(shot.start) * fps))
    k = history_latents_before(first, temporal)
    footage_frames = 1 + temporal * (k - 1)  # the frames those latents decode to: the shot is drawn after them
    seconds = float(shot.end) - footage_frames / fps
    sb = parse_storyboard(f"0s: {shot.prompt}\nend: {seconds:g}s\n")
    results = pipe.generate(sb, seed, sampler, footage=latents[:, :, :k])
    drawn = tensor_to_frames(torch.cat([r.frames for r in results], dim=1))
    video = gt.frames.copy()
    end = min(footage_frames + len(drawn), len(video))
    video[footage_frames:end] = drawn[: end - footage_frames]
    return video


def run(args) -> dict:
    from pfp_app.model.bundle import build_random_model, load_model
    from pfp_app.sampling.pipeline import PFPPipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = (build_random_model("tiny") if args.tiny else load_model(args.model)).to(device)
    if args.text_table:
        from pfp_app.train.data import use_caption_table

        use_caption_table(model, args.text_table)
    v = model.sampler
    if v.return_latents or v.return_memory_guidance_scale or v.return_keyframes:
        # each return is drawn as a new shot after footage: the pipeline sees no earlier shot with its prompt
        raise SystemExit(f"{args.model} gives a return frames, keyframes or guidance (return_latents {v.return_latents}, "
                         f"return_keyframes {v.return_keyframes}, return_memory_guidance_scale "
                         f"{v.return_memory_guidance_scale:g}), which this benchmark cannot give (it draws each return "
                         "after footage, with no earlier shot); judge it by fidelity.py's drift and return_consistency.py")
    pipe = PFPPipeline(model, device=device)
    size, fps = model.video.height, model.video.fps
    sampler = model.sampler.overridden(steps=args.steps)
    res = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": torch.cuda.get_device_name() if device == "cuda" else f"{platform.machine()} CPU",
                    "argv": sys.argv[1:], "model": args.model, "storyboards": args.storyboards,
                    "seconds": args.seconds, "period": args.period, "films": args.films,
                    "sampler_settings": sampler.to_record()},
           "returns": []}
    t_start = time.time()
    for i in range(args.storyboards):
        t0 = time.time()
        seed = args.seed + i
        sb, ch, place = drift_storyboard(args.seconds, args.period, seed)
        gt = render_storyboard(sb, size, fps, seed=seed + 999)
        latents = encode_frames(pipe, clip_to_item(gt)["frames"])  # (1, C, T', H', W'), causal in time
        returns = [s for s, sc in zip(sb.shots, gt.scenes)
                   if sc is not None and sc.place == place and ch in sc.characters][1:]
        film = None
        if i < args.films:  # the whole film, as fidelity.py's drift measure draws it
            video, _ = generate(pipe, sb, seed + 999, sampler)
            film = drift_scores(video, gt, ch, place)
        for r, shot in enumerate(returns, start=1):
            s = seed * 100 + r
            rec = {"storyboard": i, "return": r, "at_s": float(shot.start)}
            with_memory = drift_scores(return_from_history(pipe, latents, gt, shot, s, sampler), gt, ch, place)[r - 1]
            with zeroed_memory(model):
                zeroed = drift_scores(return_from_history(pipe, latents, gt, shot, s, sampler), gt, ch, place)[r - 1]
            for m in MEASURES:
                rec[f"{m}_memory"] = with_memory[f"{m}_gen"]
                rec[f"{m}_zeroed"] = zeroed[f"{m}_gen"]
                rec[f"{m}_truth"] = with_memory[f"{m}_gt"]
                if film is not None:
                    rec[f"{m}_film"] = film[r - 1][f"{m}_gen"]
            res["returns"].append(rec)
        print(f"  storyboard {i + 1}/{args.storyboards}: {time.time() - t0:.0f} s", flush=True)
        _save(args.out, res)
    res["meta"]["total_s"] = round(time.time() - t_start, 1)
    _save(args.out, res)
    return res


def summarise(res: dict) -> dict:
    """Per measure and source: mean ± 95% interval over returns; the paired memory - zeroed difference."""
    rows = res["returns"]
    out = {}
    for m in MEASURES:
        d = {src: _mean_ci([r[f"{m}_{src}"] for r in rows if f"{m}_{src}" in r])
             for src in ("memory", "zeroed", "truth", "film")}
        d["delta"] = mean_and_ci95([r[f"{m}_memory"] - r[f"{m}_zeroed"] for r in rows])
        d["n"] = len(rows)
        out[m] = d
    return out


def _mean_ci(xs: list[float]) -> tuple[float, float]:
    return mean_and_ci95(xs) if xs else (float("nan"), float("nan"))


def _fmt(mc) -> str:
    mean, ci = mc
    return "–" if mean != mean else f"{mean:.3f} ± {ci:.3f}"


def format_table(res: dict) -> str:
    s, meta = summarise(res), res["meta"]
    films = sum(1 for r in res["returns"] if "place_film" in r)
    head = (f"Returns of {meta['storyboards']} drift storyboards ({meta['seconds']:g} s, the same character and place "
            f"every {meta['period']:g} s), each return shot drawn after the ground truth's own history; distance "
            f"from the first appearance (0 = identical; mean ± 95% interval over {len(res['returns'])} returns); "
            f"{meta['machine']}, {meta.get('total_s', 0):.0f} s.\n\nCommand: `python benchmarks/return_from_truth.py "
            f"{' '.join(meta['argv'])}`\n\n")
    lines = ["| measure | true history, memory | true history, φ zeroed | Δ (paired) | ground truth | "
             f"generated film ({films} returns) |", "|---|---|---|---|---|---|"]
    names = {"place": "place view", "place_colour": "place colours", "character": "character"}
    for m in MEASURES:
        d = s[m]
        lines.append(f"| {names[m]} | {_fmt(d['memory'])} | {_fmt(d['zeroed'])} | {_fmt(d['delta'])} | "
                     f"{_fmt(d['truth'])} | {_fmt(d['film'])} |")
    by_return = ["", "By return (mean over storyboards; true history, memory / φ zeroed):", "",
                 "| return | at | " + " | ".join(names[m] for m in MEASURES) + " |", "|---|---|" + "---|" * len(MEASURES)]
    for r in sorted({row["return"] for row in res["returns"]}):
        rows = [row for row in res["returns"] if row["return"] == r]
        cells = [f"{np.mean([x[f'{m}_memory'] for x in rows]):.2f} / {np.mean([x[f'{m}_zeroed'] for x in rows]):.2f}"
                 for m in MEASURES]
        by_return.append(f"| {r} | {rows[0]['at_s']:g} s | " + " | ".join(cells) + " |")
    return head + "\n".join(lines + by_return) + "\n"


def _save(out: str, res: dict) -> None:
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(res, indent=1))
    if res["returns"]:
        p.with_suffix(".md").write_text(format_table(res))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--storyboards", type=int, default=6, help="drift storyboards (seeds seed, seed+1, ...)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--period", type=float, default=12.0)
    ap.add_argument("--films", type=int, default=1, help="also generate the whole film of the first K storyboards")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-table", default=None, help="precomputed caption embeddings (a GPU machine has no MiniLM)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model, 1 short storyboard (smoke test)")
    ap.add_argument("--report", action="store_true", help="only rewrite the table from --out")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.tiny:
        args.storyboards, args.seconds, args.period, args.films, args.steps = 1, 12.0, 6.0, 1, 2
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        res = json.loads(Path(args.out).read_text())
    else:
        res = run(args)
    table = format_table(res)
    Path(args.out).with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
