"""The global RNG state (CPU and CUDA): read, set and seed it.

Noise and encoder samples come from the global torch RNG, so this state is part of a
checkpoint and of the guard's rollback snapshot.
"""

from __future__ import annotations

import torch

__all__ = ["rng_state", "seed_all", "set_rng_state"]


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"].to(torch.uint8).cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in cuda])


def seed_all(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
