"""The studio's side of the job queue (pfp_app.app.jobs): Generate, Regenerate and Restore submit jobs, a timer
on the page formats the running job's events (film/session.py) into progress, previews and messages, and Stop
reaches the running job, from any page.

A reload or a second tab reattaches to the running job on its first tick; the job itself runs in the app's one
worker thread and never depends on a page being open.
"""

from __future__ import annotations

import html

import gradio as gr

from ...film.session import Done, Failed, SegmentDone, Started, Stopped
from ..jobs import Job, JobQueue
from .callbacks import Studio
from .status_view import status_html

POLL_SECONDS = 1.0
VERBS = {"generate": "Generating", "regenerate": "Regenerating", "restore": "Restoring"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def started_note(event: Started) -> str:
    note = f"kept {_plural(event.kept, 'finished segment')}; " if event.kept else ""
    if event.take is not None:
        note += f"the previous take is in {event.take.parent.name}/{event.take.name}/; "
    return note


def end_message(event, verb: str = "Generating") -> str:
    """The message of a job's last event."""
    if isinstance(event, Done):
        if event.made == 0:
            return (f"Nothing to generate: all {_plural(event.kept, 'segment')} are finished with these settings. "
                    "Change a prompt, the seed or the steps, or use “Regenerate this shot”.")
        kept = f" ({_plural(event.kept, 'earlier segment')} kept)" if event.kept else ""
        return f"Done: {_plural(event.made, 'segment')} in {event.seconds:.1f} s{kept}."
    if isinstance(event, Stopped):
        return f"Stopped. {_plural(event.kept, 'finished segment')} kept in the project."
    if isinstance(event, Failed):
        if event.out_of_memory:
            return (f"Out of GPU memory. {event.kept} finished segments are kept; choose a lower-memory runtime "
                    "profile or fewer steps, then press Generate to continue.")
        if isinstance(event.error, ValueError):
            return f"Failed: {event.error}"
        return (f"{verb} failed ({type(event.error).__name__}: {event.error}). {event.kept} finished segments are "
                "kept; the app is still usable.")
    return ""


def job_status(job: Job) -> str:
    """The status line of a job from its newest events: progress bars and one message."""
    ev = job.events
    verb = VERBS.get(job.kind, "Generating")
    start = ev.get("Started")
    note = f"{verb}: {started_note(start)}" if start else f"{verb}: "
    end = next((ev[k] for k in ("Done", "Stopped", "Failed") if k in ev), None)
    if job.status in ("queued", "cancelled") or (job.status == "failed" and end is None):
        return status_html(message=f"{job.status.capitalize()}: {job.message}" if job.message else "Queued.")
    if end is not None:
        n = end.num_segments
        done = n if isinstance(end, Done) else end.kept
        return status_html(done, n, message=end_message(end, verb))
    step, seg = ev.get("Step"), ev.get("SegmentDone")
    n = (step or seg or start).num_segments if (step or seg or start) else 0
    done = seg.segment + 1 if seg else (start.kept if start else 0)
    if step is not None and (seg is None or step.segment > seg.segment):
        what = f"segment {step.segment + 1} of {n}" + (": decoding" if step.step == step.steps else "")
        return status_html(done, n, step.step, step.steps, note + what)
    if seg is not None:
        return status_html(done, n, message=f"{note}segment {seg.segment + 1} of {n} done in {seg.seconds:.1f} s "
                                            f"({seg.memory_tokens:,} memory tokens)")
    return status_html(done, n, message=note + "starting…")


class StudioJobs:
    """Jobs of one studio: `queue` persists in the projects folder; `start()` runs the worker."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self.queue = JobQueue(studio.root, self.run_job)

    def start(self) -> "StudioJobs":
        self.queue.start()
        return self

    # submitting --------------------------------------------------------------------------------------
    def enqueue_generate(self, name: str, text: str, seed, steps, profile: str = "auto"):
        """Check everything a job needs (storyboard, project name, options), then queue it.
        -> (status HTML, page state, project message)."""
        params = self.studio.checked_request(name, text, seed, steps)
        return self._queued(self.queue.submit("generate", {**params, "profile": profile}))

    def enqueue_regenerate(self, name: str, text: str, shot, prompt: str, seed, steps, profile: str = "auto"):
        """-> (status HTML, page state, project message, storyboard text: with the edited prompt)."""
        _, k, text, new_text = self.studio.shot_edit(text, shot, prompt)
        params = self.studio.checked_request(name, text, seed, steps)
        job = self.queue.submit("regenerate", {**params, "shot": k, "profile": profile})
        return (*self._queued(job), new_text)

    def enqueue_restore(self, name: str, upload, profile: str = "auto"):
        """Restore the project of an export dropped in 'Start from footage': its storyboard goes into the editor and
        a job regenerates it with its own seeds and settings. -> (storyboard, status, page state, message, offer)."""
        params, text = self.studio.queue_restore(name, self.studio.footage.export_of(upload))
        status, seen, msg = self._queued(self.queue.submit("restore", {**params, "profile": profile}))
        return text, status, seen, msg, gr.update(visible=False)

    def _queued(self, job: Job):
        pos = self.queue.position(job.id)
        what = f"{job.kind.capitalize()} '{job.params['project']}'"
        msg = f"Queued: {what} is next." if pos <= 1 else f"Queued: {what} is number {pos} in the queue."
        return status_html(message=msg), {"id": job.id, "version": -1}, msg

    def stop(self) -> str:
        return self.queue.stop()

    # running (in the queue's worker thread) ---------------------------------------------------------------
    def run_job(self, job: Job, report, should_stop):
        p, s = job.params, self.studio
        run = dict(profile=p.get("profile", "auto"), emit=report, should_stop=should_stop)
        try:
            if job.kind == "generate":
                return s.generate(p["project"], p["text"], p["seed"], p["steps"], **run)
            if job.kind == "regenerate":
                return s.regenerate(p["project"], p["text"], p["shot"], "", p["seed"], p["steps"], **run)
            if job.kind == "restore":
                return s.restore_export(p["project"], **run)
            raise ValueError(f"unknown job kind {job.kind!r}")
        except gr.Error as err:  # a user's mistake found when the job ran (a profile, a vanished export)
            project = self._project(job)
            kept = project.finished_segments() if project is not None else 0
            return Failed(ValueError(err.message), kept, kept)

    # watching (the page's timer) ----------------------------------------------------------------------------
    def poll(self, seen: dict | None):
        """-> (preview, status, inspector slider, queue Markdown, page state). Follows the running job, else the
        page's own job; only what changed since the page's last tick is sent."""
        seen = dict(seen or {})
        job = self.queue.running() or (self.queue.get(seen["id"]) if seen.get("id") else None)
        queue_md = self.queue_markdown()
        md = queue_md if queue_md != seen.get("md") else gr.update()
        seen["md"] = queue_md
        if job is None or (job.id == seen.get("id") and job.version == seen.get("version")
                           and job.status == seen.get("status")):
            return gr.update(), gr.update(), gr.update(), md, seen
        preview = slider = gr.update()
        seg, end = job.events.get("SegmentDone"), next(
            (job.events[k] for k in ("Done", "Stopped", "Failed") if k in job.events), None)
        marker = [job.id, seg.segment if seg is not None else None, type(end).__name__ if end is not None else None]
        if (seg is not None or end is not None) and marker != seen.get("marker"):  # a segment or the end came
            seen["marker"] = marker
            project = self._project(job)
            shown = None
            if end is not None and project is not None and project.finished_segments():
                film = project.folder / "previews" / "film.mp4"  # written before the end event went out
                n = project.finished_segments()
                shown = [str(film), f"The film so far: {_plural(n, 'segment')}",
                         film.stat().st_mtime_ns if film.is_file() else 0]
            elif isinstance(seg, SegmentDone):
                shown = [str(seg.video), f"Newest segment {seg.segment + 1}/{seg.num_segments} · shot "
                                         f"{seg.shot_index + 1}", 0]
            if shown is not None and shown != seen.get("preview"):
                preview = gr.update(value=shown[0], label=shown[1])
                seen["preview"] = shown
            if project is not None:
                slider = self.studio._slider(project)  # reads every segment's file: once per segment, not per tick
        seen.update(id=job.id, version=job.version, status=job.status)
        return preview, job_status(job), slider, md, seen

    def _project(self, job: Job):
        try:
            return self.studio._open(job.params["project"], create=False)
        except gr.Error:
            return None

    def queue_markdown(self) -> str:
        jobs = [j for j in self.queue.jobs() if j.status in ("queued", "running")]
        if not jobs:
            return "Queue: empty."
        icon = {"running": "▶ running", "queued": "⏳ queued"}
        rows = [f"| {icon[j.status]} | {j.kind} | {html.escape(j.params.get('project', ''))} | "
                f"{html.escape(j.message)} |" for j in jobs]
        return "\n".join(["| job | what | project | note |", "|---|---|---|---|", *rows])


