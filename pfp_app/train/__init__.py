"""Training (codec, base, stage 1, stage 2): trainer.train dispatches to codec_loop or memory_loop, which share
common.py; data.py and codec_data.py draw their batches; cli.py is `python -m pfp_app train` and `evaluate`."""
