"""Making environments by id, with the user's mistakes turned into one-line errors.

Any gymnasium environment that follows the contract in envs/base.py works here: the id may be one of the
built-in `gflowvlm/...` games or any id a user registered (import the module that registers it first, or pass
`module.path:EnvId` as gymnasium allows).
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym

import envs  # noqa: F401  (registers the built-in games)
from gflowvlm.cli import UserError


def make_env(env_id: str, split: str = "id", reward: str = "gflowvlm", image_size: int = 64,
             max_steps: int | None = None, **kwargs: Any) -> gym.Env:
    options: dict[str, Any] = dict(kwargs, split=split, reward=reward, image_size=image_size)
    if max_steps is not None:
        options["max_steps"] = max_steps
    try:
        return gym.make(env_id, **options)
    except (gym.error.NameNotFound, gym.error.NamespaceNotFound, gym.error.VersionNotFound,
            gym.error.UnregisteredEnv, gym.error.DeprecatedEnv) as error:
        known = ", ".join(sorted(envs.ENV_IDS))
        raise UserError(f"unknown environment id {env_id!r} ({error}); built-in: {known}") from None
    except ValueError as error:  # the env's own checks: unknown split, reward mode, image size
        raise UserError(f"{env_id}: {error}") from None
    except ModuleNotFoundError as error:
        raise UserError(f"{env_id} needs a missing package: {error}") from None
