"""AnyMDP: procedurally generated tabular MDPs for in-context RL, as Gymnasium environments.

``import anymdp_gym`` registers ``AnyMDP-v0``, ``AnyPOMDP-v0`` and ``GarnetMDP-v0`` (also
reachable without the import as ``gym.make("anymdp_gym:AnyMDP-v0")``); each has a Numba-batched
vector entry point, ``gym.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point")``.
The package needs only gymnasium, numpy and numba.
"""

from gymnasium.envs.registration import register, registry

from anymdp_gym.env import AnyMDPEnv
from anymdp_gym.planning import policy_evaluation, value_iteration
from anymdp_gym.sampling import add_emission, sample_contextual_bandit, sample_garnet_task, sample_task
from anymdp_gym.task import Task
from anymdp_gym.vector import AnyMDPVectorEnv

for _env_id, _family in (("AnyMDP-v0", "anymdp"), ("AnyPOMDP-v0", "anypomdp"), ("GarnetMDP-v0", "garnet")):
    if _env_id not in registry:  # re-imports (e.g. importlib.reload) must not warn
        register(
            id=_env_id,
            entry_point="anymdp_gym.env:AnyMDPEnv",
            vector_entry_point="anymdp_gym.vector:AnyMDPVectorEnv",
            kwargs={"family": _family},
        )

__all__ = [
    "AnyMDPEnv",
    "AnyMDPVectorEnv",
    "Task",
    "add_emission",
    "policy_evaluation",
    "sample_contextual_bandit",
    "sample_garnet_task",
    "sample_task",
    "value_iteration",
]
