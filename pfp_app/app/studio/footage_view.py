"""The studio's "start from footage" panel: upload a video, one image or several stills; the project keeps it as
the history before the storyboard's first shot (pfp_app/footage.py). Also: an MP4 exported by the app is
recognised and its project (storyboard, seed, steps, footage) offered for restoring instead.

Callbacks return plain values / `gr.update`s; errors become `gr.Error` with one clear message, and nothing is
written into the project unless the footage was read, prepared and encoded completely.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gradio as gr

from ...film import footage as fm
from ...film.export import read_export_record
from ...io.video import VideoReadError

NO_FOOTAGE = "No footage: the storyboard starts from nothing. Upload a video, an image or several stills to continue them."


def _paths(upload) -> list[Path]:
    if not upload:
        return []
    items = upload if isinstance(upload, (list, tuple)) else [upload]
    return [Path(getattr(p, "name", p)) for p in items]


def _footage_path(paths: list[Path], workdir: Path) -> Path:
    """One path check_footage understands: the file itself, or a folder of copies of several stills (in the
    order they were uploaded; Gradio keeps each upload in its own temporary folder)."""
    if len(paths) == 1:
        return paths[0]
    for i, p in enumerate(paths):
        if p.suffix.lower() not in fm.IMAGE_SUFFIXES:
            raise fm.FootageError(f"'{p.name}' is not an image: upload one video, or several images")
        shutil.copyfile(p, workdir / f"{i:05d}_{p.name}")
    return workdir


class FootagePanel:
    """The footage callbacks over a `Studio` (its projects, pipeline and job lock)."""

    def __init__(self, studio):
        self.studio = studio

    def _pipe(self):
        return self.studio._pipeline()

    def describe(self, project) -> str:
        """What the project's footage is: duration, frames, memory tokens; or that there is none."""
        if not fm.has_footage(project):
            return NO_FOOTAGE
        pipe = self._pipe()
        meta = fm.footage_meta(project)
        tokens = fm.footage_memory_tokens(pipe, fm.load_footage_latents(project))
        note = f" ({meta['note']})" if meta.get("note") else ""
        return (f"**Footage** `{meta.get('source')}`{note}: "
                + fm.describe(int(meta["frames"]), pipe.model.video.fps, tokens)
                + ". The preview shows what the model sees, at its size and frame rate.")

    def show(self, project_name: str):
        """-> (preview video, info) of the project's footage (when a project opens)."""
        try:
            project = self.studio._open(project_name, create=False)
        except gr.Error:
            return None, NO_FOOTAGE
        path = fm.footage_video_path(project)
        return (str(path) if path.is_file() else None), self.describe(project)

    def upload(self, project_name: str, upload, still_seconds, as_footage: bool = False):
        """-> (preview, info, restore offer visible). An app export is not taken as footage until the user chooses."""
        paths = _paths(upload)
        if not paths:
            return self.show(project_name) + (gr.update(visible=False),)
        record = read_export_record(paths[0]) if len(paths) == 1 and not as_footage else None
        if record is not None:
            return (gr.update(), f"**This MP4 was exported by PFP Studio** ({record.describe()}). Restore its project "
                    "(storyboard, seed, steps and footage) into the editor, or use its frames as footage.",
                    gr.update(visible=True))
        project = self.studio._open(project_name)
        with self.studio.using_model("footage preparation"):
            with tempfile.TemporaryDirectory(prefix="pfp-stills-") as tmp:
                try:
                    path = _footage_path(paths, Path(tmp))
                    source = fm.check_footage(path, still_seconds)
                    footage = fm.prepare_footage(self._pipe(), path, still_seconds)
                    footage.source_name = paths[0].name if len(paths) == 1 else f"{len(paths)} stills"
                    fm.save_footage(project, footage, source)
                except (fm.FootageError, VideoReadError) as err:
                    raise gr.Error(str(err).replace(str(paths[0]), paths[0].name)) from None
        return str(fm.footage_video_path(project)), self.describe(project), gr.update(visible=False)

    def use_as_footage(self, project_name: str, upload, still_seconds):
        return self.upload(project_name, upload, still_seconds, as_footage=True)

    def remove(self, project_name: str):
        project = self.studio._open(project_name, create=False)
        try:
            with self.studio.using_model("footage removal"):  # not while a generation continues it
                fm.remove_footage(project)
        except fm.FootageError as err:
            raise gr.Error(str(err)) from None
        return None, NO_FOOTAGE

    def export_of(self, upload) -> Path:
        """The one MP4 exported by PFP Studio in an upload (restore), else gr.Error."""
        paths = _paths(upload)
        if len(paths) != 1 or read_export_record(paths[0]) is None:
            raise gr.Error("Drop an MP4 exported by PFP Studio to restore its project")
        return paths[0]
