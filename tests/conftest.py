"""Test-session settings shared by every test module."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The tests' tensors are small: torch's intra-op thread pool only adds overhead, and on a
    busy 2-core machine its threads stall each other (10-25x slower fits). Restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
