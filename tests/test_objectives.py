"""The GFlowNet objectives and flow builders against brute-force references written from the formulas.

Each reference loops explicitly over trajectories, transitions and sub-trajectory pairs in float64 Python
arithmetic, so it shares no code (no cumulative sums, no masks) with the vectorised implementation.
"""
from __future__ import annotations

import math

import pytest
import torch

from gflowvlm.flows import (
    DEFAULT_MIN_LOG_REWARD,
    log_flow_forward_looking,
    log_flow_from_done,
    log_flow_from_head,
    shape_log_reward,
)
from gflowvlm.objectives import (
    detailed_balance,
    log_partition_variance,
    subtrajectory_balance,
    trajectory_balance,
    trajectory_lengths,
)

LAMBDAS = [1e-3, 0.5, 0.9, 1.0, 2.0, 1e3]
DTYPES = [torch.float32, torch.float64]
# Ragged on purpose: the shortest (1) and the longest (T) trajectory in the same batch.
LENGTHS = [1, 6, 3, 2, 6, 4]
T = 6


# ----- inputs and brute-force references ------------------------------------------------------------------
def make_batch(lengths: list[int], steps: int, dtype: torch.dtype, seed: int = 0, padding: float | None = None):
    """Random log_pf [B, T], log_flow [B, T+1], mask; entries outside each trajectory set to `padding`
    (or to unrelated random numbers when None)."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    log_pf = -torch.rand(batch, steps, generator=generator, dtype=torch.float64) * 3
    log_flow = torch.randn(batch, steps + 1, generator=generator, dtype=torch.float64) * 2
    mask = torch.zeros(batch, steps, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
        if padding is not None:
            log_pf[b, n:] = padding
            log_flow[b, n + 1:] = padding
    return log_pf.to(dtype), log_flow.to(dtype), mask


def brute_subtb(log_pf: torch.Tensor, log_flow: torch.Tensor, lengths: list[int], lam: float) -> float:
    total = 0.0
    for b, n in enumerate(lengths):
        pf, flow = log_pf[b].double().tolist(), log_flow[b].double().tolist()
        log_weights, squares = [], []
        for i in range(n + 1):
            for j in range(i + 1, n + 1):
                residual = flow[i] + sum(pf[k] for k in range(i, j)) - flow[j]
                log_weights.append((j - i) * math.log(lam))
                squares.append(residual * residual)
        largest = max(log_weights)
        weights = [math.exp(w - largest) for w in log_weights]
        total += sum(w * s for w, s in zip(weights, squares)) / sum(weights)
    return total / len(lengths)


def brute_db(log_pf: torch.Tensor, log_flow: torch.Tensor, lengths: list[int]) -> float:
    total = 0.0
    for b, n in enumerate(lengths):
        pf, flow = log_pf[b].double().tolist(), log_flow[b].double().tolist()
        total += sum((flow[t] + pf[t] - flow[t + 1]) ** 2 for t in range(n)) / n
    return total / len(lengths)


def brute_tb(log_pf: torch.Tensor, log_reward: torch.Tensor, log_z: torch.Tensor, lengths: list[int]) -> float:
    total = 0.0
    for b, n in enumerate(lengths):
        pf = log_pf[b].double().tolist()
        total += (float(log_z[b]) + sum(pf[t] for t in range(n)) - float(log_reward[b])) ** 2
    return total / len(lengths)


def brute_var_tb(log_pf: torch.Tensor, log_reward: torch.Tensor, lengths: list[int], group: list[int]) -> float:
    zeta = [float(log_reward[b]) - sum(log_pf[b].double().tolist()[:n]) for b, n in enumerate(lengths)]
    total = 0.0
    for b in range(len(lengths)):
        members = [zeta[c] for c in range(len(lengths)) if group[c] == group[b]]
        total += (zeta[b] - sum(members) / len(members)) ** 2
    return total / len(lengths)


def close(dtype: torch.dtype) -> dict:
    return {"rel": 1e-4, "abs": 1e-5} if dtype == torch.float32 else {"rel": 1e-10, "abs": 1e-12}


# ----- values against the references ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lam", LAMBDAS)
def test_subtrajectory_balance_matches_brute_force(dtype, lam):
    log_pf, log_flow, mask = make_batch(LENGTHS, T, dtype, seed=1)
    loss = subtrajectory_balance(log_pf, log_flow, mask, lam)
    assert loss.dtype == dtype
    assert float(loss) == pytest.approx(brute_subtb(log_pf, log_flow, LENGTHS, lam), **close(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lam", [1e-4, 1e4])
def test_subtrajectory_balance_is_stable_for_extreme_lambda_at_64_steps(dtype, lam):
    lengths = [64, 1, 33, 64, 17]
    log_pf, log_flow, mask = make_batch(lengths, 64, dtype, seed=2)
    loss = subtrajectory_balance(log_pf, log_flow, mask, lam)
    assert torch.isfinite(loss)
    # The reference sees the same (possibly float32-rounded) numbers, in float64 with log-space weights.
    assert float(loss) == pytest.approx(brute_subtb(log_pf, log_flow, lengths, lam), **close(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_detailed_balance_matches_brute_force(dtype):
    log_pf, log_flow, mask = make_batch(LENGTHS, T, dtype, seed=3)
    loss = detailed_balance(log_pf, log_flow, mask)
    assert float(loss) == pytest.approx(brute_db(log_pf, log_flow, LENGTHS), **close(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_trajectory_balance_matches_brute_force(dtype):
    log_pf, _, mask = make_batch(LENGTHS, T, dtype, seed=4)
    log_reward = torch.randn(len(LENGTHS), dtype=dtype)
    log_z = torch.randn(len(LENGTHS), dtype=dtype)
    loss = trajectory_balance(log_pf, log_reward, log_z, mask)
    assert float(loss) == pytest.approx(brute_tb(log_pf, log_reward, log_z, LENGTHS), **close(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_partition_variance_matches_brute_force_with_uneven_groups(dtype):
    lengths = [1, 6, 3, 2, 6, 4, 5, 1]
    group = [7, -3, 7, 1000, 7, -3, 42, 1000]  # sizes 3, 2, 2 and a singleton; ids arbitrary
    log_pf, _, mask = make_batch(lengths, T, dtype, seed=5)
    log_reward = torch.randn(len(lengths), dtype=dtype)
    loss = log_partition_variance(log_pf, log_reward, mask, torch.tensor(group))
    assert float(loss) > 0.1
    assert float(loss) == pytest.approx(brute_var_tb(log_pf, log_reward, lengths, group), **close(dtype))


def test_log_partition_variance_singleton_group_contributes_zero():
    lengths = [2, 3, 1, 3]
    log_pf, _, mask = make_batch(lengths, 3, torch.float64, seed=6)
    log_reward = torch.randn(4, dtype=torch.float64)
    all_alone = log_partition_variance(log_pf, log_reward, mask, torch.arange(4))
    assert float(all_alone) == 0.0
    # A singleton added to a batch adds a zero term: the loss is the old sum over the new batch size.
    paired = log_partition_variance(log_pf[:3], log_reward[:3], mask[:3], torch.tensor([0, 0, 1]))
    with_singleton = log_partition_variance(log_pf, log_reward, mask, torch.tensor([0, 0, 1, 2]))
    assert float(paired) > 0
    assert float(with_singleton) == pytest.approx(float(paired) * 3 / 4, rel=1e-12)


# ----- limits between the objectives ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_subtb_tends_to_detailed_balance_as_lambda_goes_to_zero(dtype):
    log_pf, log_flow, mask = make_batch(LENGTHS, T, dtype, seed=7)
    subtb = subtrajectory_balance(log_pf, log_flow, mask, 1e-6)
    assert float(subtb) == pytest.approx(float(detailed_balance(log_pf, log_flow, mask)), rel=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_subtb_tends_to_trajectory_balance_as_lambda_goes_to_infinity(dtype):
    # What is compared: per trajectory, the single whole-trajectory pair (0, n_b) of SubTB,
    # (log_flow[b, 0] + sum_{t<n_b} log_pf[b, t] - log_flow[b, n_b])^2, which is TB with
    # log_z = log_flow[:, 0] and log_reward = log_flow[b, n_b].
    log_pf, log_flow, mask = make_batch(LENGTHS, T, dtype, seed=8)
    lengths = torch.tensor(LENGTHS)
    log_reward = log_flow.gather(1, lengths[:, None]).squeeze(1)
    tb = trajectory_balance(log_pf, log_reward, log_flow[:, 0], mask)
    subtb = subtrajectory_balance(log_pf, log_flow, mask, 1e6)
    assert float(subtb) == pytest.approx(float(tb), rel=1e-4)


# ----- gradients ------------------------------------------------------------------------------------------
def test_gradients_match_finite_differences():
    lengths = [1, 4, 2]
    log_pf, log_flow, mask = make_batch(lengths, 4, torch.float64, seed=9)
    log_reward = torch.randn(3, dtype=torch.float64, requires_grad=True)
    log_z = torch.randn(3, dtype=torch.float64, requires_grad=True)
    log_pf.requires_grad_(True)
    log_flow.requires_grad_(True)
    group = torch.tensor([0, 1, 0])
    for lam in (0.3, 1.0, 5.0):
        assert torch.autograd.gradcheck(lambda p, f: subtrajectory_balance(p, f, mask, lam), (log_pf, log_flow))
    assert torch.autograd.gradcheck(lambda p, f: detailed_balance(p, f, mask), (log_pf, log_flow))
    assert torch.autograd.gradcheck(lambda p, r, z: trajectory_balance(p, r, z, mask), (log_pf, log_reward, log_z))
    assert torch.autograd.gradcheck(lambda p, r: log_partition_variance(p, r, mask, group), (log_pf, log_reward))


def test_flow_builders_gradients_match_finite_differences():
    mask = torch.tensor([[True, False, False], [True, True, True]])
    generator = torch.Generator().manual_seed(10)
    head = torch.randn(2, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    state_log_reward = torch.randn(2, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    done_logp = -torch.rand(2, 3, dtype=torch.float64, generator=generator).requires_grad_(True)
    log_reward = torch.randn(2, dtype=torch.float64, generator=generator, requires_grad=True)
    terminal = torch.tensor([False, True])
    assert torch.autograd.gradcheck(lambda h, r: log_flow_from_head(h, r, mask), (head, log_reward))
    assert torch.autograd.gradcheck(lambda r, d: log_flow_from_done(r, d, mask, pin_end=True),
                                    (state_log_reward, done_logp))
    done_every_state = -torch.rand(2, 4, dtype=torch.float64, generator=generator).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r, d: log_flow_from_done(r, d, mask), (state_log_reward, done_every_state))
    assert torch.autograd.gradcheck(lambda h, r: log_flow_forward_looking(h, r, mask, terminal),
                                    (head, state_log_reward))


# ----- non-finite values -----------------------------------------------------------------------------------
def _all_losses(log_pf, log_flow, mask, log_reward, log_z, group):
    return {
        "subtb": subtrajectory_balance(log_pf, log_flow, mask, 0.9),
        "subtb_big_lambda": subtrajectory_balance(log_pf, log_flow, mask, 1e4),
        "db": detailed_balance(log_pf, log_flow, mask),
        "tb": trajectory_balance(log_pf, log_reward, log_z, mask),
        "vartb": log_partition_variance(log_pf, log_reward, mask, group),
    }


@pytest.mark.parametrize("padding", [math.nan, math.inf, -math.inf])
def test_values_outside_the_mask_change_neither_loss_nor_gradient(padding):
    clean_pf, clean_flow, mask = make_batch(LENGTHS, T, torch.float64, seed=11, padding=0.0)
    dirty_pf, dirty_flow, _ = make_batch(LENGTHS, T, torch.float64, seed=11, padding=padding)
    log_reward = torch.randn(len(LENGTHS), dtype=torch.float64)
    log_z = torch.randn(len(LENGTHS), dtype=torch.float64)
    group = torch.tensor([0, 0, 1, 1, 1, 2])
    inside_flow = torch.arange(T + 1)[None, :] <= torch.tensor(LENGTHS)[:, None]
    for name in _all_losses(clean_pf, clean_flow, mask, log_reward, log_z, group):
        grads = []
        for pf, flow in ((clean_pf, clean_flow), (dirty_pf, dirty_flow)):
            pf, flow = pf.clone().requires_grad_(True), flow.clone().requires_grad_(True)
            loss = _all_losses(pf, flow, mask, log_reward, log_z, group)[name]
            assert torch.isfinite(loss), name
            pf_grad, flow_grad = torch.autograd.grad(loss, (pf, flow), allow_unused=True)
            flow_grad = torch.zeros_like(flow) if flow_grad is None else flow_grad
            grads.append((float(loss.detach()), pf_grad, flow_grad))
        (clean_loss, clean_pf_grad, clean_flow_grad), (dirty_loss, dirty_pf_grad, dirty_flow_grad) = grads
        assert dirty_loss == clean_loss, name
        assert torch.equal(dirty_pf_grad, clean_pf_grad), name
        assert torch.equal(dirty_flow_grad, clean_flow_grad), name
        assert torch.all(dirty_pf_grad[~mask] == 0), name
        assert torch.all(dirty_flow_grad[~inside_flow] == 0), name
        assert dirty_pf_grad[mask].abs().sum() > 0, name


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_value_inside_a_trajectory_gives_non_finite_loss(bad):
    log_pf, log_flow, mask = make_batch(LENGTHS, T, torch.float64, seed=12)
    log_reward = torch.zeros(len(LENGTHS), dtype=torch.float64)
    log_z = torch.zeros(len(LENGTHS), dtype=torch.float64)
    group = torch.zeros(len(LENGTHS), dtype=torch.long)
    bad_pf = log_pf.clone()
    bad_pf[2, 1] = bad  # trajectory 2 has 3 transitions: position 1 is inside it
    for name, loss in _all_losses(bad_pf, log_flow, mask, log_reward, log_z, group).items():
        assert not torch.isfinite(loss), name
    bad_flow = log_flow.clone()
    bad_flow[0, 1] = bad  # trajectory 0 has 1 transition: s_1 is its terminal state, log R(x)
    for name in ("subtb", "subtb_big_lambda", "db"):
        assert not torch.isfinite(_all_losses(log_pf, bad_flow, mask, log_reward, log_z, group)[name]), name


# ----- input validation ------------------------------------------------------------------------------------
def test_shape_and_type_errors_are_value_errors_naming_the_problem():
    log_pf, log_flow, mask = make_batch([2, 3], 3, torch.float32)
    two = torch.zeros(2)
    with pytest.raises(ValueError, match=r"log_flow must have shape \[B, T\+1\] = \[2, 4\].*got \[2, 3\]"):
        subtrajectory_balance(log_pf, log_flow[:, :3], mask, 0.9)
    with pytest.raises(ValueError, match=r"log_flow must have shape"):
        detailed_balance(log_pf, log_flow[:1], mask)
    with pytest.raises(ValueError, match=r"mask must have the shape of log_pf \[2, 3\], got \[2, 2\]"):
        trajectory_balance(log_pf, two, two, mask[:, :2])
    with pytest.raises(ValueError, match=r"log_z must have shape \[B\] = \[2\].*got \[3\]"):
        trajectory_balance(log_pf, two, torch.zeros(3), mask)
    with pytest.raises(ValueError, match=r"log_reward must have shape \[B\]"):
        trajectory_balance(log_pf, torch.zeros(2, 1), two, mask)
    with pytest.raises(ValueError, match=r"log_pf must have shape \[B, T\], got \[2, 3, 1\]"):
        detailed_balance(log_pf[..., None], log_flow, mask)
    with pytest.raises(ValueError, match=r"group must have shape \[B\] = \[2\]"):
        log_partition_variance(log_pf, two, mask, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"group must be an integer tensor"):
        log_partition_variance(log_pf, two, mask, two)
    with pytest.raises(ValueError, match=r"log_pf must be a floating-point tensor"):
        trajectory_balance(log_pf.long(), two, two, mask)


def test_bad_masks_are_rejected():
    log_pf, log_flow, _ = make_batch([2, 3], 3, torch.float32)
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        detailed_balance(log_pf, log_flow, torch.ones(2, 3))
    with pytest.raises(ValueError, match="left-aligned"):
        detailed_balance(log_pf, log_flow, torch.tensor([[True, False, True], [True, True, True]]))
    with pytest.raises(ValueError, match="at least one transition"):
        detailed_balance(log_pf, log_flow, torch.tensor([[False, False, False], [True, True, True]]))
    assert trajectory_lengths(torch.tensor([[True, False, False], [True, True, True]])).tolist() == [1, 3]


@pytest.mark.parametrize("lam", [0.0, -0.5, math.inf, math.nan, "big"])
def test_lambda_must_be_positive_and_finite(lam):
    log_pf, log_flow, mask = make_batch([2, 3], 3, torch.float32)
    with pytest.raises(ValueError, match="lam must be a positive finite number"):
        subtrajectory_balance(log_pf, log_flow, mask, lam)


# ----- flow builders ----------------------------------------------------------------------------------------
NAN = math.nan
MASK = torch.tensor([[True, True, False], [True, True, True]])  # n = 2 and n = 3


def test_log_flow_from_head_puts_log_reward_at_the_terminal_state():
    head = torch.tensor([[1.0, 2.0, NAN], [4.0, 5.0, 6.0]])
    log_reward = torch.tensor([-1.0, -2.0])
    expected = torch.tensor([[1.0, 2.0, -1.0, 0.0], [4.0, 5.0, 6.0, -2.0]])
    assert torch.equal(log_flow_from_head(head, log_reward, MASK), expected)
    head_all_states = torch.cat([head, torch.tensor([[NAN], [NAN]])], dim=1)
    assert torch.equal(log_flow_from_head(head_all_states, log_reward, MASK), expected)


def test_log_flow_from_done_subtracts_the_done_log_probability():
    state_log_reward = torch.tensor([[0.5, 1.0, 3.0, NAN], [0.0, 0.2, 0.4, 2.0]])
    done_logp = torch.tensor([[-0.1, -0.7, NAN], [-2.0, -1.0, -0.5]])
    expected = torch.tensor([[0.6, 1.7, 3.0, 0.0], [2.0, 1.2, 0.9, 2.0]])
    assert torch.allclose(log_flow_from_done(state_log_reward, done_logp, MASK, pin_end=True), expected)


def test_log_flow_from_done_matches_the_gflowvlm_subtb_term():
    # GFlowVLM's SubTB term for i < j < n: log R(z_i) + sum log P_F + log P(T|z_j) - log R(z_j) - log P(T|z_i).
    state_log_reward = torch.tensor([[0.0, 0.2, 0.4, 2.0]], dtype=torch.float64)
    done_logp = torch.tensor([[-2.0, -1.0, -0.5]], dtype=torch.float64)
    log_pf = torch.tensor([[-0.3, -0.6, -0.9]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    log_flow = log_flow_from_done(state_log_reward, done_logp, mask, pin_end=True)
    r, d, p = state_log_reward[0].tolist(), done_logp[0].tolist(), log_pf[0].tolist()
    paper = (r[0] + p[0] + p[1] + d[2] - r[2] - d[0]) ** 2
    residual = log_flow[0, 0] + log_pf[0, :2].sum() - log_flow[0, 2]
    assert float(residual ** 2) == pytest.approx(paper, rel=1e-12)


def brute_paper_subtb(log_pf, state_log_reward, done_logp, lengths, lam: float, pin_end: bool) -> float:
    """The paper's SubTB, transcribed term by term: for i < j <= n,
    [log R(z_i T) + sum_{k=i..j-1} log P_F + log P_F(T | z_j) - log R(z_j T) - log P_F(T | z_i)]^2,
    weighted lam^(j - i) and normalised per trajectory. pin_end: the j = n terms use log F(z_n) = log R(x)."""
    total = 0.0
    for b, n in enumerate(lengths):
        pf, r, d = log_pf[b].tolist(), state_log_reward[b].tolist(), done_logp[b].tolist()
        numerator = denominator = 0.0
        for i in range(n + 1):
            for j in range(i + 1, n + 1):
                start = r[i] - d[i]
                end = r[j] if (pin_end and j == n) else r[j] - d[j]
                term = (start + sum(pf[i:j]) - end) ** 2
                numerator += lam ** (j - i) * term
                denominator += lam ** (j - i)
        total += numerator / denominator
    return total / len(lengths)


@pytest.mark.parametrize("pin_end", [False, True])
@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0])
def test_done_flows_in_subtb_match_the_papers_formula(pin_end, lam):
    generator = torch.Generator().manual_seed(21)
    lengths = [1, 4, 2]
    mask = torch.tensor([[t < n for t in range(4)] for n in lengths])
    log_pf = -torch.rand(3, 4, dtype=torch.float64, generator=generator) * 2
    state_log_reward = torch.randn(3, 5, dtype=torch.float64, generator=generator)
    done_logp = -torch.rand(3, 5, dtype=torch.float64, generator=generator) * 3
    log_flow = log_flow_from_done(state_log_reward, done_logp, mask, pin_end=pin_end)
    expected = brute_paper_subtb(log_pf, state_log_reward, done_logp, lengths, lam, pin_end)
    assert float(subtrajectory_balance(log_pf, log_flow, mask, lam)) == pytest.approx(expected, rel=1e-10)
    # DB is SubTB's length-1 terms: the same transcription with only j = i + 1.
    db_expected = sum(
        sum(((state_log_reward[b, t] - done_logp[b, t]) + log_pf[b, t]
             - (state_log_reward[b, t + 1] - (0.0 if pin_end and t + 1 == n else done_logp[b, t + 1]))) ** 2
            for t in range(n)).item() / n
        for b, n in enumerate(lengths)) / len(lengths)
    assert float(detailed_balance(log_pf, log_flow, mask)) == pytest.approx(db_expected, rel=1e-10)


def test_the_two_done_forms_differ_only_at_the_last_state():
    state_log_reward = torch.tensor([[0.0, 0.2, 0.4, 2.0]], dtype=torch.float64)
    done_logp = torch.tensor([[-2.0, -1.0, -0.5, -0.25]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    paper = log_flow_from_done(state_log_reward, done_logp, mask)
    pinned = log_flow_from_done(state_log_reward, done_logp, mask, pin_end=True)
    assert torch.equal(paper[0, :3], pinned[0, :3])
    assert float(paper[0, 3]) == pytest.approx(2.25) and float(pinned[0, 3]) == pytest.approx(2.0)


def test_forward_looking_flows_for_terminal_and_truncated_trajectories():
    tilde = torch.tensor([[0.1, 0.2, 9.0, NAN], [0.3, 0.4, 0.5, 0.6]])
    state_log_reward = torch.tensor([[1.0, 2.0, 3.0, NAN], [-1.0, -2.0, -3.0, -4.0]])
    terminal = torch.tensor([True, False])
    log_flow = log_flow_forward_looking(tilde, state_log_reward, MASK, terminal)
    # Terminal: F~ = 1 at s_2, so the head's 9.0 there is unused. Truncated: s_3 keeps log F~ + log R.
    expected = torch.tensor([[1.1, 2.2, 3.0, 0.0], [-0.7, -1.6, -2.5, -3.4]])
    assert torch.allclose(log_flow, expected)


def test_flow_builders_keep_nan_padding_out_of_the_gradient():
    tilde = torch.tensor([[0.1, 0.2, NAN, NAN], [0.3, 0.4, 0.5, 0.6]], requires_grad=True)
    state_log_reward = torch.tensor([[1.0, 2.0, 3.0, NAN], [-1.0, -2.0, -3.0, -4.0]], requires_grad=True)
    done_logp = torch.tensor([[-0.1, -0.7, NAN], [-2.0, -1.0, -0.5]], requires_grad=True)
    outputs = [log_flow_forward_looking(tilde, state_log_reward, MASK, torch.tensor([True, False])),
               log_flow_from_done(state_log_reward, done_logp, MASK, pin_end=True),
               log_flow_from_head(tilde, state_log_reward[:, 0], MASK)]
    for log_flow in outputs:
        assert torch.isfinite(log_flow).all()
    torch.stack(outputs).sum().backward()
    for grad in (tilde.grad, state_log_reward.grad, done_logp.grad):
        assert torch.isfinite(grad).all()
    assert float(tilde.grad[0, 2]) == 0.0 and float(done_logp.grad[0, 2]) == 0.0
    assert float(state_log_reward.grad[0, 3]) == 0.0


def test_forward_looking_db_residual_carries_the_reward_difference():
    generator = torch.Generator().manual_seed(13)
    tilde = torch.randn(2, 4, dtype=torch.float64, generator=generator)
    state_log_reward = torch.randn(2, 4, dtype=torch.float64, generator=generator)
    log_pf = -torch.rand(2, 3, dtype=torch.float64, generator=generator)
    terminal = torch.tensor([True, False])
    log_flow = log_flow_forward_looking(tilde, state_log_reward, MASK, terminal)
    total = 0.0
    for b, n in enumerate([2, 3]):
        terms = []
        for t in range(n):
            next_tilde = 0.0 if (terminal[b] and t + 1 == n) else float(tilde[b, t + 1])
            reward_difference = float(state_log_reward[b, t + 1] - state_log_reward[b, t])
            terms.append((float(tilde[b, t]) + float(log_pf[b, t]) - reward_difference - next_tilde) ** 2)
        total += sum(terms) / n
    assert float(detailed_balance(log_pf, log_flow, MASK)) == pytest.approx(total / 2, rel=1e-12)


def test_flow_builders_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"head_log_flow must have shape \[2, 3\] or \[2, 4\].*got \[2, 2\]"):
        log_flow_from_head(torch.zeros(2, 2), torch.zeros(2), MASK)
    with pytest.raises(ValueError, match=r"log_reward must have shape \[2\]"):
        log_flow_from_head(torch.zeros(2, 3), torch.zeros(3), MASK)
    with pytest.raises(ValueError, match=r"state_log_reward must have shape \[2, 4\]"):
        log_flow_from_done(torch.zeros(2, 3), torch.zeros(2, 3), MASK)
    with pytest.raises(ValueError, match=r"done_logp must have shape \[2, 4\]"):
        log_flow_from_done(torch.zeros(2, 4), torch.zeros(2, 3), MASK)
    with pytest.raises(ValueError, match=r"done_logp must have shape \[2, 3\] or \[2, 4\]"):
        log_flow_from_done(torch.zeros(2, 4), torch.zeros(2, 5), MASK, pin_end=True)
    with pytest.raises(ValueError, match=r"terminal must be a bool tensor of shape \[2\]"):
        log_flow_forward_looking(torch.zeros(2, 4), torch.zeros(2, 4), MASK, torch.ones(2))
    with pytest.raises(ValueError, match="left-aligned"):
        log_flow_from_head(torch.zeros(2, 3), torch.zeros(2), torch.tensor([[False, True, True]] * 2))


def test_shape_log_reward_clamps_then_scales():
    log_reward = torch.tensor([-math.inf, -100.0, -1.0, 2.0, NAN])
    shaped = shape_log_reward(log_reward, beta=2.0, min_log_reward=-10.0)
    assert torch.equal(shaped[:4], torch.tensor([-20.0, -20.0, -2.0, 4.0]))
    assert math.isnan(float(shaped[4]))  # nan is not hidden: the trainer must still see it
    assert float(shape_log_reward(torch.tensor([-math.inf]))) == pytest.approx(DEFAULT_MIN_LOG_REWARD)
    assert DEFAULT_MIN_LOG_REWARD == pytest.approx(math.log(1e-10))
    with pytest.raises(ValueError, match="beta must be a positive finite number"):
        shape_log_reward(log_reward, beta=0.0)
    with pytest.raises(ValueError, match="min_log_reward must be a finite number"):
        shape_log_reward(log_reward, min_log_reward=-math.inf)
