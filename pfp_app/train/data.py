"""Training data: clips (procedural storyboard world or a folder of real videos) -> latent clips.

Memory training runs on latents: clips are rendered or decoded once, encoded by the frozen codec
once, and kept on the device with, for every latent frame, the prompt of the shot it belongs to.
Under `accelerate`, each process builds only its own shard (clip i goes to rank i % world_size).
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
import torch

from ..model.codec import WanLatentCodec
from ..data.world import WorldClipDataset
from ..film.storyboard import parse_storyboard


def clip_dataset(source: str, num_clips: int, seconds: float, size: int, fps: int, seed: int):
    """'world' -> procedural clips; 'bank:DIR' -> the real-footage bank (photo motion and real clips, no
    captions); 'A+B' -> items alternate between the sources; anything else is a folder of videos (with
    optional caption files)."""
    parts = [p for p in source.split("+") if p]
    if len(parts) > 1:
        per = -(-num_clips // len(parts))
        return MixedClipDataset([clip_dataset(p, per, seconds, size, fps, seed) for p in parts], num_clips)
    if source == "world":
        return WorldClipDataset(num_clips, seconds=seconds, size=size, fps=fps, seed=seed)
    if source.startswith("bank:"):
        from ..data.bank import BankClipDataset

        return BankClipDataset(source[len("bank:"):], num_clips, seconds=seconds, size=size, fps=fps, seed=seed)
    from ..data.video_folder import VideoFolderDataset

    return VideoFolderDataset(source, seconds=seconds, size=(size, size), fps=fps, seed=seed, num_items=num_clips)


class MixedClipDataset(torch.utils.data.Dataset):
    """Items taken in turn from several datasets: item i is part i % k's item i // k."""

    def __init__(self, parts: list, num_clips: int):
        self.parts, self.num_clips = parts, num_clips

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, i: int) -> dict:
        k = len(self.parts)
        return self.parts[i % k][i // k]


def _one_thread_worker() -> None:
    torch.set_num_threads(1)  # N rendering processes on N cores; never in the training process itself


def _load_item(args):
    dataset, i = args
    item = dataset[i]
    return item["frames"].mul(127.5).add(127.5).round().clamp(0, 255).to(torch.uint8), item["storyboard"]


def load_clips(dataset, indices: list[int], workers: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Frames (N, 3, T, H, W) uint8 and storyboard texts of the given dataset items (parallel if workers)."""
    jobs = [(dataset, i) for i in indices]
    if workers > 1:
        # spawn, not fork: forking a process whose OpenMP pool is running can deadlock
        with get_context("spawn").Pool(workers, initializer=_one_thread_worker) as pool:
            results = pool.map(_load_item, jobs, chunksize=4)
    else:
        results = [_load_item(j) for j in jobs]
    return torch.stack([r[0] for r in results]), [r[1] for r in results]


def latent_prompts(storyboard_text: str, num_latents: int, fps: float, temporal_ratio: int) -> list[str]:
    """The prompt of the shot active at each latent frame's first pixel frame ('' without a storyboard)."""
    if not storyboard_text.strip():
        return [""] * num_latents
    sb = parse_storyboard(storyboard_text)
    first_frames = [0] + [1 + temporal_ratio * (j - 1) for j in range(1, num_latents)]
    return [sb.prompt_at(f / fps) for f in first_frames]


@dataclass
class LatentClips:
    latents: torch.Tensor  # (N, C, T', H', W') normalised, on the training device
    prompts: list[list[str]]  # (N, T') the active prompt of every latent frame
    frames: torch.Tensor | None = None  # (N, 3, T, H, W) uint8 on CPU, kept for evaluation

    def __len__(self) -> int:
        return self.latents.shape[0]


@torch.no_grad()
def encode_clips(codec: WanLatentCodec, frames_u8: torch.Tensor, storyboards: list[str], fps: float,
                 batch_size: int = 8, keep_frames: bool = False) -> LatentClips:
    """Encode uint8 clips (N, 3, T, H, W) with the frozen codec, in batches, on the codec's device."""
    parts = []
    for i in range(0, len(frames_u8), batch_size):
        x = frames_u8[i : i + batch_size].to(codec.device).float().div(127.5).sub(1.0)
        with torch.autocast(codec.device.type, dtype=torch.bfloat16, enabled=codec.device.type == "cuda"):
            parts.append(codec.encode(x).float())
    latents = torch.cat(parts)
    return latent_clips(latents, storyboards, fps, codec.temporal_ratio, frames_u8 if keep_frames else None)


def latent_clips(latents: torch.Tensor, storyboards: list[str], fps: float, temporal_ratio: int,
                 frames_u8: torch.Tensor | None = None) -> LatentClips:
    """Latents (N, C, T', H', W') and their storyboards -> LatentClips with every latent frame's prompt."""
    prompts = [latent_prompts(s, latents.shape[2], fps, temporal_ratio) for s in storyboards]
    return LatentClips(latents, prompts, frames_u8)


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a module's config and weights: two codecs with the same fingerprint encode alike."""
    import hashlib
    import json

    config = {k: v for k, v in dict(getattr(module, "config", {})).items() if not k.startswith("_")}  # not its path
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def source_fingerprint(source: str) -> str:
    """'world' as is; a video folder by its files' names, sizes and modification times (an edited folder
    is a new data source)."""
    import hashlib
    from pathlib import Path

    if "+" in source:
        return "+".join(source_fingerprint(p) for p in source.split("+") if p)
    if source == "world":
        return source
    if source.startswith("bank:"):
        manifest = Path(source[len("bank:"):]) / "bank.json"
        return f"bank:{hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else source}"
    root = Path(source).resolve()
    files = sorted((str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f in root.rglob("*") if f.is_file())
    return f"{root}:{hashlib.sha256(repr(files).encode()).hexdigest()}"


def cached_latents(cache_dir: str, key: dict, build) -> tuple[torch.Tensor, list[str]]:
    """(latents, storyboards) from `cache_dir` if a file for exactly this `key` is there, else `build()`
    and store it. Encoding the clips is the slowest part of a short run (8 s per 20-s clip at 128x128 on
    a 2-core CPU, about a minute per run on an H100), and runs that share data and codec (the ablation
    benchmarks) would otherwise all pay it again."""
    import hashlib
    import json
    from pathlib import Path

    from safetensors import safe_open
    from safetensors.torch import save_file

    key_text = json.dumps(key, sort_keys=True)
    path = Path(cache_dir) / f"latents-{hashlib.sha256(key_text.encode()).hexdigest()[:20]}.safetensors"
    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
                if meta.get("key") == key_text:
                    return f.get_tensor("latents"), json.loads(meta["storyboards"])
        except Exception:  # noqa: BLE001  a damaged or foreign file (safetensors raises its own error type):
            pass  # rebuilt and replaced below
    latents, storyboards = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"latents": latents.detach().to("cpu", torch.float32).contiguous()}, str(tmp),
              metadata={"key": key_text, "storyboards": json.dumps(storyboards)})
    tmp.replace(path)  # atomic: a killed run never leaves half a cache file
    return latents, storyboards


def shard_indices(num_clips: int, rank: int, world_size: int, offset: int = 0) -> list[int]:
    return [offset + i for i in range(num_clips) if i % world_size == rank]


def random_windows(frames_u8: torch.Tensor, length: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of random `length`-frame windows (B, 3, length, H, W) in [-1, 1] for codec training."""
    n, _, t = frames_u8.shape[:3]
    clips = torch.randint(0, n, (batch,), generator=generator)
    starts = torch.randint(0, t - length + 1, (batch,), generator=generator)
    out = torch.stack([frames_u8[c, :, s : s + length] for c, s in zip(clips.tolist(), starts.tolist())])
    return out.float().div(127.5).sub(1.0)


def caption_table_from_file(path: str) -> dict[str, torch.Tensor]:
    """Load precomputed caption embeddings: safetensors with 'emb' (sum L_i, D), 'lengths' (N,) and the
    captions in its metadata (json list), padded back to (max_tokens, D) each."""
    import json

    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
        emb, lengths = f.get_tensor("emb").float(), f.get_tensor("lengths").tolist()
    captions, max_tokens = json.loads(meta["captions"]), int(meta["max_tokens"])
    table, at = {}, 0
    for cap, n in zip(captions, lengths):
        padded = torch.zeros(max_tokens, emb.shape[1])
        padded[:n] = emb[at : at + n]
        table[cap], at = padded, at + n
    return table


def use_caption_table(model, path: str) -> None:
    """Make `model` encode prompts from the precomputed caption embeddings in `path` (a GPU machine carries
    them instead of the text encoder); a prompt not in the table is a KeyError, not zeros."""
    from ..model.text_encoder import PrecomputedTextEncoder

    model._text_encoder = PrecomputedTextEncoder(caption_table_from_file(path))


def save_caption_table(path: str, captions: list[str], max_tokens: int = 32) -> int:
    """Encode captions with the shipped MiniLM encoder and store only their real tokens (fp16)."""
    import json

    from safetensors.torch import save_file

    from ..model.text_encoder import MiniLMTextEncoder

    enc = MiniLMTextEncoder(max_tokens=max_tokens)
    embs, lengths = [], []
    for i in range(0, len(captions), 64):
        chunk = captions[i : i + 64]
        e = enc.encode(chunk)  # (B, L, D), zeros past each caption
        for row in e:
            n = int((row.abs().sum(-1) > 0).sum())
            embs.append(row[:n].half())
            lengths.append(n)
    save_file({"emb": torch.cat(embs), "lengths": torch.tensor(lengths)}, path,
              metadata={"captions": json.dumps(captions), "max_tokens": str(max_tokens)})
    return len(captions)


def restrict_storyboard(text: str, allowed: set[str]) -> str:
    """Replace captions missing from a precomputed table by their one-character form (the world's
    pairs always include a 'companion'; dropping it keeps the scene's main character and place)."""
    from ..data.world import ShotScene, caption_for, parse_caption
    from ..film.storyboard import Shot, Storyboard, format_storyboard

    sb = parse_storyboard(text)
    shots = []
    for shot in sb.shots:
        prompt = shot.prompt
        if prompt not in allowed:
            scene = parse_caption(prompt)
            if scene is not None and scene.characters:
                prompt = caption_for(ShotScene(scene.characters[:1], scene.place))
        shots.append(Shot(shot.start, shot.end, prompt))
    return format_storyboard(Storyboard(tuple(shots), sb.duration))


def np_seed(*keys: int) -> int:
    return int(np.random.default_rng(list(keys)).integers(0, 2**31 - 1))


def repeated_shot_start(prompts: list[str], s: int) -> int | None:
    """For a shot starting at latent s whose prompt repeats an earlier shot's (prompts: every latent frame's
    caption), the first latent of the latest such earlier shot, as the app finds it (`pipeline`: the shot of the
    last earlier segment with the same prompt); None when s starts no shot or repeats none."""
    p = prompts[s]
    if s == 0 or p == prompts[s - 1] or p not in prompts[:s]:
        return None
    j = max(k for k in range(s) if prompts[k] == p)
    while j > 0 and prompts[j - 1] == p:
        j -= 1
    return j


def character_returns_at(prompts: list[str], s: int) -> bool:
    """Whether the shot whose first latent frame is s asks for a character that appears earlier in the clip but
    not in the shot just before it (prompts: every latent frame's caption; world captions only)."""
    from ..data.world import parse_caption

    scene = parse_caption(prompts[s]) if s > 0 else None
    if scene is None or not scene.characters:
        return False
    previous = prompts[s - 1]
    before = set()
    for p in dict.fromkeys(prompts[:s]):  # each earlier caption once
        sc = parse_caption(p) if p != previous else None
        before.update(sc.characters if sc is not None else ())
    prev_scene = parse_caption(previous)
    just_before = set(prev_scene.characters) if prev_scene is not None else set()
    return any(c in before and c not in just_before for c in scene.characters)


class ShotAlignedStarts:
    """Where the app starts a segment, per training clip: stage 2 draws its splits here.

    The app never lets a segment cross a cut (`timeline.shot_aligned_schedule`): every shot starts a new
    segment with the shot's prompt, and the memory holds everything before it. A split drawn uniformly over a
    20-s world clip is a shot start (or the first segment) only 11% of the time, and in 33% the segment runs
    across a cut while its prompt is the old shot's: G learned to follow the memory and not the text where the
    text matters most, at a cut (v5: the asked place drawn in 33% of shots). These batches hold only segments
    the app can ask for, and a `cut_share` of them start a shot.

    A batch shares one split s (histories must be the same length), so s is drawn first (weighted by how many
    clips have a start of the wanted kind there) and then the clips in which it is one.

    `return_share` of the shot-start batches are *character returns*: the new shot asks for a character that is
    in the clip earlier but not in the shot just before (so the memory, not the last frames, holds how it looks).
    Drawn as they come, they are about a quarter of the shot starts, and the shipped model draws a re-entering
    character worse with its memory than with φ zeroed (return_consistency.py): these batches put the loss where
    the memory must give back the character.
    """

    def __init__(self, prompts: list[list[str]], segment_frames: int, cut_share: float = 0.5,
                 return_share: float = 0.0, repeat_share: float = 0.0):
        if not 0.0 <= cut_share <= 1.0:
            raise ValueError(f"cut share must be in [0, 1], not {cut_share}")
        if not 0.0 <= return_share <= 1.0:
            raise ValueError(f"return share must be in [0, 1], not {return_share}")
        if not 0.0 <= repeat_share <= 1.0 or return_share + repeat_share > 1.0:
            raise ValueError(f"repeat share must be in [0, 1] and at most 1 - return share, not {repeat_share}")
        self.cut_share, self.return_share, self.repeat_share = cut_share, return_share, repeat_share
        num_latents = len(prompts[0])
        if num_latents < segment_frames:
            raise ValueError(f"clips of {num_latents} latent frames are too short for a {segment_frames}-frame segment")
        # Both tables hold only segments within one shot (one prompt over latents [s, s + n)):
        # s -> clips whose shot starts at latent s (s = 0: the first segment)
        self.at_cut: dict[int, torch.Tensor] = {}
        # s -> clips in which s is not a shot start
        self.inside: dict[int, torch.Tensor] = {}
        for s in range(num_latents - segment_frames + 1):
            one_shot = [i for i, p in enumerate(prompts) if len(set(p[s : s + segment_frames])) == 1]
            cut = [i for i in one_shot if s == 0 or prompts[i][s] != prompts[i][s - 1]]
            inside = [i for i in one_shot if s > 0 and prompts[i][s] == prompts[i][s - 1]]
            if cut:
                self.at_cut[s] = torch.tensor(cut)
            if inside:
                self.inside[s] = torch.tensor(inside)
        if not self.at_cut and not self.inside:
            raise ValueError(f"no {segment_frames}-latent-frame segment of these clips lies within one shot")
        # s -> clips whose shot starting at s is a character return (a subset of at_cut[s])
        self.at_return: dict[int, torch.Tensor] = {}
        for s, clips in self.at_cut.items():
            back = [i for i in clips.tolist() if s > 0 and character_returns_at(prompts[i], s)]
            if back:
                self.at_return[s] = torch.tensor(back)
        if return_share > 0 and not self.at_return:
            raise ValueError("a return share was asked, but no shot of these clips brings back a character")
        # s -> clips whose shot starting at s repeats an earlier shot's prompt (the app's return, which it can give
        # the frames that earlier shot began with: pipeline `return_latents`); (clip, s) -> that shot's first latent
        self.at_repeat: dict[int, torch.Tensor] = {}
        self.repeat_opening: dict[tuple[int, int], int] = {}
        for s, clips in self.at_cut.items():
            openings = {i: repeated_shot_start(prompts[i], s) for i in clips.tolist()}
            rep = [i for i, j in openings.items() if j is not None]
            if rep:
                self.at_repeat[s] = torch.tensor(rep)
                self.repeat_opening.update({(i, s): openings[i] for i in rep})
        if repeat_share > 0 and not self.at_repeat:
            raise ValueError("a repeat share was asked, but no shot of these clips repeats an earlier shot's prompt")
        # s weighted by its clips: uniform over the (clip, start) pairs, so the first segment (a start in every
        # clip) is about a quarter of the shot starts of 20-s clips, as the first shot is of their shots
        self._tables = {kind: (table, sorted(table), torch.tensor([len(table[k]) for k in sorted(table)],
                                                                   dtype=torch.float64))
                        for kind, table in (("cut", self.at_cut), ("inside", self.inside),
                                              ("return", self.at_return), ("repeat", self.at_repeat)) if table}

    def draw(self, batch: int, generator: torch.Generator) -> tuple[int, torch.Tensor, bool]:
        """(s, clip indices (batch,) drawn with replacement, whether s starts a shot in every one of them)."""
        s, idx, kind = self.draw_kind(batch, generator)
        return s, idx, kind != "inside"

    def draw_kind(self, batch: int, generator: torch.Generator) -> tuple[int, torch.Tensor, str]:
        """(s, clip indices (batch,), kind): 'inside' a shot, or a shot start: 'cut' (any), 'return' (a character
        comes back) or 'repeat' (the shot repeats an earlier shot's prompt; see `openings`)."""
        at_cut = (torch.rand(1, generator=generator).item() < self.cut_share or not self.inside) and bool(self.at_cut)
        kind = "cut" if at_cut else "inside"
        if at_cut and (self.return_share > 0 or self.repeat_share > 0):  # one draw picks among the kinds
            u = torch.rand(1, generator=generator).item()
            kind = "return" if u < self.return_share else "repeat" if u < self.return_share + self.repeat_share else kind
        table, splits, weights = self._tables[kind]
        s = splits[int(torch.multinomial(weights, 1, generator=generator))]
        clips = table[s]
        return s, clips[torch.randint(len(clips), (batch,), generator=generator)], kind

    def openings(self, s: int, idx: torch.Tensor) -> torch.Tensor:
        """(B,) for a 'repeat' batch at s: the first latent of the earlier shot each clip's shot repeats."""
        return torch.tensor([self.repeat_opening[(i, s)] for i in idx.tolist()])
