"""The studio's state and callbacks: plain methods over the core, one per UI action, testable without a browser.

A `Studio` holds the projects folder, the loaded pipeline (loaded by `load()`, never at import), one job lock
(generation, recall and export share the model: a second job is refused with a clear message) and a stop flag.
Callbacks take and return plain values (text, numbers, file paths, numpy images, `gr.update` dicts); failures
become `gr.Error` (the job ends, the app stays usable) or `gr.Warning`.

Generation runs the core in a worker thread; the callback is a generator that turns the core's `on_step` /
`on_segment` callbacks into progress updates and yields the newest segment's MP4 as soon as it is written.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import gradio as gr
import torch

from ...model.memory_encoder import memory_token_count
from ...model.bundle import ModelLoadError, load_model
from ..options import MAX_SEED, OptionError, check_options, check_seconds
from ...sampling.pipeline import GenerationSettings, GenerationStopped, PFPPipeline, seconds_to_frame
from ...film.project import Project, ProjectError
from ...film.storyboard import Storyboard, StoryboardError, parse_storyboard
from ...film.takes import keep_take
from ...io.video import VideoReadError, read_video, write_mp4
from ...film import footage as fm
from . import project_state as ps
from .footage_view import FootagePanel
from .recall_view import check_upload, encode_clip, metrics_markdown, prepare_clip, recall_images
from .status_view import status_html
from .storyboard_view import WHOLE_FILM, check_storyboard, preset_names, read_preset, replace_prompt_in_text

DEFAULT_PROJECT = "untitled"
MAX_STEPS = 100  # the sliders' range; pfp_app.app.options allows up to 1000 (the API and the CLI)


def _optional_runtime():
    """pfp_app.runtime.profiles (issue 5) when it exists and offers apply_profile(model, name); else None (CPU only)."""
    try:
        from ...runtime import profiles as runtime  # type: ignore[attr-defined]
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
        self._job = threading.Lock()
        self._job_name = ""
        self._stop = threading.Event()
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
                 f"cut at every shot · {v.steps} steps by default · {self._pipeline().device} "
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
            return (picker, gr.update(), gr.update(), gr.update(), None, self._status_html(message="New project."),
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
        return (picker, text or gr.update(), seed, steps, preview, self._status_html(n, total, message=msg),
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

    def project_summary(self, name: str) -> str:
        try:
            folder = ps.project_folder(self.root, name)
        except ProjectError:
            return ""
        if not folder.is_dir():
            return f"New project **{name}** (not saved yet)."
        n = Project(folder).finished_segments()
        return f"Project **{name}**: {n} finished segment{'s' * (n != 1)} in `{folder}`."

    def save_storyboard(self, name: str, text: str) -> str:
        sb = self._parse(text)
        project = self._open(name)
        ps.save_draft(project, text)
        ps.remember_last(self.root, name)
        return f"Saved the storyboard ({len(sb.shots)} shots) to `{project.folder / ps.DRAFT_FILE}`."

    # generation -----------------------------------------------------------------------------------------
    def _settings(self, seed, steps) -> GenerationSettings:
        return GenerationSettings(**_checked(seed=seed, steps=steps))

    def _acquire(self, what: str) -> None:
        if not self._job.acquire(blocking=False):
            raise gr.Error(f"Busy: {self._job_name} is running. One job at a time — wait for it or press Stop.")
        self._job_name = what
        self._stop.clear()

    def _release(self) -> None:
        self._job_name = ""
        self._job.release()

    def refuse_if_busy(self) -> None:
        if self.busy:
            raise gr.Error(f"Busy: {self._job_name or 'a job'} is running. One job at a time — wait for it or press Stop.")

    @property
    def busy(self) -> bool:
        return self._job.locked()

    def stop(self) -> str:
        if not self.busy:
            return "Nothing is running."
        if self._job_name != "a generation":
            return f"{self._job_name.capitalize()} is running; it cannot be stopped but finishes soon."
        self._stop.set()
        return "Stopping after the current denoising step; finished segments are kept."

    def generate(self, project_name: str, text: str, seed, steps, profile: str = "auto",
                 progress: Callable | None = None) -> Iterator[tuple]:
        """Generate the storyboard into the project; finished segments that these settings would make again
        exactly are kept (a stopped or killed run resumes). Yields (preview, status, slider, storyboard text, seed)."""
        t_click = time.perf_counter()
        sb = self._parse(text)
        project = self._open(project_name)
        settings = self._settings(seed, steps)
        self._acquire("a generation")
        try:
            pipe = self._job_pipeline(profile)
            segments = pipe.schedule(sb, after_footage=fm.has_footage(project))
            keep = self._resumable(project, pipe, segments, settings)
            take = self._keep_take(project, keep)
            ps.save_draft(project, text)
            ps.remember_last(self.root, project_name)
            if keep == len(segments):
                project.drop_segments_from(keep)  # the storyboard got shorter
                msg = (f"Nothing to generate: all {keep} segments are finished with these settings. "
                       "Change a prompt, the seed or the steps, or use “Regenerate this shot”.")
                yield (self._film_preview(project, pipe), self._status_html(keep, keep, message=msg),
                       self._slider(project), gr.update(), gr.update())
                return
            project.drop_segments_from(keep)
            note = f"kept {keep} finished segment{'s' * (keep != 1)}; " if keep else ""
            note += f"the previous take is in {take.relative_to(project.folder)}/; " if take else ""

            def work(**cb):
                return pipe.generate(text, settings, project, start_segment=keep, **cb)

            yield from self._stream(work, project, pipe, settings, len(segments), keep, progress, t_click,
                                    f"Generating: {note}", gr.update())
        finally:
            self._release()

    @staticmethod
    def _keep_take(project: Project, keep: int):
        """Before segments keep.. are replaced: the whole current take goes to takes/NNN/ (issue 15: Generate
        with another storyboard or seed replaced a creator's segments without asking). Returns its folder."""
        return keep_take(project) if project.finished_segments() > keep else None

    def _resumable(self, project: Project, pipe: PFPPipeline, segments, settings: GenerationSettings) -> int:
        """Segments to keep for Generate: none if the model, the film's seed (segment 0's; a regenerated shot keeps
        its own) or the sampler differ from the project's last run, else the finished ones whose prompt and times
        match the storyboard."""
        if project.finished_segments() == 0:
            return 0
        s = project.read_settings()
        same = (s.get("model") == pipe.model.name and ps.first_seed(project) == settings.seed
                and s.get("sampler_settings") == ps.segment_record(pipe, settings, segments[0])["sampler"])
        return ps.reusable_prefix(project, pipe, segments) if same else 0

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

    def regenerate(self, project_name: str, text: str, shot, prompt: str, seed, steps, profile: str = "auto",
                   progress: Callable | None = None) -> Iterator[tuple]:
        """Regenerate one shot (new seed and/or edited prompt) and recompute the shots after it from the new
        history; the segments before it are kept untouched. Yields like `generate` (with the new storyboard text)."""
        t_click = time.perf_counter()
        sb, k, text, new_text = self.shot_edit(text, shot, prompt)
        project = self._open(project_name)
        settings = self._settings(seed, steps)
        self._acquire("a generation")
        try:
            pipe = self._job_pipeline(profile)
            after_footage = fm.has_footage(project)
            segments = pipe.schedule(sb, after_footage=after_footage)
            try:
                first = pipe.first_segment_of_shot(sb, k, after_footage=after_footage)
            except ValueError:
                raise gr.Error(f"Shot {k + 1} has no segment of its own (it is shorter than one segment)") from None
            # segments before the shot are kept only while their prompts and times still match the storyboard
            keep = ps.reusable_prefix(project, pipe, segments)
            finished = project.finished_segments()
            start = min(first, keep)
            self._keep_take(project, start)
            ps.save_draft(project, text)
            ps.remember_last(self.root, project_name)
            if start == min(first, finished):
                def work(**cb):
                    return pipe.regenerate_shot(project, text, k, settings, **cb)
                note = f"shot {k + 1} from segment {start + 1}"
            else:  # an earlier shot changed as well: regenerate from there
                project.drop_segments_from(start)

                def work(**cb):
                    return pipe.generate(text, settings, project, start_segment=start, **cb)
                note = f"from segment {start + 1} (an earlier shot changed too)"
            yield from self._stream(work, project, pipe, settings, len(segments), start, progress, t_click,
                                    f"Regenerating {note}, keeping {start} segment{'s' * (start != 1)}: ",
                                    new_text)
        finally:
            self._release()

    def _job_pipeline(self, profile: str | None) -> PFPPipeline:
        try:
            return self._pipeline(profile)
        except Exception as err:  # a runtime profile that cannot be applied here
            raise gr.Error(f"Cannot apply runtime profile '{profile}': {err}") from None

    def _stream(self, work: Callable, project: Project, pipe: PFPPipeline, settings: GenerationSettings,
                n_segments: int, start: int, progress: Callable | None, t_click: float, verb: str,
                text_update) -> Iterator[tuple]:
        """Run `work(on_segment=, on_step=, should_stop=)` in a thread; yield UI updates as it reports."""
        events: queue.Queue = queue.Queue()

        def on_segment(res):
            ps.write_record(project, pipe, settings, res)
            events.put(("segment", res))

        def run():
            try:
                work(on_segment=on_segment, on_step=lambda *a: events.put(("step", a)), should_stop=self._stop.is_set)
                events.put(("done", None))
            except BaseException as err:  # handed to the UI thread
                events.put(("error", err))

        seed_update = gr.update()  # the main Seed field keeps what the user typed (a regenerate has its own seed)
        worker = threading.Thread(target=run, name="pfp-generate", daemon=True)
        worker.start()
        first_preview = None
        done_segments = start
        try:
            runtime = f" ({self.profile_note})" if self.profile_note else ""
            yield (gr.update(), self._status_html(start, n_segments, 0, settings.steps, verb + "starting…" + runtime),
                   gr.update(), text_update, seed_update)
            while True:
                kind, payload = events.get()
                if kind == "step":
                    k, n, i, steps = payload
                    total = max(1, (n - start) * steps)
                    if progress is not None:
                        progress(((k - start) * steps + i, total), desc=f"segment {k + 1}/{n} · step {i}/{steps}")
                    what = f"segment {k + 1} of {n}" + (": decoding" if i == steps else "")
                    yield (gr.update(), self._status_html(k, n, i, steps, verb + what),
                           gr.update(), gr.update(), gr.update())
                elif kind == "segment":
                    seg = payload.segment
                    done_segments = seg.index + 1
                    if first_preview is None:
                        first_preview = time.perf_counter() - t_click
                    msg = (f"{verb}segment {seg.index + 1} of {n_segments} done in {payload.seconds:.1f} s "
                           f"({payload.memory_tokens:,} memory tokens) · first preview {first_preview:.1f} s after the click")
                    preview = gr.update(value=str(project.segment_video_path(seg.index)),
                                        label=f"Newest segment {seg.index + 1}/{n_segments} · shot {seg.shot_index + 1}")
                    yield (preview, self._status_html(done_segments, n_segments, message=msg), self._slider(project),
                           gr.update(), gr.update())
                elif kind == "done":
                    total_s = time.perf_counter() - t_click
                    first = f" · first preview {first_preview:.1f} s after the click" if first_preview else ""
                    made = n_segments - start
                    kept = f" ({start} earlier segment{'s' * (start != 1)} kept)" if start else ""
                    msg = f"Done: {made} segment{'s' * (made != 1)} in {total_s:.1f} s{kept}{first}."
                    yield (self._film_preview(project, pipe), self._status_html(n_segments, n_segments, message=msg),
                           self._slider(project), gr.update(), gr.update())
                    return
                else:
                    err = payload
                    kept = project.finished_segments()
                    if isinstance(err, GenerationStopped):
                        msg = f"Stopped. {kept} finished segment{'s' * (kept != 1)} kept in the project."
                        yield (self._film_preview(project, pipe) if kept else None,
                               self._status_html(kept, n_segments, message=msg), self._slider(project),
                               gr.update(), gr.update())
                        return
                    if _is_oom(err):
                        if torch.cuda.is_available():
                            torch.cuda.empty_cache()
                        raise gr.Error(f"Out of GPU memory. {kept} finished segments are kept; choose a lower-memory "
                                       "runtime profile or fewer steps, then press Generate to continue.")
                    traceback.print_exception(err, file=sys.stderr)
                    raise gr.Error(f"Generation failed ({type(err).__name__}: {err}). {kept} finished segments are "
                                   "kept; the app is still usable.")
        finally:
            if worker.is_alive():  # the page went away mid-job: stop the worker and wait for it
                self._stop.set()
                worker.join()

    def _status_html(self, seg_done: int = 0, n_segments: int = 0, step: int | None = None, steps: int | None = None,
                     message: str = "") -> str:
        return status_html(seg_done, n_segments, step, steps, message)

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
    def _write_segments(self, project: Project, out: Path, segments: range, crf: int, with_footage: bool = False) -> Path:
        """The segments' decoded MP4s joined into one H.264 MP4, with model, seeds and storyboard in its comment;
        with_footage: the project's footage first (the whole film only)."""
        if len(segments) == 0:
            raise gr.Error("Nothing to export: the project has no finished segment")
        lead = fm.footage_video_path(project) if with_footage and segments.start == 0 and fm.has_footage(project) else None

        def frames():
            if lead is not None:
                yield from read_video(lead)[0]
            for i in segments:
                yield from read_video(project.segment_video_path(i))[0]

        note = fm.with_footage_field(ps.reproduce_note(project), project, lead)
        return write_mp4(out, frames(), self.model.video.fps, crf=crf, comment=note)

    def _film_preview(self, project: Project, pipe: PFPPipeline):
        n = project.finished_segments()
        if n == 0:
            return None
        path = self._write_segments(project, project.folder / "previews" / "film.mp4", range(n), crf=20, with_footage=True)
        return gr.update(value=str(path), label=f"The film so far: {n} segment{'s' * (n != 1)}")

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
        path = self._write_segments(project, project.folder / "previews" / f"shot_{k + 1:02d}.mp4",
                                    self._shot_segments(project, k), crf=18)
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
        path = self._write_segments(project, out, segments, crf, with_footage=footage != fm.EXPORT_GENERATED_ONLY)
        ps.write_seeds(project)
        return str(path), (f"Exported {len(segments)} segment{'s' * (len(segments) != 1)} to `{path}` (CRF {crf}); "
                           f"storyboard and seeds are in its comment and in `{project.folder}`.")

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
        if not self._job.acquire(blocking=False):
            gr.Warning(f"Busy: {self._job_name} is running; the inspector works when it is finished.")
            return None
        self._job_name = "a recall"
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
            self._release()

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

