"""A job queue in the app's process: generations outlive the browser page that asked for them.

A page only submits a job and then watches it; the work runs in one worker thread of the app, so a
reload, a closed tab or a sleeping laptop no longer stops a 20-minute generation. Jobs run one at a
time in the order they were submitted (several storyboards can be queued). The queue is written to
`<projects>/.jobs.json` at every change (atomically), and a restarted app puts the jobs that were
queued or running back in the queue: a generation resumes from its finished segments.

The queue knows nothing about models or the UI: `run(job, report, should_stop)` does the work, calls
`report(event)` with each of the generation session's typed events (`film/session.py`: the newest of each
kind is kept in `job.events`, `job.version` bumped) and returns the last one (Done, Stopped or Failed),
which sets the job's status; `should_stop()` turns true after `stop()`, the one way to stop a job.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..film.session import Done, Failed, Stopped
from ..io.atomic import atomic_write_text

QUEUE_FILE = ".jobs.json"
ACTIVE = ("queued", "running")
KEEP_FINISHED = 20  # finished jobs remembered for the page's queue list


@dataclass
class Job:
    id: str
    kind: str  # what to run, e.g. 'generate' or 'regenerate'
    params: dict  # JSON-able arguments of the run, e.g. project name, storyboard text, seed, steps
    status: str = "queued"  # queued | running | done | failed | stopped | cancelled
    message: str = ""
    created: float = 0.0
    events: dict = field(default_factory=dict)  # event class name -> the newest event of that kind; not saved
    version: int = 0  # bumped at every report: a page redraws only what changed

    def record(self) -> dict:
        return {k: getattr(self, k) for k in ("id", "kind", "params", "status", "message", "created")}


class JobQueue:
    def __init__(self, folder: str | Path, run: Callable[[Job, Callable[[object], None], Callable[[], bool]], object]):
        self.path = Path(folder) / QUEUE_FILE
        self._run = run
        self._cond = threading.Condition()
        self._jobs: list[Job] = self._load()
        self._stop_id: str | None = None
        self._thread: threading.Thread | None = None

    # persistence -----------------------------------------------------------------------------------
    def _load(self) -> list[Job]:
        try:
            records = json.loads(self.path.read_text(encoding="utf-8"))
            jobs = [Job(**r) for r in records]
        except FileNotFoundError:
            return []
        except (ValueError, TypeError, AttributeError) as err:  # a damaged file: start empty, keep it aside
            self.path.replace(self.path.with_name(self.path.name + ".damaged"))
            print(f"job queue: {self.path} was unreadable ({err}); kept as {QUEUE_FILE}.damaged", flush=True)
            return []
        for job in jobs:
            if job.status == "running":  # the app stopped mid-job: run it again, it resumes
                job.status, job.message = "queued", "resumed after the app restarted"
        return jobs

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps([j.record() for j in self._jobs], indent=1))

    # the page's side -----------------------------------------------------------------------------------
    def submit(self, kind: str, params: dict) -> Job:
        job = Job(id=uuid.uuid4().hex[:12], kind=kind, params=dict(params), created=time.time())
        with self._cond:
            self._jobs.append(job)
            self._trim()
            self._save()
            self._cond.notify_all()
        return copy.deepcopy(job)

    def jobs(self) -> list[Job]:
        """A snapshot (copies) of every job, oldest first."""
        with self._cond:
            return copy.deepcopy(self._jobs)

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            job = next((j for j in self._jobs if j.id == job_id), None)
            return copy.deepcopy(job)

    def running(self) -> Job | None:
        with self._cond:
            job = next((j for j in self._jobs if j.status == "running"), None)
            return copy.deepcopy(job)

    def latest(self) -> Job | None:
        """The job a page reattaches to: the running one, else the newest that has run."""
        with self._cond:
            run = [j for j in self._jobs if j.status == "running"]
            ran = [j for j in self._jobs if j.status not in ("queued", "cancelled")]
            job = (run or ran or [None])[-1]
            return copy.deepcopy(job)

    def position(self, job_id: str) -> int:
        """1 for the next job to run, 2 for the one after, ...; 0 when it is not waiting."""
        with self._cond:
            waiting = [j.id for j in self._jobs if j.status == "queued"]
            return waiting.index(job_id) + 1 if job_id in waiting else 0

    def stop(self, job_id: str | None = None) -> str:
        """Stop the running job (or the given one); a queued job is cancelled. Returns what happened."""
        with self._cond:
            job = next((j for j in self._jobs if j.id == job_id), None) if job_id else \
                next((j for j in self._jobs if j.status == "running"), None)
            if job is None:
                return "Nothing is running."
            if job.status == "queued":
                job.status, job.message = "cancelled", "cancelled before it started"
                self._save()
                return "Cancelled the queued job."
            if job.status != "running":
                return f"That job has already {job.status}."
            self._stop_id = job.id
        return "Stopping after the current denoising step; finished segments are kept."

    def _trim(self) -> None:
        finished = [j for j in self._jobs if j.status not in ACTIVE]
        for j in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            self._jobs.remove(j)

    # the worker ------------------------------------------------------------------------------------------
    def start(self) -> "JobQueue":
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="pfp-jobs", daemon=True)
            self._thread.start()
        return self

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """True once no job is queued or running (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(j.status in ACTIVE for j in self._jobs):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def _next(self) -> Job:
        with self._cond:
            while True:
                job = next((j for j in self._jobs if j.status == "queued"), None)
                if job is not None:
                    job.status, job.message, self._stop_id = "running", "", None
                    self._save()
                    self._cond.notify_all()
                    return job
                self._cond.wait()

    def _work(self) -> None:
        while True:
            job = self._next()

            def report(event, job=job) -> None:
                with self._cond:
                    job.events[type(event).__name__] = event
                    job.version += 1
                    self._cond.notify_all()

            should_stop = lambda job=job: self._stop_id == job.id  # noqa: E731
            try:
                end = self._run(job, report, should_stop)
            except Exception as err:  # one job's failure never ends the worker
                end = Failed(err, 0, 0)
            if isinstance(end, Failed) and not isinstance(end.error, ValueError):
                traceback.print_exception(end.error)  # a bug: its traceback, in the app's log
            status = {Done: "done", Stopped: "stopped", Failed: "failed"}.get(type(end), "done")
            message = str(getattr(end.error, "message", None) or end.error) if isinstance(end, Failed) else ""
            with self._cond:
                if isinstance(end, (Done, Stopped, Failed)):
                    job.events[type(end).__name__] = end
                job.status, job.message = status, message
                job.version += 1
                self._trim()
                self._save()
                self._cond.notify_all()
