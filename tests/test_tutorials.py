"""Every tutorial runs end to end (in its fast mode) and produces what it promises."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

TUTORIALS = Path(__file__).parents[1] / "tutorials"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, TUTORIALS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    # small unbinned fits are latency-bound: one torch thread is much faster on 2 busy cores
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tutorial_01_signal_background_fit(tmp_path, one_thread):
    result = _load("01_signal_background_fit").main(fast=True, out=tmp_path)
    assert result["valid"]
    # the background normalisation is pinned by the 2000-event control region and the SR:
    # true value 1.1, error ≈ 0.02; 5σ allows for the barely trained signal model of fast mode
    assert abs(result["values"]["mu_bkg"] - 1.1) < 5 * result["errors"]["mu_bkg"]
    assert (tmp_path / "profile_c.png").stat().st_size > 10_000
