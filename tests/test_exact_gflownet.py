"""Exactness: a GFlowNet trained with these objectives samples terminal objects with probability R(x) / Z.

The space is small enough to enumerate: sequences of length 1..3 over the alphabet {0, 1, 2}, built left to
right, ending with a stop action (or automatically at length 3): 3 + 9 + 27 = 39 objects. Each object is
reached by exactly one trajectory (a tree), so P_B = 1 and the sampler's probability of x is the product of
the policy's probabilities along x's one trajectory, which we compute exactly, without sampling.
Training samples with an exploration policy (the policy mixed with uniform) but ALWAYS scores the
trajectories under the policy itself, as the trainer does.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from gflowvlm.flows import log_flow_from_head
from gflowvlm.objectives import subtrajectory_balance, trajectory_balance

ALPHABET = 3
MAX_LENGTH = 3
STOP = ALPHABET  # action index of the stop action, after the symbols
STEPS = MAX_LENGTH  # longest trajectory in transitions: 2 symbols + stop, or 3 symbols
EMPTY = -1


def reward(sequence: tuple[int, ...]) -> float:
    """A positive reward with some variety (from 1 to 8): favours 0s, a final 2 and length 2."""
    return 1.0 + sequence.count(0) + 2.0 * (sequence[-1] == 2) + 3.0 * (len(sequence) == 2)


ALL_SEQUENCES = [seq for length in range(1, MAX_LENGTH + 1)
                 for seq in itertools.product(range(ALPHABET), repeat=length)]
TRUE_LOG_Z = math.log(sum(reward(seq) for seq in ALL_SEQUENCES))


class Agent(nn.Module):
    """MLP on the one-hot prefix -> logits over (symbols, stop) and a log state flow."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(MAX_LENGTH * ALPHABET, hidden), nn.LeakyReLU(),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(), nn.Linear(hidden, ALPHABET + 2))

    def forward(self, prefix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """prefix [..., MAX_LENGTH] ints (EMPTY after the prefix) -> (action log-probs [..., 4], log flow [...])."""
        one_hot = nn.functional.one_hot(prefix.clamp(min=0), ALPHABET).float() * (prefix >= 0)[..., None]
        out = self.net(one_hot.flatten(-2))
        logits = out[..., :ALPHABET + 1]
        # Stopping before the first symbol would produce the empty sequence, which is not an object.
        empty = (prefix[..., 0] == EMPTY)[..., None]
        is_stop = torch.arange(ALPHABET + 1) == STOP
        logits = logits.masked_fill(empty & is_stop, -math.inf)
        return logits.log_softmax(dim=-1), out[..., ALPHABET + 1]


def sample(agent: Agent, batch: int, epsilon: float, generator: torch.Generator):
    """Roll out `batch` trajectories from the policy mixed with uniform; return (prefixes [B, T, L], actions
    [B, T], mask [B, T]). No gradient: the loss rescores these trajectories under the current policy."""
    prefix = torch.full((batch, MAX_LENGTH), EMPTY)
    prefixes = torch.full((batch, STEPS, MAX_LENGTH), EMPTY)
    actions = torch.zeros(batch, STEPS, dtype=torch.long)
    mask = torch.zeros(batch, STEPS, dtype=torch.bool)
    active = torch.ones(batch, dtype=torch.bool)
    with torch.no_grad():
        for t in range(STEPS):
            log_probs, _ = agent(prefix)
            allowed = torch.isfinite(log_probs)
            uniform = allowed.float() / allowed.sum(dim=-1, keepdim=True)
            probs = (1 - epsilon) * log_probs.exp() + epsilon * uniform
            action = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            prefixes[:, t], actions[:, t], mask[:, t] = prefix, action, active
            grows = active & (action != STOP)
            prefix = prefix.clone()
            prefix[grows, t] = action[grows]
            active = grows & (t + 1 < MAX_LENGTH)
    return prefixes, actions, mask


def trajectories_of(sequences: list[tuple[int, ...]]):
    """The unique trajectory of each sequence, in the layout `sample` returns."""
    prefixes = torch.full((len(sequences), STEPS, MAX_LENGTH), EMPTY)
    actions = torch.zeros(len(sequences), STEPS, dtype=torch.long)
    mask = torch.zeros(len(sequences), STEPS, dtype=torch.bool)
    for b, seq in enumerate(sequences):
        moves = list(seq) + ([STOP] if len(seq) < MAX_LENGTH else [])
        for t, move in enumerate(moves):
            prefixes[b, t, :t] = torch.tensor(seq[:t], dtype=torch.long)
            actions[b, t], mask[b, t] = move, True
    return prefixes, actions, mask


def sequence_of(prefixes: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(a for a in actions[b][mask[b]].tolist() if a != STOP) for b in range(len(actions))]


def score(agent: Agent, prefixes, actions, mask):
    """(log_pf [B, T], head log flow [B, T]) under the current policy."""
    log_probs, head_log_flow = agent(prefixes)
    log_pf = log_probs.gather(-1, actions[..., None]).squeeze(-1)
    return log_pf, head_log_flow


def exact_terminal_distribution(agent: Agent) -> torch.Tensor:
    """p(x) for every x in ALL_SEQUENCES, from the policy's probabilities (no sampling)."""
    with torch.no_grad():
        prefixes, actions, mask = trajectories_of(ALL_SEQUENCES)
        log_pf, _ = score(agent, prefixes, actions, mask)
        return torch.where(mask, log_pf, torch.zeros_like(log_pf)).sum(dim=1).exp()


def train(objective: str, seed: int, steps: int = 1500, batch: int = 32, epsilon: float = 0.1):
    """Train with `objective` ("tb" or "subtb"); return (agent, learned log Z)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    agent = Agent()
    log_z = nn.Parameter(torch.zeros(()))
    groups = [{"params": agent.parameters(), "lr": 1e-3}]
    if objective == "tb":
        groups.append({"params": [log_z], "lr": 0.1})
    optimizer = torch.optim.Adam(groups)
    # Cosine decay to 0: the last updates average out the sampling noise of the final estimate.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for _ in range(steps):
        prefixes, actions, mask = sample(agent, batch, epsilon, generator)
        log_reward = torch.tensor([math.log(reward(x)) for x in sequence_of(prefixes, actions, mask)])
        log_pf, head_log_flow = score(agent, prefixes, actions, mask)
        if objective == "tb":
            loss = trajectory_balance(log_pf, log_reward, log_z.expand(batch), mask)
        else:
            log_flow = log_flow_from_head(head_log_flow, log_reward, mask)
            loss = subtrajectory_balance(log_pf, log_flow, mask, 0.9)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    if objective == "tb":
        return agent, log_z.item()
    with torch.no_grad():
        return agent, float(agent(torch.full((MAX_LENGTH,), EMPTY))[1])  # log Z = log F(root)


def test_enumeration_is_a_distribution_and_trajectories_round_trip():
    agent = Agent()
    p = exact_terminal_distribution(agent)
    assert len(ALL_SEQUENCES) == 39
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-5)
    assert sequence_of(*trajectories_of(ALL_SEQUENCES)) == ALL_SEQUENCES
    prefixes, actions, mask = sample(agent, 64, 0.5, torch.Generator().manual_seed(0))
    assert set(sequence_of(prefixes, actions, mask)) <= set(ALL_SEQUENCES)
    assert set(mask.sum(dim=1).tolist()) <= {2, 3}


@pytest.fixture
def one_thread():
    """Tiny matrices: extra threads only contend with other processes (a 2-core machine ran 10x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("objective", ["tb", "subtb"])
def test_trained_sampler_matches_reward_distribution_exactly(objective):
    target = torch.tensor([reward(x) for x in ALL_SEQUENCES]) / math.exp(TRUE_LOG_Z)
    agent, learned_log_z = train(objective, seed=0)
    l1 = float((exact_terminal_distribution(agent) - target).abs().sum())
    assert l1 <= 0.05, f"{objective}: L1(p, R/Z) = {l1:.4f}"
    assert abs(learned_log_z - TRUE_LOG_Z) <= 0.05, f"{objective}: log Z {learned_log_z:.4f} vs {TRUE_LOG_Z:.4f}"
