"""Every run's hyperparameters, in one place.

A run config is a YAML file (see configs/) whose sections are the dataclasses below, plus command-line overrides
`section.key=value`; a file may name `base: FILE` (or a list) that it overrides (config_schema.load_composed_yaml).
Unknown keys and wrong types are errors that name the key path (see config_schema.py); every number's range is in
FIELD_BOUNDS, and `validate` checks it all, the env included, before any model loads.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gflowvlm.config_schema import (ConfigError, apply_overrides, check_output_dir, from_dict, load_composed_yaml,
                                    to_dict)


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
    trajectories_per_task: int = 1  # K samples of the same task (same seed): Var-TB and GRPO groups, Div@K
    episodes: int = 0  # episodes per collection round; 0 = one per environment (more refill freed environments)
    epsilon: float = 0.0  # probability of replacing the sampled action by a random admissible one
    unparseable: Literal["random", "illegal"] = "random"  # RL4VLM picks a random action; "illegal" keeps the state
    expert_injection: bool = False  # add the oracle's trajectory for tasks the policy failed (the paper)
    expert_strategy: str | None = None  # e.g. Blackjack's "stand17" (the paper's rule)
    replay_size: int = 0  # per-task top-k replay buffer (the paper uses 4); 0 = on-policy only
    replay_tasks: int = 256  # tasks kept in the buffer (least recently added evicted first)
    replay_samples: int = 0  # replayed trajectories mixed into each update
    # 0: every task group of every round is a fresh task. N > 0: groups draw their task from N fixed tasks, the same
    # deals again and again. An env that seeds its randomness at reset (Blackjack's cards) then has deterministic
    # transitions per task, the setting trajectory balance with P_B = 1 assumes (see results/README.md).
    task_pool: int = 0
    # The share of responses naming an admissible action, averaged over 5 iterations: warn below the first, stop
    # the run below the second (0: never stop). See gflowvlm/parse_watch.py.
    warn_below_parse_rate: float = 0.2
    stop_below_parse_rate: float = 0.0


@dataclass
class ObjectiveConfig:
    lam: float = 1.0  # SubTB lambda
    # How log F(s) is made for subtb/db: "done" = the paper's log R(s) - log P([DONE] | s) at every state, the
    # last one included; "done_pinned" = the same but the last state's flow is R(x); "head" = a learned flow
    # head; "forward_looking" = log F~(s) + log R(s) (Pan et al.).
    flow: Literal["head", "done", "done_pinned", "forward_looking"] = "done"
    cot_weight: float = 0.4  # log P_F = log p(action) + cot_weight * log p(CoT) (the paper's lambda)
    reward_beta: float = 1.0  # R^beta: sharpen (beta > 1) or flatten the target distribution
    min_log_reward: float = -23.0  # log R is clipped from below (R = 1e-10 for Blackjack losses)
    # alpha: the target becomes R^beta * P_start^alpha, P_start = the run's starting policy (init_from's SFT model)
    # scoring the same responses; 0 = off (the paper's target R^beta). See gflowvlm/prior.py.
    prior_weight: float = 0.0
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
class GRPOConfig:
    """GRPO / RLOO on whole episodes (gflowvlm/algorithms/grpo.py). Our choices, not a paper's: the papers have no
    GRPO. The group is collect.trajectories_per_task episodes of one task; the return is the episode's summed
    env rewards (env.reward as configured)."""
    cot_weight: float = 0.5  # log pi = log p(action) + cot_weight * log p(CoT), as ppo.cot_weight
    clip: float = 0.2  # the clipped ratio's epsilon (TRL's default)
    epochs: int = 2  # passes over each rollout's steps
    minibatch_size: int = 16  # steps per minibatch (each is one optimizer step)
    scale_rewards: bool = True  # divide by the group's return std (+ 1e-4); false: centre only (Dr. GRPO)
    baseline: Literal["mean", "rloo"] = "mean"  # the group mean, or the mean of the OTHER K-1 returns (RLOO)
    kl_coef: float = 0.0  # weight of the k3 KL to the run's starting weights; 0 = off (recent TRL's default)


@dataclass
class SFTConfig:
    data: str = ""  # a JSONL file written by `gflowvlm make-sft-data`; `steps` batches of optim.batch_size records


@dataclass
class AnchorConfig:
    """An SFT anchor for the online methods: coef * the SFT loss on oracle responses, added to every optimizer step.

    It holds the response text near the oracle's (the tiny VLM has no language prior to keep its JSON together), the
    way InstructGPT's PPO-ptx mixes the pre-training loss in. The same setting applies to every method it is given
    to, so a comparison stays fair. [DONE] records are left out: their probabilities are the flows SubTB and DB
    learn, which an anchor must not pin.
    """
    coef: float = 0.0  # 0 = off
    data: str = ""  # a JSONL file from `gflowvlm make-sft-data` (normally the SFT start's own data)
    batch_size: int = 16  # records per anchor forward (one per optimizer step)


@dataclass
class OptimConfig:
    lr: float = 1e-4  # adapters
    head_lr: float = 1e-2  # log Z / flow / value heads learn faster (torchgfn recommends 0.1 for log Z)
    weight_decay: float = 0.0
    min_lr: float = 1e-9
    # warmup_steps and cosine_period count iterations (`steps`): the schedule moves once an iteration (not when
    # the iteration's last optimizer step is skipped for a non-finite loss)
    warmup_steps: int = 0
    cosine_period: int | None = None  # iterations of one cosine period; None = the whole run (RL4VLM uses 25)
    grad_clip: float = 1.0
    # GFlowNets only (tb, vartb, subtb, db): collection rounds whose gradients add up to one optimizer step. sft,
    # ppo and grpo refuse grad_accum > 1 (validate): their batch sizes are optim.batch_size, ppo.minibatch_size and
    # grpo.minibatch_size.
    grad_accum: int = 1
    # Counts something different per algorithm (per process each):
    #   tb, vartb, subtb, db: env steps (Step records) per scoring forward + backward. Each collection round's
    #       trajectories (on-policy, injected, replayed) are cut into chunks of whole task groups of at most this
    #       many steps (more when one group is larger; a final-state row is not counted); the chunks' gradients add
    #       up to the iteration's one optimizer step, so this bounds memory, not what the step learns from.
    #   sft: records per optimizer step (each process its own batch_size of them).
    #   grpo: Step records per no-gradient scoring forward (the old log-probs, the KL reference); the optimizer's
    #       minibatches are grpo.minibatch_size.
    #   ppo: unused (each trajectory is scored in one forward; minibatches are ppo.minibatch_size).
    batch_size: int = 16


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
    algorithm: Literal["tb", "vartb", "subtb", "db", "ppo", "grpo", "sft"] = "subtb"
    output_dir: str = "runs/run"
    seed: int = 0
    # Trainer iterations (the trainer's `step`, metrics.jsonl's "step"; not env steps, see max_env_steps). One
    # iteration: tb/vartb/subtb/db: optim.grad_accum collection rounds + one optimizer step; sft: one batch + one
    # optimizer step; ppo/grpo: one rollout + <algorithm>.epochs passes of minibatches, one optimizer step each
    # (so several per iteration; the learning-rate schedule moves once).
    steps: int = 100
    # Stop once this many on-policy environment steps were collected (an equal budget for every method compared);
    # `steps` stays an upper bound. None: no budget.
    max_env_steps: int | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    resume: bool = False
    # A fresh run into an output_dir that holds a run is refused; overwrite=true deletes that run first.
    overwrite: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def load_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a YAML run config (with its `base:` files), apply overrides, validate. ConfigError: one line."""
    data = load_composed_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides))
    config = from_dict(RunConfig, data)
    validate(config)
    return config


@dataclass(frozen=True)
class Bound:
    """The range a number must lie in; None = unbounded on that side; open = the end itself is excluded."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: float) -> bool:
        if self.low is not None and (value < self.low or self.low_open and value == self.low):
            return False
        return self.high is None or not (value > self.high or self.high_open and value == self.high)

    def describe(self) -> str:
        if self.high is None:
            return "positive" if self.low == 0 and self.low_open else f"{'>' if self.low_open else '>='} {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


POSITIVE, NON_NEGATIVE, UNIT, ANY = Bound(0, low_open=True), Bound(0), Bound(0, 1), Bound()
# Every number in the config, by key path (list fields: each item). Floats must also be finite (checked for every
# float field, listed or not). tests/test_config_validation.py fails when a numeric field is missing here.
FIELD_BOUNDS: dict[str, Bound] = {
    "seed": Bound(0, 2**32 - 1),  # numpy's seed range (accelerate's set_seed seeds numpy)
    "steps": POSITIVE, "max_env_steps": POSITIVE,
    "model.lora_r": POSITIVE, "model.lora_alpha": POSITIVE, "model.lora_dropout": Bound(0, 1, high_open=True),
    "model.head_hidden": POSITIVE,
    "generation.temperature": NON_NEGATIVE, "generation.top_p": Bound(0, 1, low_open=True),
    "generation.max_new_tokens": POSITIVE,
    "prompt.max_history_steps": NON_NEGATIVE, "prompt.max_prompt_tokens": POSITIVE,
    "env.image_size": Bound(16, 2048),  # what envs.base.VLMEnv draws
    "env.max_steps": POSITIVE, "env.num_envs": POSITIVE,
    "collect.trajectories_per_task": POSITIVE, "collect.episodes": NON_NEGATIVE, "collect.epsilon": UNIT,
    "collect.replay_size": NON_NEGATIVE,
    "collect.warn_below_parse_rate": UNIT, "collect.stop_below_parse_rate": UNIT, "collect.replay_tasks": POSITIVE,
    "collect.replay_samples": NON_NEGATIVE,
    "collect.task_pool": NON_NEGATIVE,
    "objective.lam": POSITIVE, "objective.cot_weight": NON_NEGATIVE, "objective.reward_beta": POSITIVE,
    "objective.min_log_reward": ANY, "objective.prior_weight": NON_NEGATIVE,
    "objective.max_nonfinite_steps": POSITIVE,
    "ppo.cot_weight": NON_NEGATIVE, "ppo.gamma": UNIT, "ppo.gae_lambda": UNIT, "ppo.clip": POSITIVE,
    "ppo.epochs": POSITIVE, "ppo.minibatch_size": POSITIVE, "ppo.value_coef": NON_NEGATIVE,
    "anchor.coef": NON_NEGATIVE, "anchor.batch_size": POSITIVE,
    "grpo.cot_weight": NON_NEGATIVE, "grpo.clip": POSITIVE, "grpo.epochs": POSITIVE, "grpo.minibatch_size": POSITIVE,
    "grpo.kl_coef": NON_NEGATIVE,
    "optim.lr": POSITIVE, "optim.head_lr": POSITIVE, "optim.weight_decay": NON_NEGATIVE,
    "optim.min_lr": NON_NEGATIVE, "optim.warmup_steps": NON_NEGATIVE, "optim.cosine_period": POSITIVE,
    "optim.grad_clip": NON_NEGATIVE,  # 0 = no clipping
    "optim.grad_accum": POSITIVE, "optim.batch_size": POSITIVE,
    "logging.log_every": POSITIVE, "logging.save_every": POSITIVE, "logging.keep_last": POSITIVE,
    "logging.sample_every": POSITIVE,
}
# Algorithms that sample their own trajectories (everything but sft): temperature 0 cannot sample.
SAMPLING_ALGORITHMS = ("tb", "vartb", "subtb", "db", "ppo", "grpo")
# Algorithms that do not accumulate gradients over optim.grad_accum rounds, and what sets their batch instead.
GRAD_ACCUM_INSTEAD = {"sft": "optim.batch_size, the records per optimizer step",
                      "ppo": "ppo.minibatch_size, the steps per optimizer step",
                      "grpo": "grpo.minibatch_size, the steps per optimizer step"}


def check_fields(section: Any, prefix: str = "") -> None:
    """Every float finite, every number in its FIELD_BOUNDS range, recursively; ConfigError naming the key."""
    for item in dataclasses.fields(section):
        key = f"{prefix}{item.name}"
        value = getattr(section, item.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, f"{key}.")
            continue
        for number in (value if isinstance(value, list) else [value]):
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                continue
            if isinstance(number, float) and not math.isfinite(number):
                raise ConfigError(f"{key} must be a finite number, got {number}")
            bound = FIELD_BOUNDS.get(key)
            if bound is not None and not bound.allows(number):
                raise ConfigError(f"{key} must be {bound.describe()}, got {number}")


def validate(config: RunConfig) -> None:
    """Everything about a config that can be checked before a model loads (ConfigError: one line, the key named).

    Ranges come from FIELD_BOUNDS; the rest are checks across fields and of the environment the config names.
    Paths on disk are checked by check_run_paths (training only: evaluation reads old runs' configs too).
    """
    check_fields(config)
    episodes = config.collect.episodes or config.env.num_envs
    if episodes % config.collect.trajectories_per_task:
        raise ConfigError("collect.episodes (or env.num_envs) must be a multiple of collect.trajectories_per_task "
                          f"({episodes} vs {config.collect.trajectories_per_task})")
    if config.algorithm in SAMPLING_ALGORITHMS and config.generation.temperature == 0:
        raise ConfigError(f"generation.temperature=0 cannot sample the trajectories {config.algorithm} trains on; "
                          "give a positive temperature (for greedy decoding evaluate with `gflowvlm eval --greedy`)")
    if config.algorithm == "vartb" and config.collect.trajectories_per_task < 2:
        raise ConfigError("vartb needs collect.trajectories_per_task >= 2 (the variance is over samples of a task)")
    if config.algorithm == "grpo" and config.collect.trajectories_per_task < 2:
        raise ConfigError("grpo needs collect.trajectories_per_task >= 2 (each return is compared with the other "
                          "samples of its task; a group of one has advantage 0 and learns nothing)")
    if config.algorithm == "sft" and not config.sft.data:
        raise ConfigError("sft needs sft.data (a JSONL file from `gflowvlm make-sft-data`)")
    if config.objective.prior_weight > 0 and config.algorithm not in ("tb", "vartb", "subtb", "db"):
        raise ConfigError(f"objective.prior_weight > 0 is for the GFlowNet objectives (tb, vartb, subtb, db), not "
                          f"{config.algorithm} (grpo has grpo.kl_coef)")
    if config.optim.grad_accum > 1 and config.algorithm in GRAD_ACCUM_INSTEAD:
        raise ConfigError(f"optim.grad_accum > 1 is for the GFlowNet objectives; {config.algorithm} ignores it "
                          f"(set {GRAD_ACCUM_INSTEAD[config.algorithm]} instead)")
    if config.anchor.coef > 0 and config.algorithm == "sft":
        raise ConfigError("anchor.coef > 0 is for the online methods; sft already trains on its data")
    if config.collect.replay_samples and not config.collect.replay_size:
        raise ConfigError("collect.replay_samples > 0 needs collect.replay_size > 0 (there is no buffer to replay)")
    for tracker in config.logging.trackers:
        if tracker not in ("wandb", "tensorboard"):
            raise ConfigError(f"logging.trackers: unknown tracker {tracker!r} (wandb, tensorboard)")
    _check_env(config)


def _check_env(config: RunConfig) -> None:
    """env.id, env.split, env.kwargs and collect.expert_strategy against the env class's signature (not made)."""
    from gflowvlm.errors import UserError  # deferred: gymnasium and the envs import only when a config is checked
    from gflowvlm.env_factory import check_env_options, check_has_expert

    env = config.env
    try:
        check_env_options(env.id, env.split, env.kwargs, max_steps=env.max_steps,
                          strategy=config.collect.expert_strategy)
        if config.collect.expert_injection:
            check_has_expert(env.id, env.kwargs, "collect.expert_injection", "inject expert trajectories")
    except UserError as error:
        raise ConfigError(str(error)) from None


def check_run_paths(config: RunConfig) -> None:
    """What a training run reads and writes exists (or can be created): checked before the model loads."""
    check_output_dir(config.output_dir, "output_dir")
    if config.algorithm == "sft":
        if not Path(config.sft.data).is_file():
            raise ConfigError(f"sft.data: file not found: {config.sft.data} (write it with `gflowvlm make-sft-data`)")
    if config.anchor.coef > 0 and not config.anchor.data:
        # checked here, not in validate: a reproduction recipe names the anchor and the harness names its data
        raise ConfigError("anchor.coef > 0 needs anchor.data (a JSONL file from `gflowvlm make-sft-data`)")
    if config.anchor.coef > 0 and not Path(config.anchor.data).is_file():
        raise ConfigError(f"anchor.data: file not found: {config.anchor.data} (write it with `gflowvlm make-sft-data`)")
    if config.model.init_from:
        if not Path(config.model.init_from).is_dir():
            raise ConfigError(f"model.init_from: adapter directory not found: {config.model.init_from}")


def config_to_dict(config: RunConfig) -> dict:
    return to_dict(config)


__all__ = [
    "ConfigError", "RunConfig", "ModelConfig", "GenerationConfig", "PromptConfig", "EnvConfig",
    "CollectConfig", "ObjectiveConfig", "PPOConfig", "GRPOConfig", "SFTConfig", "AnchorConfig", "OptimConfig",
    "LoggingConfig",
    "load_config", "validate", "check_fields", "check_run_paths", "FIELD_BOUNDS", "config_to_dict",
]
