"""End-to-end: start `app.py` on a free localhost port and drive the studio in headless Chromium (Playwright).

Needs Debian's chromium (`apt-get install -y chromium chromium-driver`); Playwright's own browser download
is not used. The flow: type a 2-shot storyboard, generate with the smallest settings, wait for the preview
video, move the inspector slider, export, check the MP4. Screenshot: test-artifacts/studio.png
(PFP_UPDATE_SCREENSHOT=1 also copies it to docs/screenshot.png, the README's picture).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
# PFP_BROWSER_MODEL=default PFP_BROWSER_STEPS= (empty: the model's own) renders the README screenshot with the
# shipped model; the suite uses the untrained tiny model with 1 step.
MODEL = os.environ.get("PFP_BROWSER_MODEL", "tiny-random")
STEPS = os.environ.get("PFP_BROWSER_STEPS", "1")
STORYBOARD = "0s: a red striped circle in front of the brick wall\n1.5s: a green dotted square in front of the gravel path\nend: 3s"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="/usr/bin/chromium is missing: apt-get install -y chromium chromium-driver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    projects = tmp_path_factory.mktemp("projects")
    log = projects.parent / "app.log"
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", MODEL, "--port", str(port),
                                 "--projects", str(projects)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read(1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"app.py did not start (exit {proc.poll()}):\n{log.read_text()}")
                time.sleep(0.5)
        yield url, projects, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def local_only(url: str, refused: list[str] | None = None):
    """A request handler for `browser_page`: the studio must work offline, so anything not served by the app
    (or a data:/blob: URL) is refused, and its address appended to `refused`."""
    def handle(route):
        u = route.request.url
        if u.startswith((url, "data:", "blob:")):
            route.continue_()
        else:
            if refused is not None:
                refused.append(u)
            route.abort()
    return handle


@contextmanager
def browser_page(timeout_ms: int, log: Path, failure_png: str, route=None):
    """A 1440x1000 page in Debian's chromium, with Playwright's `expect` waiting up to `timeout_ms`. `route`
    handles every request (the studio must work offline). On a failure: a full-page screenshot in
    test-artifacts/`failure_png` and the app's log printed."""
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    expect.set_options(timeout=timeout_ms)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            if route is not None:
                page.route("**/*", route)
            try:
                yield page
            except Exception:
                page.screenshot(path=str(ARTIFACTS / failure_png), full_page=True)
                print(log.read_text())
                raise
        finally:
            browser.close()


def test_studio_in_a_browser(server):
    from playwright.sync_api import expect

    from pfp_app.io.video import read_mp4_comment, read_video

    url, projects, log = server
    external: list[str] = []
    # 30 s: generous, CI shares two cores with the app's model
    with browser_page(30_000, log, "studio-failure.png", route=local_only(url, external)) as page:
        page.goto(url)
        expect(page.locator("#model-info")).to_contain_text("UNTRAINED" if MODEL == "tiny-random" else "trained")

        # storyboard: type it, see the inline validation and the shot table
        editor = page.locator("#storyboard textarea")
        editor.fill("0s: a\n1:05 b")
        expect(page.locator("#storyboard-status")).to_contain_text("line 2")
        editor.fill(STORYBOARD)
        expect(page.locator("#storyboard-status")).to_contain_text("2 shots")
        expect(page.locator("#shot-table")).to_contain_text("green dotted square")

        # smallest settings: one denoising step
        for slider in ("#steps", "#recall-steps") if STEPS else ():
            box = page.locator(f"{slider} input[type=number]")
            box.fill(STEPS)
            box.press("Enter")

        # generate and wait for the newest segment, then the whole film
        t0 = time.monotonic()
        page.locator("#generate").click()
        page.wait_for_selector("#preview video[src]", timeout=120_000)
        first_preview = time.monotonic() - t0
        expect(page.locator("#gen-status")).to_contain_text("Done", timeout=120_000)
        print(f"click -> first previewed segment: {first_preview:.1f} s ({MODEL}, {STEPS or 'default'} steps)")
        assert (projects / "untitled" / "segments" / "seg_001.mp4").is_file()

        # memory inspector: move the slider (a click on its track), wait for the recalled frame and metrics
        track = page.locator("#inspect-time input[type=range]")
        expect(track).to_be_enabled()
        box = track.bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
        expect(page.locator("#inspect-metrics")).to_contain_text("PSNR", timeout=60_000)
        expect(page.locator("#inspect-metrics")).to_contain_text("compression ratio")
        expect(page.locator("#recalled-frame img")).to_be_visible()
        assert float(page.locator("#inspect-time input[type=number]").input_value()) > 0

        # export the whole film
        page.locator("#export").click()
        expect(page.locator("#export-msg")).to_contain_text("Exported", timeout=60_000)
        link = page.locator("#export-file a")
        expect(link).to_have_attribute("href", re.compile(r"film\.mp4$"))
        download = page.request.get(link.get_attribute("href"))
        assert download.ok
        (projects.parent / "downloaded.mp4").write_bytes(download.body())
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "studio.png"), full_page=True)
        if os.environ.get("PFP_UPDATE_SCREENSHOT"):
            shutil.copy(ARTIFACTS / "studio.png", ROOT / "docs" / "screenshot.png")

    film = projects / "untitled" / "film.mp4"
    for mp4 in (film, projects.parent / "downloaded.mp4"):  # on disk, and as the browser downloads it
        frames, fps = read_video(mp4)
        assert frames.shape == {"tiny-random": (24, 64, 64, 3), "default": (24, 128, 128, 3)}[MODEL] and fps == 8
    comment = read_mp4_comment(film)
    assert '"seed":0' in comment and "1.5s: a green dotted square in front of the gravel path" in comment
    assert (projects / ".last").read_text() == "untitled"
    assert external == [], f"the page tried to reach the internet: {external}"


def test_a_reloaded_page_reattaches_to_the_running_job_and_stops_it(server):
    """Issue 15 #7: the job goes on when the page reloads; the new page shows its progress and Stop works."""
    from playwright.sync_api import expect

    url, projects, log = server
    with browser_page(60_000, log, "reattach-failure.png") as page:
        page.goto(url)
        expect(page.locator("#project-msg")).to_contain_text("Opened")  # the restored text is in the editor
        page.locator("#storyboard textarea").fill("0s: a red striped circle in front of the brick wall\nend: 60s")
        expect(page.locator("#storyboard-status")).to_contain_text("1 shot")
        box = page.locator("#steps input[type=number]")  # slow enough to be running after the reload
        box.fill("40")
        box.press("Enter")
        page.locator("#generate").click()
        expect(page.locator("#job-queue")).to_contain_text("running")
        # 60 s of tiny-random: 41 segments on the shot-aligned timeline
        expect(page.locator("#gen-status")).to_contain_text(re.compile(r"segment \d+ of 41"), timeout=120_000)
        page.reload()  # used to stop the job
        expect(page.locator("#job-queue")).to_contain_text("running")
        expect(page.locator("#gen-status progress#pfp-seg-progress")).to_be_attached()
        segments = projects / "untitled" / "segments"
        before = len(list(segments.glob("seg_*.safetensors")))
        page.wait_for_timeout(3000)
        assert len(list(segments.glob("seg_*.safetensors"))) >= before  # still going after the reload
        page.locator("#stop").click()
        expect(page.locator("#gen-status")).to_contain_text("Stopped.", timeout=120_000)
        expect(page.locator("#job-queue")).to_contain_text("Queue: empty")
    assert list((projects / "untitled" / "takes").iterdir())  # the first test's film was kept as a take


# ---------------------------------------------------------------------------------------------------------------
CUTS = "# cuts off the old 2.5-s segment grid\n0s: a red striped circle in front of the brick wall\n" \
       "3.5s: the grass field, empty\n6s: a green dotted square in front of the gravel path\n" \
       "11s: the rocket launch, empty\ntotal: 14s\n"


@contextmanager
def studio_page(url: str, log: Path, name: str):
    """A page on the studio with the steps set to STEPS and project `name` opened."""
    from playwright.sync_api import expect

    with browser_page(30_000, log, f"studio-{name}-failure.png") as page:
        page.goto(url)
        expect(page.locator("#model-info")).to_be_visible()
        page.wait_for_timeout(500)  # the page-load callbacks (restore, check) settle
        for slider in ("#steps", "#recall-steps") if STEPS else ():
            box = page.locator(f"{slider} input[type=number]")
            box.fill(STEPS)
            box.press("Enter")
        page.locator("#project-name input").fill(name)
        page.locator("#project-open").click()
        expect(page.locator("#project-msg")).to_contain_text(name)
        yield page


def generate_in_page(page, text: str) -> None:
    from playwright.sync_api import expect

    page.locator("#storyboard textarea").fill(text)
    expect(page.locator("#storyboard-status")).to_contain_text("Valid")
    page.locator("#generate").click()
    expect(page.locator("#gen-status")).to_contain_text("Done", timeout=300_000)


def segment_records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "segments").glob("seg_*.json"))]


def test_cuts_land_at_the_typed_times_and_the_film_is_total_long(server):
    from playwright.sync_api import expect

    from pfp_app.film.storyboard import parse_storyboard
    from pfp_app.io.video import read_video

    url, projects, log = server
    with studio_page(url, log, "cuts") as page:
        generate_in_page(page, CUTS)
        expect(page.locator("#shot-table")).to_contain_text("3.5")
        page.locator("#export").click()
        expect(page.locator("#export-msg")).to_contain_text("Exported", timeout=60_000)
    folder = projects / "cuts"
    frames, fps = read_video(folder / "film.mp4")
    assert len(frames) == 14 * fps  # exactly `total: 14s`
    starts: dict[str, float] = {}
    position = 0
    for i, rec in enumerate(segment_records(folder)):
        starts.setdefault(rec["prompt"], position / fps)
        position += len(read_video(folder / "segments" / f"seg_{i:03d}.mp4")[0])
    assert position == len(frames)
    step = 4 / fps  # the codec's time step: 4 frames
    for shot in parse_storyboard(CUTS).shots:
        assert abs(starts[shot.prompt] - shot.start) <= step, (shot, starts)


def test_regenerate_after_loading_a_preset_uses_the_new_storyboard(server):
    from playwright.sync_api import expect

    from pfp_app.film.storyboard import parse_storyboard

    url, projects, log = server
    preset = (ROOT / "presets" / "storyboards" / "two_friends.txt").read_text()
    new_first = parse_storyboard(preset).shots[0].prompt
    with studio_page(url, log, "stale") as page:
        generate_in_page(page, STORYBOARD)
        page.locator("#preset input").click()
        page.get_by_role("option", name="two_friends").click()
        page.locator("#preset-load").click()
        expect(page.locator("#storyboard textarea")).to_have_value(preset)
        expect(page.locator("#regen-prompt textarea")).to_have_value(new_first)
        page.locator("#regenerate").click()
        expect(page.locator("#gen-status")).not_to_contain_text("Done")  # the first generation's "Done" is gone
        expect(page.locator("#gen-status")).to_contain_text("Done", timeout=300_000)
        expect(page.locator("#storyboard textarea")).to_have_value(preset)  # comments and `total:` kept
    folder = projects / "stale"
    assert segment_records(folder)[0]["prompt"] == new_first
    assert (folder / "storyboard.txt").read_text() == preset


THREE_SHOTS = ("0s: a red striped circle in front of the brick wall\n1.5s: the grass field, empty\n"
               "3s: a red striped circle in front of the brick wall\nend: 4.5s")


def test_upload_footage_and_continue_it_in_a_browser(server, tmp_path):
    """A creator uploads a clip, types three shots and gets one MP4 that starts with the clip and continues it."""
    import numpy as np
    from playwright.sync_api import expect

    from pfp_app.io.video import read_mp4_comment, read_video, write_mp4

    url, projects, log = server
    clip = tmp_path / "my_clip.mp4"
    write_mp4(clip, np.random.default_rng(0).integers(0, 255, (20, 72, 96, 3), dtype=np.uint8), 8)
    with browser_page(30_000, log, "studio-footage-failure.png", route=local_only(url)) as page:
        page.goto(url)
        expect(page.locator("#project-msg")).to_contain_text(re.compile("Opened|New project"))  # page load restored first
        name = page.locator("#project-name input")
        name.fill("continued")
        name.press("Enter")
        page.locator("#project-open").click()
        expect(page.locator("#project-msg")).to_contain_text("continued")

        page.locator("#footage-panel").get_by_text("Start from footage").click()
        page.locator("#footage-upload input[type=file]").set_input_files(str(clip))
        expect(page.locator("#footage-info")).to_contain_text("memory tokens", timeout=90_000)
        expect(page.locator("#footage-info")).to_contain_text("storyboard times count from its end")
        page.wait_for_selector("#footage-preview video[src]")

        page.locator("#storyboard textarea").fill(THREE_SHOTS)
        expect(page.locator("#storyboard-status")).to_contain_text("3 shots")
        if STEPS:
            box = page.locator("#steps input[type=number]")
            box.fill(STEPS)
            box.press("Enter")
        page.locator("#generate").click()
        expect(page.locator("#gen-status")).to_contain_text("Done", timeout=300_000)
        page.locator("#export").click()
        expect(page.locator("#export-msg")).to_contain_text("Exported", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "studio-footage.png"), full_page=True)

    project = projects / "continued"
    footage, _ = read_video(project / "footage" / "footage.mp4")
    segments = sorted((project / "segments").glob("seg_*.mp4"))
    assert len(segments) == 3 and (project / "footage" / "source.mp4").read_bytes() == clip.read_bytes()
    film, _ = read_video(project / "film.mp4")
    assert len(film) == len(footage) + sum(len(read_video(s)[0]) for s in segments)
    assert np.abs(film[: len(footage)].astype(int) - footage.astype(int)).mean() < 10  # the film starts with the clip (H.264 of noise: ~3; another clip: ~85)
    comment = read_mp4_comment(project / "film.mp4")
    assert f'"footage_frames":{len(footage)}' in comment and "3s: a red striped circle" in comment
