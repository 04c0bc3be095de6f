"""Widening the codec's decoder keeps what it computes and every latent, and leaves the new channels learnable."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan

from pfp_app.model.codec_widen import decoder_width, widen_decoder
from pfp_app.model.bundle import MODEL_CONFIGS, load_model
from pfp_app.train.trainer import TrainConfig, train

from test_train import TINY_DATA


def _codec(base: int = 8, seed: int = 0) -> AutoencoderKLWan:
    """A small trained-looking codec of the default's layout (4x space, 4x time): random weights with a
    non-trivial time path and norm gains, so a widening bug cannot hide behind identity-like weights."""
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=base, z_dim=8, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[True, True])
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith(".gamma"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0, 0.05)
    return vae.eval()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / (a - b).pow(2).mean()))


@torch.no_grad()
def test_widened_decoder_reproduces_the_old_one_and_keeps_the_latents():
    vae = _codec()
    wide = widen_decoder(vae, 16).eval()
    assert decoder_width(wide) == 16 and wide.config.base_dim == 8
    assert sum(p.numel() for p in wide.decoder.parameters()) > 3 * sum(p.numel() for p in vae.decoder.parameters())
    x = torch.rand(1, 3, 9, 32, 32) * 2 - 1  # 9 frames: 3 latent frames, so the time path and its caches run
    z = vae.encode(x).latent_dist.mode()
    assert torch.equal(z, wide.encode(x).latent_dist.mode())  # the encoder, hence G's latents, is untouched
    old, new = vae.decode(z).sample, wide.decode(z).sample
    assert old.shape == new.shape == (1, 3, 9, 32, 32)
    # the same frames up to the new channels' small share of each RMS norm; a decoder widened by zero-padding
    # without the sqrt(channels) corrections, or with q/k/v or the two time_conv frames mixed up, scores < 20 dB
    assert _psnr(old, new) > 40, _psnr(old, new)
    other = widen_decoder(_codec(seed=1), 16).eval()
    assert _psnr(old, other.decode(z).sample) < 20  # the check above can fail: another codec is far away


def test_new_channels_learn():
    """Naive widening (new weights all zero) leaves the new channels dead: no gradient ever reaches them."""
    vae = _codec()
    wide = widen_decoder(vae, 16).train()
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    loss = (wide.decode(wide.encode(x).latent_dist.mode()).sample - x).pow(2).mean()
    loss.backward()
    w_old = vae.decoder.up_blocks[-1].resnets[0].conv1.weight  # full resolution: 8 -> 8 channels, now 16 -> 16
    grad = wide.decoder.up_blocks[-1].resnets[0].conv1.weight.grad
    assert grad.shape[:2] == (16, 16) and w_old.shape[:2] == (8, 8)
    assert grad[8:].abs().sum() > 0  # new out channels
    assert grad[:8, 8:].abs().sum() > 0  # old channels reading new ones
    assert wide.decoder.conv_out.weight.grad[:, 8:].abs().sum() > 0


def test_widening_refuses_to_narrow_and_outside_the_codec_stage(tmp_path):
    with pytest.raises(ValueError, match="already 16 wide; widening can only grow it"):
        widen_decoder(widen_decoder(_codec(), 16), 12)
    with pytest.raises(ValueError, match="--codec-decoder-width widens the codec: use it with --stage codec"):
        train(TrainConfig(stage="pretrain", out=str(tmp_path / "p"), max_steps=1, codec_decoder_width=12, **TINY_DATA))


def test_codec_stage_trains_and_exports_a_widened_decoder(tmp_path):
    base = MODEL_CONFIGS["tiny"].vae["base_dim"]
    out = tmp_path / "wide"
    state = train(TrainConfig(stage="codec", out=str(out), max_steps=2, codec_window=5, codec_decoder_width=base + 4,
                              **TINY_DATA))
    assert state["step"] == 2
    vae = load_model(out / "model").codec.vae
    assert decoder_width(vae) == base + 4 and vae.config.base_dim == base
