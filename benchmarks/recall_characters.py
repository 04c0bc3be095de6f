"""Does φ's memory hold the characters? Recall frames of held-out world clips from memory and read the characters
in them (colour + pattern signature in the true box), against φ zeroed and the codec's own reconstruction.

    python benchmarks/recall_characters.py --out benchmarks/results/recall_characters_cpu_v7.json  # 2-core CPU
    python benchmarks/recall_characters.py --tiny --out /tmp/rc.json                              # smoke test

`return_loss.py` found that stage 2's loss in a returning character's box falls only a little with the memory
(v7: −4.0%, against −2.8% for a character the memory cannot know). That leaves two explanations: φ does not keep
the characters (4×4×2 pools a 20-px sprite into one or two tokens), or it keeps them and G does not use them at a
shot start. This separates them with the stage-1 task itself (frame retrieval, as the inspector recalls): for each
held-out clip, φ(the whole clip); frames where a character is in view are recalled from pure noise (no caption,
the model's sampler steps, unguided), decoded, and the character's signature in its true box is compared with the
true frame's (`world_scores.appearance_signature` / `signature_agreement`, 1 = same). Beside it: the same recall with
φ's tokens × 0 (what G draws from nothing), the codec's reconstruction (the ceiling), a different character of the
same clip set (chance), and the place's view agreement (what φ is known to keep). Mean ± 95% interval over frames.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import retrieval_ablation as ra
from benchmarks import return_loss as rl  # the same held-out clips and latent cache

from pfp_app.model.memory_dit import MemoryTokens
from pfp_app.evaluation.world_scores import appearance_signature, signature_agreement, view_agreement
from pfp_app.sampling.flow import sample


def query_frames(tracks: dict, num_latents: int, temporal: int, per_clip: int) -> list[tuple[int, list[str]]]:
    """Up to `per_clip` latent frames j >= 1, spread over the clip, whose last pixel frame (temporal * j) shows at
    least one character whole (visible >= 0.95): [(j, phrases in view)]."""
    candidates = []
    for j in range(1, num_latents):
        f = temporal * j
        inview = [p for p, tr in tracks.items() if f < len(tr) and tr[f, 0] >= 0.95 and tr[f, 3] - tr[f, 1] >= 8]
        if inview:
            candidates.append((j, inview))
    if len(candidates) <= per_clip:
        return candidates
    pick = np.linspace(0, len(candidates) - 1, per_clip).round().astype(int)
    return [candidates[i] for i in sorted(set(pick.tolist()))]


def to_uint8(frame: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return frame.float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def recall_frames(model, latents: torch.Tensor, js: list[int], steps: int, seed: int, zero: bool) -> torch.Tensor:
    """latents (C, T', H', W') of one clip -> the last pixel frame of each recalled latent j, (len(js), 3, H, W):
    φ(all latents), the pairs (j - 1, j) recalled from noise at their own times without a caption."""
    memory = model.memory_encoder(latents[None])
    if zero:
        memory = MemoryTokens(memory.tokens * 0, memory.coords)
    omega = sorted({k for j in js for k in (j - 1, j)})
    settings = model.sampler.for_recall(steps, memory_guidance_scale=0.0)
    shape = (1, latents.shape[0], len(omega), *latents.shape[2:])
    got = sample(model.velocity, shape, model.null_text(1).to(latents.device), memory,
                 torch.tensor(omega, dtype=torch.float32, device=latents.device), settings,
                 torch.Generator().manual_seed(seed), device=latents.device)
    pos = {k: i for i, k in enumerate(omega)}
    pairs = torch.cat([got[:, :, [pos[j - 1], pos[j]]] for j in js])  # (Q, C, 2, H', W')
    return model.codec.decode(pairs)[:, :, -1]


def main(argv=None) -> int:
    from pfp_app.model.bundle import build_random_model, load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="assets/pfp-default")
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--per-clip", type=int, default=3, help="recalled frames per clip")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--latent-cache", default="runs/return_loss_latents")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    t_start = time.time()
    model = build_random_model("tiny", seed=0) if args.tiny else load_model(args.model, torch_dtype=torch.float32)
    clips, seconds = (3, 12.0) if args.tiny else (args.clips, 20.0)  # return_loss.py's clips
    v, codec = model.video, model.codec
    steps = args.steps or model.sampler.steps
    renders, latents, _ = rl.heldout_clips(model, clips, seconds, args.latent_cache)  # return_loss.py's clips
    r = codec.temporal_ratio
    rows, chance_pool = [], []
    for i in range(clips):
        clip = renders[i]
        queries = query_frames(clip.tracks, latents.shape[2], r, args.per_clip)
        if not queries:
            continue
        js = [j for j, _ in queries]
        recalled = {arm: recall_frames(model, latents[i], js, steps, seed=i, zero=arm == "zeroed")
                    for arm in ("memory", "zeroed")}
        recalled["codec"] = codec.decode(torch.stack([latents[i][:, [j - 1, j]] for j in js]))[:, :, -1]
        for q, (j, phrases) in enumerate(queries):
            truth = clip.frames[r * j]
            for phrase in phrases:
                box = clip.tracks[phrase][r * j]
                sig = appearance_signature(truth, box)
                row = {"clip": i, "j": j, "character": phrase, "truth_sig": sig.tolist()}
                for arm, frames in recalled.items():
                    got = to_uint8(frames[q])
                    row[arm] = signature_agreement(appearance_signature(got, box), sig)
                    row[f"{arm}_view"] = view_agreement(got, truth)
                rows.append(row)
                chance_pool.append((i, phrase, sig))
        print(f"clip {i + 1}/{clips}: {len(rows)} characters recalled", flush=True)
    # chance: a character's true signature against another clip's different character
    rng = np.random.default_rng(0)
    for row in rows:
        others = [s for (c, ph, s) in chance_pool if c != row["clip"] and ph != row["character"]]
        row["chance"] = signature_agreement(np.array(row["truth_sig"]), others[int(rng.integers(len(others)))]) \
            if others else None
        del row["truth_sig"]
    summary = {k: ra.mean_ci([row[k] for row in rows if row.get(k) is not None])
               for k in ("memory", "zeroed", "codec", "chance", "memory_view", "zeroed_view", "codec_view")}
    summary["memory_minus_zeroed"] = ra.mean_ci([row["memory"] - row["zeroed"] for row in rows])
    res = {"meta": {"model": "tiny (random)" if args.tiny else args.model, "clips": clips, "steps": steps,
                    "frames": len(rows), "date": datetime.date.today().isoformat(), "wall_s": time.time() - t_start},
           "summary": summary, "rows": rows}
    out = Path(args.out)
    ra.save_json(out, res)
    f = lambda k: f"{100 * summary[k][0]:.1f} ± {100 * summary[k][1]:.1f}"  # noqa: E731
    table = "\n".join([
        f"### Characters in frames recalled from memory: `{res['meta']['model']}`", "",
        f"{clips} held-out world clips (seeds {rl.CLIP_SEED}+), {len(rows)} characters in {steps}-step unguided recalls "
        f"of frames with a character in view; 2-core CPU, {res['meta']['date']}, {res['meta']['wall_s']:.0f} s. "
        "Agreement ×100 with the true frame, mean ± 95% interval.", "",
        "| | character signature in its true box | place view (whole frame) |", "|---|---|---|",
        f"| recalled from φ's memory | {f('memory')} | {f('memory_view')} |",
        f"| recalled with φ zeroed | {f('zeroed')} | {f('zeroed_view')} |",
        f"| codec reconstruction (ceiling) | {f('codec')} | {f('codec_view')} |",
        f"| chance: another clip's character | {f('chance')} | – |",
        f"| memory − zeroed, paired | {f('memory_minus_zeroed')} | – |"])
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
