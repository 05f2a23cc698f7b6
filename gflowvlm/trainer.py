"""The training run: one loop for every algorithm, read top to bottom.

    setup:   accelerator -> output_dir checked (one run per directory; a resume only under the run's config: see
             run_directory.py) -> policy (adapters + the heads the algorithm needs) -> optimizer (adapter / head groups)
    loop:    algorithm.update(iteration)  [collect -> score under the current policy -> loss -> backward -> step]
             -> metrics (reduced over ranks) -> metrics.jsonl / trackers / progress bar -> periodic checkpoint
             (`step` counts these iterations, the unit of config `steps`; PPO and GRPO take several optimizer steps
             in one, and `env_steps` counts the environment steps collected)
    end:     final checkpoint + `final/` adapter directory (PeftModel.from_pretrained loads it; written like a
             checkpoint: temporary directory, manifest, rename)
    resume:  newest complete checkpoint, verified (manifest, keys, shapes, finite values) before anything is applied

Algorithms (gflowvlm/algorithms/, whose __init__ says what one is) declare the heads they need
(`required_heads(config)`, asked before the policy is built) and implement `update(iteration)` (collect, score, loss,
backward, then `optimizer_step`, which clips, steps, schedules and skips non-finite losses) and `state_dict` /
`load_state_dict` for what they keep between iterations (e.g. the replay buffer). They see the run through an
AlgorithmContext (config, policy, prepared model, accelerator, logger, optimizer_step), never this class; the
loop, optimizer, metrics and checkpoints live here.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import DistributedType, set_seed
from safetensors.torch import save_file
from tqdm import tqdm

from gflowvlm import checkpoint, run_directory, sharding
from gflowvlm.algorithms import AlgorithmContext, algorithm_class
from gflowvlm.config import RunConfig, config_to_dict
from gflowvlm.errors import UserError
from gflowvlm.parse_watch import ParseRateWatch
from gflowvlm.run_logger import RunLogger
from gflowvlm.safe_state import StateFileError, load_state, save_state


class ParseCollapseError(UserError):
    """The policy stopped writing parseable responses (collect.stop_below_parse_rate): a checkpoint is kept."""


class NonFiniteLossError(UserError):
    """Too many non-finite losses in a row: the run stops instead of training on garbage."""


class Trainer:
    def __init__(self, config: RunConfig, accelerator: Accelerator | None = None,
                 resume_from: str | Path | None = None):
        """`resume_from`: a checkpoint directory to continue from (`gflowvlm train --resume DIR`); `config.resume`
        continues from output_dir's newest checkpoint."""
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.resume_from = Path(resume_from) if resume_from is not None else None
        if launched_with_deepspeed() or (accelerator is not None
                                         and accelerator.distributed_type == DistributedType.DEEPSPEED):
            raise UserError(DEEPSPEED_UNSUPPORTED)
        self.accelerator = accelerator or Accelerator(**accelerator_kwargs(config))
        # Before the model loads (minutes for a 7B): one run per output directory, a resume under the run's config.
        run_directory.prepare(config, self.resume_from, self.accelerator.is_main_process)
        self.accelerator.wait_for_everyone()
        # Same seed on every rank while the model is built, so LoRA initialisations agree.
        set_seed(config.seed)
        from gflowvlm.policy import VLMPolicy  # deferred: transformers is slow to import

        algorithm_type = algorithm_class(config.algorithm)
        self.policy = VLMPolicy.from_config(config.model, heads=algorithm_type.required_heads(config))
        adapter_params, head_params = self.policy.parameter_groups()
        groups = [{"params": adapter_params, "lr": config.optim.lr}]
        if head_params:
            groups.append({"params": head_params, "lr": config.optim.head_lr})
        if not any(group["params"] for group in groups):
            raise UserError("nothing to train: the model has no trainable parameters (model.adapter=none and no heads)")
        groups = [group for group in groups if group["params"]]
        optimizer = torch.optim.AdamW(groups, weight_decay=config.optim.weight_decay)
        if self.accelerator.distributed_type == DistributedType.FSDP and not self.accelerator.is_fsdp2:
            raise UserError("FSDP version 1 is not supported: use fsdp_version: 2 (configs/accelerate/fsdp.yaml)")
        self.model, self.optimizer = self.accelerator.prepare(self.policy, optimizer)
        sharding.enable_generation(self.model)  # FSDP2: sampling gathers the sharded parameters as forward does
        # The scheduler is stepped by hand once per optimizer step: accelerate's wrapper would step it once per
        # process, which assumes a dataset split over ranks and would run the cosine num_processes times faster.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer.optimizer, [self._lr_factor(group["lr"]) for group in groups])
        self.step = 0
        self.env_steps = 0
        self.nonfinite_streak = 0
        self.parse_watch = ParseRateWatch(config.collect.warn_below_parse_rate, config.collect.stop_below_parse_rate)
        self.logger = RunLogger(self.output_dir, self.accelerator, config.logging.trackers)
        self.context = AlgorithmContext(config=config, policy=self.policy, model=self.model,
                                        accelerator=self.accelerator, logger=self.logger,
                                        optimizer_step=self.optimizer_step)
        self.algorithm = algorithm_type(self.context)

    # ----- schedule ---------------------------------------------------------------------------------------------
    def _lr_factor(self, base_lr: float):
        optim = self.config.optim
        period = optim.cosine_period or max(1, self.config.steps - optim.warmup_steps)
        floor = min(1.0, optim.min_lr / base_lr) if base_lr > 0 else 0.0

        def factor(step: int) -> float:
            if step < optim.warmup_steps:
                return (step + 1) / optim.warmup_steps
            phase = ((step - optim.warmup_steps) % period) / period
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * phase))
        return factor

    # ----- the loop -----------------------------------------------------------------------------------------------
    def train(self, until: int | None = None) -> Path:
        """Run to `config.steps` (or stop at step `until` with a checkpoint: time-sliced jobs resume from it)."""
        accelerator = self.accelerator
        stop = self.config.steps if until is None else min(until, self.config.steps)
        if self.config.resume or self.resume_from is not None:
            self.resume(self.resume_from)
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            _write_atomically(self.output_dir / run_directory.CONFIG_FILE,
                              yaml.safe_dump(config_to_dict(self.config), sort_keys=False))
        if self.config.logging.trackers:
            accelerator.init_trackers(self.config.logging.project, config=_flat(config_to_dict(self.config)))
        progress = tqdm(total=self.config.steps, initial=self.step, desc=self.config.algorithm, unit="step",
                        disable=not (accelerator.is_main_process and self.config.logging.progress))
        while self.step < stop and not self.budget_spent():
            started = time.perf_counter()
            metrics = self.algorithm.update(self.step)
            metrics = self._reduce(metrics)
            self.env_steps += int(metrics.pop("env_steps_this_iteration", 0))
            self.step += 1
            metrics.update(env_steps=self.env_steps, lr=self.scheduler.get_last_lr()[0],
                           seconds=time.perf_counter() - started)
            if self.step % self.config.logging.log_every == 0 or self.step == self.config.steps:
                self.logger.log(metrics, self.step)
            progress.update(1)
            progress.set_postfix({k: f"{metrics[k]:.3g}" for k in ("loss", "success_rate", "parse_rate")
                                  if k in metrics})
            if "parse_rate" in metrics:
                message, stop_now = self.parse_watch.update(metrics["parse_rate"], self.step)
                if message and accelerator.is_main_process:
                    tqdm.write(message, file=sys.stderr)
                if stop_now:  # every rank sees the same reduced parse rate, so all stop together
                    self.save_checkpoint()
                    raise ParseCollapseError(message)
            if self.step % self.config.logging.save_every == 0 and self.step < self.config.steps:
                self.save_checkpoint()
        progress.close()
        last = self.save_checkpoint()
        if self.step < self.config.steps and not self.budget_spent():
            return last
        final = self.output_dir / "final"
        state = sharding.whole_policy_state(self.policy, keep=accelerator.is_main_process)  # FSDP2: all ranks
        if accelerator.is_main_process:
            self.policy.save_pretrained(str(final), state=state)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return final

    def budget_spent(self) -> bool:
        """Whether the run has collected its `max_env_steps` (summed over ranks): an equal experience budget for
        every method compared, whatever the length of the episodes each one plays."""
        budget = self.config.max_env_steps
        return budget is not None and self.env_steps >= budget

    def optimizer_step(self, loss_is_finite: bool, schedule: bool = True) -> bool:
        """Clip, step, schedule; a non-finite loss on ANY rank skips the step on every rank (counted).

        `schedule=False` keeps the learning rate (PPO takes several optimizer steps per update, one schedule step).
        """
        finite = torch.tensor(1.0 if loss_is_finite else 0.0, device=self.accelerator.device)
        finite = bool(self.accelerator.reduce(finite, reduction="sum").item() == self.accelerator.num_processes)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_streak += 1
            if self.nonfinite_streak >= self.config.objective.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{self.nonfinite_streak} non-finite losses in a row at step {self.step}: lower optim.lr, raise "
                    "objective.min_log_reward, or check the rewards (see metrics.jsonl)")
            return False
        self.nonfinite_streak = 0
        if self.config.optim.grad_clip > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        if schedule:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def _reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        """Mean over ranks (sums for counters named *_this_iteration)."""
        if self.accelerator.num_processes == 1:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self.accelerator.device)
        summed = self.accelerator.reduce(values, reduction="sum").tolist()
        n = self.accelerator.num_processes
        return {k: (v if k.endswith("_this_iteration") else v / n) for k, v in zip(keys, summed)}

    # ----- checkpoints ------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        accelerator = self.accelerator
        temporary = checkpoint.temporary_dir(self.output_dir, self.step)
        final = self.output_dir / checkpoint.checkpoint_name(self.step)
        if accelerator.is_main_process:
            checkpoint.prune(self.output_dir, self.config.logging.keep_last)  # also clears stale temporaries
            temporary.mkdir(parents=True)
        accelerator.wait_for_everyone()
        rank = accelerator.process_index
        main = accelerator.is_main_process
        # FSDP2: every rank takes part in gathering the whole tensors (None / unchanged without it), so the files
        # are those of an unsharded run.
        policy_state = sharding.whole_policy_state(self.policy, keep=main)
        optimizer_state = sharding.gather_state(self.optimizer.state_dict(), keep=main)
        if main:
            self.policy.save_pretrained(str(temporary / "policy"), state=policy_state)
            whole = policy_state if policy_state is not None else dict(self.policy.named_parameters())
            trainable = {name: whole[name].detach().cpu().contiguous() for name, p in self.policy.named_parameters()
                         if p.requires_grad}
            save_file(trainable, str(temporary / "trainable.safetensors"))
            save_state(optimizer_state, temporary, "optimizer")
            save_state(self.scheduler.state_dict(), temporary, "scheduler")
            (temporary / "trainer_state.json").write_text(json.dumps(
                {"step": self.step, "env_steps": self.env_steps, "nonfinite_streak": self.nonfinite_streak,
                 "num_processes": accelerator.num_processes, "algorithm": self.config.algorithm}))
        save_state(checkpoint.rng_state(), temporary, f"rng_rank{rank}")
        save_state(self.algorithm.state_dict(), temporary, f"algorithm_rank{rank}")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            checkpoint.finalize(temporary, final)
            checkpoint.prune(self.output_dir, self.config.logging.keep_last)
        accelerator.wait_for_everyone()
        return final

    def resume(self, directory: str | Path | None = None) -> None:
        """Continue exactly from checkpoint `directory`, or from output_dir's newest complete checkpoint.

        Everything is read and checked before anything is applied: a checkpoint that is incomplete, edited, from
        another model or run, or holds non-finite weights is one CheckpointError line, never a half-restored run.
        """
        skipped: list[Path] = []
        if directory is not None:
            path: Path | None = Path(directory)
        else:
            path, skipped = checkpoint.newest(self.output_dir)
        for incomplete in skipped:
            self._notice(f"{incomplete} has no {checkpoint.MANIFEST} (not completely written, or the manifest was "
                         "deleted): skipped")
        if path is None:
            if skipped:
                self._notice("no complete checkpoint left: starting from step 0")
            self.logger.truncate_after(0)  # records of a run killed before its first checkpoint
            return  # resume=true on a fresh output directory starts from scratch
        rank = self.accelerator.process_index
        per_rank = [f"{name}_rank{rank}.{ext}" for name in ("rng", "algorithm") for ext in ("safetensors", "json")]
        checkpoint.verify(path, required=REQUIRED_FILES + tuple(per_rank),
                          allow_code=self.config.model.trust_remote_code)
        state = checkpoint.read_trainer_state(path, self.config.algorithm)
        if state["num_processes"] != self.accelerator.num_processes:
            raise UserError(f"checkpoint {path} was written by {state['num_processes']} processes, this run has "
                            f"{self.accelerator.num_processes}: exact resumption needs the same number")
        params = {name: p for name, p in self.policy.named_parameters() if p.requires_grad}
        trainable = checkpoint.read_tensors(path, "trainable.safetensors")
        checkpoint.check_tensors(trainable, {name: p.shape for name, p in params.items()}, path,
                                 "trainable.safetensors")
        try:
            saved = {name: load_state(path, name) for name in ("optimizer", "scheduler", f"rng_rank{rank}",
                                                              f"algorithm_rank{rank}")}
        except StateFileError as error:
            raise checkpoint.CheckpointError(f"checkpoint {path} is corrupt: {error}") from None
        checkpoint.check_optimizer_state(saved["optimizer"], self.optimizer, path)
        with torch.no_grad():
            for name, value in trainable.items():
                params[name].copy_(sharding.shard_like(value, params[name]))  # FSDP2: this rank's slice
        try:  # in the order the state was saved: the algorithm's state is restored under the restored RNG
            self.optimizer.load_state_dict(sharding.shard_optimizer_state(saved["optimizer"], self.optimizer))
            self.scheduler.load_state_dict(saved["scheduler"])
            checkpoint.set_rng_state(saved[f"rng_rank{rank}"])
            self.algorithm.load_state_dict(saved[f"algorithm_rank{rank}"])
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as error:
            raise checkpoint.CheckpointError(f"checkpoint {path} does not fit this run: "
                                             f"{type(error).__name__}: {_first_line(error)}") from None
        self.step, self.env_steps = state["step"], state["env_steps"]
        self.nonfinite_streak = state["nonfinite_streak"]
        self.logger.truncate_after(self.step)
        self._notice(f"resuming from {path} (step {self.step})")

    def _notice(self, message: str) -> None:
        """One line on stderr (main process): what resume did, where it had to choose."""
        if self.accelerator.is_main_process:
            print(f"gflowvlm: resume: {message}", file=sys.stderr)


def accelerator_kwargs(config: RunConfig) -> dict:
    """How the run's Accelerator is built; the launch config (`accelerate launch --config_file`) supplies the rest.

    The run config wins where both speak: `mixed_precision` is passed here, so the launch file's does not count.
    broadcast_buffers=False: ranks may run different numbers of forwards per step (their trajectories differ in
    length), and DDP's per-forward buffer broadcast would then deadlock. Buffers here are constants.
    """
    kwargs = dict(mixed_precision=config.mixed_precision, log_with=config.logging.trackers or None,
                  project_dir=str(config.output_dir),
                  kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    return kwargs


def launched_with_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


# Found by running zero2.yaml on two CPU ranks (tests/test_launch_configs.py says how far that went): accelerate's
# prepare refuses a DeepSpeed run without a dataloader unless the micro-batch is set; the LR schedule cannot wrap the
# ZeRO optimizer; DeepSpeed steps the optimizer in every backward whose gradients are synchronised (accelerate's
# no_sync does nothing under ZeRO-2/3, and a GFlowNet update runs a backward per scoring chunk), clips with its
# config's gradient_clipping (accelerator.clip_grad_norm_ does nothing; PPO's 0.01 would become 1.0) and steps even
# when a rank's loss was non-finite; its ZeRO optimizer state is not a torch one and cannot be written to gflowvlm's
# checkpoints. Refused before the model loads rather than after hours of training.
DEEPSPEED_UNSUPPORTED = (
    "DeepSpeed (configs/accelerate/zero2.yaml, zero3.yaml) is not supported by gflowvlm train: its engine steps the "
    "optimizer in every backward and clips with its own setting, and its ZeRO optimizer state does not fit "
    "gflowvlm's checkpoints; launch with configs/accelerate/multi_gpu.yaml (DDP) or fsdp.yaml (sharded) instead")


# What resume reads (the per-rank rng / algorithm files are added for each rank): a manifest without one of these
# is as incomplete as a missing manifest.
REQUIRED_FILES = ("trainer_state.json", "trainable.safetensors", "optimizer.safetensors", "optimizer.json",
                  "scheduler.safetensors", "scheduler.json", "policy/gflowvlm_policy.json")


def _write_atomically(path: Path, text: str) -> None:
    """A reader (a later resume comparing configs) never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out
