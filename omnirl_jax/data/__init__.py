"""Training data for OmniRL: behaviour policies, sequence generation, shards and the loader.

Numba and numpy only; nothing here imports JAX.
"""
