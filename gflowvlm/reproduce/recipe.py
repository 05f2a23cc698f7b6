"""A reproduction recipe: everything one env's comparison needs, in one YAML file (configs/reproduce/<env>.yaml).

    env: {id: gflowvlm/NumberLine-v0, image_size: 64, kwargs: {}}
    expert_strategy: null        # ONE expert for the SFT data, the expert injected in training and the oracle row
    seeds: [0, 1, 2]
    tiny_model: {align_steps: 2000, align: [gflowvlm/NumberLine-v0]}
    sft_data: {samples: 3000, done_fraction: 0.25}
    budget: {env_steps: 3000}    # every method but SFT trains on exactly this many environment steps (on-policy)
    run: {...}                   # a RunConfig mapping shared by every training run (env, prompt, generation)
    sft: {...}                   # the SFT run's RunConfig mapping (over `run`)
    presets: {name: {...}}       # named RunConfig mappings that methods compose with `like`
    methods:                     # the rows, in this order; "sft" is the SFT model itself (the common start)
      sft: {}
      ppo: {like: [lora], algorithm: ppo, ...}
      subtb: {like: [lora, gflownet], algorithm: subtb}
      subtb-off: {like: [subtb, off_policy]}
    default_methods: null        # what a run without --methods runs; null: every method but the optional ones
    optional_methods: [grpo]     # rows that run only when --methods (or default_methods) names them
    evaluation: {splits: [id, ood], episodes: 200, ...}
    quick: {...}                 # merged over the recipe by --quick

The recipe file itself may name a `base` (config composition, gflowvlm.config_schema), so the methods and their
hyperparameters live once in configs/reproduce/common.yaml and each env's file says only what differs.
Every method's run config is resolved and validated here, before anything trains: a typo in the last method
fails in the first second, not after an hour of the grid.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gflowvlm.config import RunConfig, validate
from gflowvlm.config_schema import ConfigError, apply_overrides, deep_merge, from_dict, load_composed_yaml

SFT_METHOD = "sft"
REFERENCE_ROWS = ("random", "oracle")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# Keys of a method's run config that the harness owns: every method gets the same start, budget and directories.
_HARNESS_KEYS = ("output_dir", "max_env_steps", "resume", "overwrite")
_TOP_KEYS = {"env", "expert_strategy", "seeds", "tiny_model", "sft_data", "budget", "run", "sft", "presets",
             "methods", "evaluation", "quick", "description", "default_methods", "optional_methods"}


@dataclass
class TinyModelSpec:
    family: str = "llava"
    align: list[str] = field(default_factory=list)  # envs whose observations the model learns to caption
    align_steps: int | None = None  # upper bound of caption pre-training steps; None: each env's own recipe
    align_target: float | None = 0.95  # held-out exact-caption accuracy that ends alignment early (None: 0.98)
    align_caption: str = "image"  # vision_alignment.CAPTION_SOURCES: "text" is the captions before image_caption
    align_confirm: int | None = None  # held-out pairs confirming an early stop; None: 512, 0: none (as before 1811c63)


@dataclass
class SFTDataSpec:
    samples: int = 3000
    done_fraction: float = 0.25
    split: str = "id"
    caption_samples: int = 0  # alignment caption pairs appended to the SFT data (sft_data.write_sft_data)
    caption: str | None = None  # their caption source (CAPTION_SOURCES); None: the alignment's (tiny_model)


@dataclass
class BudgetSpec:
    env_steps: int = 3000


@dataclass
class EvaluationSpec:
    splits: list[str] = field(default_factory=lambda: ["id", "ood"])
    episodes: int = 200  # greedy episodes per split (one per task)
    greedy: bool = True
    num_envs: int = 32
    diversity_k: int = 0  # K samples per task for Div@K (0: no diversity run)
    diversity_tasks: int = 16
    diversity_temperature: float = 1.0
    max_steps: dict[str, int] = field(default_factory=dict)  # split -> horizon; absent: the env's for the split
    env_kwargs: dict[str, dict] = field(default_factory=dict)  # split -> extra env options for its evaluation
    unparseable: str = "random"
    protocol: str = ""  # one line for the report: why this horizon / these episodes
    success_threshold: float = 0.8  # the report's sample efficiency: env steps until training success reaches it


@dataclass
class EnvSpec:
    id: str = "gflowvlm/NumberLine-v0"
    image_size: int = 64
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    path: str
    name: str
    description: str
    env: EnvSpec
    expert_strategy: str | None
    seeds: list[int]
    tiny_model: TinyModelSpec
    sft_data: SFTDataSpec
    budget: BudgetSpec
    evaluation: EvaluationSpec
    methods: dict[str, dict[str, Any]]  # name -> resolved RunConfig mapping ({} for sft: its run is `sft_run`)
    default_methods: list[str]  # what a run without --methods runs
    sft_run: dict[str, Any]
    common: dict[str, Any]  # the settings every run shares (`run` + env + expert), without a method
    resolved: dict[str, Any]  # the recipe as loaded (quick applied), for results.json

    def shared_config(self) -> RunConfig:
        """What every row shares (env, prompt, generation, fallback): the reference rows and the SFT data use it."""
        return from_dict(RunConfig, self.common)

    def run_config(self, method: str, nested: dict[str, Any] | None = None, **harness: Any) -> RunConfig:
        """The validated RunConfig of `method` ("sft" = the SFT run), with `nested` merged over it (sections such
        as {"model": {"name_or_path": ...}}) and the harness's own top-level keys (output_dir, seed, ...) set."""
        data = merge(self.sft_run if method == SFT_METHOD else self.methods[method], nested or {})
        data.update(harness)
        config = from_dict(RunConfig, data)
        validate(config)
        return config


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Config composition's deep merge, on copies: a recipe's sections are shared by many methods."""
    return copy.deepcopy(deep_merge(base, override))


def load_recipe(path: str | Path, quick: bool = False, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load, compose (`base`, `quick`, `like`, then `key.sub=value` overrides such as budget.env_steps=3000 or
    methods.subtb-off.objective.lam=0.9), check every method's run config. ConfigError on any problem."""
    data = load_composed_yaml(str(path))
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"recipe {path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    if quick:
        data = merge({k: v for k, v in data.items() if k != "quick"}, data.get("quick") or {})
    data.pop("quick", None)
    data = apply_overrides(data, list(overrides))
    env = from_dict(EnvSpec, data.get("env"), "env")
    tiny = from_dict(TinyModelSpec, data.get("tiny_model"), "tiny_model")
    if not tiny.align:
        tiny.align = [env.id]
    sft_data = from_dict(SFTDataSpec, data.get("sft_data"), "sft_data")
    budget = from_dict(BudgetSpec, data.get("budget"), "budget")
    evaluation = from_dict(EvaluationSpec, data.get("evaluation"), "evaluation")
    _check_specs(path, tiny, sft_data, budget, evaluation)
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"recipe {path}: seeds must be a non-empty list of non-negative integers, got {seeds!r}")
    strategy = data.get("expert_strategy")
    if strategy is not None and not isinstance(strategy, str):
        raise ConfigError(f"recipe {path}: expert_strategy must be a name or null, got {strategy!r}")

    run = _mapping(data.get("run"), "run", path)
    common = merge(run, _env_section(env, strategy))
    presets = _mapping(data.get("presets"), "presets", path)
    # `name: null` removes a method a base recipe defines (ALFWorld drops DB).
    declared = _mapping(data.get("methods"), "methods", path)
    methods_data = {k: v for k, v in declared.items() if v is not None}
    if SFT_METHOD not in methods_data:
        raise ConfigError(f"recipe {path}: methods must include {SFT_METHOD!r} (every method starts from it)")
    resolved_methods: dict[str, dict[str, Any]] = {}
    for name in methods_data:
        if not isinstance(name, str) or not _NAME.match(name) or name in REFERENCE_ROWS:
            raise ConfigError(f"recipe {path}: method name {name!r} must be lower-case letters, digits, - or _ "
                              f"and not one of {list(REFERENCE_ROWS)}")
        if name == SFT_METHOD:
            continue
        resolved_methods[name] = merge(common, _resolve_like(name, methods_data, presets, path, ()))
    sft_run = merge(common, _mapping(data.get("sft"), "sft", path))
    sft_run["algorithm"] = SFT_METHOD
    methods = {SFT_METHOD: {}, **resolved_methods}
    optional = data.get("optional_methods") or []
    # A method a recipe removed (`name: null`) may stay listed: common.yaml's list serves every env's recipe.
    if not isinstance(optional, list) or SFT_METHOD in optional or any(name not in declared for name in optional):
        raise ConfigError(f"recipe {path}: optional_methods must list methods of the recipe other than "
                          f"{SFT_METHOD} ({', '.join(resolved_methods)}), got {optional!r}")
    default = data.get("default_methods") or [name for name in methods if name not in optional]
    if not isinstance(default, list) or any(name not in methods for name in default):
        raise ConfigError(f"recipe {path}: default_methods must list methods of the recipe ({', '.join(methods)}), "
                          f"got {default!r}")
    recipe = Recipe(path=str(path), name=Path(path).stem, description=str(data.get("description", "")),
                    env=env, expert_strategy=strategy, seeds=list(seeds), tiny_model=tiny, sft_data=sft_data,
                    budget=budget, evaluation=evaluation, methods=methods, default_methods=list(default),
                    sft_run=sft_run, common=common, resolved=data)
    for name in recipe.methods:  # fail now, not after an hour of the grid
        try:
            # The harness fills in the model, the data and the budget per seed; placeholders stand in for them here.
            harness = {"model": {"name_or_path": "tiny-vlm"}, **({"sft": {"data": "sft.jsonl"}}
                                                               if name == SFT_METHOD else {})}
            config = recipe.run_config(name, harness, output_dir="runs/check",
                                       max_env_steps=None if name == SFT_METHOD else budget.env_steps)
        except ConfigError as error:
            raise ConfigError(f"recipe {path}, method {name}: {error}") from None
        if name != SFT_METHOD and config.algorithm == SFT_METHOD:
            raise ConfigError(f"recipe {path}, method {name}: algorithm sft is the {SFT_METHOD!r} row itself")
    return recipe


def _check_specs(path, tiny: TinyModelSpec, sft_data: SFTDataSpec, budget: BudgetSpec,
                 evaluation: EvaluationSpec) -> None:
    from gflowvlm.model.vision_alignment import CAPTION_SOURCES

    checks = [
        (tiny.align_steps is None or tiny.align_steps >= 1, "tiny_model.align_steps must be null or >= 1"),
        (tiny.align_target is None or 0.0 < tiny.align_target <= 1.0, "tiny_model.align_target must be in (0, 1]"),
        (tiny.align_confirm is None or tiny.align_confirm >= 0, "tiny_model.align_confirm must be null or >= 0"),
        (tiny.align_caption in CAPTION_SOURCES,
         f"tiny_model.align_caption must be one of {', '.join(CAPTION_SOURCES)}"),
        (sft_data.samples >= 1, "sft_data.samples must be >= 1"),
        (0.0 <= sft_data.done_fraction < 1.0, "sft_data.done_fraction must be in [0, 1)"),
        (sft_data.caption_samples >= 0, "sft_data.caption_samples must be >= 0"),
        (sft_data.caption is None or sft_data.caption in CAPTION_SOURCES,
         f"sft_data.caption must be null or one of {', '.join(CAPTION_SOURCES)}"),
        (budget.env_steps >= 1, "budget.env_steps must be >= 1"),
        (bool(evaluation.splits), "evaluation.splits must not be empty"),
        (evaluation.episodes >= 1, "evaluation.episodes must be >= 1"),
        (evaluation.num_envs >= 1, "evaluation.num_envs must be >= 1"),
        (evaluation.diversity_k == 0 or evaluation.diversity_k >= 2, "evaluation.diversity_k must be 0 or >= 2"),
        (evaluation.diversity_tasks >= 1, "evaluation.diversity_tasks must be >= 1"),
        (0.0 < evaluation.success_threshold <= 1.0, "evaluation.success_threshold must be in (0, 1]"),
        (evaluation.diversity_temperature > 0, "evaluation.diversity_temperature must be > 0 (Div@K samples)"),
        (evaluation.unparseable in ("random", "illegal"), "evaluation.unparseable must be random or illegal"),
        (all(isinstance(v, int) and v >= 1 for v in evaluation.max_steps.values()),
         "evaluation.max_steps values must be positive integers"),
        (set(evaluation.max_steps) <= set(evaluation.splits), "evaluation.max_steps names a split not evaluated"),
        (set(evaluation.env_kwargs) <= set(evaluation.splits), "evaluation.env_kwargs names a split not evaluated"),
        (all(isinstance(v, dict) for v in evaluation.env_kwargs.values()),
         "evaluation.env_kwargs values must be mappings of env options"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"recipe {path}: {message}")


def _env_section(env: EnvSpec, strategy: str | None) -> dict[str, Any]:
    section: dict[str, Any] = {"env": {"id": env.id, "image_size": env.image_size, "kwargs": dict(env.kwargs)}}
    section["collect"] = {"expert_strategy": strategy}
    return section


def _mapping(value: Any, name: str, path) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"recipe {path}: {name} must be a mapping, got {type(value).__name__}")
    return value


def _resolve_like(name: str, methods: dict, presets: dict, path, chain: tuple[str, ...]) -> dict[str, Any]:
    """A method's mapping with its `like` list (methods or presets, applied in order, then its own keys)."""
    if name in chain:
        raise ConfigError(f"recipe {path}: `like` cycle {' -> '.join(chain + (name,))}")
    source = methods if name in methods else presets
    entry = _mapping(source.get(name), f"methods.{name}", path)
    likes = entry.get("like", [])
    likes = [likes] if isinstance(likes, str) else likes
    if not isinstance(likes, list):
        raise ConfigError(f"recipe {path}: {name}.like must be a name or a list of names")
    out: dict[str, Any] = {}
    for like in likes:
        if like == SFT_METHOD or (like not in methods and like not in presets):
            raise ConfigError(f"recipe {path}: {name}.like names {like!r}, which is neither a method (other than "
                              f"sft) nor a preset (presets: {', '.join(sorted(presets)) or 'none'})")
        out = merge(out, _resolve_like(like, methods, presets, path, chain + (name,)))
    own = {k: v for k, v in entry.items() if k != "like"}
    for key in _HARNESS_KEYS:
        if key in own:
            raise ConfigError(f"recipe {path}: {name}.{key} is set by the harness (the same for every method)")
    return merge(out, own)
