"""The real-footage bank (issue 12): built from installed photographs (scikit-image's, which every install has)
and clips, with its held-out split; photo motion; the codec's identity time path; codec training on the bank."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan

from pfp_app.model.codec import init_temporal_identity
from pfp_app.data.bank import BankClipDataset, BankError, build_bank, is_heldout_photo, load_bank
from pfp_app.data.photo_motion import PhotoMotion, _object_path, camera_thetas, ping_pong
from pfp_app.io.video import write_mp4

SKIMAGE_ONLY = (("scikit-image", "skimage:data", "BSD-3-Clause", "file"),)


def _fake_clip(path, frames: int, seed: int):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    write_mp4(path, np.stack([np.roll(base, k, axis=1) for k in range(frames)]), fps=16)  # a slow pan


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    root = tmp_path_factory.mktemp("bank")
    clips = root / "src"
    clips.mkdir()
    for name, n in (("Megamind.avi", 40), ("Megamind_bugy.avi", 40), ("vtest.avi", 30), ("cup.mp4", 20)):
        _fake_clip(clips / (name.split(".")[0] + ".mp4"), n, len(name))
    paths = sorted(clips.glob("*.mp4"))
    manifest = build_bank(root / "bank", size=64, fps=8, crop=96, per_scale=1, sources=SKIMAGE_ONLY,
                          clip_paths=paths, log=lambda *_: None)
    return root / "bank", manifest


def test_bank_holds_scikit_image_photos_with_a_heldout_split_that_spares_the_world(bank):
    root, manifest = bank
    names = {p["name"]: p for p in manifest["photos"]}
    assert "scikit-image-astronaut" in names and names["scikit-image-astronaut"]["licence"] == "BSD-3-Clause"
    for world_place in ("astronaut", "brick", "coffee", "grass", "gravel", "rocket", "chelsea"):
        assert names[f"scikit-image-{world_place}"]["split"] == "train"  # the world trains on these
    for p in manifest["photos"]:
        assert p["split"] == ("heldout" if is_heldout_photo(p["name"]) else "train")
        files = list((root / "photos" / p["split"]).glob(f"{p['name']}-*.jpg"))
        assert len(files) == p["crops"] >= 1
    assert json.loads((root / "bank.json").read_text())["counts"] == manifest["counts"]
    photos = load_bank(root).photos
    assert photos.dtype == torch.uint8 and photos.shape[1:] == (3, 96, 96)
    assert photos.shape[0] == manifest["counts"]["photos_train"]


def test_bank_keeps_heldout_clips_out_and_drops_the_copy_of_megamind(bank):
    root, manifest = bank
    split = {c["name"]: c["split"] for c in manifest["clips"]}
    assert split == {"Megamind": "heldout", "cup": "heldout", "vtest": "train"}  # Megamind_bugy dropped
    held = load_bank(root, "heldout")
    assert sorted(held.clip_names) == ["Megamind", "cup"]
    mega = held.clips[held.clip_names.index("Megamind")]
    assert mega.shape == (3, 20, 64, 64)  # 40 frames at 16 fps -> 20 at 8 fps, square at 64


def test_bank_clip_dataset_items_are_long_clips_of_photos_and_real_windows(bank):
    root, _ = bank
    ds = BankClipDataset(root, num_clips=4, seconds=4.0, size=64, fps=8, seed=1)
    items = [ds[i] for i in range(4)]
    for it in items:
        assert it["frames"].shape == (3, 33, 64, 64) and it["storyboard"] == ""
        assert -1.0 <= float(it["frames"].min()) and float(it["frames"].max()) <= 1.0
    assert torch.equal(ds[2]["frames"], items[2]["frames"])  # deterministic per item
    with pytest.raises(BankError, match="was built at 64x64"):
        BankClipDataset(root, num_clips=2, size=128)
    with pytest.raises(BankError, match="not a bank"):
        load_bank(root.parent / "src")


def test_cli_bank_command_without_photos_says_what_to_install(tmp_path):
    with pytest.raises(BankError, match="apt-get install opencv-doc"):
        build_bank(tmp_path / "b", sources=(("none", str(tmp_path / "nothing"), "-", "file"),), clips=False)


def test_camera_stays_inside_the_photo_and_a_still_camera_does_not_move():
    gen = torch.Generator().manual_seed(0)
    theta = camera_thetas(64, 9, gen, "cpu")
    corners = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])  # (4, 3)
    mapped = torch.einsum("btij,kj->btki", theta, corners)  # every output corner in photo coordinates
    assert float(mapped.abs().max()) <= 1.0 + 1e-5  # reflection padding is never needed
    still = camera_thetas(64, 9, torch.Generator().manual_seed(0), "cpu", still=1.0)
    assert torch.allclose(still[:, :1].expand_as(still), still)


def test_objects_leave_the_frame_and_come_back():
    path = _object_path(16, 41, torch.Generator().manual_seed(0), "cpu", returns=True)  # (B, T, 2)
    inside = path.abs().amax(-1) < 1.0
    assert bool(inside[:, 0].all())  # starts in view
    assert bool((~inside[:, 20]).all())  # out of view in the middle
    assert bool(torch.allclose(path[:, 0], path[:, -1]))  # back where it began
    assert ping_pong(3, 7).tolist() == [0, 1, 2, 1, 0, 1, 2]


def test_photo_motion_windows_move_and_clips_return_to_earlier_photos(bank):
    root, _ = bank
    motion = PhotoMotion(load_bank(root).photos, size=64, fps=8)
    w = motion.windows(8, 9, torch.Generator().manual_seed(0))
    assert w.shape == (8, 3, 9, 64, 64)
    assert float((w[:, :, 1:] - w[:, :, :-1]).abs().mean()) > 1e-3  # not stills
    clip = motion.clip(20.0, torch.Generator().manual_seed(1))
    assert clip.shape == (3, 161, 64, 64)


def test_identity_time_init_makes_video_mode_equal_image_mode_on_a_still():
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=8, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[True, True],
                           latents_mean=[0.0] * 8, latents_std=[1.0] * 8).eval()
    img = torch.rand(1, 3, 1, 32, 32) * 2 - 1
    video = img.repeat(1, 1, 9, 1, 1)
    with torch.no_grad():
        random_gap = (vae.decode(vae.encode(video).latent_dist.mode()).sample
                      - vae.decode(vae.encode(img).latent_dist.mode()).sample).abs().max()
        init_temporal_identity(vae)
        z_img, z_vid = vae.encode(img).latent_dist.mode(), vae.encode(video).latent_dist.mode()
        assert torch.allclose(z_vid, z_img.expand_as(z_vid), atol=1e-5)
        x_img, x_vid = vae.decode(z_img).sample, vae.decode(z_vid).sample
    assert x_vid.shape[2] == 9 and torch.allclose(x_vid, x_img.expand_as(x_vid), atol=1e-4)
    assert float(random_gap) > 1e-3  # without the init the two modes differ


def test_codec_training_on_the_bank_learns_to_reconstruct_its_photos(bank, tmp_path):
    from pfp_app.model.bundle import build_random_model, load_model
    from pfp_app.train.trainer import TrainConfig, train

    root, _ = bank
    out = tmp_path / "codec"
    state = train(TrainConfig(stage="codec", init="tiny", out=str(out), data=f"bank:{root}", num_clips=1,
                              batch_size=8, codec_window=1, max_steps=100, lr=3e-3, warmup_steps=1, log_every=20,
                              ema_decay=0.9, workers=0))
    assert state["step"] == 100
    probe = PhotoMotion(load_bank(root).photos, size=64, fps=8).windows(16, 1, torch.Generator().manual_seed(7))

    def mse(codec) -> float:
        with torch.no_grad():
            return float((codec.decode(codec.encode(probe)) - probe).pow(2).mean())

    before, after = mse(build_random_model("tiny").codec), mse(load_model(out / "model").codec)
    print(f"bank codec: probe MSE {before:.3f} (random) -> {after:.3f} after 100 steps")
    assert after < 0.8 * before, (before, after)  # the shipped (EMA) codec reconstructs photos it never saw better
    with pytest.raises(ValueError, match="--codec-window must be 1 \\+ 4k"):
        train(TrainConfig(stage="codec", init="tiny", out=str(tmp_path / "bad"), data="world", num_clips=1,
                          clip_seconds=1.0, codec_window=6, max_steps=1))


def test_evaluate_scores_heldout_real_clips_clip_by_clip(bank):
    from pfp_app.model.bundle import build_random_model
    from pfp_app.evaluation.evaluate import codec_clip_scores, evaluate_clips, format_clip_scores, heldout_real_clips

    root, _ = bank
    model = build_random_model("tiny")
    clips = heldout_real_clips(str(root), 64, 8)
    assert sorted(clips) == ["Megamind", "cup"]
    scores = evaluate_clips(model, clips, steps=2, queries=2)
    for name in clips:
        row = scores["clips"][name]
        for key in ("psnr", "zeroed_psnr", "mean_psnr", "codec_psnr", "video_codec_psnr", "video_mean_psnr"):
            assert math.isfinite(row[key]["mean"])
    table = format_clip_scores(scores, "held-out")
    assert "| Megamind |" in table and "mean over clips" in table
    still = torch.rand(3, 1, 64, 64).mul(2).sub(1).expand(3, 9, 64, 64)
    assert codec_clip_scores(model, still, "cpu")["mean_psnr"] > 60  # a still clip is its own mean frame
    with pytest.raises(ValueError, match="rebuild it with"):
        heldout_real_clips(str(root), 128, 8)


def test_a_bank_without_real_clips_warns_and_evaluate_refuses_it_before_any_recall(tmp_path, capsys):
    """Without opencv-doc the bank holds photographs only: the build says so, and `evaluate --bank` stops at once
    with what to install instead of after the world's minutes of recall (it once crashed there)."""
    from pfp_app.app.cli import main
    from pfp_app.evaluation.evaluate import evaluate_clips, heldout_real_clips

    lines = []
    build_bank(tmp_path / "b", size=64, fps=8, crop=96, per_scale=1, sources=SKIMAGE_ONLY, clip_paths=[],
               log=lines.append)
    assert any(line.startswith("warning: no real clips found") and "apt-get install opencv-doc" in line for line in lines)
    with pytest.raises(ValueError, match="has no held-out real clips .* `apt-get install opencv-doc`"):
        heldout_real_clips(str(tmp_path / "b"), 64, 8)
    with pytest.raises(ValueError, match="no clips to evaluate"):
        evaluate_clips(None, {})
    assert main(["evaluate", "--model", "tiny-random", "--num-clips", "1", "--bank", str(tmp_path / "b")]) == 2
    err = capsys.readouterr()
    assert "has no held-out real clips" in err.err and "recall on" not in err.out  # nothing of the world was run


def test_codec_mix_sets_the_shares_of_a_video_batch_and_rejects_nonsense(bank):
    from pfp_app.train.codec_data import CodecBatches, parse_codec_mix

    root, _ = bank
    gen = torch.Generator().manual_seed(0)
    even = CodecBatches(f"bank:{root}", 1, 1.0, 64, 8, 0, 0, 1, 0, "cpu")
    only_real = CodecBatches(f"bank:{root}", 1, 1.0, 64, 8, 0, 0, 1, 0, "cpu", mix=parse_codec_mix("0,0,1"))
    # no world clips in this spec: the photo-motion and real-clip shares split the batch 2:1 by default
    assert even._split(12, gen) == (0, 8, 4)
    assert only_real._split(12, gen) == (0, 0, 12)
    assert only_real(3, 5, gen).shape == (3, 3, 5, 64, 64)
    assert parse_codec_mix("0.4, 0.35, 0.25") == (0.4, 0.35, 0.25)
    for bad in ("1,2", "a,b,c", "-1,1,1", "0,0,0"):
        with pytest.raises(ValueError, match="--codec-mix takes three shares"):
            parse_codec_mix(bad)
    with pytest.raises(ValueError, match="no share to any source"):  # this spec has no world clips
        CodecBatches(f"bank:{root}", 1, 1.0, 64, 8, 0, 0, 1, 0, "cpu", mix=(1.0, 0.0, 0.0))
