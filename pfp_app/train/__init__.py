"""Training (codec, stage 1, stage 2) and held-out evaluation. See trainer.py."""
