"""The OmniRL model (Flax NNX) and its sequence-mixer kernels."""

from omnirl_jax.model.omnirl import OmniRL, reset_carry

__all__ = ["OmniRL", "reset_carry"]
