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
from ...sampling.pipeline import PFPPipeline
from ...film.export import read_export_record, restore_footage, write_film
from ...film.project import Project, ProjectError
from ...film.session import END_EVENTS, Event, GenerationSession, Plan
from ...film.storyboard import Storyboard, StoryboardError, parse_storyboard
from ...film import footage as fm
from . import project_state as ps
from .errors import checked
from .footage_view import FootagePanel
from .inspector_view import InspectorPanel
from .status_view import status_html
from .storyboard_view import WHOLE_FILM, check_storyboard, preset_names, read_preset, replace_prompt_in_text

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
        self.footage = FootagePanel(self)  # "start from footage" (footage_view.py)
        self.inspector = InspectorPanel(self)  # the memory inspector (inspector_view.py)

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
    def using_model(self, what: str, wait: bool = False, warn: bool = False):
        """Hold the model for `what`, yielding True. wait=False: while another job holds it, refuse at once with a
        gr.Error 'Busy: ...', or, warn=True, with a warning, yielding False (the inspector: nothing changes)."""
        if not self._model_lock.acquire(blocking=wait):
            if not warn:
                raise gr.Error(f"Busy: {self._busy_with or 'a job'} is running. One job at a time: wait for it or "
                               "press Stop.")
            gr.Warning(f"Busy: {self._busy_with or 'a job'} is running; the inspector works when it is finished.")
            yield False
            return
        self._busy_with = what
        try:
            yield True
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
        return dict(project=name.strip(), text=text, **checked(seed=seed, steps=steps))

    def generate(self, project_name: str, text: str, seed, steps, profile: str = "auto",
                 emit: Callable[[Event], None] = lambda e: None, should_stop: Callable[[], bool] | None = None) -> Event:
        """Generate the storyboard into the project, keeping the finished segments these settings would make again
        (a stopped or killed run resumes); what it replaces is kept as a take. Returns the run's last event."""
        self._parse(text)
        project = self._open(project_name)
        opts = checked(seed=seed, steps=steps)
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
        opts = checked(seed=seed, steps=steps)
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
            held = fm.load_footage_latents(project)
            same = (held is None and footage is None) or (
                held is not None and footage is not None and torch.equal(held, footage.latents.to(held)))
            if not same:  # the export's footage (or none) starts the film; a restore run again keeps its segments
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

            def emit_but_the_end(event):  # the end goes out once the film's preview is written
                if not isinstance(event, END_EVENTS):
                    emit(event)

            end = session.run(make_plan(session), emit_but_the_end, should_stop)
            if project.finished_segments():
                try:
                    self.film_preview(project)
                except Exception as err:  # a preview that cannot be written does not undo the run
                    traceback.print_exception(err, file=sys.stderr)
            emit(end)
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
        with self.using_model("a shot preview"):  # the segments must not change while they are read
            path = write_film(project, project.folder / "previews" / f"shot_{k + 1:02d}.mp4",
                              self._shot_segments(project, k), crf=18, with_footage=False)
        return str(path)

    def export(self, project_name: str, crf, which=WHOLE_FILM, footage: str = fm.EXPORT_WITH_FOOTAGE):
        """-> (MP4 path, message). Whole film -> film.mp4 (starting with the footage unless `footage` says
        'generated part only'), one shot -> shot_NN.mp4, in the project folder."""
        project = self._open(project_name, create=False)
        crf = checked(crf=crf)["crf"]
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
