"""OmniRL in JAX/Flax: meta-training a long-context causal model for in-context RL on AnyMDP.

Importing this package imports no JAX: the data generator (``omnirl_jax.data``) runs in
processes that never load it. The trainer lives in the submodules.
"""

__version__ = "0.1.0"
