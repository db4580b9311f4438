"""AnyMDP for JAX RL codebases: gymnax environments whose ``EnvParams`` is a task, so a batch of
tasks steps under ``jax.vmap`` and ``jax.jit`` on the accelerator beside the learner.

Needs the ``jax`` extra (``pip install "anymdp-omnirl[jax]"``: JAX and gymnax); ``import
anymdp_gym`` alone never imports JAX. ::

    from anymdp_gym import sample_task
    from anymdp_gym.jax import AnyMDP

    env = AnyMDP(n_states=16, n_actions=5)
    params = env.params(sample_task(16, 5, seed=0))          # one task
    obs, state = env.reset(key, params)
    obs, state, reward, done, info = env.step(key, state, action, params)
    batch = env.params([sample_task(16, 5, seed=s) for s in range(4096)])  # stacked tasks
    obs, state = jax.vmap(env.reset)(keys, batch)

``dynamics`` holds the pure functions (the one JAX form of the dynamics; the evaluator steps it
directly) and needs JAX only; the gymnax classes (``env``) load on first use, since importing
gymnax costs seconds that the evaluator need not pay.
"""

try:
    import jax  # noqa: F401
except ImportError:  # pragma: no cover - depends on the installation
    raise ImportError('anymdp_gym.jax needs JAX and gymnax: pip install "anymdp-omnirl[jax]"') from None

_ENV_NAMES = ("AnyMDP", "GarnetMDP", "OneHotObservation")

__all__ = ["EnvParams", "EnvState", *_ENV_NAMES]

from anymdp_gym.jax.dynamics import EnvParams, EnvState  # noqa: E402


def __getattr__(name: str):
    if name in _ENV_NAMES:
        from anymdp_gym.jax import env

        return getattr(env, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
