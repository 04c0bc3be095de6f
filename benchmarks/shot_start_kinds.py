"""How often stage 2's training clips bring something back at a shot start (the shares behind `train
--return-share` and `--repeat-share`).

    python benchmarks/shot_start_kinds.py                # 1024 training clips of 20 s, a few seconds on a CPU

Over the storyboards of the trainer's world clips (`--num-clips`, `--data-seed`; captions only, nothing rendered), at
every latent frame s > 0 where the caption changes: the share where a character comes back after an absence
(`train.data.character_returns_at`), where the place comes back (seen earlier in the clip, not in the shot
before), and where the shot repeats an earlier shot's prompt exactly (`train.data.repeated_shot_start`: the app's
return).
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.return_loss import place_returns_at

from pfp_app.data.world import WorldClipDataset, clip_storyboard
from pfp_app.film.storyboard import format_storyboard
from pfp_app.train.data import character_returns_at, latent_prompts, repeated_shot_start


def count_kinds(num_clips: int, data_seed: int, seconds: float = 20.0, fps: float = 8.0, temporal: int = 4) -> dict:
    """Shot starts (s > 0) of the trainer's `num_clips` world clips and how many are of each kind."""
    num_latents = 1 + int(np.ceil(seconds * fps / temporal))
    counts = {"shot_starts": 0, "character_return": 0, "place_return": 0, "prompt_repeat": 0}
    data = WorldClipDataset(num_clips, seconds, fps=fps, seed=data_seed)
    for i in range(num_clips):
        sb = clip_storyboard(data.clip_seed(i), seconds)
        prompts = latent_prompts(format_storyboard(sb), num_latents, fps, temporal)
        for s in range(1, num_latents):
            if prompts[s] == prompts[s - 1]:
                continue
            counts["shot_starts"] += 1
            counts["character_return"] += character_returns_at(prompts, s)
            counts["place_return"] += place_returns_at(prompts, s)
            counts["prompt_repeat"] += repeated_shot_start(prompts, s) is not None
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-clips", type=int, default=1024)
    ap.add_argument("--data-seed", type=int, default=10, help="train --data-seed (10: benchmarks/returns_gpu.sh's)")
    args = ap.parse_args(argv)
    c = count_kinds(args.num_clips, args.data_seed)
    n = c["shot_starts"]
    print(f"{args.num_clips} world clips of 20 s (data seed {args.data_seed}): {n} shot starts after the first frame")
    print("| kind | shot starts | share |\n|---|---|---|")
    for k in ("character_return", "place_return", "prompt_repeat"):
        print(f"| {k.replace('_', ' ')} | {c[k]} | {100 * c[k] / n:.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
