"""Test-wide settings.

Tests use tiny tensors: one intra-op thread is faster than two and does not collapse
when the other core is busy (the suite runs its files in parallel with pytest-xdist).
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def float64():
    """Exact comparisons in float64, restored afterwards (xdist workers share the process)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
