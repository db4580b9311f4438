"""AnyMDP: procedurally generated tabular MDPs for in-context RL, as Gymnasium environments.

``import anymdp_gym`` registers ``AnyMDP-v0``, ``AnyPOMDP-v0`` and ``GarnetMDP-v0``. The package
needs only gymnasium, numpy and numba.
"""

from anymdp_gym.planning import policy_evaluation, value_iteration
from anymdp_gym.sampling import add_emission, sample_garnet_task, sample_task
from anymdp_gym.task import Task

__all__ = [
    "Task",
    "add_emission",
    "policy_evaluation",
    "sample_garnet_task",
    "sample_task",
    "value_iteration",
]
