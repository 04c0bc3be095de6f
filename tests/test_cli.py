"""`python -m pfp_app generate|recall` end to end on tiny-random, and every expected error as one clean line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfp_app.app.cli import main
from pfp_app.model.bundle import MODEL_CONFIGS
from pfp_app.film.storyboard import parse_storyboard
from pfp_app.io.video import read_mp4_comment, read_video, video_info, write_mp4

from conftest import TEST_THREADS

REPO = Path(__file__).resolve().parent.parent
STORYBOARD = "# a two-shot test film\n0s: a red fox in the snow\n1s: the fox runs across a frozen lake\nend: 3s\n"
TINY = MODEL_CONFIGS["tiny"]
TEMPORAL_RATIO = 2 ** sum(TINY.vae["temperal_downsample"])  # 4
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": str(TEST_THREADS)}  # same threading as the in-process tests


def expected_frames(storyboard_text: str) -> int:
    """Frames of the film: exactly the storyboard's length."""
    return round(parse_storyboard(storyboard_text).duration * TINY.video.fps)


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    """One real `python -m pfp_app generate` in a subprocess: (mp4 path, completed process)."""
    root = tmp_path_factory.mktemp("cli")
    (root / "story.txt").write_text(STORYBOARD)
    out = root / "film.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "pfp_app", "generate", "--storyboard", str(root / "story.txt"), "--out", str(out),
         "--model", "tiny-random", "--steps", "2", "--device", "cpu"],
        cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300,
    )
    return out, proc


def run_cli(capsys, *argv):
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def expect_error(capsys, argv, match, alone=True):
    """Exit code 2, no traceback, exactly one stderr line starting with 'error:' that contains `match`.

    alone: nothing else on stderr (errors found before the model is loaded); otherwise the model's
    progress notes may precede the error line.
    """
    rc, out, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert rc == 2, err
    assert "Traceback" not in err + out
    assert len(errors) == 1, err
    assert match in errors[0], errors[0]
    if alone:
        assert lines == errors, err
    return errors[0]


# ---- generate and recall, end to end ------------------------------------------------------------


def test_generate_subprocess_writes_a_decodable_mp4_of_the_scheduled_length(film):
    out, proc = film
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "UNTRAINED" in proc.stderr  # tiny-random is clearly labelled
    assert f"wrote {out}" in proc.stdout
    frames, fps = read_video(out)
    n = expected_frames(STORYBOARD)
    assert len(frames) == n == 24  # 3 s at 8 fps
    assert fps == pytest.approx(TINY.video.fps)
    assert frames.shape[1:] == (TINY.video.height, TINY.video.width, 3)
    assert STORYBOARD in read_mp4_comment(out)  # the storyboard as written, comment line included


def test_generate_leaves_a_project_folder_beside_the_mp4(film):
    out, _ = film
    project = out.with_name("film_project")
    assert parse_storyboard((project / "storyboard.txt").read_text()) == parse_storyboard(STORYBOARD)
    assert (project / "settings.json").is_file() and (project / "film.mp4").is_file()
    names = sorted(p.name for p in (project / "segments").iterdir())
    # shot 1 (0-1 s) is one segment, shot 2 (1-3 s) two: segments end at the cut
    assert names == [f"seg_00{i}.{ext}" for i in range(3) for ext in ("json", "mp4", "safetensors")]


def test_generate_resumes_a_finished_project_and_resamples_fps(film, tmp_path, capsys):
    """Same storyboard and settings: nothing is regenerated; --fps 16 doubles the frames, keeps the duration."""
    out, _ = film
    project = tmp_path / "project"
    shutil.copytree(out.with_name("film_project"), project)
    (tmp_path / "story.txt").write_text(STORYBOARD)
    rc, stdout, err = run_cli(capsys, "generate", "--storyboard", str(tmp_path / "story.txt"), "--out",
                              str(tmp_path / "film16.mp4"), "--project", str(project), "--model", "tiny-random",
                              "--steps", "2", "--fps", "16", "--device", "cpu")
    assert rc == 0, err
    assert "resuming: 3 finished segments" in err
    assert "segment 1/2" not in err  # nothing generated again
    info = video_info(tmp_path / "film16.mp4")
    assert info.fps == pytest.approx(16)
    assert info.num_frames == 2 * expected_frames(STORYBOARD)
    assert info.duration == pytest.approx(video_info(out).duration)


def test_recall_writes_the_panel_and_prints_psnr_and_ssim(film, tmp_path, capsys):
    out, _ = film
    png = tmp_path / "recall.png"
    rc, stdout, err = run_cli(capsys, "recall", "--video", str(out), "--at", "1.0", "--out", str(png),
                              "--model", "tiny-random", "--steps", "2", "--device", "cpu")
    assert rc == 0, err
    assert "Traceback" not in err
    panel = np.asarray(Image.open(png))
    assert panel.shape == (TINY.video.height, 3 * TINY.video.width, 3)  # true | recalled | error
    assert "recalled frame 8 (1.00 s) of 21" in stdout  # the first 21 frames (1 + 4k) hold 1 s
    psnr_line = next(line for line in stdout.splitlines() if line.startswith("PSNR"))
    psnr_db, ssim = float(psnr_line.split()[1]), float(psnr_line.split()[4])
    assert np.isfinite(psnr_db) and -1 <= ssim <= 1
    assert "history-mean baseline PSNR" in psnr_line
    # the true frame in the panel is the video's frame at 1 s (8 fps: frame 8)
    truth = read_video(out)[0][8].astype(int)
    assert np.abs(panel[:, : TINY.video.width].astype(int) - truth).mean() < 1.0


# ---- errors: one line, exit code 2, no traceback ------------------------------------------------


@pytest.fixture
def story(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text(STORYBOARD)
    return path


def test_subprocess_error_is_one_line_without_traceback(tmp_path):
    (tmp_path / "bad.txt").write_text("0s: fine\nlater: oops\n")
    proc = subprocess.run([sys.executable, "-m", "pfp_app", "generate", "--storyboard", str(tmp_path / "bad.txt"),
                           "--out", str(tmp_path / "x.mp4"), "--model", "tiny-random"],
                          cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: line 2:")


def test_missing_storyboard_file(capsys, tmp_path):
    expect_error(capsys, ["generate", "--storyboard", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "x.mp4"),
                          "--model", "tiny-random"], "nope.txt' not found")


@pytest.mark.parametrize("text,message", [
    ("0s: fine\n5s:\n", "line 2: empty prompt"),
    ("# header\n\n0s: a\n3s: b\n2s: c\n", "line 5: times must increase"),
    ("0s: a\nbanana\n", "line 2: missing ':'"),
    ("0s: a\n11m: far too late\n", "line 2: time 660s is over"),
])
def test_malformed_storyboard_names_the_line(capsys, tmp_path, text, message):
    (tmp_path / "bad.txt").write_text(text)
    expect_error(capsys, ["generate", "--storyboard", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "x.mp4"),
                          "--model", "tiny-random"], message)
    assert not (tmp_path / "x_project").exists()  # nothing created for a storyboard that does not parse


def test_out_must_be_an_mp4(capsys, story, tmp_path):
    expect_error(capsys, ["generate", "--storyboard", str(story), "--out", str(tmp_path / "film.avi"),
                          "--model", "tiny-random"], "--out must end in .mp4, got 'film.avi'")


def test_fps_out_of_range(capsys, story, tmp_path):
    expect_error(capsys, ["generate", "--storyboard", str(story), "--out", str(tmp_path / "f.mp4"), "--fps", "0",
                          "--model", "tiny-random"], "--fps must be a whole number from 1 to 120")


def test_missing_video(capsys, tmp_path):
    expect_error(capsys, ["recall", "--video", str(tmp_path / "none.mp4"), "--at", "1", "--out", str(tmp_path / "f.png"),
                          "--model", "tiny-random"], "file not found")


def test_corrupt_video(capsys, tmp_path):
    bad = tmp_path / "random.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    expect_error(capsys, ["recall", "--video", str(bad), "--at", "1", "--out", str(tmp_path / "f.png"),
                          "--model", "tiny-random"], "not a video or corrupt")


@pytest.mark.parametrize("at", ["100", "-1", "2.7"])
def test_time_outside_the_video(capsys, film, tmp_path, at):
    out, _ = film  # 24 frames at 8 fps: 3 s
    at = "3.1" if at == "2.7" else at
    expect_error(capsys, ["recall", "--video", str(out), "--at", at, "--out", str(tmp_path / "f.png"),
                          "--model", "tiny-random"], f"--at {float(at):g} s is outside the video (0 to 3.00 s)")


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """A 26-s clip whose frame i is a flat grey of level 9 i mod 256 (each frame recognisable)."""
    n = 26 * TINY.video.fps
    levels = (np.arange(n) * 9) % 256
    frames = np.broadcast_to(levels[:, None, None, None], (n, TINY.video.height, TINY.video.width, 3)).astype(np.uint8)
    return write_mp4(tmp_path_factory.mktemp("long") / "long.mp4", frames, TINY.video.fps, crf=0)


@pytest.mark.parametrize("at, history, first", [(3.5, None, 0.0), (25.0, None, 5.0), (12.0, "4", 8.0)])
def test_recall_compresses_the_window_around_the_asked_time(capsys, long_clip, tmp_path, at, history, first):
    """No --history needed: near the start the first 20 s hold the time; later the 20 s that end at it."""
    png = tmp_path / "r.png"
    argv = ["recall", "--video", str(long_clip), "--at", str(at), "--out", str(png), "--model", "tiny-random",
            "--steps", "1", "--device", "cpu"] + (["--history", history] if history else [])
    rc, stdout, err = run_cli(capsys, *argv)
    assert rc == 0, err
    index = round((at - first) * TINY.video.fps)
    assert f"recalled frame {index} ({at:.2f} s)" in stdout
    truth = np.asarray(Image.open(png))[:, : TINY.video.width].astype(int)
    assert abs(truth.mean() - (round(at * TINY.video.fps) * 9) % 256) < 3  # the true frame is the one at `at`


def test_recall_out_must_be_a_png(capsys, film, tmp_path):
    out, _ = film
    expect_error(capsys, ["recall", "--video", str(out), "--at", "1", "--out", str(tmp_path / "f.jpg"),
                          "--model", "tiny-random"], "--out must end in .png")


def _model_error(capsys, film, tmp_path, model_dir) -> str:
    out, _ = film
    return expect_error(capsys, ["recall", "--video", str(out), "--at", "1", "--out", str(tmp_path / "f.png"),
                                 "--model", str(model_dir)], "")


def test_model_folder_that_is_empty(capsys, film, tmp_path):
    (tmp_path / "empty").mkdir()
    line = _model_error(capsys, film, tmp_path, tmp_path / "empty")
    assert "is neither a PFP model folder (pfp_model.json) nor a Wan 2.1 diffusers folder" in line


def test_model_folder_that_does_not_exist(capsys, film, tmp_path):
    assert "does not exist" in _model_error(capsys, film, tmp_path, tmp_path / "missing")


def test_model_folder_with_a_bogus_transformer_config(capsys, film, tmp_path):
    folder = tmp_path / "bogus"
    (folder / "transformer").mkdir(parents=True)
    (folder / "pfp_model.json").write_text(
        '{"name": "bogus", "video": {"height": 64, "width": 64, "fps": 8, "segment_latent_frames": 3}}')
    (folder / "transformer" / "config.json").write_text("{this is not json")
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"junk")
    line = _model_error(capsys, film, tmp_path, folder)
    assert "cannot load transformer/" in line and "config.json" in line


def test_model_folder_without_weights(capsys, film, tmp_path):
    folder = tmp_path / "noweights"
    (folder / "transformer").mkdir(parents=True)
    (folder / "pfp_model.json").write_text(
        '{"name": "x", "video": {"height": 64, "width": 64, "fps": 8, "segment_latent_frames": 3}}')
    (folder / "transformer" / "config.json").write_text("{}")
    assert "no safetensors weights" in _model_error(capsys, film, tmp_path, folder)


@pytest.mark.parametrize("content", ["{not json", '{"name": "x", "video": {"height": 64}}'])
def test_model_folder_with_a_bogus_bundle_file_names_it(capsys, film, tmp_path, content):
    folder = tmp_path / "bogus_bundle"
    folder.mkdir()
    (folder / "pfp_model.json").write_text(content)
    assert "pfp_model.json" in _model_error(capsys, film, tmp_path, folder)


def test_a_project_folder_holding_another_storyboard_keeps_it_as_a_take(capsys, film, tmp_path):
    """One resume policy for the CLI and the studio: what a run would replace is kept in takes/NNN/."""
    out, _ = film
    project = tmp_path / "project"
    shutil.copytree(out.with_name("film_project"), project)
    before = {p.name: p.read_bytes() for p in (project / "segments").iterdir()}
    other = tmp_path / "other.txt"
    other.write_text("0s: a lighthouse at night\nend: 2s\n")
    rc, _, err = run_cli(capsys, "generate", "--storyboard", str(other), "--out", str(tmp_path / "o.mp4"),
                         "--project", str(project), "--model", "tiny-random", "--steps", "2")
    assert rc == 0, err
    assert "3 finished segments were made from another storyboard or other settings: they are kept" in err
    take = project / "takes" / "001"
    assert {p.name: p.read_bytes() for p in (take / "segments").iterdir()} == before
    assert parse_storyboard((take / "storyboard.txt").read_text()) == parse_storyboard(STORYBOARD)
    assert (project / "storyboard.txt").read_text() == other.read_text() and (tmp_path / "o.mp4").is_file()


def test_a_saved_model_folder_loads_and_behaves_as_saved(tiny_model, film, tmp_path, capsys):
    """`--model DIR` with our folder layout: same weights (safetensors), same outputs, runs end to end."""
    import torch

    from pfp_app.model.bundle import load_model

    folder = tiny_model.save(tmp_path / "model")
    loaded = load_model(folder)
    assert loaded.trained and loaded.video == tiny_model.video
    assert loaded.memory_encoder.config.rate == tiny_model.memory_encoder.config.rate
    g = torch.Generator().manual_seed(0)
    history = torch.randn(1, 8, 6, 8, 8, generator=g)
    x, text = torch.randn(1, 8, 3, 8, 8, generator=g), torch.randn(1, 4, 384, generator=g)
    with torch.no_grad():
        mem_a, mem_b = tiny_model.memory_encoder(history), loaded.memory_encoder(history)
        assert torch.equal(mem_a.tokens, mem_b.tokens)
        v_a = tiny_model.velocity(x, torch.tensor([500.0]), text, mem_a, torch.arange(6.0, 9.0))
        v_b = loaded.velocity(x, torch.tensor([500.0]), text, mem_b, torch.arange(6.0, 9.0))
    assert torch.equal(v_a, v_b)
    out, _ = film
    rc, stdout, err = run_cli(capsys, "recall", "--video", str(out), "--at", "2", "--out", str(tmp_path / "r.png"),
                              "--model", str(folder), "--steps", "2", "--device", "cpu")
    assert rc == 0, err
    assert "PSNR" in stdout and "UNTRAINED" not in err


def test_recall_returns_the_asked_time_or_refuses(film, tmp_path, capsys):
    out, _ = film
    rc, stdout, err = run_cli(capsys, "recall", "--video", str(out), "--at", "1.7", "--history", "1", "--out",
                              str(tmp_path / "r.png"), "--model", "tiny-random", "--steps", "2", "--device", "cpu")
    if rc == 0:
        recalled_at = float(stdout.split("(")[1].split(" s)")[0])
        assert abs(recalled_at - 1.7) <= 0.5 / TINY.video.fps
    else:
        assert rc == 2 and "before the compressed history" in err


# ---- the README's command lines --------------------------------------------------------------------


def test_help_does_not_import_torch_or_the_trainer():
    code = ("import sys, contextlib, io\nfrom pfp_app.app.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "print('pack-model' in out.getvalue(), 'torch' in sys.modules, 'pfp_app.train.trainer' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.split() == ["True", "False", "False"], proc.stderr


def test_every_train_option_has_a_help_line():
    from pfp_app.app.cli import build_parser

    train = build_parser(["train"])._subparsers._group_actions[0].choices["train"]
    options = [a for a in train._actions if a.option_strings and a.dest != "help"]
    assert len(options) > 20
    missing = [a.option_strings[0] for a in options if not (a.help or "").strip()]
    assert missing == []


def test_generate_writes_into_the_ignored_out_folder_by_default():
    from pfp_app.app.cli import build_parser

    args = build_parser(["generate"]).parse_args(["generate", "--storyboard", "x.txt"])
    assert Path(args.out).parts[0] == "out"
    assert "/out/" in (REPO / ".gitignore").read_text().split()


def test_pack_model_is_named_for_what_it_does_and_export_still_works():
    from pfp_app.app.cli import build_parser

    assert build_parser(["pack-model"]).parse_args(["pack-model", "--model", "m", "--out", "o"]).model == "m"
    assert build_parser(["export"]).parse_args(["export", "--model", "m", "--out", "o"]).out == "o"


def test_ci_runs_the_readme_test_command_and_a_readme_cli_line_as_written():
    readme = (REPO / "README.md").read_text()
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", " "))]
    test_cmd, smoke = ci[-2], ci[-1]
    assert test_cmd.endswith(".venv/bin/python -m pytest -q") and test_cmd in readme
    assert smoke.startswith(".venv/bin/python -m pfp_app generate") and f"\n{smoke}   # smoke test" in readme
    # every command line the README shows runs the venv's Python
    commands = [line for line in readme.splitlines() if line.startswith(("python ", "accelerate "))]
    assert commands == []


def test_any_sampler_setting_can_be_given_and_a_bad_one_fails_before_the_model_loads(tmp_path, capsys):
    story = tmp_path / "s.txt"
    story.write_text("0s: a fox\n1s: an owl\n2s: a fox\nend: 3s\n")
    base = ["generate", "--storyboard", str(story), "--model", "tiny-random", "--steps", "1"]
    line = expect_error(capsys, base + ["--out", str(tmp_path / "x.mp4"), "--sampler", "return_retake=much"],
                        "--sampler return_retake: 'much' is not a float")
    assert not (tmp_path / "x_project").exists()
    expect_error(capsys, base + ["--out", str(tmp_path / "y.mp4"), "--sampler", "nope=1"], "--sampler takes FIELD=VALUE")
    rc, _, err = run_cli(capsys, *base, "--out", str(tmp_path / "z.mp4"), "--sampler", "return_retake=0")
    assert rc == 0, err
    from pfp_app.film.project import Project

    assert Project(tmp_path / "z_project").read_segment_record(2)["sampler"]["return_retake"] == 0.0
    assert line
