"""gflowvlm environments. Importing this package registers them with gymnasium under `gflowvlm/`."""
from __future__ import annotations

from gymnasium.envs.registration import register, registry

from envs.base import VLMEnv, normalize_command

_ENVS = {
    "gflowvlm/NumberLine-v0": "envs.number_line:NumberLineEnv",
    "gflowvlm/Blackjack-v0": "envs.blackjack:BlackjackEnv",
    "gflowvlm/EZPoints-v0": "envs.points:EZPointsEnv",
    "gflowvlm/Points24-v0": "envs.points:Points24Env",
    "gflowvlm/ALFWorld-v0": "envs.alfworld.env:ALFWorldEnv",
    "gflowvlm/Gym-v0": "envs.gym_adapter:GymAdapterEnv",  # any gymnasium env with Discrete actions, no subclass
    "gflowvlm/FrozenLake-v0": "envs.frozen_lake:FrozenLakeEnv",  # gymnasium's FrozenLake-v1 through Gym-v0
}
ENV_IDS = tuple(_ENVS)
CARD_ENV_IDS = ENV_IDS[:4]

for _env_id, _entry_point in _ENVS.items():
    if _env_id not in registry:
        # The env enforces its own horizon (split-dependent), so no TimeLimit wrapper is added here.
        register(id=_env_id, entry_point=_entry_point, disable_env_checker=False)

__all__ = ["VLMEnv", "normalize_command", "ENV_IDS", "CARD_ENV_IDS"]
