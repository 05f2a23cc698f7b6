"""Every run's hyperparameters, in one place.

A run config is a YAML file (see configs/) whose sections are the dataclasses below, plus command-line overrides
`section.key=value`. Unknown keys and wrong types are errors that name the key path (see config_schema.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from gflowvlm.config_schema import ConfigError, apply_overrides, from_dict, load_yaml, to_dict

ALGORITHMS = ("tb", "vartb", "subtb", "db", "ppo", "sft")


@dataclass
class ModelConfig:
    # A hub id or a local directory, loaded with AutoModelForImageTextToText + AutoProcessor.
    name_or_path: str = ""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    attn_implementation: str | None = None  # "sdpa", "eager", "flash_attention_2"; None = transformers' default
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    # lora: adapters on the language model; qlora: the same on a 4-bit nf4 base; full: every weight trains;
    # none: nothing trains but the heads (evaluation, or head-only experiments).
    adapter: Literal["lora", "qlora", "full", "none"] = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: Literal["attention", "attention_mlp"] = "attention"
    # The vision tower and projector: frozen (default, as the papers), adapted with LoRA too, or fully trained.
    vision: Literal["frozen", "lora", "full"] = "frozen"
    # Hidden sizes of the MLP heads (log Z, state flow, value); RL4VLM's value head is 4096 -> 1024 -> 512 -> 1.
    head_hidden: list[int] = field(default_factory=lambda: [1024, 512])
    # An adapter directory (saved by a previous run) to start from, e.g. an SFT checkpoint (the paper's recipe).
    init_from: str | None = None


@dataclass
class GenerationConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128


@dataclass
class PromptConfig:
    # The paper's non-Markovian prompt carries past states and actions; history=false gives the Markovian variant.
    history: bool = True
    max_history_steps: int = 10
    # Oldest history steps are dropped (never the task) until the prompt fits this many tokens.
    max_prompt_tokens: int = 1536


@dataclass
class EnvConfig:
    id: str = "gflowvlm/NumberLine-v0"
    split: str = "id"
    reward: Literal["rl4vlm", "gflowvlm"] = "gflowvlm"
    image_size: int = 64
    max_steps: int | None = None
    num_envs: int = 8  # environments rolled in parallel per process
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra env options (e.g. ALFWorld's data_dir)


@dataclass
class CollectConfig:
    trajectories_per_task: int = 1  # K samples of the same task (same seed): Var-TB groups, Div@K
    episodes: int = 0  # episodes per collection round; 0 = one per environment (more refill freed environments)
    epsilon: float = 0.0  # probability of replacing the sampled action by a random admissible one
    unparseable: Literal["random", "illegal"] = "random"  # RL4VLM picks a random action; "illegal" keeps the state
    expert_injection: bool = False  # add the oracle's trajectory for tasks the policy failed (the paper)
    expert_strategy: str | None = None  # e.g. Blackjack's "stand17" (the paper's rule)
    replay_size: int = 0  # per-task top-k replay buffer (the paper uses 4); 0 = on-policy only
    replay_tasks: int = 256  # tasks kept in the buffer (least recently added evicted first)
    replay_samples: int = 0  # replayed trajectories mixed into each update


@dataclass
class ObjectiveConfig:
    lam: float = 1.0  # SubTB lambda
    flow: Literal["head", "done", "forward_looking"] = "done"  # how log F(s) is made for subtb/db
    cot_weight: float = 0.4  # log P_F = log p(action) + cot_weight * log p(CoT) (the paper's lambda)
    reward_beta: float = 1.0  # R^beta: sharpen (beta > 1) or flatten the target distribution
    min_log_reward: float = -23.0  # log R is clipped from below (R = 1e-10 for Blackjack losses)
    max_nonfinite_steps: int = 10  # stop the run after this many non-finite losses in a row


@dataclass
class PPOConfig:
    cot_weight: float = 0.5  # RL4VLM: 0.5 for the card games, 0.2 for ALFWorld
    gamma: float = 0.9
    gae_lambda: float = 0.95
    clip: float = 0.1
    epochs: int = 4
    minibatch_size: int = 8  # steps per PPO minibatch (each is one optimizer step)
    value_coef: float = 0.5
    normalize_advantages: bool = True


@dataclass
class SFTConfig:
    data: str = ""  # a JSONL file written by `gflowvlm make-sft-data`; `steps` batches of optim.batch_size


@dataclass
class OptimConfig:
    lr: float = 1e-4  # adapters
    head_lr: float = 1e-2  # log Z / flow / value heads learn faster (torchgfn recommends 0.1 for log Z)
    weight_decay: float = 0.0
    min_lr: float = 1e-9
    warmup_steps: int = 0
    cosine_period: int | None = None  # steps of one cosine period; None = the whole run (RL4VLM uses 25)
    grad_clip: float = 1.0
    grad_accum: int = 1
    batch_size: int = 16  # samples per scoring forward (minibatch of steps)


@dataclass
class LoggingConfig:
    log_every: int = 1
    save_every: int = 50
    keep_last: int = 2
    sample_every: int = 10  # write readable trajectory samples every N steps
    trackers: list[str] = field(default_factory=list)  # "wandb", "tensorboard"
    project: str = "gflowvlm"
    progress: bool = True


@dataclass
class RunConfig:
    algorithm: Literal["tb", "vartb", "subtb", "db", "ppo", "sft"] = "subtb"
    output_dir: str = "runs/run"
    seed: int = 0
    steps: int = 100  # optimizer iterations (one collect + update each for tb/subtb/db/ppo)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    resume: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def load_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a YAML run config, apply overrides, validate. Raises ConfigError with a one-line message."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides))
    config = from_dict(RunConfig, data)
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Checks across fields that types alone cannot express."""
    positive = {
        "steps": config.steps, "env.num_envs": config.env.num_envs, "env.image_size": config.env.image_size,
        "collect.trajectories_per_task": config.collect.trajectories_per_task,
        "optim.grad_accum": config.optim.grad_accum, "optim.batch_size": config.optim.batch_size,
        "generation.max_new_tokens": config.generation.max_new_tokens, "model.lora_r": config.model.lora_r,
        "logging.save_every": config.logging.save_every, "logging.keep_last": config.logging.keep_last,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    episodes = config.collect.episodes or config.env.num_envs
    if config.collect.episodes < 0:
        raise ConfigError(f"collect.episodes must be >= 0, got {config.collect.episodes}")
    if episodes % config.collect.trajectories_per_task:
        raise ConfigError("collect.episodes (or env.num_envs) must be a multiple of collect.trajectories_per_task "
                          f"({episodes} vs {config.collect.trajectories_per_task})")
    if not 0.0 <= config.collect.epsilon <= 1.0:
        raise ConfigError(f"collect.epsilon must be in [0, 1], got {config.collect.epsilon}")
    if config.generation.temperature < 0:
        raise ConfigError(f"generation.temperature must be >= 0, got {config.generation.temperature}")
    if not 0.0 < config.generation.top_p <= 1.0:
        raise ConfigError(f"generation.top_p must be in (0, 1], got {config.generation.top_p}")
    if config.objective.lam <= 0:
        raise ConfigError(f"objective.lam must be positive, got {config.objective.lam}")
    if config.algorithm == "vartb" and config.collect.trajectories_per_task < 2:
        raise ConfigError("vartb needs collect.trajectories_per_task >= 2 (the variance is over samples of a task)")
    if config.algorithm == "sft" and not config.sft.data:
        raise ConfigError("sft needs sft.data (a JSONL file from `gflowvlm make-sft-data`)")
    for tracker in config.logging.trackers:
        if tracker not in ("wandb", "tensorboard"):
            raise ConfigError(f"logging.trackers: unknown tracker {tracker!r} (wandb, tensorboard)")


def config_to_dict(config: RunConfig) -> dict:
    return to_dict(config)


def replace(config: RunConfig, **changes: Any) -> RunConfig:
    return dataclasses.replace(config, **changes)


__all__ = [
    "ALGORITHMS", "ConfigError", "RunConfig", "ModelConfig", "GenerationConfig", "PromptConfig", "EnvConfig",
    "CollectConfig", "ObjectiveConfig", "PPOConfig", "SFTConfig", "OptimConfig", "LoggingConfig",
    "load_config", "validate", "config_to_dict",
]
