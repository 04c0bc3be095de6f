"""The memory inspector: scrub a project's history (or an uploaded video) and see a frame recalled from the
compressed memory alone beside the true one; and, for a shot that returns to an earlier one, the return's first
frame beside that earlier shot's first frame and what the memory recalled of it.

An `InspectorPanel` works over a `Studio` (its projects, pipeline and model lock): a recall is refused with a
warning, not an error, while a generation holds the model.
"""

from __future__ import annotations

import math
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import gradio as gr
import torch

from ...evaluation.metrics import psnr, ssim
from ...film import footage as fm
from ...film.project import Project
from ...film.storyboard import StoryboardError, parse_storyboard, shot_returns
from ...io.video import VideoReadError, tensor_to_frames
from ...sampling.pipeline import seconds_to_frame
from ..options import check_seconds
from . import project_state as ps
from ...film.session import is_out_of_memory
from .errors import checked, no_change
from ...film.recall_clip import encode_clip, prepare_clip
from .recall_view import check_upload, metrics_markdown, recall_images, zoom
from .storyboard_view import return_choices


class InspectorPanel:
    def __init__(self, studio):
        self.studio = studio
        self._history_cache: tuple | None = None  # (key, history latents, the film's frames)
        self._clip_cache: tuple | None = None  # (key, Clip, latents)

    def _history(self, project: Project):
        """(latents (1, C, T', H', W'), the film's frames (3, T, H, W)) of the project, cached until it changes.
        The frames are the segments' MP4s as generation wrote them: nothing is decoded again."""
        n = project.finished_segments()
        lead = fm.footage_latents_path(project)
        if n == 0 and not lead.is_file():
            return None, None
        key = (str(project.folder), n, project.segment_latents_path(n - 1).stat().st_mtime_ns if n else 0,
               lead.stat().st_mtime_ns if lead.is_file() else 0)
        if self._history_cache is None or self._history_cache[0] != key:
            # the footage's latents and prepared frames, then the segments' latents and the MP4s generation wrote
            parts = [(fm.load_footage_latents(project), fm.footage_frames(project))]
            if n:
                parts.append((project.load_history(n), ps.read_film_frames(project, n)))
            parts = [(lat, fr) for lat, fr in parts if lat is not None]
            self._history_cache = (key, torch.cat([lat for lat, _ in parts], dim=2), torch.cat([fr for _, fr in parts], dim=1))
        return self._history_cache[1], self._history_cache[2]

    def _inspector_job(self, fn):
        with self.studio.using_model("a recall", warn=True) as held:
            if not held:  # a generation holds the model: a warning, the inspector stays as it is
                return None
            try:
                return fn()
            except gr.Error:
                raise
            except (ValueError, VideoReadError) as err:
                raise gr.Error(str(err)) from None
            except Exception as err:
                if is_out_of_memory(err):
                    raise gr.Error("Out of GPU memory during recall; try a lower-memory runtime profile.") from None
                traceback.print_exception(err, file=sys.stderr)
                raise gr.Error(f"Recall failed ({type(err).__name__}: {err})") from None

    def inspect(self, project_name: str, seconds, steps, seed=0):
        """-> (true frame, recalled frame, error map, metrics Markdown) at `seconds` of the project's history."""
        project = self.studio._open(project_name, create=False)
        opts = checked(steps=steps, seed=seed)

        def job():
            history, frames = self._history(project)
            if history is None:
                return None, None, None, "Generate at least one segment, then move the slider."
            pipe = self.studio._pipeline()
            fps = pipe.model.video.fps
            at = check_seconds("The time", seconds)  # finite, >= 0; past the end means the last frame
            index = min(frames.shape[1] - 1, seconds_to_frame(at, fps))
            # frame -> its index among the history's pixel frames (a film without footage leaves out the lead frame)
            res = pipe.recall(history, index + ps.lead_frames(project), truth_frames=frames, truth_index=index, **opts)
            lead = fm.footage_seconds(project, fps)
            where = (f"\n\nA frame of **your footage** (0–{lead:.2f} s)." if index / fps < lead else
                     f"\n\nStoryboard time {index / fps - lead:.2f} s (after the footage)." if lead else "")
            return (*recall_images(res), metrics_markdown(res, index / fps, fps, index) + where)

        out = self._inspector_job(job)
        return no_change(4) if out is None else out

    def return_choices(self, project_name: str):
        """The inspector's return picker: the generated storyboard's shots that return to an earlier one."""
        try:
            project = self.studio._open(project_name, create=False)
            choices = return_choices(parse_storyboard(project.read_storyboard()))
        except (gr.Error, StoryboardError):
            choices = []
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    def compare_return(self, project_name: str, shot, steps, seed=0):
        """-> (first appearance, what the memory recalled of it, the return's opening frame, metrics Markdown): how a
        shot that repeats an earlier shot's prompt came back, beside what the memory held of that earlier shot
        when the return was drawn (φ of the history before it). Each shot's second frame is shown: the causal codec
        blends a cut's own first frame with the shot before it."""
        project = self.studio._open(project_name, create=False)
        opts = checked(steps=steps, seed=seed)

        def job():
            history, frames = self._history(project)
            text = project.read_storyboard()
            if history is None or not text:
                return None, None, None, "Generate a storyboard in which a shot repeats an earlier shot's prompt."
            sb = parse_storyboard(text)
            back = shot_returns([s.prompt for s in sb.shots])
            k = int(shot) if shot is not None else -1
            if not 0 <= k < len(sb.shots) or back[k] is None:
                return None, None, None, "Pick a shot that returns to an earlier one (it repeats that shot's prompt)."
            pipe = self.studio._pipeline()
            segments = pipe.schedule(sb, after_footage=fm.has_footage(project))
            ret = next(s for s in segments if s.shot_index == k)
            ref = next(s for s in segments if s.shot_index == back[k])
            if ret.index >= project.finished_segments():
                return None, None, None, f"Shot {k + 1} is not generated yet."
            n_foot = int(fm.footage_meta(project).get("frames", 0))  # the film's frames start after the footage
            offset = history.shape[2] - sum(s.num_latents for s in segments[: project.finished_segments()])
            # one frame after each cut: the codec blends a cut's own first frame with the shot before it
            into = 1 if min(ref.num_frames, ret.num_frames) > 1 else 0
            first, back_at = n_foot + ref.first_frame + into, n_foot + ret.first_frame + into  # indices into `frames`
            before = history[:, :, : offset + ret.first_latent]  # what the memory held when the return was drawn
            res = pipe.recall(before, first + ps.lead_frames(project), truth_frames=frames, truth_index=first, **opts)
            returned = frames[:, back_at]
            truth, recalled, _ = recall_images(res)
            p, q = psnr(returned, frames[:, first]), ssim(returned, frames[:, first])
            fps = pipe.model.video.fps
            md = "\n".join([
                f"Shot {k + 1} ({ret.start:g} s) returns to shot {back[k] + 1} ({ref.start:g} s).", "",
                f"| compared with shot {back[k] + 1}'s frame {into + 1} | PSNR | SSIM |", "|---|---|---|",
                f"| what the memory recalled of it, from the {before.shape[2]} latent frames before the return "
                f"({res.memory_tokens:,} tokens) | {res.psnr:.2f} dB | {res.ssim:.3f} |",
                f"| the return's frame {into + 1} (at {back_at / fps:.2f} s of the film) | {p:.2f} dB | {q:.3f} |", "",
                "(Frame 2 of each shot: the codec blends a cut's first frame with the shot before it.)" if into else ""])
            return truth, recalled, zoom(tensor_to_frames(returned[:, None])[0]), md

        out = self._inspector_job(job)
        return no_change(4) if out is None else out

    def upload_info(self, path):
        """After an upload: (slider over the video, message). Refuses > 2 GiB or unreadable files clearly."""
        if not path:
            return gr.update(maximum=1.0, value=0.0, interactive=False), ""
        try:
            info = check_upload(path)
        except VideoReadError as err:
            gr.Warning(str(err))
            return gr.update(maximum=1.0, value=0.0, interactive=False), f"**✗** {err}"
        d = round(info.duration, 3)
        msg = f"{info.width}×{info.height}, {info.fps:g} fps, {info.duration:.2f} s — pick a time and press Recall."
        if info.damaged:
            gr.Warning(info.damage_note())
            msg += f" **Warning:** {info.damage_note()}."
        return gr.update(maximum=d, value=round(d / 2, 3), interactive=True), msg

    def recall_upload(self, path, seconds, history_seconds, steps, seed=0, progress: Callable | None = None):
        """Compress the history around `seconds` of an uploaded video (the `history_seconds` that end there, or
        the first ones, which hold it) and recall the frame at `seconds` from memory alone. A compressed window
        is kept and reused while the asked time falls inside it."""
        if not path:
            raise gr.Error("Upload a video first")
        opts = checked(steps=steps, seed=seed)

        def job():
            pipe = self.studio._pipeline()
            at = float(seconds)
            p = Path(path)
            key = (str(p), p.stat().st_mtime_ns if p.is_file() else 0, float(history_seconds))
            cached = self._clip_cache if self._clip_cache is not None and self._clip_cache[0] == key else None
            if cached is not None and math.isfinite(at) and cached[1].holds(at):
                clip, latents = cached[1], cached[2]
            else:  # read, resample and compress the window once; later recalls inside it reuse it
                report = None if progress is None else (lambda f, desc: progress(f, desc=desc))
                clip = prepare_clip(pipe, path, at, float(history_seconds), progress=report)
                latents = encode_clip(pipe, clip, progress=report)
                self._clip_cache = (key, clip, latents)
                if progress is not None:
                    progress(0.9, desc="recalling")
            index = clip.frame_index(float(seconds))
            res = pipe.recall(latents, index, truth_frames=clip.frames, **opts)
            return (*recall_images(res), metrics_markdown(res, clip.first_time + index / clip.fps, clip.fps))

        out = self._inspector_job(job)
        return no_change(4) if out is None else out

