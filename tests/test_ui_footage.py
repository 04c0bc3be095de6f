"""The studio's "start from footage" panel (pfp_app/ui/footage_view.py) with the tiny model: no browser."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from pfp_app.film import footage as fm
from pfp_app.film.project import Project
from pfp_app.app.studio import Studio
from pfp_app.film.export import read_export_record
from pfp_app.film.session import Done
from pfp_app.io.video import read_video, write_mp4

STORYBOARD = "0s: a red striped circle\n1.5s: a blue dotted square\nend: 3s\n"


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> Studio:
    return Studio(tmp_path_factory.mktemp("projects"), model_spec="tiny-random").load()


def _clip(path, n=20, seed=0):
    write_mp4(path, np.random.default_rng(seed).integers(0, 255, (n, 48, 64, 3), dtype=np.uint8), 8)
    return str(path)


def test_upload_generate_inspect_export_and_restore(studio, tmp_path):
    preview, info, offer = studio.footage.upload("cont", [_clip(tmp_path / "mine.mp4")], 2.0)
    project = Project(studio.root / "cont")
    assert preview == str(fm.footage_video_path(project)) and offer["visible"] is False
    assert "17 frames = 2.12 s at 8 fps" in info and "memory tokens" in info and "count from its end" in info
    slider = studio._slider_of("cont")
    assert slider["interactive"] and slider["maximum"] == pytest.approx(16 / 8)  # the footage alone is inspectable

    assert isinstance(studio.generate("cont", STORYBOARD, 3, 1), Done)
    assert studio._slider(project)["maximum"] == pytest.approx((17 + 24 - 1) / 8)  # the slider covers footage + film
    truth, recalled, _, metrics = studio.inspector.inspect("cont", 0.5, 1)
    assert "your footage" in metrics and "PSNR" in metrics and recalled is not None
    assert "after the footage" in studio.inspector.inspect("cont", 3.0, 1)[3]

    path, msg = studio.export("cont", 18)
    assert len(read_video(path)[0]) == 17 + 24 and read_export_record(path).footage_frames == 17
    exported = tmp_path / "film.mp4"
    exported.write_bytes(open(path, "rb").read())
    gen_only, _ = studio.export("cont", 18, footage=fm.EXPORT_GENERATED_ONLY)
    assert len(read_video(gen_only)[0]) == 24 and read_export_record(gen_only).footage_excluded

    # a regenerated shot keeps the footage and the shot before it
    first = project.segment_latents_path(0).read_bytes()
    assert isinstance(studio.regenerate("cont", STORYBOARD, 1, "", 9, 1), Done)
    assert project.segment_latents_path(0).read_bytes() == first and fm.has_footage(project)

    # footage cannot be swapped under generated segments: the project is left as it was
    with pytest.raises(gr.Error, match="already holds 2 generated segment"):
        studio.footage.upload("cont", [_clip(tmp_path / "other.mp4", seed=1)], 2.0)
    assert fm.footage_meta(project)["source"] == "mine.mp4"

    # dropping the app's own export offers to restore its project instead of continuing from it
    _, info, offer = studio.footage.upload("fresh", [str(exported)], 2.0)
    assert offer["visible"] is True and "exported by PFP Studio" in info
    assert not (studio.root / "fresh" / "footage").exists()
    params, text = studio.queue_restore("fresh", studio.footage.export_of([str(exported)]))
    assert text == project.read_storyboard() and params == {"project": "fresh"}
    assert isinstance(studio.restore_export("fresh"), Done)
    fresh = Project(studio.root / "fresh")
    assert fm.footage_meta(fresh)["frames"] == "17" and fresh.finished_segments() == 2
    assert [fresh.read_segment_record(i)["seed"] for i in range(2)] == [3, 3]  # exported before shot 2 was redone
    before = [fresh.segment_latents_path(i).read_bytes() for i in range(2)]
    assert isinstance(studio.restore_export("fresh"), Done)  # run again (a job resumed after a restart): kept
    assert [fresh.segment_latents_path(i).read_bytes() for i in range(2)] == before
    assert not (fresh.folder / "takes").exists()
    # (the footage comes back from the MP4's frames, which H.264 stored lossily: the film is regenerated from
    # a history a little off the original's; without footage the restored film is the same: tests/test_ui.py)


def test_stills_and_bad_uploads(studio, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (40, 30), (255, 0, 0)).save(a)
    Image.new("RGB", (40, 30), (0, 0, 255)).save(b)
    _, info, _ = studio.footage.upload("stills", [str(a), str(b)], 1.0)
    assert "13 frames" in info and "2 stills" in info
    Image.new("RGB", (64, 30)).save(tmp_path / "c.png")
    (tmp_path / "x.mp4").write_text("not a video")
    for files, match in (([str(a), str(tmp_path / "c.png")], "give stills of one size"),
                         ([str(tmp_path / "x.mp4")], "'x.mp4' is neither a video nor an image"),
                         ([str(a), str(tmp_path / "x.mp4")], "'x.mp4' is not an image")):
        with pytest.raises(gr.Error, match=match):
            studio.footage.upload("bad", files, 1.0)
    assert not (studio.root / "bad" / "footage").exists()
    studio.footage.remove("stills")
    assert not fm.has_footage(Project(studio.root / "stills"))
