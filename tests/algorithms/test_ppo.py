"""PPO's pieces against hand computations, and a short run that moves both the policy and the value head."""
import math

import torch

from gflowvlm.algorithms.ppo import clipped_policy_loss, generalized_advantages
from gflowvlm.config import load_config
from gflowvlm.trainer import Trainer


def test_gae_by_hand_terminated_vs_truncated():
    rewards = torch.tensor([0.0, 0.0, 1.0])
    values = torch.tensor([0.5, 0.6, 0.7])
    gamma, lam = 0.9, 0.95
    # terminated: nothing after the last step
    d2 = 1.0 - 0.7
    d1 = 0.0 + 0.9 * 0.7 - 0.6
    d0 = 0.0 + 0.9 * 0.6 - 0.5
    a2, a1 = d2, d1 + gamma * lam * d2
    a0 = d0 + gamma * lam * a1
    advantages, returns = generalized_advantages(rewards, values, 0.0, gamma, lam)
    assert torch.allclose(advantages, torch.tensor([a0, a1, a2]), atol=1e-6)
    assert torch.allclose(returns, advantages + values)
    # truncated: the state the episode was cut at is worth V = 2.0, so the last delta bootstraps from it
    truncated, _ = generalized_advantages(rewards, values, 2.0, gamma, lam)
    t2 = 1.0 + 0.9 * 2.0 - 0.7
    assert math.isclose(float(truncated[2]), t2, abs_tol=1e-6)
    assert math.isclose(float(truncated[1]), d1 + gamma * lam * t2, abs_tol=1e-6)


def test_clipped_loss_against_reference():
    new = torch.tensor([0.0, 0.3, -0.3, 0.05])
    old = torch.zeros(4)
    adv = torch.tensor([1.0, 1.0, -1.0, -2.0])
    clip = 0.1
    expected = []
    for n, o, a in zip(new.tolist(), old.tolist(), adv.tolist()):
        ratio = math.exp(n - o)
        expected.append(min(ratio * a, max(min(ratio, 1 + clip), 1 - clip) * a))
    assert math.isclose(float(clipped_policy_loss(new, old, adv, clip)), -sum(expected) / 4, rel_tol=1e-6)
    # a ratio beyond the clip with a positive advantage gives no gradient: the update is bounded
    new = torch.tensor([0.3], requires_grad=True)
    clipped_policy_loss(new, torch.zeros(1), torch.ones(1), clip).backward()
    assert new.grad.item() == 0.0


def test_short_ppo_run_moves_policy_and_value_head(tiny_vlm_dir, tmp_path):
    config = load_config(None, [
        "algorithm=ppo", "env.id=gflowvlm/NumberLine-v0", "env.reward=rl4vlm", "env.image_size=64",
        "env.num_envs=2", "env.max_steps=3", "steps=2", f"model.name_or_path={tiny_vlm_dir}",
        f"output_dir={tmp_path}", "generation.max_new_tokens=16", "logging.progress=false", "model.lora_r=4",
        "model.head_hidden=[32]", "ppo.minibatch_size=2", "ppo.epochs=2", "optim.lr=1e-3"])
    trainer = Trainer(config)
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    trainer.train()
    changed = {n for n, p in trainer.policy.named_parameters() if n in before and not torch.equal(before[n], p)}
    assert any(n.startswith("heads.value") for n in changed)
    assert any("lora" in n for n in changed)
