"""The studio's side of the job queue (pfp_app.app.jobs): Generate and Regenerate submit jobs, a timer on the
page shows the job's progress, previews and result, and Stop reaches the running job, from any page.

A reload or a second tab reattaches to the running job on its first tick; the job itself runs in the
app's worker thread and never depends on a page being open.
"""

from __future__ import annotations

import html
import re
import time

import gradio as gr

from ..jobs import Job, JobQueue
from .callbacks import Studio

POLL_SECONDS = 1.0
_MESSAGE_RE = re.compile(r"<p>(.*)</p>", re.DOTALL)


def _message_of(status_html: str) -> str:
    m = _MESSAGE_RE.search(status_html or "")
    return html.unescape(m.group(1)) if m else ""


class StudioJobs:
    """Jobs of one studio: `queue` persists in the projects folder; `start()` runs the worker."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self.queue = JobQueue(studio.root, self.run_job, request_stop=studio.stop)

    def start(self) -> "StudioJobs":
        self.queue.start()
        return self

    # submitting --------------------------------------------------------------------------------------
    def enqueue_generate(self, name: str, text: str, seed, steps, profile: str = "auto"):
        """Check everything a job needs (storyboard, project name, options), then queue it.
        -> (status HTML, page state, project message)."""
        self.studio._parse(text)
        self.studio._open(name)
        s = self.studio._settings(seed, steps)
        job = self.queue.submit("generate", dict(project=name.strip(), text=text, seed=s.seed, steps=s.steps,
                                                 profile=profile))
        return self._queued(job)

    def enqueue_regenerate(self, name: str, text: str, shot, prompt: str, seed, steps, profile: str = "auto"):
        """-> (status HTML, page state, project message, storyboard text: with the edited prompt)."""
        _, k, text, new_text = self.studio.shot_edit(text, shot, prompt)
        self.studio._open(name)
        s = self.studio._settings(seed, steps)
        job = self.queue.submit("regenerate", dict(project=name.strip(), text=text, shot=k, prompt="", seed=s.seed,
                                                   steps=s.steps, profile=profile))
        return (*self._queued(job), new_text)

    def _queued(self, job: Job):
        pos = self.queue.position(job.id)
        what = f"{'Regenerate' if job.kind == 'regenerate' else 'Generate'} '{job.params['project']}'"
        msg = f"Queued: {what} is next." if pos <= 1 else f"Queued: {what} is number {pos} in the queue."
        return self.studio._status_html(message=msg), {"id": job.id, "version": -1}, msg

    def stop(self) -> str:
        if self.queue.running() is not None:
            return self.queue.stop()
        return self.studio.stop()

    # running (in the queue's worker thread) ---------------------------------------------------------------
    def run_job(self, job: Job, report, should_stop) -> str:
        p = job.params
        while True:
            while self.studio.busy:  # a recall or an export holds the model: wait for it
                if should_stop():
                    return "Stopped before it started."
                time.sleep(0.2)
            if job.kind == "generate":
                updates = self.studio.generate(p["project"], p["text"], p["seed"], p["steps"], p["profile"])
            else:
                updates = self.studio.regenerate(p["project"], p["text"], p["shot"], p["prompt"], p["seed"], p["steps"],
                                                 p["profile"])
            message = ""
            try:
                for preview, status, slider, _text, _seed in updates:
                    view = {"status": status}
                    if isinstance(preview, dict) and preview.get("value"):
                        view["preview"] = [str(preview["value"]), preview.get("label")]
                    elif isinstance(preview, str):
                        view["preview"] = [preview, None]
                    if isinstance(slider, dict):
                        view["slider"] = {k: v for k, v in slider.items() if k != "__type__"}
                    report(view)
                    message = _message_of(status)
                return message
            except gr.Error as err:
                if str(err.message).startswith("Busy") and not message:  # lost a race with a recall: try again
                    continue
                raise

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
        if job.status == "queued":
            status = self.studio._status_html(message=f"Queued: number {self.queue.position(job.id)} in the queue.")
        elif job.status in ("failed", "cancelled"):
            status = self.studio._status_html(message=f"{job.status.capitalize()}: {job.message}")
        else:
            status = job.view.get("status") or self.studio._status_html(message=job.message or "Starting…")
            if "preview" in job.view and job.view["preview"] != seen.get("preview"):
                path, label = job.view["preview"]
                preview = gr.update(value=path, label=label) if label else path
                seen["preview"] = job.view["preview"]
            if "slider" in job.view:
                slider = gr.update(**job.view["slider"])
        seen.update(id=job.id, version=job.version, status=job.status)
        return preview, status, slider, md, seen

    def queue_markdown(self) -> str:
        jobs = [j for j in self.queue.jobs() if j.status in ("queued", "running")]
        if not jobs:
            return "Queue: empty."
        icon = {"running": "▶ running", "queued": "⏳ queued"}
        rows = [f"| {icon[j.status]} | {j.kind} | {html.escape(j.params.get('project', ''))} | "
                f"{html.escape(j.message)} |" for j in jobs]
        return "\n".join(["| job | what | project | note |", "|---|---|---|---|", *rows])
