"""The CLI's film is a pure function of (storyboard, seed, steps, model): the latents of a committed fixture, made
by the CLI before the code around the core was reorganised, come out again bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from pfp_app.app.cli import main
from pfp_app.film.project import Project

FIXTURES = Path(__file__).parent / "fixtures"
STORYBOARD = FIXTURES / "cli_fixture_storyboard.txt"
LATENTS = FIXTURES / "cli_latents_default_seed7_steps3.safetensors"


def _fixture() -> tuple[torch.Tensor, dict]:
    with safe_open(str(LATENTS), "pt") as f:
        return f.get_tensor("latents"), f.metadata()


def test_cli_latents_match_the_fixture_made_before_the_refactor(tmp_path):
    expected, meta = _fixture()
    out = tmp_path / "film.mp4"
    assert main(["generate", "--storyboard", str(STORYBOARD), "--model", "default", "--steps", "3", "--seed", "7",
                 "--out", str(out)]) == 0
    got = Project(tmp_path / "film_project").load_history()[0]
    assert got.shape == expected.shape
    if torch.backends.cpu.get_cpu_capability() == meta["cpu_capability"]:
        # the same kernels: the same bits
        assert torch.equal(got, expected), f"max |diff| {float((got - expected).abs().max()):.3g}"
    else:  # another instruction set picks other kernels: equal up to float rounding
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
