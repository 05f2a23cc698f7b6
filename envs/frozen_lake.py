"""FrozenLake (VAGEN's benchmark): gymnasium's FrozenLake-v1 through `gflowvlm/Gym-v0`, on a random map per seed.

Rules:
- split "id": 4x4 maps; split "ood": 8x8 maps. Each reset draws a map with gymnasium's
  `generate_random_map(size, p=0.8, seed)`, its seed drawn from the reset seed's generator: the same seed gives the
  same map, different seeds (almost always) different ones. The generator redraws until a path from the start
  (top-left) to the goal (bottom-right) avoids every hole, so every map is solvable.
- `is_slippery=False`: a move always goes where it says. Commands "left", "down", "right", "up" (gymnasium's
  actions 0-3); a move into the edge leaves the agent where it is. The episode ends on the goal (success) or in a
  hole. The horizon is size x size steps (16, 64): more than any path that never visits a cell twice, so the
  oracle always arrives in time.
- rl4vlm reward: gymnasium's own (1 on reaching the goal, else 0); a command that is not one of the four is
  illegal: nothing moves, -1.
- gflowvlm reward: the adapter's R = exp(return / T) with T = 0.1: the goal pays R = e^10 (about 22,000), a hole
  R = 1, and an episode the horizon cuts off R = 1e-10 (the adapter's `unfinished="fail"`), so garbage replies,
  which leave the agent at the start until the horizon, always score below the random policy, which mostly
  falls into a hole (`tests/envs/test_garbage_never_pays.py`). Why T = 0.1: a GFlowNet samples trajectories in
  proportion to R, and trajectories that end in a hole outnumber those that reach the goal (counting the action
  sequences within the horizon on the maps of seeds 0-49: a median 7 times on 4x4 maps, 150 times on 8x8). A
  sampler exactly proportional to R then succeeds on average 33% (4x4) and 4% (8x8) of the time with T = 1, but
  99.9% and 97% with T = 0.1, still spread over every route to the goal (`tests/envs/test_frozen_lake.py` recounts it).
  `info["log_reward"]` of a running episode is 0 (its return so far is 0).
- text (the caption the tiny VLM is aligned on, and the history lines): the agent's cell, "row 2, column 1", and
  at the end "row 2, column 2: in a hole" or "row 4, column 4: at the goal"; rows and columns count from 1 at the
  top-left. The prompt shows the current state as the image only (as the card games), so the model reads the
  holes off the picture. Measured with `gflowvlm make-tiny-model --align gflowvlm/FrozenLake-v0` (64 px, small
  tower, seed 0, on this 2-core CPU): after 1500 steps (541 s) the tiny VLM captions 58 of 64 training images
  exactly, but 0% of the held-out ones, whose cells it never saw captioned; a richer caption that also named
  the neighbouring holes ("row 2, column 1; holes: right, down", 402 distinct captions instead of 103) fitted
  only 2 of 64 training images after 800 steps, so the cell alone is what the tiny model can be aligned on.
- oracle: a breadth-first search from the goal over the cells that are not holes gives every cell's shortest
  safe distance; the oracle moves to a neighbour one step closer (the first of left, down, right, up), so it
  reaches the goal in the fewest possible steps.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
from gymnasium.envs.toy_text.frozen_lake import generate_random_map

from envs.gym_adapter import GymAdapterEnv

ACTIONS = ("left", "down", "right", "up")  # gymnasium's order: actions 0, 1, 2, 3
MOVES = {"left": (0, -1), "down": (1, 0), "right": (0, 1), "up": (-1, 0)}
SPLIT_SIZES = {"id": 4, "ood": 8}
FROZEN_PROBABILITY = 0.8  # gymnasium's default, as VAGEN
TEMPERATURE = 0.1


def _grid(env: gym.Env) -> list[str]:
    return [row.tobytes().decode() for row in env.desc]


def _cell(env: gym.Env, state: int) -> tuple[int, int]:
    return divmod(int(state), env.ncol)


def distances(grid: list[str]) -> dict[tuple[int, int], int]:
    """Shortest safe number of moves from each reachable cell to the goal (BFS from the goal over non-holes)."""
    size = len(grid)
    goal = next((r, c) for r in range(size) for c in range(size) if grid[r][c] == "G")
    found = {goal: 0}
    queue = deque([goal])
    while queue:
        r, c = queue.popleft()
        for dr, dc in MOVES.values():
            nr, nc = r + dr, c + dc
            if 0 <= nr < size and 0 <= nc < size and (nr, nc) not in found and grid[nr][nc] != "H":
                found[(nr, nc)] = found[(r, c)] + 1
                queue.append((nr, nc))
    return found


def caption(env: gym.Env, observation: Any) -> str:
    grid, (r, c) = _grid(env), _cell(env, observation)
    where = f"row {r + 1}, column {c + 1}"
    if grid[r][c] == "H":
        return f"{where}: in a hole"
    if grid[r][c] == "G":
        return f"{where}: at the goal"
    return where


def shortest_path_expert(env: gym.Env, observation: Any) -> tuple[str, str]:
    grid, (r, c) = _grid(env), _cell(env, observation)
    distance = distances(grid)
    size = len(grid)
    here = distance[(r, c)]
    for name in ACTIONS:
        dr, dc = MOVES[name]
        if distance.get((min(size - 1, max(0, r + dr)), min(size - 1, max(0, c + dc)))) == here - 1:
            steps = "1 more step" if here == 1 else f"{here} more steps"
            return name, (f"I am at row {r + 1}, column {c + 1}. The shortest path to the goal that avoids the holes "
                          f"takes {steps}, so I move {name}.")
    raise RuntimeError(f"no move brings row {r + 1}, column {c + 1} closer to the goal")  # unreachable on valid maps


class FrozenLakeEnv(GymAdapterEnv):
    """Cross the frozen lake to the goal; see the module docstring for the exact rules."""

    def __init__(self, split: str = "id", reward: str = "gflowvlm", image_size: int = 300,
                 render_mode: str | None = None, max_steps: int | None = None):
        self.size = SPLIT_SIZES.get(split, 4)
        corner = f"row {self.size}, column {self.size}"
        super().__init__(
            split=split, reward=reward, image_size=image_size, render_mode=render_mode, max_steps=max_steps,
            env_id="FrozenLake-v1", action_names=list(ACTIONS), env_kwargs={"is_slippery": False},
            task=(f"Walk across the frozen lake from the start at the top left to the goal at the bottom right "
                  f"({corner}) without stepping into a hole. Each step, move left, down, right or up; a move into "
                  f"the edge leaves you where you are."),
            reward_temperature=TEMPERATURE, state_text=caption, expert=shortest_path_expert, unfinished="fail")
        self.grid: list[str] = []

    # The options of this env are its constructor's own; nothing of the adapter's is passed through.
    @classmethod
    def check_options(cls, options) -> None:
        return None

    @classmethod
    def has_expert(cls, options) -> bool:
        return True

    def default_max_steps(self) -> int:
        return self.size * self.size

    def _episode_env_kwargs(self):
        seed = int(self.np_random.integers(2**31 - 1))
        self.grid = generate_random_map(size=self.size, p=FROZEN_PROBABILITY, seed=seed)
        return {"desc": self.grid}

    def position(self) -> tuple[int, int]:
        """(row, column) of the agent, from 0 at the top-left."""
        return _cell(self.inner.unwrapped, self.inner.unwrapped.s)
