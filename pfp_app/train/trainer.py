"""`train(cfg)`: one (resumable) training session of cfg.stage, on the CPU, one GPU or many.

The stages: `codec` (the VAE: codec_loop.py); `base` (G alone, no memory), `pretrain` (stage 1: frame retrieval)
and `finetune` (stage 2: next segment) train G and φ (memory_loop.py) with the paper's objectives of
sampling/flow.py. The options, each with its help: common.TrainConfig (`python -m pfp_app train --help`).
"""

from __future__ import annotations

from .common import STAGES, TrainConfig, check_config

__all__ = ["STAGES", "TrainConfig", "train"]


def train(cfg: TrainConfig) -> dict:
    """Run one (resumable) training session; returns the final state (step, samples, losses)."""
    check_config(cfg)
    if cfg.stage == "codec":
        from .codec_loop import train_codec

        return train_codec(cfg)
    from .memory_loop import train_memory

    return train_memory(cfg)
