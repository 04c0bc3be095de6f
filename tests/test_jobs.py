"""Issue 15 #7: jobs outlive the page. The queue (pfp_app.app.jobs) in the core, then the studio's use of it."""

from __future__ import annotations

import json
import threading

import pytest

from pfp_app.app.jobs import QUEUE_FILE, JobQueue
from pfp_app.film.project import Project
from pfp_app.film.session import Done, SegmentDone, Stopped
from pfp_app.app.studio import Studio
from pfp_app.app.studio.job_view import StudioJobs


class Recorder:
    """A `run` for the queue that records the order of jobs and can be held at a gate."""

    def __init__(self):
        self.ran: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, job, report, should_stop):
        self.started.set()
        report(SegmentDone(0, 1, 0, None, 0.1, 0))
        while not self.gate.wait(0.01):
            if should_stop():
                return Stopped(0, 1)
        self.ran.append(job.params["name"])
        return Done(1, 0, 1, 0.1)


def test_jobs_run_one_at_a_time_in_order(tmp_path):
    run = Recorder()
    q = JobQueue(tmp_path, run).start()
    for name in ("a", "b", "c"):
        q.submit("generate", {"name": name})
    assert q.wait_idle(10)
    assert run.ran == ["a", "b", "c"]
    assert [j.status for j in q.jobs()] == ["done", "done", "done"]
    events = q.jobs()[0].events  # the newest event of each kind, the last one included
    assert set(events) == {"SegmentDone", "Done"} and events["Done"].made == 1 and q.jobs()[0].version >= 2


def test_queue_survives_a_restart_and_resumes_the_running_job(tmp_path):
    run = Recorder()
    run.gate.clear()
    q = JobQueue(tmp_path, run).start()
    q.submit("generate", {"name": "first"})
    q.submit("generate", {"name": "second"})
    assert run.started.wait(5)
    saved = json.loads((tmp_path / QUEUE_FILE).read_text())
    assert [(r["params"]["name"], r["status"]) for r in saved] == [("first", "running"), ("second", "queued")]
    # the app is killed here: a new queue over the same folder (the old worker stays blocked, as if dead)
    run2 = Recorder()
    q2 = JobQueue(tmp_path, run2)
    assert [(j.params["name"], j.status, j.message) for j in q2.jobs()] == [
        ("first", "queued", "resumed after the app restarted"), ("second", "queued", "")]
    q2.start()
    assert q2.wait_idle(10) and run2.ran == ["first", "second"]
    q.stop()  # let the "dead" worker end


def test_stop_reaches_the_running_job_and_cancels_a_queued_one(tmp_path):
    run = Recorder()
    run.gate.clear()
    q = JobQueue(tmp_path, run).start()
    a = q.submit("generate", {"name": "a"})
    b = q.submit("generate", {"name": "b"})
    assert run.started.wait(5)
    assert q.stop(b.id) == "Cancelled the queued job."
    assert "Stopping" in q.stop()
    assert q.wait_idle(10)
    assert q.get(a.id).status == "stopped" and q.get(b.id).status == "cancelled"
    assert run.ran == []


def test_a_failing_job_is_reported_and_the_worker_goes_on(tmp_path):
    def run(job, report, should_stop):
        if job.params["name"] == "bad":
            raise ValueError("line 2: times must increase")
        return Done(0, 0, 0, 0.0)

    q = JobQueue(tmp_path, run).start()
    q.submit("generate", {"name": "bad"})
    q.submit("generate", {"name": "good"})
    assert q.wait_idle(10)
    assert [(j.status, j.message) for j in q.jobs()] == [("failed", "line 2: times must increase"), ("done", "")]


def test_a_damaged_queue_file_is_kept_aside(tmp_path):
    (tmp_path / QUEUE_FILE).write_text("{not json")
    assert JobQueue(tmp_path, lambda *a: "").jobs() == []
    assert (tmp_path / (QUEUE_FILE + ".damaged")).read_text() == "{not json"


# ------------------------------------------------------------------ the studio's jobs


SB = "0s: a red striped circle\n1s: a blue dotted square\nend: 2.5s\n"  # two segments of tiny-random


@pytest.fixture
def studio_jobs(tmp_path):
    return StudioJobs(Studio(tmp_path / "projects", model_spec="tiny-random").load())


def test_two_storyboards_queue_and_a_new_page_reattaches(studio_jobs):
    j = studio_jobs
    _, seen_a, msg_a = j.enqueue_generate("one", SB, 0, 1)
    _, seen_b, msg_b = j.enqueue_generate("two", SB.replace("red", "green"), 0, 1)
    assert "is next" in msg_a and "number 2 in the queue" in msg_b
    j.start()
    assert j.queue.wait_idle(120)
    for name in ("one", "two"):
        assert Project(j.studio.root / name).finished_segments() == 2
    # a page that follows job one (it submitted it) sees its end, with the film as preview
    preview, status, slider, md, seen = j.poll(seen_a)
    assert "Done: 2 segments" in status and "film" in str(preview) and slider["interactive"] is True
    assert md == "Queue: empty."
    again = j.poll(seen)  # nothing changed: nothing is sent again
    assert again[0] == again[1] == again[2] == {"__type__": "update"}


def test_a_page_reloaded_mid_job_reattaches_and_stop_works(studio_jobs):
    j = studio_jobs
    j.start()
    long = "0s: a red striped circle\nend: 30s\n"  # 20 segments: still running when the page comes back
    j.enqueue_generate("long", long, 0, 1)
    project = j.studio.root / "long"
    for _ in range(600):
        if (project / "segments" / "seg_000.safetensors").exists():
            break
        threading.Event().wait(0.1)
    preview, status, slider, md, seen = j.poll(None)  # a fresh page: no state of its own
    assert "running" in md and "pfp-seg-progress" in status
    assert "Stopping" in j.stop()
    assert j.queue.wait_idle(120)
    assert j.queue.jobs()[-1].status == "stopped"
    kept = Project(project).finished_segments()
    assert 1 <= kept < 20
    status = j.poll(seen)[1]
    assert f"Stopped. {kept} finished segment" in status
