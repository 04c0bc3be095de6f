"""Does G use its memory where a character comes back? Stage 2's own loss at shot starts, with φ vs φ zeroed.

    python benchmarks/return_loss.py --out benchmarks/results/return_loss_cpu_v7.json     # 2-core CPU, ~15 min
    python benchmarks/return_loss.py --tiny --out /tmp/rl.json                              # smoke test
    python benchmarks/return_loss.py --write-captions .carry/rl_captions.safetensors       # for a GPU machine:
    python benchmarks/return_loss.py --text-table .carry/rl_captions.safetensors --out ...  # (no MiniLM there)

`return_consistency.py` measures what the sampler draws (the shipped v7 draws a returning character *less* like its
first appearance with the memory than with φ zeroed). This asks the question one level down, at the training
objective, where no sampler setting interferes: for held-out world clips, at every shot start the app would
generate, the flow-matching loss of the shot's first segment (what stage 2 minimises) with φ(history) and with φ's
tokens multiplied by 0, with the same noise and t (paired), over the whole segment and inside the box of the
characters the shot brings in. Shot starts are of two kinds:

* **return**: a character comes back that is in the clip earlier but not in the shot before (`train.data.
  character_returns_at`, what `train --return-share` draws more of): the memory holds how it looked;
* **new**: every other shot start after the first; a new character's box has nothing to recall.

If the memory lowers the loss in a returning character's box clearly more than in a new character's box, G already
reads the character from φ and the failure is the sampler's; if not, G has not learned to, and the training
(`--return-share`) is where to look. Δ = memory − zeroed, mean ± 95% t interval over shot starts (paired).

With `--return-frames K` it asks instead whether G reads the frames the app gives at a return (`train --repeat-share
--return-frames`): at every shot start whose prompt repeats an earlier shot's (`train.data.repeated_shot_start`),
the loss with φ's memory plus the first K latents of the repeated shot, placed just before the segment as the
trainer and the exported model place them, against φ's memory alone (same noise and t).

In both modes t is fixed at four quantiles of the trainer's t distribution (logit-normal, shift 3), one noise draw
each.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

from benchmarks import retrieval_ablation as ra  # statistics, results files

from pfp_app.model.memory_dit import MemoryTokens, history_recent_tokens, join_memory
from pfp_app.data.world import parse_caption, sample_clip
from pfp_app.sampling.flow import NUM_TRAIN_TIMESTEPS, add_noise
from pfp_app.film.storyboard import format_storyboard
from pfp_app.train.data import (
    cached_latents, character_returns_at, encode_clips, latent_prompts, module_fingerprint, repeated_shot_start)

T_QUANTILES = (0.125, 0.375, 0.625, 0.875)  # of the standard normal behind the trainer's logit-normal t
CLIP_SEED = 90000  # held out: training uses data seeds < 20, evaluation 10000+, fidelity 50000+, Table 2 20000+


def train_t_quantiles(shift: float = 3.0) -> torch.Tensor:
    """t at fixed quantiles of `flow.sample_train_t`'s distribution (shifted logit-normal): (K,)."""
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(T_QUANTILES))
    u = torch.sigmoid(z)
    return shift * u / (1 + (shift - 1) * u)


def latent_box_mask(tracks: dict, phrases: list[str], s: int, n: int, temporal: int, spatial: int,
                    hw: tuple[int, int]) -> torch.Tensor:
    """(n, h, w) bool: latent cells covered by any of the characters' boxes in the pixel frames of latents
    s .. s+n-1 (latent 0 is frame 0, latent j >= 1 frames temporal*(j-1)+1 .. temporal*j)."""
    h, w = hw
    mask = torch.zeros(n, h, w, dtype=torch.bool)
    for k in range(n):
        j = s + k
        frames = [0] if j == 0 else range(temporal * (j - 1) + 1, temporal * j + 1)
        for phrase in phrases:
            track = tracks[phrase]
            for f in frames:
                if f >= len(track) or track[f, 0] <= 0:
                    continue
                x0, y0, x1, y1 = track[f, 1:]
                mask[k, int(y0) // spatial : -(-int(y1) // spatial), int(x0) // spatial : -(-int(x1) // spatial)] = True
    return mask


def shot_starts(prompts: list[str], n: int) -> list[tuple[int, str, list[str]]]:
    """(s, kind, phrases of the characters the shot brings in) for every shot start s > 0 whose segment lies in
    one shot; kind 'return' or 'new' (see the module docstring)."""
    out = []
    for s in range(1, len(prompts) - n + 1):
        if prompts[s] == prompts[s - 1] or len(set(prompts[s : s + n])) != 1:
            continue
        scene, prev = parse_caption(prompts[s]), parse_caption(prompts[s - 1])
        if scene is None:
            continue
        before = set(prev.characters) if prev is not None else set()
        incoming = [c for c in scene.characters if c not in before]
        kind = "return" if character_returns_at(prompts, s) else "new"
        if kind == "return":  # only the characters that come back, not a new companion beside them
            earlier = {c for p in dict.fromkeys(prompts[: s - 1]) if (sc := parse_caption(p)) for c in sc.characters}
            incoming = [c for c in incoming if c in earlier]
        out.append((s, kind, [c.phrase for c in incoming]))
    return out


@torch.no_grad()
def losses_at(model, latents: torch.Tensor, prompt: str, s: int, n: int, mask: torch.Tensor, ts: torch.Tensor,
              gen: torch.Generator, text_encoder=None, return_frames: int = 0, opening: int | None = None) -> dict:
    """Flow loss of latents[:, s:s+n] given φ(latents[:, :s]) and given φ's tokens × 0, paired (same noise, t):
    {'memory': (whole, box), 'zeroed': (whole, box)}; box None when the mask is empty. With `return_frames` K and
    `opening` (the repeated shot's first latent) the second arm is instead 'frame': φ's memory plus latents
    opening .. opening+K-1 (clamped to the history) at times s-K .. s-1, as the trainer places them. Runs where
    `latents` are; the noise is drawn on the CPU (`gen`), so a GPU and the CPU see the same noise."""
    k, device = len(ts), latents.device
    ts, mask = ts.to(device), mask.to(device)
    x0 = latents[None, :, s : s + n].expand(k, -1, -1, -1, -1)  # (K, C, n, h, w)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    x_t = add_noise(x0, noise, ts)
    text = (text_encoder or model.text_encoder).encode([prompt] * k).to(device)
    history = latents[None, :, :s]  # (1, C, s, h, w)
    memory = model.memory_encoder(history)
    memory = MemoryTokens(memory.tokens.expand(k, -1, -1), memory.coords)
    if return_frames:
        ref = history_recent_tokens(model.transformer, history, return_frames, end=opening + return_frames, at=s)
        other = ("frame", join_memory(memory, MemoryTokens(ref.tokens.expand(k, -1, -1), ref.coords)))
    else:
        other = ("zeroed", MemoryTokens(memory.tokens * 0, memory.coords))
    positions = torch.arange(s, s + n, dtype=torch.float32, device=device)
    out = {}
    for arm, mem in (("memory", memory), other):
        v = model.velocity(x_t, ts * NUM_TRAIN_TIMESTEPS, text, mem, positions)
        err = (v.float() - (noise - x0)).pow(2).mean(dim=1)  # (K, n, h, w): over channels
        box = err[:, mask].mean().item() if mask.any() else None
        out[arm] = (err.mean().item(), box)
    return out


def place_returns_at(prompts: list[str], s: int) -> bool:
    """Whether the shot starting at latent s is at a place seen earlier in the clip but not in the shot before."""
    scene, prev = parse_caption(prompts[s]), parse_caption(prompts[s - 1])
    if scene is None or (prev is not None and prev.place == scene.place):
        return False
    return any((sc := parse_caption(p)) is not None and sc.place == scene.place for p in dict.fromkeys(prompts[:s]))


def summarise(items: list[dict], bucket_s: float = 20.0, arms: tuple[str, str] = ("memory", "zeroed")) -> dict:
    """Paired rows per kind (whole segment, incoming box), Δ = arms[0] − arms[1]; for clips longer than `bucket_s`,
    also the place returns' whole segment per history length (does the memory still help a place come back after a
    long history?)."""
    a, b = arms
    kinds = list(dict.fromkeys(it["kind"] for it in items if it["kind"] not in ("return", "new")))
    groups = [(f"{kind}/{where}", [it for it in items if it["kind"] == kind], i)
              for kind in ("return", "new", *kinds) for where, i in (("segment", 0), ("box", 1))]
    if items and max(it["history_s"] for it in items) > bucket_s:
        top = int(max(it["history_s"] for it in items) // bucket_s) + 1
        groups += [(f"place return, history {k * bucket_s:g}-{(k + 1) * bucket_s:g} s/segment",
                    [it for it in items if it["place_return"] and k * bucket_s <= it["history_s"] < (k + 1) * bucket_s], 0)
                   for k in range(top)]
    rows = {}
    for key, sel, i in groups:
        pairs = [(it[a][i], it[b][i]) for it in sel if it[a][i] is not None]
        if len(pairs) < 2:
            continue
        with_, without = zip(*pairs)
        rows[key] = {"n": len(pairs), a: ra.mean_ci(with_), b: ra.mean_ci(without),
                     "delta": ra.mean_ci([x - y for x, y in pairs]),
                     "relative": ra.mean_ci([(x - y) / y for x, y in pairs if y > 0])}
    return rows


ARM_NAMES = {"memory": "loss with memory", "zeroed": "loss, φ zeroed",
             "frame": "loss, memory + the repeated shot's opening"}


def format_table(res: dict) -> str:
    m = res["meta"]
    a, b = m.get("arms", ("memory", "zeroed"))
    title = ("with its memory vs φ zeroed" if a == "memory" else
             f"the repeated shot's first {m['return_frames']} latent(s) given vs not (φ's memory in both)")
    lines = [f"### Stage-2 loss at shot starts: `{m['model']}` {title}",
             "", f"{m['clips']} held-out world clips of {m['seconds']:g} s (seeds {CLIP_SEED}+), every "
             f"{'shot start after the first' if a == 'memory' else 'shot start that repeats an earlier shot'}; "
             f"t at 4 quantiles of the trainer's distribution; {m['device']}, {m['date']}, "
             f"{m['wall_s']:.0f} s. Loss ×100, mean ± 95% interval; Δ = {a} − {b}, paired.", "",
             f"| shot start | where | n | {ARM_NAMES[a]} | {ARM_NAMES[b]} | Δ | Δ relative |", "|---|---|---|---|---|---|---|"]
    for key, r in res["summary"].items():
        kind, where = key.rsplit("/", 1)
        where = "whole segment" if where == "segment" else "the incoming characters' box"
        f = lambda mc: f"{100 * mc[0]:.2f} ± {100 * mc[1]:.2f}"  # noqa: E731
        lines.append(f"| {kind} | {where} | {r['n']} | {f(r[a])} | {f(r[b])} | {f(r['delta'])} | "
                     f"{100 * r['relative'][0]:+.1f}% ± {100 * r['relative'][1]:.1f} |")
    return "\n".join(lines)


def heldout_clips(model, clips: int, seconds: float, cache_dir: str):
    """The held-out world clips (seeds CLIP_SEED+) rendered at the model's size, and their latents from the
    model's codec (encoded once per codec into `cache_dir`, shared with recall_characters.py):
    ({i: WorldClip}, latents (N, C, T', H', W') on the CPU, storyboard texts)."""
    v, codec = model.video, model.codec
    renders = {i: sample_clip(CLIP_SEED + i, seconds, v.height, v.fps) for i in range(clips)}

    def build():
        frames = torch.stack([torch.from_numpy(renders[i].frames).permute(3, 0, 1, 2) for i in range(clips)])
        sbs = [format_storyboard(renders[i].storyboard) for i in range(clips)]
        return encode_clips(codec, frames, sbs, v.fps).latents, sbs

    key = {"codec": module_fingerprint(codec.vae), "clips": clips, "seconds": seconds, "seed": CLIP_SEED,
           "size": v.height, "fps": v.fps}
    latents, storyboards = cached_latents(cache_dir, key, build)
    return renders, latents, storyboards


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="assets/pfp-default")
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--tiny", action="store_true", help="the test-sized random model, 4 clips of 12 s")
    p.add_argument("--latent-cache", default="runs/return_loss_latents")
    p.add_argument("--out", help="results JSON; the table is written beside it (.md)")
    p.add_argument("--device", default="auto", help="auto (cuda if there is one), cpu or cuda")
    p.add_argument("--text-table", help="precomputed caption embeddings (from --write-captions) instead of MiniLM")
    p.add_argument("--write-captions", metavar="PATH", help="only encode the clips' captions into PATH and stop")
    p.add_argument("--return-frames", type=int, default=0, metavar="K",
                   help="only shot starts that repeat an earlier shot's prompt: memory + that shot's first K latents "
                        "vs memory alone (does G read what `train --return-frames K` gives it?)")
    args = p.parse_args(argv)
    if args.return_frames < 0:
        p.error("--return-frames must be >= 0")
    if not args.out and not args.write_captions:
        p.error("--out is required (or --write-captions)")
    return args


def main(argv=None) -> int:
    from pfp_app.model.bundle import build_random_model, load_model

    args = parse_args(argv)
    t_start = time.time()
    torch.manual_seed(0)
    clips, seconds = (4, 12.0) if args.tiny else (args.clips, args.seconds)
    if args.write_captions:
        from pfp_app.train.data import save_caption_table

        captions = sorted({shot.prompt for i in range(clips)
                           for shot in sample_clip(CLIP_SEED + i, seconds, 16, 8).storyboard.shots})
        print(f"{save_caption_table(args.write_captions, captions)} captions -> {args.write_captions}")
        return 0
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model = build_random_model("tiny", seed=0) if args.tiny else load_model(args.model, torch_dtype=torch.float32)
    text_encoder = None
    if args.text_table:
        from pfp_app.model.text_encoder import PrecomputedTextEncoder
        from pfp_app.train.data import caption_table_from_file

        text_encoder = PrecomputedTextEncoder(caption_table_from_file(args.text_table))
    model.to(device)
    v, codec = model.video, model.codec
    renders, latents, storyboards = heldout_clips(model, clips, seconds, args.latent_cache)
    latents = latents.to(device)
    n, ts, gen = v.segment_latent_frames, train_t_quantiles(), torch.Generator().manual_seed(0)
    items = []
    for i in range(clips):
        clip = renders[i]  # tracks for the boxes
        prompts = latent_prompts(storyboards[i], latents.shape[2], v.fps, codec.temporal_ratio)
        for s, kind, phrases in shot_starts(prompts, n):
            opening = repeated_shot_start(prompts, s)
            if args.return_frames and opening is None:
                continue
            mask = latent_box_mask(clip.tracks, phrases, s, n, codec.temporal_ratio, codec.spatial_ratio,
                                   tuple(latents.shape[3:]))
            rec = losses_at(model, latents[i], prompts[s], s, n, mask, ts, gen, text_encoder, args.return_frames,
                            opening)
            items.append({"clip": i, "s": s, "kind": "repeat" if args.return_frames else kind, "characters": phrases,
                          **rec, "history_s": (1 + codec.temporal_ratio * (s - 1)) / v.fps,
                          "place_return": place_returns_at(prompts, s), "opening": opening})
        print(f"clip {i + 1}/{clips}: {len(items)} shot starts", flush=True)
    arms = ("frame", "memory") if args.return_frames else ("memory", "zeroed")
    res = {"meta": {"model": "tiny (random)" if args.tiny else args.model, "clips": clips, "seconds": seconds,
                    "device": device if device == "cpu" else torch.cuda.get_device_name(),
                    "date": datetime.date.today().isoformat(), "wall_s": time.time() - t_start,
                    "t": ts.tolist(), "return_frames": args.return_frames, "arms": arms},
           "items": items, "summary": summarise(items, arms=arms)}
    out = Path(args.out)
    ra.save_json(out, res)
    table = format_table(res)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
