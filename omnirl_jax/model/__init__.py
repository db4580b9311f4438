"""The OmniRL model (Flax NNX) and its sequence-mixer kernels."""

from omnirl_jax.model.omnirl import Carry, OmniRL, reset_carry

__all__ = ["Carry", "OmniRL", "reset_carry"]
