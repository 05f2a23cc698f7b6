"""The prior in the GFlowNet target (objective.prior_weight, gflowvlm/prior.py): tilting log P_F and log P([DONE])
by alpha * log P_ref gives exactly the objectives with the tilted reward R' = R * P_ref^alpha (brute force, every
objective); on the tiny VLM the reference is the run's starting weights, scored in the same batch, and a run with
the prior resumes exactly."""
import json
import math

import pytest
import torch

from gflowvlm import flows, objectives
from gflowvlm.algorithms.common import make_generate
from gflowvlm.algorithms.reference import StartingWeights
from gflowvlm.collector import Collector
from gflowvlm.config import ConfigError, load_config, validate
from gflowvlm.algorithms.gflownet import gflownet_loss
from gflowvlm.prior import tilt
from gflowvlm.trainer import Trainer
from gflowvlm.trajectory import step_mask

ALPHA = 0.7
LENGTHS = [3, 1, 4]


def random_scores(seed: int = 0):
    """Per step log P_F and log P_ref [B, T]; per state log P([DONE]) under both and log R(z_0..z_n) [B, T+1]."""
    generator = torch.Generator().manual_seed(seed)
    batch, width = len(LENGTHS), max(LENGTHS)

    def draw(*shape):
        return -torch.rand(*shape, generator=generator, dtype=torch.float64) * 20

    return (draw(batch, width), draw(batch, width), draw(batch, width + 1), draw(batch, width + 1),
            draw(batch, width + 1), step_mask(LENGTHS, width))


def tilted_state_log_reward(state_log_reward, log_ref, done_ref, b, i):
    """log R'(z_{0:i} T) = log R(z_{0:i} T) + alpha (sum_{t<i} log P_ref(r_t) + log P_ref([DONE] | z_i))."""
    return float(state_log_reward[b, i] + ALPHA * (log_ref[b, :i].sum() + done_ref[b, i]))


def brute_subtb(log_pf, log_ref, done_pf, done_ref, state_log_reward, lam):
    """The paper's SubTB(lambda) with [DONE] flows on R', a double loop over (i, j), raw log P_F."""
    total = 0.0
    for b, n in enumerate(LENGTHS):
        def flow(i):
            return tilted_state_log_reward(state_log_reward, log_ref, done_ref, b, i) - float(done_pf[b, i])

        terms, weights = [], []
        for i in range(n + 1):
            for j in range(i + 1, n + 1):
                terms.append((flow(i) + float(log_pf[b, i:j].sum()) - flow(j)) ** 2)
                weights.append(lam ** (j - i))
        total += sum(w * t for w, t in zip(weights, terms)) / sum(weights)
    return total / len(LENGTHS)


def brute_db(log_pf, log_ref, done_pf, done_ref, state_log_reward):
    total = 0.0
    for b, n in enumerate(LENGTHS):
        def flow(i):
            return tilted_state_log_reward(state_log_reward, log_ref, done_ref, b, i) - float(done_pf[b, i])

        total += sum((flow(t) + float(log_pf[b, t]) - flow(t + 1)) ** 2 for t in range(n)) / n
    return total / len(LENGTHS)


def final_tilted_reward(log_ref, state_log_reward):
    """log R'(x) for TB / Var-TB: the terminal reward times the prior of every step (no [DONE] there)."""
    return torch.tensor([float(state_log_reward[b, n] + ALPHA * log_ref[b, :n].sum()) for b, n in enumerate(LENGTHS)],
                        dtype=torch.float64)


@pytest.mark.parametrize("lam", [0.5, 1.0, 3.0])
def test_tilted_subtb_equals_the_paper_formula_on_the_tilted_reward(lam):
    log_pf, log_ref, done_pf, done_ref, state_log_reward, mask = random_scores()
    log_flow = flows.log_flow_from_done(state_log_reward, tilt(done_pf, done_ref, ALPHA), mask)
    loss = objectives.subtrajectory_balance(tilt(log_pf, log_ref, ALPHA), log_flow, mask, lam)
    expected = brute_subtb(log_pf, log_ref, done_pf, done_ref, state_log_reward, lam)
    assert float(loss) == pytest.approx(expected, rel=1e-10)
    # and the prior matters: without it the same scores give another loss
    plain = objectives.subtrajectory_balance(log_pf, flows.log_flow_from_done(state_log_reward, done_pf, mask),
                                             mask, lam)
    assert abs(float(plain) - expected) > 1.0


def test_tilted_db_equals_detailed_balance_on_the_tilted_reward():
    log_pf, log_ref, done_pf, done_ref, state_log_reward, mask = random_scores(1)
    log_flow = flows.log_flow_from_done(state_log_reward, tilt(done_pf, done_ref, ALPHA), mask)
    loss = objectives.detailed_balance(tilt(log_pf, log_ref, ALPHA), log_flow, mask)
    assert float(loss) == pytest.approx(brute_db(log_pf, log_ref, done_pf, done_ref, state_log_reward), rel=1e-10)


def test_tilted_tb_and_vartb_equal_their_formulas_on_the_tilted_reward():
    log_pf, log_ref, _, _, state_log_reward, mask = random_scores(2)
    log_reward = torch.tensor([float(state_log_reward[b, n]) for b, n in enumerate(LENGTHS)], dtype=torch.float64)
    tilted_reward = final_tilted_reward(log_ref, state_log_reward)
    log_z = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64)
    loss = objectives.trajectory_balance(tilt(log_pf, log_ref, ALPHA), log_reward, log_z, mask)
    expected = sum((float(log_z[b]) + float(log_pf[b, :n].sum()) - float(tilted_reward[b])) ** 2
                   for b, n in enumerate(LENGTHS)) / len(LENGTHS)
    assert float(loss) == pytest.approx(expected, rel=1e-10)

    group = torch.tensor([0, 0, 1])
    zeta = [float(tilted_reward[b]) - float(log_pf[b, :n].sum()) for b, n in enumerate(LENGTHS)]
    expected_var = ((zeta[0] - (zeta[0] + zeta[1]) / 2) ** 2 + (zeta[1] - (zeta[0] + zeta[1]) / 2) ** 2) / 3
    loss = objectives.log_partition_variance(tilt(log_pf, log_ref, ALPHA), log_reward, mask, group)
    assert float(loss) == pytest.approx(expected_var, rel=1e-10)


def test_tilt_refuses_mismatched_shapes_and_never_passes_a_gradient_to_the_reference():
    with pytest.raises(ValueError, match="one shape"):
        tilt(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
    reference = torch.zeros(3, requires_grad=True)
    current = torch.zeros(3, requires_grad=True)
    tilt(current, reference, 2.0).sum().backward()
    assert reference.grad is None and torch.equal(current.grad, torch.ones(3))


# ----- on the tiny VLM ----------------------------------------------------------------------------------------------
FAST = ["env.id=gflowvlm/NumberLine-v0", "env.image_size=64", "env.num_envs=4", "env.max_steps=3",
        "generation.max_new_tokens=20", "logging.progress=false", "logging.save_every=100", "optim.batch_size=64",
        "model.lora_r=4", "model.head_hidden=[32]", "prompt.max_history_steps=2"]


def make_config(tiny_vlm_dir, out, algorithm, *extra):
    return load_config(None, FAST + [f"algorithm={algorithm}", f"model.name_or_path={tiny_vlm_dir}",
                                     f"output_dir={out}", *extra])


def perturb(parameters, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in parameters:
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator).to(parameter.dtype))


def per_trajectory_sums(values: torch.Tensor, trajectories) -> list[float]:
    sums, start = [], 0
    for trajectory in trajectories:
        sums.append(float(values[start:start + trajectory.length].sum()))
        start += trajectory.length
    return sums


def test_tb_with_the_prior_is_tb_on_log_pf_minus_the_starting_policy(tiny_vlm_dir, tmp_path):
    config = make_config(tiny_vlm_dir, tmp_path / "tb", "tb", f"objective.prior_weight={ALPHA}")
    trainer = Trainer(config)
    trajectories = Collector(config).collect(make_generate(trainer.context), iteration=0)
    trainer.model.eval()
    reference = StartingWeights(trainer.policy.parameter_groups()[0])
    perturb(trainer.policy.parameter_groups()[0])  # now the policy differs from its start

    # by hand: every step scored alone-in-a-batch under both weights, then TB on the tilted reward
    prompts = [s.prompt for t in trajectories for s in t.steps]
    responses = [s.response for t in trajectories for s in t.steps]
    with torch.no_grad():
        batch = trainer.policy.prepare_batch(prompts, responses)
        current = trainer.policy(batch, cot_weight=config.objective.cot_weight)
        with reference.swapped_in():
            start = trainer.policy(batch, cot_weight=config.objective.cot_weight)
        first_rows = torch.tensor([0] + [sum(t.length for t in trajectories[:b]) for b in range(1, len(trajectories))])
        log_z = trainer.policy.head("log_z", current.hidden[first_rows]).double()
    log_pf = per_trajectory_sums(current.log_pf.double(), trajectories)
    log_ref = per_trajectory_sums(start.log_pf.double(), trajectories)
    log_reward = [max(t.final_log_reward, config.objective.min_log_reward) for t in trajectories]
    expected = sum((float(log_z[b]) + log_pf[b] - (log_reward[b] + ALPHA * log_ref[b])) ** 2
                   for b in range(len(trajectories))) / len(trajectories)

    loss, stats = gflownet_loss(trainer.model, trainer.policy, trajectories, config, reference)
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert stats["log_ratio_to_start"] == pytest.approx(sum(a - b for a, b in zip(log_pf, log_ref)) / len(log_pf),
                                                        rel=1e-4, abs=1e-4)
    assert stats["log_pf"] == pytest.approx(sum(log_pf) / len(log_pf), rel=1e-4)
    loss.backward()  # the reference is swapped back: the gradient reaches the current (perturbed) adapters
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.policy.parameter_groups()[0])
    with pytest.raises(ValueError, match="starting weights"):
        gflownet_loss(trainer.model, trainer.policy, trajectories, config)


def test_subtb_with_the_full_prior_at_the_start_reads_only_rewards(tiny_vlm_dir, tmp_path):
    """alpha = 1 at the starting weights: every tilted log P_F and log P([DONE]) is exactly 0, so the paper's
    SubTB with [DONE] flows becomes SubTB over log F(z_i) = log R(z_i) alone (the [DONE] tilt is applied too)."""
    config = make_config(tiny_vlm_dir, tmp_path / "subtb", "subtb", "objective.prior_weight=1", "objective.lam=0.9")
    trainer = Trainer(config)
    trajectories = Collector(config).collect(make_generate(trainer.context), iteration=0)
    trainer.model.eval()
    reference = StartingWeights(trainer.policy.parameter_groups()[0])
    loss, stats = gflownet_loss(trainer.model, trainer.policy, trajectories, config, reference)
    lengths = [t.length for t in trajectories]
    width = max(lengths)
    mask = step_mask(lengths, width)
    rewards = torch.full((len(trajectories), width + 1), 0.0)
    for b, trajectory in enumerate(trajectories):
        rewards[b, : trajectory.length + 1] = torch.tensor(trajectory.state_log_rewards())
    rewards = flows.shape_log_reward(rewards, min_log_reward=config.objective.min_log_reward)
    zeros = torch.zeros(len(trajectories), width + 1)
    expected = objectives.subtrajectory_balance(torch.zeros(len(trajectories), width),
                                                flows.log_flow_from_done(rewards, zeros, mask), mask, 0.9)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5, abs=1e-5)
    assert stats["log_ratio_to_start"] == 0.0
    plain, _ = gflownet_loss(trainer.model, trainer.policy, trajectories,
                             make_config(tiny_vlm_dir, tmp_path / "plain", "subtb", "objective.lam=0.9"))
    assert not math.isclose(float(plain), float(loss), rel_tol=1e-3)


def test_a_run_with_the_prior_resumes_exactly_and_keeps_its_starting_weights(tiny_vlm_dir, tmp_path):
    steps = ["steps=4", "objective.prior_weight=1", "optim.lr=3e-3", "collect.replay_size=4",
             "collect.replay_samples=2", "collect.expert_injection=true"]
    whole = Trainer(make_config(tiny_vlm_dir, tmp_path / "whole", "subtb", *steps))
    start = [p.detach().clone() for p in whole.policy.parameter_groups()[0]]
    whole.train()
    assert all(torch.equal(a, b) for a, b in zip(start, whole.algorithm.reference.tensors))
    assert not all(torch.equal(a, p) for a, p in zip(start, whole.policy.parameter_groups()[0]))
    first = Trainer(make_config(tiny_vlm_dir, tmp_path / "split", "subtb", *steps))
    first.train(until=2)
    del first
    second = Trainer(make_config(tiny_vlm_dir, tmp_path / "split", "subtb", *steps, "resume=true"))
    second.train()
    for (name, value), resumed in zip(whole.policy.named_parameters(), second.policy.parameters()):
        assert torch.equal(value, resumed), name
    records = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all("log_ratio_to_start" in r for r in records)


@pytest.mark.parametrize("overrides, message", [
    (["algorithm=ppo", "objective.prior_weight=1"], "GFlowNet objectives"),
    (["algorithm=subtb", "objective.prior_weight=-1"], "objective.prior_weight"),
])
def test_the_prior_is_refused_where_it_means_nothing(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(load_config(None, overrides))
