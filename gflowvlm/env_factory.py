"""Making environments by id, with the user's mistakes turned into one-line errors.

Any gymnasium environment that follows the contract in envs/base.py works here: the id may be one of the
built-in `gflowvlm/...` games or any id a user registered (import the module that registers it first, or pass
`module.path:EnvId` as gymnasium allows).

`check_env_options` checks an id and its options WITHOUT making the env: it resolves the registry entry point and
reads its `__init__` signature, so config validation can reject a wrong `env.kwargs` key or a non-gflowvlm env in
milliseconds, before any model loads, instead of a TypeError deep inside the first rollout. An env class may add
two class methods that see the options it would be made with (its registered kwargs updated by the config's):
`check_options(options)`, its own checks that need no env (a ValueError, one line), and `has_expert(options)`,
False when it would have no oracle (`gflowvlm/Gym-v0` made without `expert=`), which `check_has_expert` refuses
for whatever needs one (SFT data, expert injection, `gflowvlm play`).
"""
from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

import envs  # noqa: F401  (registers the built-in games)
from envs.base import VLMEnv
from gflowvlm.errors import UserError

# Options the framework passes from env.split / env.reward / env.image_size / env.max_steps, never from env.kwargs.
FRAMEWORK_OPTIONS = ("split", "reward", "image_size", "max_steps")
CONTRACT = ("a gflowvlm env subclasses envs.base.VLMEnv (observations {'image': uint8 HxWx3, 'text': str}, "
            "command strings as actions, info with task, admissible_actions, illegal, log_reward and success, the "
            "expert_action/expert_thoughts oracle), takes split, reward, image_size and max_steps, and is "
            "registered with gymnasium; see README 'Your own environment'")


def make_env(env_id: str, /, split: str = "id", reward: str = "gflowvlm", image_size: int = 64,
             max_steps: int | None = None, **kwargs: Any) -> gym.Env:
    # env_id is positional-only so that an env's own option of that name reaches it (gflowvlm/Gym-v0's env_id).
    options: dict[str, Any] = dict(kwargs, split=split, reward=reward, image_size=image_size)
    if max_steps is not None:
        options["max_steps"] = max_steps
    try:
        return gym.make(env_id, **options)
    except (gym.error.NameNotFound, gym.error.NamespaceNotFound, gym.error.VersionNotFound,
            gym.error.UnregisteredEnv, gym.error.DeprecatedEnv) as error:
        raise UserError(_unknown(env_id, error)) from None
    except ValueError as error:  # the env's own checks: unknown split, reward mode, image size
        raise UserError(f"{env_id}: {error}") from None
    except ModuleNotFoundError as error:
        raise UserError(f"{env_id} needs a missing package: {error}") from None


def env_creator(env_id: str, key: str = "env.id") -> Any:
    """The class (or factory function) gymnasium's registry names for `env_id`; imported, never called."""
    if not isinstance(env_id, str) or not env_id.strip():
        raise UserError(f"{key} must be a gymnasium environment id, got {env_id!r}")
    try:
        spec = gym.spec(env_id)
    except ModuleNotFoundError as error:
        raise UserError(f"{key}: {env_id} needs a missing package: {_first_line(error)}") from None
    except gym.error.Error as error:
        raise UserError(f"{key}: {_unknown(env_id, error)}") from None
    entry_point = spec.entry_point
    if isinstance(entry_point, str):
        try:
            entry_point = load_env_creator(entry_point)
        except ModuleNotFoundError as error:
            raise UserError(f"{key}: {env_id} needs a missing package: {_first_line(error)}") from None
        except (AttributeError, ImportError, ValueError) as error:
            raise UserError(f"{key}: cannot load {env_id}'s entry point {spec.entry_point!r}: "
                            f"{_first_line(error)}") from None
    if entry_point is None:
        raise UserError(f"{key}: {env_id} has no entry point; {CONTRACT}")
    return entry_point


def accepted_options(creator: Any) -> tuple[list[str], bool]:
    """(keyword options `creator` takes, whether it takes any keyword at all through **kwargs)."""
    try:
        parameters = inspect.signature(creator).parameters.values()
    except (TypeError, ValueError):  # a builtin or C extension: nothing to read, so nothing is refused
        return [], True
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in parameters)


def check_env_options(env_id: str, split: str | None = None, kwargs: Mapping[str, Any] | None = None, *,
                      max_steps: int | None = None, strategy: str | None = None,
                      keys: Mapping[str, str] | None = None) -> None:
    """UserError (one line, naming the key) unless `env_id` is a gflowvlm-contract env that takes these options.

    `keys` names the settings in messages: "id", "split", "kwargs" (a prefix) and "strategy"; the defaults are the
    config's (env.id, env.split, env.kwargs.NAME, collect.expert_strategy), a command passes its flags.
    """
    keys = {"id": "env.id", "split": "env.split", "kwargs": "env.kwargs", "strategy": "collect.expert_strategy",
            **(keys or {})}
    creator = env_creator(env_id, keys["id"])
    if inspect.isclass(creator) and not issubclass(creator, VLMEnv):
        raise UserError(f"{keys['id']}: {env_id} ({creator.__module__}.{creator.__qualname__}) is not a gflowvlm "
                        f"environment: {CONTRACT}; or, with a Discrete action space and an rgb_array renderer, wrap "
                        f"it without a subclass: gflowvlm/Gym-v0 with env_id={env_id!r} (envs/gym_adapter.py)")
    # A factory function's result is only known by calling it; its options are still read from its signature.
    names, takes_any = accepted_options(creator)
    own = [name for name in names if name not in FRAMEWORK_OPTIONS and name != "render_mode"]
    if not takes_any:
        needed = ["split", "reward", "image_size"] + (["max_steps"] if max_steps is not None else [])
        missing = [name for name in needed if name not in names]
        if missing:
            raise UserError(f"{keys['id']}: {env_id} does not take {', '.join(missing)}; {CONTRACT}")
    splits = getattr(creator, "splits", None)
    if split is not None and isinstance(splits, (tuple, list)) and split not in splits:
        raise UserError(f"{keys['split']}: {env_id} has no split {split!r} (it has: {', '.join(map(str, splits))})")
    for name in (kwargs or {}):
        key = f"{keys['kwargs']}.{name}"
        if name in FRAMEWORK_OPTIONS:
            raise UserError(f"{key}: set env.{name} instead (split, reward, image_size and max_steps are env.* keys)")
        if not takes_any and name not in names:
            accepted = f"its options: {', '.join(own)}" if own else "it has none besides env.split, env.reward, " \
                "env.image_size and env.max_steps"
            raise UserError(f"{key}: {env_id} takes no option {name!r} ({accepted})")
    if strategy is not None:
        _check_strategy(creator, env_id, strategy, names, takes_any, keys["strategy"])
    check = getattr(creator, "check_options", None)
    if callable(check):
        try:
            check(_options(env_id, kwargs))
        except ValueError as error:
            # An option the config gives, or one nothing gives, is named as the config key; a registered one by id.
            option = getattr(error, "option", None)
            configured = option is not None and (option in (kwargs or {}) or option not in gym.spec(env_id).kwargs)
            where = f"{keys['kwargs']}.{error}" if configured else f"{keys['id']}: {env_id}: {error}"
            raise UserError(" ".join(where.split())) from None


def check_has_expert(env_id: str, kwargs: Mapping[str, Any] | None, key: str, purpose: str) -> None:
    """UserError (one line, naming `key`) when the env would be made without an oracle, so `purpose` cannot be done.

    Envs say so through a `has_expert(options)` class method (`gflowvlm/Gym-v0` without `expert=`); every other env
    has one (envs.base.VLMEnv requires `expert_action`).
    """
    has_expert = getattr(env_creator(env_id), "has_expert", None)
    if callable(has_expert) and not has_expert(_options(env_id, kwargs)):
        raise UserError(f"{key}: {env_id} has no expert (it was made with expert=None), so it cannot {purpose}; give "
                        f"it expert=callable(env, observation) -> action (on-policy objectives and ppo need none)")


def _options(env_id: str, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options gymnasium would make `env_id` with: its registered kwargs updated by `kwargs`."""
    return {**(gym.spec(env_id).kwargs or {}), **(kwargs or {})}


def _check_strategy(creator: Any, env_id: str, strategy: str, names: list[str], takes_any: bool, key: str) -> None:
    if not takes_any and "strategy" not in names:
        raise UserError(f"{key}: {env_id} has a single oracle and takes no strategy option")
    # The envs that have several oracles list them as STRATEGIES in their module (Blackjack does) or on the class.
    known = getattr(creator, "strategies", None) or getattr(sys.modules.get(creator.__module__), "STRATEGIES", None)
    if isinstance(known, (tuple, list)) and strategy not in known:
        raise UserError(f"{key}: {env_id} has no strategy {strategy!r} (it has: {', '.join(map(str, known))})")


def _unknown(env_id: str, error: BaseException) -> str:
    known = ", ".join(sorted(envs.ENV_IDS))
    return f"unknown environment id {env_id!r} ({_first_line(error)}); built-in: {known}"


def _first_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
