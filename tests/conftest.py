"""Test-wide settings.

Tests use tiny tensors: one intra-op thread is faster than two and does not collapse
when the other core is busy (the suite runs its files in parallel with pytest-xdist).
"""

import torch

torch.set_num_threads(1)
