"""The studio's state and callbacks: plain methods over the core, one per UI action, testable without a browser.

A `Studio` holds the projects folder and the loaded pipeline (loaded by `load()`, never at import). Generation,
recall, export and footage preparation share the model, one at a time (`using_model`): a generation waits for a
recall to end; the inspector is refused while a generation runs. Generation runs in the job queue's one worker
thread (`job_view.py`): `generate`, `regenerate` and `restore_export` plan a run with the core's session
(`film/session.py`), run it there and return its last event; every event goes to `emit`. Callbacks take and
return plain values (text, numbers, file paths, numpy images, `gr.update` dicts); a user's mistake becomes a
`gr.Error` with one clear message.
"""

from __future__ import annotations

import math
import shutil
import sys
import threading
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import torch

from ...model.memory_encoder import memory_token_count
from ...model.bundle import ModelLoadError, load_model
from ..options import MAX_SEED, OptionError, check_options, check_seconds
from ...sampling.pipeline import PFPPipeline, seconds_to_frame
from ...film.export import read_export_record, restore_footage, write_film
from ...film.project import Project, ProjectError
from ...film.session import Done, Event, GenerationSession, Plan
from ...evaluation.metrics import psnr, ssim
from ...film.storyboard import Storyboard, StoryboardError, parse_storyboard, shot_returns
from ...io.video import VideoReadError, tensor_to_frames
from ...film import footage as fm
from . import project_state as ps
from .footage_view import FootagePanel
from .status_view import status_html
from .recall_view import check_upload, encode_clip, metrics_markdown, prepare_clip, recall_images, zoom
from .storyboard_view import (WHOLE_FILM, check_storyboard, preset_names, read_preset, replace_prompt_in_text,
                              return_choices)

DEFAULT_PROJECT = "untitled"
MAX_STEPS = 100  # the sliders' range; pfp_app.app.options allows up to 1000 (the API and the CLI)


def _optional_runtime():
    """pfp_app.runtime (apply_profile, profile_names) when it imports and offers apply_profile(model, name); else None
    (CPU only)."""
    try:
        from ... import runtime
    except ImportError:
        return None
    return runtime if callable(getattr(runtime, "apply_profile", None)) else None


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _checked(**values) -> dict:
    """The options layer (pfp_app.app.options), its message as a gr.Error."""
    try:
        return check_options("ui", **values)
    except OptionError as err:
        raise gr.Error(str(err)) from None


def _no_change(n: int) -> tuple:
    return tuple(gr.update() for _ in range(n))


RESTORE_FILE = "restore_source.mp4"  # an export being restored, copied into its project when the job is queued


class Studio:
    def __init__(self, projects_dir: str | Path = "projects", model_spec: str = "default", profile: str = "auto"):
        self.root = Path(projects_dir).resolve()
        self.model_spec = str(model_spec)
        self.profile = profile
        self.pipe: PFPPipeline | None = None
        self.model_note = ""  # e.g. why we fell back to an untrained model
        self.profile_note = ""
        self.runtime = _optional_runtime()
        self._applied_profile: str | None = None
        self._model_lock = threading.Lock()
        self._busy_with = ""  # what holds the model: 'a generation', 'a recall', ...
        self._history_cache: tuple | None = None  # (key, history latents, the film's frames)
        self._clip_cache: tuple | None = None  # (key, Clip, latents)
        self.footage = FootagePanel(self)  # "start from footage" (footage_view.py)

    # model ------------------------------------------------------------------------------------------
    def load(self) -> "Studio":
        """Load the model (CPU). 'default' falls back to the untrained tiny model, saying so."""
        try:
            model = load_model(self.model_spec)
        except ModelLoadError as err:
            if self.model_spec != "default":
                raise
            model = load_model("tiny-random")
            self.model_note = f"{err}. Running the untrained `tiny-random` model instead: its output is noise-like."
        self.pipe = PFPPipeline(model.to("cpu"), device="cpu")
        return self

    @property
    def model(self):
        return self._pipeline().model

    def _pipeline(self, profile: str | None = None) -> PFPPipeline:
        if self.pipe is None:
            self.load()
        if profile and self.runtime is not None and profile != self._applied_profile:
            # the runtime profile decides device, dtype and offloading; the pipeline follows the model
            result = self.runtime.apply_profile(self.pipe.model, profile)
            device = getattr(result, "device", None) or next(self.pipe.model.transformer.parameters()).device
            dtype = getattr(result, "dtype", None) or self.pipe.dtype
            self.pipe = PFPPipeline(self.pipe.model, device=device, dtype=dtype)
            self._applied_profile = profile
            summary = getattr(result, "summary", None)
            self.profile_note = summary() if callable(summary) else str(getattr(result, "reason", "") or "")
        return self.pipe

    def profile_choices(self) -> list[str]:
        if self.runtime is None:
            return ["auto"]
        names = getattr(self.runtime, "PROFILES", None) or getattr(self.runtime, "profile_names", lambda: [])()
        return list(dict.fromkeys(["auto", *names]))

    @property
    def segment_seconds(self) -> float:
        return self._pipeline().segment_seconds

    def model_markdown(self) -> str:
        m = self.model
        v = m.video
        state = ("trained" if m.trained else
                 "<b style='color:#c2410c'>UNTRAINED: random weights, the video will be noise-like</b>")
        lines = [f"**Model:** `{m.name}` · {state}",
                 f"{v.width}×{v.height} at {v.fps} fps · segments of at most {self.segment_seconds:g} s, "
                 f"cut at every shot · {m.sampler.steps} steps by default · {self._pipeline().device} "
                 + ("" if self.runtime else "(CPU only: runtime profiles not installed)")]
        if self.model_note:
            lines.insert(0, f"**Note:** {self.model_note}")
        return "  \n".join(lines)

    def memory_rate_text(self) -> str:
        """The loaded φ's compression rate and what 20 s of history costs: a property of the weights."""
        m = self.model
        cfg, v, c = m.memory_encoder.config, m.video, m.codec
        _, ph, pw = m.transformer.config.patch_size
        t_lat = c.latent_frames(int(20 * v.fps) + 1)
        grid = (t_lat, v.height // c.spatial_ratio // ph, v.width // c.spatial_ratio // pw)
        tokens = memory_token_count(grid, cfg.rate)
        return (f"{cfg.rate} (H×W×T, φ variant '{cfg.variant}') · 20 s of history → {tokens:,} memory tokens · "
                "fixed by this model's φ weights")

    # storyboard ---------------------------------------------------------------------------------------
    def check(self, text: str):
        """Editor text -> (shot table rows, validation message, shot picker update, export picker update,
        regenerate prompt). The shot picker goes back to shot 1 and the prompt box shows its prompt: the picker's
        own change event does not fire when its value stays 0, so the box must be set here (else it keeps
        another storyboard's prompt)."""
        c = check_storyboard(text, self._pipeline().grid)
        shots = gr.update(choices=c.shot_choices, value=c.shot_choices[0][1] if c.shot_choices else None)
        export = gr.update(choices=[("Whole film", WHOLE_FILM)] + c.shot_choices, value=WHOLE_FILM)
        prompt = c.storyboard.shots[0].prompt if c.ok else ""
        return c.rows, c.message, shots, export, prompt

    def presets(self) -> list[str]:
        return preset_names()

    def load_preset(self, name: str) -> str:
        try:
            return read_preset(name)
        except ValueError as err:
            raise gr.Error(str(err)) from None

    def _parse(self, text: str) -> Storyboard:
        try:
            return parse_storyboard(text or "")
        except StoryboardError as err:
            raise gr.Error(f"Storyboard error — {err}") from None

    # projects -------------------------------------------------------------------------------------------
    def _open(self, name: str, create: bool = True) -> Project:
        try:
            folder = ps.project_folder(self.root, name)
        except ProjectError as err:
            raise gr.Error(f"Project name refused — {err}") from None
        if not create and not folder.is_dir():
            raise gr.Error(f"Project '{name}' does not exist yet: generate something first")
        try:
            return Project(folder)
        except OSError as err:
            raise gr.Error(f"Cannot use project folder '{folder}': {err.strerror or err}") from None

    def projects(self) -> list[str]:
        return ps.list_projects(self.root)

    def open_project(self, name: str):
        """-> (project picker, storyboard text, seed, steps, preview video, status, inspector slider, message)."""
        name = (name or "").strip() or DEFAULT_PROJECT
        try:
            folder = ps.project_folder(self.root, name)
        except ProjectError as err:
            raise gr.Error(f"Project name refused — {err}") from None
        self.root.mkdir(parents=True, exist_ok=True)
        ps.remember_last(self.root, name)
        picker = gr.update(choices=sorted(set(self.projects()) | {name}), value=name)
        if not folder.is_dir():
            return (picker, gr.update(), gr.update(), gr.update(), None, status_html(message="New project."),
                    self._slider(None), f"New project **{name}**: it is saved in `{folder}` when you save or generate.")
        project = Project(folder)
        s = project.read_settings()
        text = ps.read_editor_text(project)
        n = project.finished_segments()
        seed = ps.first_seed(project)
        seed = s.get("seed", gr.update()) if seed is None else seed
        steps = (s.get("sampler_settings") or {}).get("steps", gr.update())
        preview = str(project.segment_video_path(n - 1)) if n else None
        total = s.get("num_segments", n)
        msg = f"Opened **{name}**: {n} of {total} segments finished." if n else f"Opened **{name}** (nothing generated yet)."
        return (picker, text or gr.update(), seed, steps, preview, status_html(n, total, message=msg),
                self._slider(project, reset=True), msg)

    def restore(self):
        """On page load: reopen the last project (projects/.last), or the default one."""
        return self.open_project(ps.last_project(self.root) or DEFAULT_PROJECT)

    def open_and_check(self, name: str, editor_text: str):
        """open_project's outputs, then check's for the text the editor will show (the project's, or the editor's
        own where the project has none), from one event. Checked in a second event, the shot table could show a
        text that was no longer in the editor: that event read the editor when it ran, and an open or a typed
        edit landing in between left the table and the editor disagreeing."""
        opened = self.open_project(name)
        text = opened[1] if isinstance(opened[1], str) else editor_text
        return (*opened, *self.check(text))

    def restore_and_check(self, editor_text: str):
        """restore's outputs and check's, from one event (see open_and_check)."""
        return self.open_and_check(ps.last_project(self.root) or DEFAULT_PROJECT, editor_text)

    def save_storyboard(self, name: str, text: str) -> str:
        sb = self._parse(text)
        project = self._open(name)
        ps.save_draft(project, text)
        ps.remember_last(self.root, name)
        return f"Saved the storyboard ({len(sb.shots)} shots) to `{project.folder / ps.DRAFT_FILE}`."

    # the model, one job at a time ----------------------------------------------------------------------
    @contextmanager
    def using_model(self, what: str, wait: bool = False):
        """Hold the model for `what`; wait=False: refuse at once (gr.Error 'Busy: ...') while another job holds it."""
        if not self._model_lock.acquire(blocking=wait):
            raise gr.Error(f"Busy: {self._busy_with or 'a job'} is running. One job at a time: wait for it or press Stop.")
        self._busy_with = what
        try:
            yield
        finally:
            self._busy_with = ""
            self._model_lock.release()

    @property
    def busy(self) -> bool:
        return self._model_lock.locked()

    # generation ---------------------------------------------------------------------------------------
    def checked_request(self, name: str, text: str, seed, steps) -> dict:
        """A Generate request checked before it is queued: storyboard, project name and options (gr.Error)."""
        self._parse(text)
        self._open(name)
        return dict(project=name.strip(), text=text, **_checked(seed=seed, steps=steps))

    def generate(self, project_name: str, text: str, seed, steps, profile: str = "auto",
                 emit: Callable[[Event], None] = lambda e: None, should_stop: Callable[[], bool] | None = None) -> Event:
        """Generate the storyboard into the project, keeping the finished segments these settings would make again
        (a stopped or killed run resumes); what it replaces is kept as a take. Returns the run's last event."""
        self._parse(text)
        project = self._open(project_name)
        opts = _checked(seed=seed, steps=steps)
        ps.save_draft(project, text)
        ps.remember_last(self.root, project_name)
        return self._run(project, profile, emit, should_stop,
                         lambda session: session.plan(text, opts["seed"], self._sampler(opts["steps"])))

    def regenerate(self, project_name: str, text: str, shot, prompt: str, seed, steps, profile: str = "auto",
                   emit: Callable[[Event], None] = lambda e: None,
                   should_stop: Callable[[], bool] | None = None) -> Event:
        """Regenerate one shot (new seed and/or edited prompt) and recompute the shots after it from the new history;
        the segments before it are kept untouched."""
        _, k, text, _ = self.shot_edit(text, shot, prompt)
        project = self._open(project_name)
        opts = _checked(seed=seed, steps=steps)
        ps.save_draft(project, text)
        ps.remember_last(self.root, project_name)

        def plan(session: GenerationSession) -> Plan:
            try:
                return session.plan(text, opts["seed"], self._sampler(opts["steps"]), from_shot=k)
            except ValueError as err:
                raise gr.Error(str(err)) from None

        return self._run(project, profile, emit, should_stop, plan)

    def restore_export(self, project_name: str, profile: str = "auto", emit: Callable[[Event], None] = lambda e: None,
                       should_stop: Callable[[], bool] | None = None) -> Event:
        """Regenerate the project of the export queued for restoring (`queue_restore`): its footage, storyboard, and
        every segment with the seed and sampler settings it was made with."""
        project = self._open(project_name, create=False)
        record = read_export_record(project.folder / RESTORE_FILE)
        if record is None:
            raise gr.Error(f"Project '{project_name}' has no export to restore: drop one in 'Start from footage'")

        def plan(session: GenerationSession) -> Plan:
            footage = restore_footage(session.pipe, record)
            if footage is not None or fm.has_footage(project):  # the export's footage (or none) starts the film
                session.replace_footage(footage)
            return session.plan_restore(record)

        return self._run(project, profile, emit, should_stop, plan)

    def queue_restore(self, project_name: str, export_path: str | Path) -> tuple[dict, str]:
        """Keep an export in the project for `restore_export` (an upload's temporary file may be gone before the
        job runs); returns the job's parameters and its storyboard."""
        record = read_export_record(export_path)
        if record is None:
            raise gr.Error("Drop an MP4 exported by PFP Studio to restore its project")
        project = self._open(project_name)
        shutil.copyfile(export_path, project.folder / RESTORE_FILE)
        ps.save_draft(project, record.storyboard)
        return dict(project=project_name.strip()), record.storyboard

    def _sampler(self, steps: int | None):
        return self.model.sampler.overridden(steps=steps)

    def _run(self, project: Project, profile: str, emit, should_stop, make_plan) -> Event:
        with self.using_model("a generation", wait=True):
            pipe = self._job_pipeline(profile)
            session = GenerationSession(pipe, project)
            end = session.run(make_plan(session), emit, should_stop)
            if isinstance(end, Done) or project.finished_segments():
                self.film_preview(project)
            return end

    def _job_pipeline(self, profile: str | None) -> PFPPipeline:
        try:
            return self._pipeline(profile)
        except Exception as err:  # a runtime profile that cannot be applied here
            raise gr.Error(f"Cannot apply runtime profile '{profile}': {err}") from None

    def select_shot(self, text: str, shot) -> str:
        """The prompt of the picked shot, for the regenerate box."""
        try:
            sb = parse_storyboard(text or "")
            return sb.shots[int(shot)].prompt
        except (StoryboardError, TypeError, ValueError, IndexError):
            return ""

    def shot_edit(self, text: str, shot, prompt: str):
        """-> (storyboard, shot index, storyboard text, editor update): the storyboard with the picked shot's
        prompt replaced by `prompt` when it was edited (the update is then the new text)."""
        sb = self._parse(text)
        try:
            k = int(shot)
            if not 0 <= k < len(sb.shots):
                raise ValueError
        except (TypeError, ValueError):
            raise gr.Error("Pick a shot of the storyboard to regenerate") from None
        new_text = gr.update()
        if prompt and " ".join(prompt.split()) != sb.shots[k].prompt:
            try:  # the prompt changed in the editor's text itself: comments and `total:` stay
                text = new_text = replace_prompt_in_text(text, sb, k, prompt)
            except StoryboardError as err:
                raise gr.Error(str(err)) from None
            sb = parse_storyboard(text)
        return sb, k, text, new_text

    def _slider(self, project: Project | None, reset: bool = False):
        """Inspector slider over the project's history (its footage, then the generated part), in seconds."""
        n = project.finished_segments() if project is not None else 0
        meta = fm.footage_meta(project)  # the footage's frame count, without loading its latents
        if n == 0 and not meta:
            return gr.update(maximum=1.0, value=0.0, interactive=False)
        frames = int(meta.get("frames", 0)) + ps.film_frame_count(project)
        upd = dict(maximum=round((frames - 1) / self.model.video.fps, 3), interactive=True)
        if reset:
            upd["value"] = 0.0
        return gr.update(**upd)

    def _slider_of(self, project_name: str):
        """The inspector slider after the footage changed."""
        try:
            return self._slider(self._open(project_name, create=False), reset=True)
        except gr.Error:
            return self._slider(None)

    # previews and export ----------------------------------------------------------------------------------
    def film_preview(self, project: Project) -> Path | None:
        """The film so far (with its footage) as previews/film.mp4; None before the first segment."""
        if project.finished_segments() == 0:
            return None
        return write_film(project, project.folder / "previews" / "film.mp4", crf=20)

    def _shot_segments(self, project: Project, shot: int) -> range:
        n = project.finished_segments()
        text = project.read_storyboard()
        if not text:
            raise gr.Error("Nothing generated yet in this project")
        sb = parse_storyboard(text)
        if not 0 <= shot < len(sb.shots):
            raise gr.Error(f"The generated storyboard has no shot {shot + 1}")
        idx = [s.index for s in self._pipeline().schedule(sb, fm.has_footage(project))[:n] if s.shot_index == shot]
        if not idx:
            raise gr.Error(f"Shot {shot + 1} has no finished segment yet")
        return range(idx[0], idx[-1] + 1)

    def shot_preview(self, project_name: str, shot):
        """One shot's segments as one MP4, playable on its own."""
        project = self._open(project_name, create=False)
        k = int(shot) if shot is not None else 0
        path = write_film(project, project.folder / "previews" / f"shot_{k + 1:02d}.mp4", self._shot_segments(project, k),
                          crf=18, with_footage=False)
        return str(path)

    def export(self, project_name: str, crf, which=WHOLE_FILM, footage: str = fm.EXPORT_WITH_FOOTAGE):
        """-> (MP4 path, message). Whole film -> film.mp4 (starting with the footage unless `footage` says
        'generated part only'), one shot -> shot_NN.mp4, in the project folder."""
        project = self._open(project_name, create=False)
        crf = _checked(crf=crf)["crf"]
        which = WHOLE_FILM if which is None else int(which)
        if which == WHOLE_FILM:
            segments, out = range(project.finished_segments()), project.film_path
        else:
            segments, out = self._shot_segments(project, which), project.folder / f"shot_{which + 1:02d}.mp4"
        try:
            with self.using_model("an export"):  # the project's segments must not change while they are read
                path = write_film(project, out, segments, crf=crf, with_footage=footage != fm.EXPORT_GENERATED_ONLY)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        return str(path), (f"Exported {len(segments)} segment{'s' * (len(segments) != 1)} to `{path}` (CRF {crf}); "
                           "its comment holds the storyboard, the seeds and the sampler settings: dropping it in "
                           "'Start from footage' restores the same film.")

    # memory inspector -----------------------------------------------------------------------------------
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
        if not self._model_lock.acquire(blocking=False):
            gr.Warning(f"Busy: {self._busy_with} is running; the inspector works when it is finished.")
            return None
        self._busy_with = "a recall"
        try:
            return fn()
        except gr.Error:
            raise
        except (ValueError, VideoReadError) as err:
            raise gr.Error(str(err)) from None
        except Exception as err:
            if _is_oom(err):
                raise gr.Error("Out of GPU memory during recall; try a lower-memory runtime profile.") from None
            traceback.print_exception(err, file=sys.stderr)
            raise gr.Error(f"Recall failed ({type(err).__name__}: {err})") from None
        finally:
            self._busy_with = ""
            self._model_lock.release()

    def inspect(self, project_name: str, seconds, steps, seed=0):
        """-> (true frame, recalled frame, error map, metrics Markdown) at `seconds` of the project's history."""
        project = self._open(project_name, create=False)
        opts = _checked(steps=steps, seed=seed)

        def job():
            history, frames = self._history(project)
            if history is None:
                return None, None, None, "Generate at least one segment, then move the slider."
            pipe = self._pipeline()
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
        return _no_change(4) if out is None else out

    def return_choices(self, project_name: str):
        """The inspector's return picker: the generated storyboard's shots that return to an earlier one."""
        try:
            project = self._open(project_name, create=False)
            choices = return_choices(parse_storyboard(project.read_storyboard()))
        except (gr.Error, StoryboardError):
            choices = []
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    def compare_return(self, project_name: str, shot, steps, seed=0):
        """-> (first appearance, what the memory recalled of it, the return's first frame, metrics Markdown): how a
        shot that repeats an earlier shot's prompt came back, beside what the memory held of that earlier shot
        when the return was drawn (φ of the history before it)."""
        project = self._open(project_name, create=False)
        opts = _checked(steps=steps, seed=seed)

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
            pipe = self._pipeline()
            segments = pipe.schedule(sb, after_footage=fm.has_footage(project))
            ret = next(s for s in segments if s.shot_index == k)
            ref = next(s for s in segments if s.shot_index == back[k])
            if ret.index >= project.finished_segments():
                return None, None, None, f"Shot {k + 1} is not generated yet."
            n_foot = int(fm.footage_meta(project).get("frames", 0))  # the film's frames start after the footage
            offset = history.shape[2] - sum(s.num_latents for s in segments[: project.finished_segments()])
            first, back_at = n_foot + ref.first_frame, n_foot + ret.first_frame  # indices into `frames`
            before = history[:, :, : offset + ret.first_latent]  # what the memory held when the return was drawn
            res = pipe.recall(before, first + ps.lead_frames(project), truth_frames=frames, truth_index=first, **opts)
            returned = frames[:, back_at]
            truth, recalled, _ = recall_images(res)
            p, q = psnr(returned, frames[:, first]), ssim(returned, frames[:, first])
            fps = pipe.model.video.fps
            md = "\n".join([
                f"Shot {k + 1} ({ret.start:g} s) returns to shot {back[k] + 1} ({ref.start:g} s).", "",
                "| compared with shot " + f"{back[k] + 1}'s first frame | PSNR | SSIM |", "|---|---|---|",
                f"| what the memory recalled of it, from the {before.shape[2]} latent frames before the return "
                f"({res.memory_tokens:,} tokens) | {res.psnr:.2f} dB | {res.ssim:.3f} |",
                f"| the return's first frame (at {back_at / fps:.2f} s of the film) | {p:.2f} dB | {q:.3f} |"])
            return truth, recalled, zoom(tensor_to_frames(returned[:, None])[0]), md

        out = self._inspector_job(job)
        return _no_change(4) if out is None else out

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
        opts = _checked(steps=steps, seed=seed)

        def job():
            pipe = self._pipeline()
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
        return _no_change(4) if out is None else out

