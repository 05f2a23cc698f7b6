"""Several ALFWorld games stepped together, in this process or spread over worker processes.

A rollout over 8-16 games should not wait on one engine at a time. `ALFWorldBatch(num_envs, workers=k)` keeps
`num_envs` ALFWorld envs in `k` worker processes (each steps its share of the games, all workers at once);
`workers=0` keeps them in this process. How a trainer uses it:

    batch = ALFWorldBatch(8, workers=2, split="train", reward="gflowvlm")
    obs, infos = batch.reset(seed=0)                  # env i gets seed 0 + i
    while not all(done):
        actions = [policy(o, i) if not d else None for o, i, d in zip(obs, infos, done)]
        obs, rewards, terminated, truncated, infos = batch.step(actions)   # None: leave that env alone
        done = [d or te or tr for d, te, tr in zip(done, terminated, truncated)]

Nothing resets by itself (a trajectory batch wants whole episodes). An env given None keeps its last
observation and info and reports reward 0 and its flags as they were. `expert_actions()` /
`expert_thoughts()` return each env's planner command and its explanation. gymnasium's `AsyncVectorEnv`
over `gflowvlm/ALFWorld-v0` also works; this class exists because it is faster on few cores (one process per
core instead of one per env) and does not auto-reset (see scripts/bench_alfworld.py for both).
"""
from __future__ import annotations

import multiprocessing
import traceback
from typing import Any, Sequence

import numpy as np

from envs.alfworld.env import ALFWorldEnv


class _Shard:
    """Envs of one worker (or of the main process when workers=0)."""

    def __init__(self, count: int, env_kwargs: dict[str, Any]):
        self.envs = [ALFWorldEnv(**env_kwargs) for _ in range(count)]
        self.last: list[tuple | None] = [None] * count

    def reset(self, requests: list[tuple[int, int | None, dict | None]]) -> list:
        out = []
        for index, seed, options in requests:
            obs, info = self.envs[index].reset(seed=seed, options=options)
            self.last[index] = (obs, 0.0, False, False, info)
            out.append((obs, info))
        return out

    def step(self, requests: list[tuple[int, str | None]]) -> list:
        out = []
        for index, action in requests:
            if action is None:
                obs, _, terminated, truncated, info = self.last[index]
                out.append((obs, 0.0, terminated, truncated, info))
            else:
                result = self.envs[index].step(action)
                self.last[index] = result
                out.append(result)
        return out

    def call(self, requests: list[tuple[int, str]]) -> list:
        return [getattr(self.envs[index], name)() for index, name in requests]


def _worker(connection, count: int, env_kwargs: dict[str, Any]) -> None:
    try:
        shard = _Shard(count, env_kwargs)
        connection.send(("ok", None))
    except Exception as error:   # report construction errors (bad options, missing extra) in one line
        connection.send(("error", f"{type(error).__name__}: {error}"))
        return
    while True:
        command, payload = connection.recv()
        if command == "close":
            connection.close()
            return
        try:
            connection.send(("ok", getattr(shard, command)(payload)))
        except Exception as error:
            connection.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))


class ALFWorldBatch:
    """`num_envs` ALFWorld envs over `workers` processes (0: in this process). See module docstring."""

    def __init__(self, num_envs: int, workers: int = 0, context: str = "spawn", **env_kwargs: Any):
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be a non-negative int, got {workers!r}")
        self.num_envs = num_envs
        self.workers = min(workers, num_envs)
        self._closed = False
        if self.workers == 0:
            self._local = _Shard(num_envs, env_kwargs)
            self._owner = [(0, i) for i in range(num_envs)]
            return
        # Env i lives in worker i % workers, at position i // workers of that worker's shard.
        self._owner = [(i % self.workers, i // self.workers) for i in range(num_envs)]
        ctx = multiprocessing.get_context(context)
        self._pipes, self._processes = [], []
        for w in range(self.workers):
            count = sum(1 for owner, _ in self._owner if owner == w)
            parent, child = ctx.Pipe()
            process = ctx.Process(target=_worker, args=(child, count, env_kwargs), daemon=True)
            process.start()
            child.close()
            self._pipes.append(parent)
            self._processes.append(process)
        for owner in range(self.workers):
            status, message = self._receive(owner)
            if status != "ok":
                self.close()
                raise RuntimeError(f"ALFWorld worker failed to start: {message}")

    def _receive(self, owner: int) -> tuple[str, Any]:
        try:
            return self._pipes[owner].recv()
        except (EOFError, OSError):
            return "error", f"worker process {owner} exited (exit code {self._processes[owner].exitcode})"

    def _dispatch(self, command: str, per_env: Sequence[tuple]) -> list:
        """Send each worker its envs' arguments (all workers first, so they run at once), then gather the
        results back in env order."""
        if self._closed:
            raise RuntimeError("ALFWorldBatch is closed")
        if len(per_env) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} entries (one per env), got {len(per_env)}")
        groups: dict[int, list] = {}
        for (owner, position), arguments in zip(self._owner, per_env):
            groups.setdefault(owner, []).append((position, *arguments))
        if self.workers == 0:
            results = {0: getattr(self._local, command)(groups[0])}
        else:
            for owner, payload in groups.items():
                self._pipes[owner].send((command, payload))
            results = {}
            for owner in groups:
                status, result = self._receive(owner)
                if status != "ok":
                    raise RuntimeError(f"ALFWorld worker {owner} failed: {result}")
                results[owner] = result
        cursors = {owner: iter(result) for owner, result in results.items()}
        return [next(cursors[owner]) for owner, _ in self._owner]

    def reset(self, seed: int | None = None, options: Sequence[dict | None] | None = None):
        seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
        options = list(options) if options is not None else [None] * self.num_envs
        results = self._dispatch("reset", [(s, o) for s, o in zip(seeds, options)])
        return [r[0] for r in results], [r[1] for r in results]

    def step(self, actions: Sequence[str | None]):
        results = self._dispatch("step", [(a,) for a in actions])
        obs = [r[0] for r in results]
        rewards = np.array([r[1] for r in results], dtype=np.float64)
        terminated = np.array([r[2] for r in results], dtype=bool)
        truncated = np.array([r[3] for r in results], dtype=bool)
        return obs, rewards, terminated, truncated, [r[4] for r in results]

    def _call(self, name: str) -> list:
        return self._dispatch("call", [(name,)] * self.num_envs)

    def expert_actions(self) -> list[str]:
        return self._call("expert_action")

    def expert_thoughts(self) -> list[str]:
        return self._call("expert_thoughts")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.workers == 0:
            return
        for pipe in self._pipes:
            try:
                pipe.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
