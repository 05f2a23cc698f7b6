"""GRPO / RLOO: group advantages and the per-token KL against hand computations, the gradient's direction on a
softmax policy, task groups in the collector, config errors, and short runs on the tiny VLM (KL off costs nothing,
KL on starts at 0, the reference survives a resume)."""
import json
import math
from pathlib import Path

import pytest
import torch

from gflowvlm.algorithms.grpo import (STD_EPSILON, StartingWeights, group_advantages, per_step_kl,
                                      token_weights)
from gflowvlm.algorithms.ppo import clipped_policy_loss
from gflowvlm.cli import main as cli_main
from gflowvlm.collector import Collector
from gflowvlm.config import load_config
from gflowvlm.config_schema import ConfigError
from gflowvlm.trainer import Trainer


def by_hand_std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))  # unbiased, as torch.std


# ----- advantages ---------------------------------------------------------------------------------------------
def test_group_mean_and_std_by_hand():
    returns = torch.tensor([1.0, 0.0, 0.0, 3.0, -1.0, 2.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    a, b = [1.0, 0.0, 0.0], [3.0, -1.0, 2.0]
    expected = [(v - 1 / 3) / (by_hand_std(a) + STD_EPSILON) for v in a] + \
               [(v - 4 / 3) / (by_hand_std(b) + STD_EPSILON) for v in b]
    assert torch.allclose(group_advantages(returns, groups), torch.tensor(expected), atol=1e-6)
    centred = group_advantages(returns, groups, scale_by_std=False)  # Dr. GRPO: centre only
    assert torch.allclose(centred, torch.tensor([2 / 3, -1 / 3, -1 / 3, 5 / 3, -7 / 3, 2 / 3]), atol=1e-6)


def test_groups_need_not_be_adjacent():
    returns = torch.tensor([1.0, 5.0, 0.0, 7.0])
    groups = torch.tensor([3, 8, 3, 8])
    assert torch.allclose(group_advantages(returns, groups, scale_by_std=False), torch.tensor([0.5, -1, -0.5, 1]))


def test_rloo_leaves_the_sample_out():
    returns = torch.tensor([1.0, 0.0, 0.0, 2.0])
    groups = torch.zeros(4, dtype=torch.long)
    # b_i = mean of the other three: 2/3, 1, 1, 1/3
    expected = torch.tensor([1 - 2 / 3, 0 - 1.0, 0 - 1.0, 2 - 1 / 3])
    assert torch.allclose(group_advantages(returns, groups, False, "rloo"), expected, atol=1e-6)
    # = K/(K-1) times GRPO's centred returns; with the std: divided by the group's std
    assert torch.allclose(expected, 4 / 3 * group_advantages(returns, groups, False, "mean"), atol=1e-6)
    std = by_hand_std([1.0, 0.0, 0.0, 2.0])
    assert torch.allclose(group_advantages(returns, groups, True, "rloo"), expected / (std + STD_EPSILON), atol=1e-6)


@pytest.mark.parametrize("baseline", ["mean", "rloo"])
@pytest.mark.parametrize("scale", [True, False])
def test_singletons_and_constant_groups_get_zero(baseline, scale):
    returns = torch.tensor([0.1, 0.1, 0.1, 4.0, -2.0, -2.0, 1.0, 3.0])
    groups = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3])  # constant (rounding-prone 0.1s), a singleton, constant, varied
    advantages = group_advantages(returns, groups, scale, baseline)
    assert advantages[:6].tolist() == [0.0] * 6  # exactly: no rounding noise blown up by a tiny std
    assert advantages[6] < 0 < advantages[7]
    assert torch.isfinite(advantages).all()


def test_bad_baseline_or_shapes_raise():
    with pytest.raises(ValueError, match="baseline"):
        group_advantages(torch.zeros(2), torch.zeros(2, dtype=torch.long), baseline="median")
    with pytest.raises(ValueError, match=r"\[n\]"):
        group_advantages(torch.zeros(2), torch.zeros(3, dtype=torch.long))


# ----- KL -------------------------------------------------------------------------------------------------------
def test_k3_kl_by_hand_with_token_weights():
    new = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, 0.0, 0.0]])
    weights = torch.tensor([[1.0, 0.4, 0.0], [0.4, 0.0, 0.0]])  # action token 1, CoT 0.4, padding 0

    def k3(r, n):
        return math.exp(r - n) - (r - n) - 1

    expected = [1.0 * k3(-1.5, -1.0) + 0.4 * k3(-1.0, -2.0), 0.0]
    assert torch.allclose(per_step_kl(new, ref, weights), torch.tensor(expected), atol=1e-6)
    # its gradient pulls the new log-probs towards the reference
    new = new.clone().requires_grad_(True)
    per_step_kl(new, ref, weights).sum().backward()
    assert new.grad[0, 0] > 0 and new.grad[0, 1] < 0  # descent lowers token 0 (ref lower), raises token 1


def test_token_weights_reproduce_log_pi(tiny_vlm_dir):
    from gflowvlm.config import ModelConfig
    from gflowvlm.policy import VLMPolicy
    from gflowvlm.prompting import Prompt

    policy = VLMPolicy.from_config(ModelConfig(name_or_path=tiny_vlm_dir, lora_r=4), heads=())
    import numpy as np

    image = np.zeros((64, 64, 3), dtype=np.uint8)
    prompts = [Prompt(text="go", image=image), Prompt(text="go on", image=image)]
    responses = ['{"thoughts": "up", "action": "+"}', '{"thoughts": "down and down", "action": "-"}']
    batch = policy.prepare_batch(prompts, responses)
    with torch.no_grad():
        out = policy(batch, cot_weight=0.3)
    weights = token_weights(batch, 0.3)
    for i, w in enumerate(weights):
        assert torch.allclose((out.token_logp[i, :len(w)] * w).sum(), out.log_pf[i], atol=1e-4)
        assert (w == 1.0).any() and (w == 0.3).any()


def test_starting_weights_swap_in_and_back():
    layer = torch.nn.Linear(2, 2)
    start = {n: p.detach().clone() for n, p in layer.named_parameters()}
    reference = StartingWeights(layer.parameters())
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(1.0)
    moved = {n: p.detach().clone() for n, p in layer.named_parameters()}
    with reference.swapped_in():
        assert all(torch.equal(p, start[n]) for n, p in layer.named_parameters())
    assert all(torch.equal(p, moved[n]) for n, p in layer.named_parameters())
    with pytest.raises(RuntimeError), reference.swapped_in():
        raise RuntimeError("scoring failed")
    assert all(torch.equal(p, moved[n]) for n, p in layer.named_parameters())  # restored on errors too


# ----- the gradient's direction -----------------------------------------------------------------------------------
def test_one_step_moves_probability_to_the_better_episodes():
    """One task, K = 4 one-step episodes of a softmax policy over 3 actions; action 0 paid, the others did not."""
    logits = torch.zeros(3, requires_grad=True)
    actions = torch.tensor([0, 1, 2, 1])
    returns = torch.tensor([1.0, 0.0, 0.0, 0.0])
    advantages = group_advantages(returns, torch.zeros(4, dtype=torch.long))
    assert advantages[0] > 0 and (advantages[1:] < 0).all()
    old = torch.log_softmax(logits, 0)[actions].detach()
    loss = clipped_policy_loss(torch.log_softmax(logits, 0)[actions], old, advantages, 0.2)
    loss.backward()
    with torch.no_grad():
        after = torch.softmax(logits - 0.5 * logits.grad, 0)
    assert after[0] > 1 / 3 > after[1] and after[2] < 1 / 3


# ----- task groups and config ---------------------------------------------------------------------------------------
def grpo_config(*extra):
    return load_config(None, ["algorithm=grpo", "env.id=gflowvlm/NumberLine-v0", "env.num_envs=6",
                              "collect.trajectories_per_task=3", "model.name_or_path=m", *extra])


def test_k_environments_of_a_group_share_the_task_and_groups_differ():
    config = grpo_config()
    seeds = Collector(config).task_seeds(iteration=5)
    assert len(seeds) == 6 and seeds[0] == seeds[1] == seeds[2] and seeds[3] == seeds[4] == seeds[5]
    assert seeds[0] != seeds[3]
    assert Collector(config, rank=1).task_seeds(5)[0] not in seeds  # another rank plays other tasks
    assert Collector(config).task_seeds(6)[0] not in seeds  # and the next round too
    # with K = 1 (every other algorithm's default) every episode is its own task, as before
    single = Collector(load_config(None, ["env.num_envs=6"])).task_seeds(5)
    assert len(set(single)) == 6


@pytest.mark.parametrize("overrides, message", [
    (["env.num_envs=4"], "must be a multiple of collect.trajectories_per_task (4 vs 3)"),
    (["collect.trajectories_per_task=1"], "grpo needs collect.trajectories_per_task >= 2"),
    (["grpo.baseline=median"], "grpo.baseline"),
    (["grpo.clip=0"], "grpo.clip must be positive"),
    (["grpo.kl_coef=-0.1"], "grpo.kl_coef must be >= 0"),
    (["grpo.epochs=0"], "grpo.epochs must be positive"),
    (["grpo.minibatch_size=0"], "grpo.minibatch_size must be positive"),
    (["grpo.scale_rewards=maybe"], "grpo.scale_rewards"),
    (["grpo.lambda=0.5"], "unknown config key grpo.lambda"),
])
def test_bad_grpo_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as error:
        grpo_config(*overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_cli_reports_a_bad_group_size_in_one_line(capsys):
    code = cli_main(["train", "--config", "configs/tiny/numberline_grpo.yaml", "env.num_envs=6"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "multiple of collect.trajectories_per_task" in err
    assert "Traceback" not in err


def test_shipped_grpo_configs_load():
    for path in ["configs/tiny/numberline_grpo.yaml", "configs/tiny/blackjack_grpo.yaml",
                 "configs/paper/numberline_grpo.yaml", "configs/paper/blackjack_grpo.yaml",
                 "configs/paper/alfworld_grpo.yaml"]:
        config = load_config(path)
        assert config.algorithm == "grpo" and config.collect.trajectories_per_task >= 2, path
        assert config.grpo.kl_coef == 0.0 and Path(path).read_text().count("not from the paper"), path


# ----- short runs on the tiny VLM ---------------------------------------------------------------------------------
FAST = ["algorithm=grpo", "env.id=gflowvlm/NumberLine-v0", "env.reward=rl4vlm", "env.image_size=64",
        "env.num_envs=4", "collect.trajectories_per_task=2", "env.max_steps=3", "generation.max_new_tokens=16",
        "logging.progress=false", "model.lora_r=4", "prompt.max_history_steps=2", "optim.lr=1e-3",
        "optim.batch_size=64", "grpo.minibatch_size=4", "grpo.epochs=2"]


def tiny_config(tiny_vlm_dir, out, *extra):
    return load_config(None, FAST + [f"model.name_or_path={tiny_vlm_dir}", f"output_dir={out}", *extra])


def test_two_iterations_end_to_end(tiny_vlm_dir, tmp_path):
    trainer = Trainer(tiny_config(tiny_vlm_dir, tmp_path / "run", "steps=2"))
    assert not list(trainer.policy.heads.keys())  # no value head
    assert trainer.algorithm.reference is None  # KL off: no copy held
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    final = trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for key in ("loss", "policy_loss", "clip_fraction", "approx_kl", "success_rate", "mean_return", "parse_rate",
                "zero_advantage_fraction", "seconds_collect", "seconds_score_update", "env_steps"):
        assert key in records[-1], key
    assert "kl" not in records[-1] and "value_loss" not in records[-1]
    assert records[-1]["env_steps"] > records[0]["env_steps"] > 0
    changed = {n for n, p in trainer.policy.named_parameters() if n in before and not torch.equal(before[n], p)}
    assert any("lora" in n for n in changed)
    assert (final / "adapter_config.json").is_file()


def test_the_k_samples_of_a_task_differ(tiny_vlm_dir, tmp_path):
    trainer = Trainer(tiny_config(tiny_vlm_dir, tmp_path / "run", "steps=1"))
    trajectories = trainer.algorithm.collector.collect(trainer.algorithm.generate, 0)
    by_group = {}
    for trajectory in trajectories:
        by_group.setdefault(trajectory.group, []).append(trajectory)
    assert len(by_group) == 2 and all(len(members) == 2 for members in by_group.values())
    for members in by_group.values():
        assert members[0].task_seed == members[1].task_seed and members[0].task == members[1].task
    # the same task, sampled independently: the first responses are not copies of each other
    assert any(m[0].steps[0].response != m[1].steps[0].response for m in by_group.values())


def test_kl_off_costs_no_scoring_and_kl_on_starts_at_zero(tiny_vlm_dir, tmp_path, monkeypatch):
    calls = []  # the size of every scoring forward (the policy's forward: rollout scoring and minibatches)
    from gflowvlm.policy import VLMPolicy

    forward = VLMPolicy.forward
    monkeypatch.setattr(VLMPolicy, "forward",
                        lambda self, batch, cot_weight=1.0: calls.append(len(batch["prompt_lengths"]))
                        or forward(self, batch, cot_weight=cot_weight))
    # one minibatch per update (minibatch_size >= the rollout's steps) and one epoch: the logged kl IS the first
    # minibatch's, taken before any optimizer step, when the policy still is the reference
    one = ["steps=1", "grpo.minibatch_size=16", "grpo.epochs=1"]
    off = Trainer(tiny_config(tiny_vlm_dir, tmp_path / "off", *one))
    metrics_off = off.algorithm.update(0)
    calls_off, calls[:] = list(calls), []
    on = Trainer(tiny_config(tiny_vlm_dir, tmp_path / "on", *one, "grpo.kl_coef=0.5"))
    metrics_on = on.algorithm.update(0)
    steps = int(metrics_off["env_steps_this_iteration"])
    assert metrics_on["env_steps_this_iteration"] == steps  # the same rollout
    # off: one scoring pass of the rollout + one minibatch; on: the reference pass on top, nothing else
    assert calls_off == [steps, 16] and calls == [steps, steps, 16]
    assert "kl" not in metrics_off
    assert abs(metrics_on["kl"]) < 1e-4
    assert math.isclose(metrics_on["policy_loss"], metrics_off["policy_loss"], rel_tol=1e-4, abs_tol=1e-6)


def test_a_resumed_run_with_the_kl_continues_exactly(tiny_vlm_dir, tmp_path):
    """The reference is re-derived from the config's model on a resume: the split run ends where the whole one does."""
    run = ["steps=2", "grpo.kl_coef=0.1"]
    whole = Trainer(tiny_config(tiny_vlm_dir, tmp_path / "whole", *run))
    start = [t.clone() for t in whole.algorithm.reference.tensors]
    whole.train()
    assert all(torch.equal(a, b) for a, b in zip(start, whole.algorithm.reference.tensors))  # never moved
    assert any(not torch.equal(a, b) for a, b in zip(start, whole.algorithm.reference.parameters))
    first = Trainer(tiny_config(tiny_vlm_dir, tmp_path / "split", *run))
    first.train(until=1)
    del first
    second = Trainer(tiny_config(tiny_vlm_dir, tmp_path / "split", *run, "resume=true"))
    second.train()
    assert second.step == 2
    assert all(torch.equal(a, b) for a, b in zip(start, second.algorithm.reference.tensors))
    resumed = dict(second.policy.named_parameters())
    for name, value in whole.policy.named_parameters():
        assert torch.equal(value, resumed[name]), name
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    split = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kl"] for r in records] == [r["kl"] for r in split]
