"""The storyboard world: a deterministic renderer from a storyboard to ground-truth video.

PFP Studio cannot download a video model or a video data set, so it trains its own
small model on procedural clips rendered here.  A clip is described by a
storyboard (``pfp_app.film.storyboard``) whose shot prompts are *captions* from a finite
vocabulary, so every caption can be pre-encoded by a text encoder:

* **characters**: colour x pattern x shape, e.g. ``"a red striped circle"``
  (8 colours x 3 patterns x 3 shapes = 72 characters);
* **places**: textured photos shipped with scikit-image (brick wall, grass field,
  gravel path, cat portrait, coffee table, rocket launch, astronaut portrait), each
  scaled to 2.5x the frame so the camera can pan slowly over it;
* **captions** (exactly these three forms)::

      "{character} in front of the {place}"
      "{character} and {character} in front of the {place}"
      "the {place}, empty"

  Two-character captions are restricted so the vocabulary stays enumerable: at
  least one of the two must be one of the four *companions* (:data:`COMPANIONS`),
  and the order is canonical (the non-companion first; two companions in
  :data:`COMPANIONS` order).  ``all_captions()`` has **2457** captions:
  7 empty places + 72x7 single-character captions + 278x7 pair captions.

Rendering rules (what the consistency benchmarks rely on):

* ``frames_for_seconds(s, fps) = 1 + 4*ceil(s*fps/4)`` frames; frame ``i`` shows time
  ``i/fps`` (frames past the storyboard's end continue the last shot).
* A new shot is a camera cut.  Each place has a canonical camera start (a function
  of the place and the clip seed), so every shot at a place starts from the same
  view; during a shot the camera pans at 1 px/frame (at 128 px, 8 fps), bouncing off
  the image border (the step scales with size/fps, at least 1 px per frame).
* Characters follow a smooth Lissajous path determined by (seed, identity); in a
  two-character shot the first keeps to the left half and the second to the right
  half, so they never occlude each other (they may jump at the cut).  A
  character that is not in the previous shot enters through the nearest frame edge
  during the first second of the shot; one that is not in the next shot leaves
  through an edge during the last second.  Characters of the first shot start in
  frame.  A character keeps its sprite (colour, pattern, shape, size) for the whole
  clip, so it looks the same when it re-enters after an absence.
* A shot whose prompt is not a caption of the vocabulary renders the previous shot's
  place (the first place, the gravel path, if it is the first shot) without
  characters, and its index is recorded in ``WorldClip.unknown_shots``.

Speed: backgrounds and sprites are cached per process (``functools.lru_cache``); a
frame is one background slice plus an alpha blend per sprite, about 0.1 ms per
128x128 frame on one core (see ``tests/test_world.py::test_render_speed_report``).
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from pfp_app.film.storyboard import Storyboard, format_storyboard, parse_storyboard

__all__ = [
    "COLOURS",
    "PATTERNS",
    "SHAPES",
    "PLACES",
    "COMPANIONS",
    "Character",
    "ShotScene",
    "WorldClip",
    "WorldClipDataset",
    "all_characters",
    "all_captions",
    "caption_for",
    "parse_caption",
    "canonical_caption",
    "pair_allowed",
    "frames_for_seconds",
    "render_storyboard",
    "sample_storyboard",
    "sample_clip",
    "storyboard_returns",
    "collate_clips",
    "clip_to_item",
]

# --------------------------------------------------------------------------- vocabulary

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 235),
    "yellow": (245, 220, 40),
    "magenta": (225, 50, 205),
    "cyan": (40, 215, 225),
    "orange": (250, 140, 20),
    "white": (248, 248, 248),
}
PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# place name -> (skimage.data loader name, tint for grayscale images: (dark rgb, light rgb))
PLACES: dict[str, tuple[str, tuple[tuple[int, int, int], tuple[int, int, int]] | None]] = {
    "brick wall": ("brick", ((70, 28, 20), (235, 150, 115))),
    "grass field": ("grass", ((18, 55, 12), (165, 225, 95))),
    "gravel path": ("gravel", ((55, 50, 44), (225, 212, 190))),
    "cat portrait": ("chelsea", None),
    "coffee table": ("coffee", None),
    "rocket launch": ("rocket", None),
    "astronaut portrait": ("astronaut", None),
}
NEUTRAL_PLACE = "gravel path"

BACKGROUND_SCALE = 2.5  # a place image is 2.5x the frame (shorter side)
SPRITE_FRACTION = (0.22, 0.32)  # sprite side as a fraction of the frame, per identity


@dataclass(frozen=True, order=True)
class Character:
    colour: str
    pattern: str
    shape: str

    @property
    def phrase(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.pattern} {self.shape}"

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.phrase


def all_characters() -> list[Character]:
    """All 72 characters in vocabulary order (colour, pattern, shape)."""
    return [Character(c, p, s) for c in COLOURS for p in PATTERNS for s in SHAPES]


COMPANIONS: tuple[Character, ...] = (
    Character("white", "solid", "circle"),
    Character("yellow", "dotted", "square"),
    Character("blue", "striped", "triangle"),
    Character("magenta", "solid", "square"),
)


@dataclass(frozen=True)
class ShotScene:
    """What a caption describes: up to two characters in front of a place."""

    characters: tuple[Character, ...]
    place: str


def pair_allowed(a: Character, b: Character) -> bool:
    """A two-character caption is in the vocabulary iff the characters differ and at
    least one of them is a companion."""
    return a != b and (a in COMPANIONS or b in COMPANIONS)


def _canonical_pair(a: Character, b: Character) -> tuple[Character, Character]:
    if a in COMPANIONS and b in COMPANIONS:
        return (a, b) if COMPANIONS.index(a) < COMPANIONS.index(b) else (b, a)
    return (b, a) if a in COMPANIONS else (a, b)


def caption_for(scene: ShotScene) -> str:
    """The canonical caption of a scene (raises ValueError outside the vocabulary)."""
    if scene.place not in PLACES:
        raise ValueError(f"unknown place {scene.place!r}")
    chars = tuple(scene.characters)
    if len(chars) == 0:
        return f"the {scene.place}, empty"
    if len(chars) == 1:
        return f"{chars[0].phrase} in front of the {scene.place}"
    if len(chars) == 2:
        if not pair_allowed(*chars):
            raise ValueError(f"pair {chars[0].phrase!r} + {chars[1].phrase!r} is not in the vocabulary")
        a, b = _canonical_pair(*chars)
        return f"{a.phrase} and {b.phrase} in front of the {scene.place}"
    raise ValueError("at most two characters per shot")


_CHAR_RE = re.compile(r"^an? (\w+) (\w+) (\w+)$")


def _parse_character(text: str) -> Character | None:
    m = _CHAR_RE.match(text)
    if not m:
        return None
    c, p, s = m.groups()
    if c not in COLOURS or p not in PATTERNS or s not in SHAPES:
        return None
    return Character(c, p, s)


def _normalise(caption: str) -> str:
    return re.sub(r"\s+", " ", caption.strip().lower()).rstrip(".").strip()


def parse_caption(caption: str) -> ShotScene | None:
    """Inverse of :func:`caption_for`.  Tolerates case, extra spaces, a trailing
    period and a non-canonical order of the two characters; anything outside the
    vocabulary returns None.  The scene's characters are in canonical order."""
    text = _normalise(caption)
    m = re.match(r"^the (.+), empty$", text)
    if m:
        place = m.group(1)
        return ShotScene((), place) if place in PLACES else None
    m = re.match(r"^(.+) in front of the (.+)$", text)
    if not m:
        return None
    who, place = m.groups()
    if place not in PLACES:
        return None
    parts = who.split(" and ")
    chars = [_parse_character(p) for p in parts]
    if any(c is None for c in chars) or not 1 <= len(chars) <= 2:
        return None
    if len(chars) == 2:
        if not pair_allowed(chars[0], chars[1]):
            return None
        chars = list(_canonical_pair(chars[0], chars[1]))
    return ShotScene(tuple(chars), place)


def canonical_caption(caption: str) -> str | None:
    """``caption_for(parse_caption(caption))``, or None for unknown captions."""
    scene = parse_caption(caption)
    return None if scene is None else caption_for(scene)


@functools.lru_cache(maxsize=4)
def _all_captions(max_characters: int) -> tuple[str, ...]:
    caps: list[str] = []
    chars = all_characters()
    for place in PLACES:
        caps.append(caption_for(ShotScene((), place)))
        if max_characters >= 1:
            caps.extend(caption_for(ShotScene((c,), place)) for c in chars)
        if max_characters >= 2:
            for a, b in itertools.combinations(chars, 2):
                if pair_allowed(a, b):
                    caps.append(caption_for(ShotScene((a, b), place)))
    return tuple(sorted(set(caps)))


def all_captions(max_characters: int = 2) -> list[str]:
    """Sorted list of every caption: 7 (0 characters), 511 (<= 1), 2457 (<= 2)."""
    return list(_all_captions(int(max(0, min(2, max_characters)))))


# --------------------------------------------------------------------------- helpers

def frames_for_seconds(seconds: float, fps: float) -> int:
    """Number of frames of a clip: ``1 + 4*ceil(seconds*fps/4)`` (1 + 4k friendly)."""
    return 1 + 4 * int(math.ceil(round(float(seconds) * float(fps), 6) / 4.0))


def _stable_rng(*keys) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in keys])


def _smoothstep(u: np.ndarray | float) -> np.ndarray | float:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


# --------------------------------------------------------------------------- assets

@functools.lru_cache(maxsize=64)
def _place_image(place: str, size: int) -> np.ndarray:
    """RGB uint8 image of a place, shorter side = BACKGROUND_SCALE * size."""
    import skimage.data as skdata

    loader, tint = PLACES[place]
    img = getattr(skdata, loader)()
    if img.ndim == 2:
        g = img.astype(np.float32)
        lo, hi = np.percentile(g, (2, 98))
        g = np.clip((g - lo) / max(hi - lo, 1.0), 0.0, 1.0)[..., None]
        dark, light = (np.asarray(t, np.float32) for t in tint)  # type: ignore[misc]
        img = dark + g * (light - dark)
        img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    img = np.ascontiguousarray(img[..., :3])
    short = int(round(BACKGROUND_SCALE * size))
    h, w = img.shape[:2]
    scale = short / min(h, w)
    nh, nw = max(short, int(round(h * scale))), max(short, int(round(w * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    img = cv2.resize(img, (nw, nh), interpolation=interp)
    img.setflags(write=False)
    return img


def _shape_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (positive inside, in sprite units) for shape on [0,1]^2."""
    if shape == "circle":
        return 0.47 - np.hypot(u - 0.5, v - 0.5)
    if shape == "square":
        return np.minimum.reduce([u - 0.06, 0.94 - u, v - 0.06, 0.94 - v])
    if shape == "triangle":
        # apex up: (0.5, 0.05), base (0.03, 0.92) - (0.97, 0.92)
        pts = np.array([[0.5, 0.05], [0.97, 0.92], [0.03, 0.92]])
        ds = []
        for i in range(3):
            (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % 3]
            nx, ny = (y1 - y0), -(x1 - x0)  # points right of the directed edge
            n = math.hypot(nx, ny)
            ds.append(-((u - x0) * nx + (v - y0) * ny) / n)
        return np.minimum.reduce(ds)
    raise ValueError(shape)


@functools.lru_cache(maxsize=1024)
def _sprite(ch: Character, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(rgb float32 (s,s,3), alpha float32 (s,s,1)) of a character, anti-aliased."""
    ss = 4
    n = side * ss
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    v, u = np.meshgrid(coords, coords, indexing="ij")
    sdf = _shape_sdf(ch.shape, u, v)
    base = np.asarray(COLOURS[ch.colour], np.float32)
    dark = base * 0.3 if ch.colour != "white" else np.full(3, 70.0, np.float32)
    rgb = np.broadcast_to(base, (n, n, 3)).copy()
    if ch.pattern == "striped":
        stripe = (np.floor(v * 6.0) % 2) == 1
        rgb[stripe] = dark
    elif ch.pattern == "dotted":
        gu, gv = (u * 4.0) % 1.0, (v * 4.0) % 1.0
        dot = np.hypot(gu - 0.5, gv - 0.5) < 0.24
        rgb[dot] = dark
    else:  # solid: a soft highlight so it is not perfectly flat
        shade = 1.0 - 0.12 * np.clip(np.hypot(u - 0.35, v - 0.3) / 0.7, 0, 1)
        rgb *= shade[..., None]
    outline = 0.045
    rgb[sdf < outline] = (25.0, 25.0, 25.0)
    alpha = (sdf > 0).astype(np.float32)
    rgb = cv2.resize(rgb * alpha[..., None], (side, side), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(alpha, (side, side), interpolation=cv2.INTER_AREA)
    rgb = rgb / np.maximum(alpha, 1e-6)[..., None]  # un-premultiply
    rgb = np.clip(rgb, 0, 255).astype(np.float32)
    alpha = alpha[..., None].astype(np.float32)
    rgb.setflags(write=False)
    alpha.setflags(write=False)
    return rgb, alpha


def _sprite_side(ch: Character, size: int, seed: int) -> int:
    r = _stable_rng("size", seed, ch.phrase)
    lo, hi = SPRITE_FRACTION
    return max(6, int(round(size * r.uniform(lo, hi))))


@dataclass(frozen=True)
class _Motion:
    ax: float
    ay: float
    wx: float
    wy: float
    px: float
    py: float
    cx: float
    cy: float


def _motion(ch: Character, seed: int) -> _Motion:
    r = _stable_rng("motion", seed, ch.phrase)
    return _Motion(
        ax=r.uniform(0.18, 0.30),
        ay=r.uniform(0.12, 0.24),
        wx=2 * math.pi / r.uniform(6.0, 12.0),
        wy=2 * math.pi / r.uniform(5.0, 11.0),
        px=r.uniform(0, 2 * math.pi),
        py=r.uniform(0, 2 * math.pi),
        cx=r.uniform(0.42, 0.58),
        cy=r.uniform(0.45, 0.6),
    )


PAIR_SLOTS = (0.27, 0.73)  # x centres of the two characters of a pair shot
PAIR_AX = 0.07  # their x amplitude: the two sprites never overlap


def _lissajous(m: _Motion, t: np.ndarray, size: int, slot: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) in pixels at times t; ``slot`` 0/1 keeps the two characters of a
    pair shot on the left / right half of the frame."""
    cx, ax = (m.cx, m.ax) if slot is None else (PAIR_SLOTS[slot], min(m.ax, PAIR_AX))
    x = (cx + ax * np.sin(m.wx * t + m.px)) * size
    y = (m.cy + m.ay * np.sin(m.wy * t + m.py)) * size
    return x, y


def _camera_path(place: str, seed: int, size: int, fps: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer top-left corners of the view for n frames of a shot at `place`."""
    bg = _place_image(place, size)
    h, w = bg.shape[:2]
    rx, ry = w - size, h - size
    r = _stable_rng("camera", seed, place)
    x0, y0 = int(r.integers(0, rx + 1)), int(r.integers(0, ry + 1))
    dirs = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)]
    dx, dy = dirs[int(r.integers(0, len(dirs)))]
    step = max(1, int(round(size / (16.0 * fps))))
    k = np.arange(n) * step

    def bounce(p0: int, d: int, rng_: int) -> np.ndarray:
        if rng_ <= 0 or d == 0:
            return np.full(n, min(max(p0, 0), max(rng_, 0)), np.int64)
        p = (p0 + d * k) % (2 * rng_)
        return np.where(p > rng_, 2 * rng_ - p, p).astype(np.int64)

    return bounce(x0, dx, rx), bounce(y0, dy, ry)


# --------------------------------------------------------------------------- rendering

@dataclass
class WorldClip:
    """Ground truth of a rendered storyboard.

    ``tracks[phrase]`` is a float32 array (T, 5) of (visible, x0, y0, x1, y1) for every
    character of the storyboard: ``visible`` is the fraction of the sprite inside the
    frame (0 when absent), the box is the sprite box clipped to the frame, in pixels
    (x1, y1 exclusive), zeros when absent.
    """

    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: float
    storyboard: Storyboard
    tracks: dict[str, np.ndarray]
    places: list[str]  # per frame
    scenes: list[ShotScene | None] = field(default_factory=list)  # per shot
    unknown_shots: tuple[int, ...] = ()
    shot_index: np.ndarray | None = None  # (T,) shot of each frame
    seed: int = 0

    @property
    def captions(self) -> list[str]:
        return [s.prompt for s in self.storyboard.shots]

    @property
    def shot_starts(self) -> list[float]:
        return [float(s.start) for s in self.storyboard.shots]

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def _shot_of_frames(sb: Storyboard, times: np.ndarray) -> np.ndarray:
    starts = np.array([float(s.start) for s in sb.shots])
    idx = np.searchsorted(starts, times + 1e-9, side="right") - 1
    return np.clip(idx, 0, len(starts) - 1)


def _edge_point(x: float, y: float, half: float, size: int) -> tuple[float, float]:
    """Off-screen point beyond the frame edge nearest to (x, y)."""
    d = {"l": x, "r": size - x, "t": y, "b": size - y}
    e = min(d, key=d.get)  # type: ignore[arg-type]
    off = half + 2.0
    if e == "l":
        return -off, y
    if e == "r":
        return size + off, y
    if e == "t":
        return x, -off
    return x, size + off


def render_storyboard(sb: Storyboard, size: int = 128, fps: float = 8, seed: int = 0) -> WorldClip:
    """Render the ground-truth video of a storyboard (see the module docstring)."""
    size = int(size)
    shots = list(sb.shots)
    if not shots:
        raise ValueError("storyboard has no shots")
    T = frames_for_seconds(float(sb.duration), fps)
    times = np.arange(T, dtype=np.float64) / fps
    shot_idx = _shot_of_frames(sb, times)

    scenes: list[ShotScene | None] = [parse_caption(s.prompt) for s in shots]
    unknown = tuple(i for i, sc in enumerate(scenes) if sc is None)
    shot_places: list[str] = []
    for i, sc in enumerate(scenes):
        if sc is not None:
            shot_places.append(sc.place)
        else:
            shot_places.append(shot_places[-1] if shot_places else NEUTRAL_PLACE)
    shot_chars: list[tuple[Character, ...]] = [sc.characters if sc else () for sc in scenes]

    cast: list[Character] = []
    for chars in shot_chars:
        for c in chars:
            if c not in cast:
                cast.append(c)

    # --- character positions (centre x, y) per frame, NaN when absent
    pos: dict[Character, np.ndarray] = {c: np.full((T, 2), np.nan) for c in cast}
    for c in cast:
        m = _motion(c, seed)
        side = _sprite_side(c, size, seed)
        for si, shot in enumerate(shots):
            if c not in shot_chars[si]:
                continue
            fr = np.nonzero(shot_idx == si)[0]
            if fr.size == 0:
                continue
            t = times[fr]
            slot = shot_chars[si].index(c) if len(shot_chars[si]) == 2 else None
            x, y = _lissajous(m, t, size, slot)
            s0 = float(shot.start)
            s1 = float(shot.end) if si < len(shots) - 1 else max(float(shot.end), times[-1])
            d = min(1.0, (s1 - s0) / 3.0)
            if si > 0 and c not in shot_chars[si - 1] and d > 0:
                te = s0 + d
                xe, ye = _lissajous(m, np.array([te]), size, slot)
                ox, oy = _edge_point(float(xe[0]), float(ye[0]), side / 2, size)
                a = _smoothstep((t - s0) / d)
                x = ox + (x - ox) * a
                y = oy + (y - oy) * a
            if si < len(shots) - 1 and c not in shot_chars[si + 1] and d > 0:
                tx = s1 - d
                xx, yx = _lissajous(m, np.array([tx]), size, slot)
                ox, oy = _edge_point(float(xx[0]), float(yx[0]), side / 2, size)
                # frame times are < s1, so the last frame of the shot is ~1/fps before
                # the cut: finish the exit by then
                a = _smoothstep((t - tx) / max(d - 1.0 / fps, 1e-6))
                x = x + (ox - x) * a
                y = y + (oy - y) * a
            pos[c][fr, 0] = x
            pos[c][fr, 1] = y

    # --- camera
    cam_x = np.zeros(T, np.int64)
    cam_y = np.zeros(T, np.int64)
    for si in range(len(shots)):
        fr = np.nonzero(shot_idx == si)[0]
        if fr.size == 0:
            continue
        cx, cy = _camera_path(shot_places[si], seed, size, fps, fr.size)
        cam_x[fr], cam_y[fr] = cx, cy

    # --- draw
    frames = np.empty((T, size, size, 3), np.uint8)
    tracks = {c.phrase: np.zeros((T, 5), np.float32) for c in cast}
    sprites = {c: _sprite(c, _sprite_side(c, size, seed)) for c in cast}
    places = [shot_places[int(si)] for si in shot_idx]
    for i in range(T):
        bg = _place_image(places[i], size)
        frame = frames[i]
        frame[...] = bg[cam_y[i] : cam_y[i] + size, cam_x[i] : cam_x[i] + size]
        for c in shot_chars[int(shot_idx[i])]:
            px, py = pos[c][i]
            if not np.isfinite(px):
                continue
            rgb, alpha = sprites[c]
            s = rgb.shape[0]
            x0 = int(round(px - s / 2))
            y0 = int(round(py - s / 2))
            fx0, fy0 = max(x0, 0), max(y0, 0)
            fx1, fy1 = min(x0 + s, size), min(y0 + s, size)
            if fx1 <= fx0 or fy1 <= fy0:
                continue
            sx0, sy0 = fx0 - x0, fy0 - y0
            sx1, sy1 = sx0 + (fx1 - fx0), sy0 + (fy1 - fy0)
            a = alpha[sy0:sy1, sx0:sx1]
            region = frame[fy0:fy1, fx0:fx1]
            out = region * (1.0 - a) + rgb[sy0:sy1, sx0:sx1] * a
            region[...] = (out + 0.5).astype(np.uint8)
            vis = (fx1 - fx0) * (fy1 - fy0) / float(s * s)
            tracks[c.phrase][i] = (vis, fx0, fy0, fx1, fy1)

    return WorldClip(
        frames=frames,
        fps=float(fps),
        storyboard=sb,
        tracks=tracks,
        places=places,
        scenes=scenes,
        unknown_shots=unknown,
        shot_index=shot_idx.astype(np.int64),
        seed=int(seed),
    )


# --------------------------------------------------------------------------- sampling

def storyboard_returns(sb: Storyboard, min_gap: float = 8.0) -> dict[str, list]:
    """Cuts-and-returns of a storyboard.

    Returns ``{"place_returns": [(place, first_shot, return_shot)],
    "character_returns": [(phrase, last_shot_before, return_shot, gap_seconds)]}``:
    a place return is a shot at a place seen before but not in the previous shot; a
    character return is a character re-appearing after an absence of >= min_gap s.
    """
    scenes = [parse_caption(s.prompt) for s in sb.shots]
    place_returns = []
    char_returns = []
    seen_place: dict[str, int] = {}
    last_seen: dict[Character, int] = {}
    prev_place = None
    for i, (shot, sc) in enumerate(zip(sb.shots, scenes)):
        if sc is None:
            prev_place = None
            continue
        if sc.place in seen_place and prev_place != sc.place:
            place_returns.append((sc.place, seen_place[sc.place], i))
        seen_place.setdefault(sc.place, i)
        prev_place = sc.place
        for c in sc.characters:
            if c in last_seen and last_seen[c] < i - 1:
                gap = float(shot.start) - float(sb.shots[last_seen[c]].end)
                if gap >= min_gap - 1e-9:
                    char_returns.append((c.phrase, last_seen[c], i, gap))
            last_seen[c] = i
    return {"place_returns": place_returns, "character_returns": char_returns}


def _fmt_seconds(x: float) -> str:
    return f"{x:g}s"


def _sample_lengths(rng: np.random.Generator, seconds: float, n: int) -> list[float]:
    """n shot lengths in [2, 8] s summing to seconds (integers where possible)."""
    lo, hi = 2.0, 8.0
    for _ in range(200):
        w = rng.dirichlet(np.ones(n) * 1.5)
        raw = lo + w * (seconds - lo * n)
        lens = [float(np.floor(v)) for v in raw[:-1]]
        last = seconds - sum(lens)
        lens.append(round(last, 6))
        if all(lo - 1e-9 <= v <= hi + 1e-9 for v in lens):
            return lens
    # fallback: equal lengths
    return [seconds / n] * n


def _sample_shot_content(rng, places, cast, companion, n):
    shot_places: list[str] = []
    for i in range(n):
        if i == 0:
            shot_places.append(places[0])
            continue
        earlier = [p for p in dict.fromkeys(shot_places) if p != shot_places[-1]]
        u = rng.random()
        if earlier and u < 0.4:
            shot_places.append(earlier[int(rng.integers(len(earlier)))])
        elif u < 0.9:
            fresh = [p for p in places if p not in shot_places]
            shot_places.append(fresh[0] if fresh else places[int(rng.integers(len(places)))])
        else:
            shot_places.append(shot_places[-1])
    shot_chars: list[tuple[Character, ...]] = []
    options: list[tuple[Character, ...]] = [(cast[0],), (cast[1],), (companion,), (cast[0], companion), ()]
    weights = np.array([0.34, 0.2, 0.14, 0.22, 0.10])
    for i in range(n):
        w = weights.copy()
        if i > 0 and shot_places[i] == shot_places[i - 1]:
            w[options.index(shot_chars[-1])] = 0.0  # never repeat the previous caption
        shot_chars.append(options[int(rng.choice(len(options), p=w / w.sum()))])
    return shot_places, shot_chars


def sample_storyboard(
    rng: np.random.Generator | int | None,
    seconds: float = 20.0,
    min_shots: int = 3,
    max_shots: int = 5,
    return_prob: float = 0.9,
) -> Storyboard:
    """A random storyboard of 2-8 s shots with cuts and returns: ``min_shots`` to
    ``max_shots`` shots, as far as the 2-8 s rule allows (a 60 s storyboard gets at
    least 8 shots, a 4 s one at most 2).

    With probability ``return_prob`` (default 0.9) the storyboard contains a return
    (see :func:`storyboard_returns`); half of those are asked for a character that
    re-enters after >= 8 s absence (when ``seconds`` allows one), the rest for any
    return (a later shot at an earlier place and/or a re-entering character).  The
    other draws are unconstrained (and often have a return too).  Consecutive shots
    never have the same caption.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    seconds = float(seconds)
    if seconds < 2.0:
        raise ValueError(f"seconds must be >= 2, got {seconds}")
    # the 2-8 s shot-length rule wins over min_shots / max_shots
    n_fewest = max(1, int(math.ceil(seconds / 8.0 - 1e-9)))
    n_most = max(1, int(math.floor(seconds / 2.0 + 1e-9)))
    lo_n = min(max(int(min_shots), n_fewest), n_most)
    hi_n = max(min(int(max_shots), n_most), lo_n)
    u = rng.random()
    want = "none" if u >= return_prob else ("character" if u < return_prob / 2 else "any")
    chars = all_characters()
    non_comp = [c for c in chars if c not in COMPANIONS]
    place_names = list(PLACES)
    first = None
    for attempt in range(300):
        n = int(rng.integers(lo_n, hi_n + 1))
        lens = _sample_lengths(rng, seconds, n)
        places = [place_names[i] for i in rng.permutation(len(place_names))]
        ci = rng.choice(len(non_comp), size=2, replace=False)
        cast = [non_comp[int(ci[0])], non_comp[int(ci[1])]]
        companion = COMPANIONS[int(rng.integers(len(COMPANIONS)))]
        shot_places, shot_chars = _sample_shot_content(rng, places, cast, companion, n)
        starts = np.concatenate([[0.0], np.cumsum(lens)[:-1]])
        lines = [
            f"{_fmt_seconds(float(round(s, 6)))}: {caption_for(ShotScene(c, p))}"
            for s, p, c in zip(starts, shot_places, shot_chars)
        ]
        lines.append(f"total: {_fmt_seconds(seconds)}")
        sb = parse_storyboard("\n".join(lines))
        first = first or sb
        if want == "none":
            return sb
        r = storyboard_returns(sb)
        if r["character_returns"] or (r["place_returns"] and (want == "any" or attempt >= 150)):
            return sb
    assert first is not None
    return first


def clip_storyboard(seed: int, seconds: float = 20.0) -> Storyboard:
    """The storyboard of `sample_clip(seed, seconds)`, without rendering it."""
    return sample_storyboard(np.random.default_rng([int(seed), 7919]), seconds=seconds)


def sample_clip(seed: int, seconds: float = 20.0, size: int = 128, fps: float = 8) -> WorldClip:
    """``render_storyboard(sample_storyboard(rng(seed), seconds), size, fps, seed)``."""
    return render_storyboard(clip_storyboard(seed, seconds), size=size, fps=fps, seed=int(seed))


# --------------------------------------------------------------------------- dataset

try:  # torch is a hard dependency of the app but keep the renderer importable without it
    import torch
    from torch.utils.data import Dataset as _TorchDataset
except Exception:  # pragma: no cover
    torch = None  # type: ignore[assignment]
    _TorchDataset = object  # type: ignore[assignment,misc]


def clip_to_item(clip: WorldClip) -> dict:
    """The dataset dict of a clip (frames (3,T,H,W) float in [-1, 1])."""
    frames = torch.from_numpy(clip.frames).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)
    return {
        "frames": frames,
        "storyboard": format_storyboard(clip.storyboard),
        "shot_starts": torch.tensor(clip.shot_starts, dtype=torch.float32),
        "captions": clip.captions,
    }


class WorldClipDataset(_TorchDataset):
    """``num_clips`` random storyboard-world clips; item i is deterministic in (seed, i).

    Items are dicts: ``frames`` float tensor (3, T, H, W) in [-1, 1] with
    ``T = frames_for_seconds(seconds, fps)``, ``storyboard`` (text, see
    ``format_storyboard``), ``shot_starts`` float tensor (num_shots,) in seconds,
    ``captions`` list[str] (one per shot).  Use :func:`collate_clips` as collate_fn.
    """

    def __init__(self, num_clips: int, seconds: float = 20.0, size: int = 128, fps: float = 8, seed: int = 0):
        self.num_clips = int(num_clips)
        self.seconds = float(seconds)
        self.size = int(size)
        self.fps = float(fps)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.num_clips

    def clip(self, i: int) -> WorldClip:
        return sample_clip(self.clip_seed(i), seconds=self.seconds, size=self.size, fps=self.fps)

    def clip_seed(self, i: int) -> int:
        """The seed of clip i (its storyboard: `clip_storyboard(clip_seed(i), seconds)`)."""
        if not 0 <= i < self.num_clips:
            raise IndexError(i)
        return int(_stable_rng("clip", self.seed, i).integers(0, 2**31 - 1))

    def __getitem__(self, i: int) -> dict:
        return clip_to_item(self.clip(int(i)))


def collate_clips(items: Sequence[dict]) -> dict:
    """Stack ``frames`` (B,3,T,H,W); keep ``storyboard`` (list[str]), ``shot_starts``
    (list of tensors) and ``captions`` (list[list[str]]) as lists."""
    out: dict = {"frames": torch.stack([it["frames"] for it in items])}
    for k in items[0]:
        if k != "frames":
            out[k] = [it[k] for it in items]
    return out

