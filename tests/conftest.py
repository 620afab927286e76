"""Shared test settings: one torch thread, the `extension` marker, and the `p2_tiles` fixture.

A test marked `extension` needs the native conv NPK kernel: it is skipped where the kernel is not built,
and fails instead where $NPK_REQUIRE_EXT=1 (CI), so a broken build cannot leave the suite green.
Shared helpers live in helpers.py.
"""
import pytest
import torch

from npk.kernels import conv_fast


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The suite's nets are tiny: intra-op threads gain nothing and cost a lot on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def p2_tiles(monkeypatch):
    """For tests that count or damage the tiles of a tiny conv net: keep its P^2-sized tiles of a few
    samples (its fused run from the inputs to the pool would otherwise get time-sized tiles, `block_size`)."""
    monkeypatch.setattr(conv_fast, "takes_inputs_to_pool", lambda *args: False)


def pytest_runtest_setup(item):
    if item.get_closest_marker("extension") and conv_fast.extension() is None:   # raises under NPK_REQUIRE_EXT=1
        pytest.skip("the native conv NPK kernel is not built (pip install . with a C++ compiler)")
