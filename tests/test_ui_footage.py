"""The studio's "start from footage" panel (pfp_app/ui/footage_view.py) with the tiny model: no browser."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from pfp_app.film import footage as fm
from pfp_app.film.project import Project
from pfp_app.app.studio import Studio
from pfp_app.io.video import read_mp4_comment, read_video, write_mp4

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

    updates = list(studio.generate("cont", STORYBOARD, 3, 1))
    assert "Done" in updates[-1][1]
    assert updates[-1][2]["maximum"] == pytest.approx((17 + 24 - 1) / 8)  # the slider covers footage + film
    truth, recalled, _, metrics = studio.inspect("cont", 0.5, 1)
    assert "your footage" in metrics and "PSNR" in metrics and recalled is not None
    assert "after the footage" in studio.inspect("cont", 3.0, 1)[3]

    path, msg = studio.export("cont", 18)
    assert len(read_video(path)[0]) == 17 + 24 and "footage_frames=17" in read_mp4_comment(path)
    exported = tmp_path / "film.mp4"
    exported.write_bytes(open(path, "rb").read())
    gen_only, _ = studio.export("cont", 18, footage=fm.EXPORT_GENERATED_ONLY)
    assert len(read_video(gen_only)[0]) == 24 and "footage=excluded" in read_mp4_comment(gen_only)

    # a regenerated shot keeps the footage and the shot before it
    first = project.segment_latents_path(0).read_bytes()
    list(studio.regenerate("cont", STORYBOARD, 1, "", 9, 1))
    assert project.segment_latents_path(0).read_bytes() == first and fm.has_footage(project)

    # footage cannot be swapped under generated segments: the project is left as it was
    with pytest.raises(gr.Error, match="already holds 2 generated segment"):
        studio.footage.upload("cont", [_clip(tmp_path / "other.mp4", seed=1)], 2.0)
    assert fm.footage_meta(project)["source"] == "mine.mp4"

    # dropping the app's own export offers to restore its project instead of continuing from it
    _, info, offer = studio.footage.upload("fresh", [str(exported)], 2.0)
    assert offer["visible"] is True and "exported by PFP Studio" in info
    assert not (studio.root / "fresh" / "footage").exists()
    text, seed, steps, preview, info, _ = studio.footage.restore("fresh", [str(exported)])
    assert text == project.read_storyboard() and seed == 3 and steps == 1
    assert fm.footage_meta(Project(studio.root / "fresh"))["frames"] == "17"


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
