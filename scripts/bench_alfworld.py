"""Benchmark ALFWorld: game generation, env reset/step latency, batched steps of 8 games.

    python scripts/bench_alfworld.py [--games 100] [--steps 60] [--workers 2] [--async-vector]

Prints games generated per second; reset and step latency (median, p95) for small and dataset-size scenes
(dataset size: 16-22 receptacles, 35-55 objects); the planner expert's latency; and the latency of one batch step
of 8 dataset-size games, in process and over worker processes (target: under 100 ms). Steps play random
admissible commands; an env that finishes is reset outside the timed step.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from envs.alfworld.batch import ALFWorldBatch  # noqa: E402
from envs.alfworld.env import ALFWorldEnv  # noqa: E402
from envs.alfworld.generator import GenerationRequest, generate  # noqa: E402

BATCH = 8
TARGET_MS = 100.0


def summary(seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return f"median {statistics.median(ms):7.1f} ms   p95 {p95:7.1f} ms   (n={len(ms)})"


def bench_generation(out: str, games: int, workers: int) -> None:
    for count_workers in sorted({1, workers}):
        started = time.perf_counter()
        generate(os.path.join(out, f"gen-{count_workers}"), GenerationRequest("train", seed=0), games,
                 workers=count_workers)
        elapsed = time.perf_counter() - started
        print(f"generation ({games} mixed-size games, {count_workers} worker(s)): {games / elapsed:6.1f} games/s")


def bench_env(data_dir: str, label: str, steps: int) -> None:
    env = ALFWorldEnv(split="train", data_dir=data_dir)
    cold, warm, step, expert = [], [], [], []
    rng = random.Random(0)
    for index in range(len(env.game_entries)):
        started = time.perf_counter()
        env.reset(options={"game_index": index})          # a game this env has not loaded yet
        cold.append(time.perf_counter() - started)
        started = time.perf_counter()
        env.reset(options={"game_index": index})          # the same game again
        warm.append(time.perf_counter() - started)
        started = time.perf_counter()
        env.expert_action()
        expert.append(time.perf_counter() - started)
    while len(step) < steps:
        env.reset(options={"game_index": rng.randrange(len(env.game_entries))})
        for _ in range(35):
            action = rng.choice(env.admissible_actions())
            started = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(action)
            step.append(time.perf_counter() - started)
            if terminated or truncated or len(step) >= steps:
                break
    print(f"{label}: reset (new game)  {summary(cold)}")
    print(f"{label}: reset (same game) {summary(warm)}")
    print(f"{label}: step              {summary(step)}")
    print(f"{label}: expert plan       {summary(expert)}")


def bench_batch(data_dir: str, workers: int, steps: int) -> float:
    batch = ALFWorldBatch(BATCH, workers=workers, split="train", data_dir=data_dir)
    rng = random.Random(1)
    _, infos = batch.reset(seed=0)
    timings = []
    for _ in range(steps):
        actions = [rng.choice(info["admissible_actions"]) for info in infos]
        started = time.perf_counter()
        _, _, terminated, truncated, infos = batch.step(actions)
        timings.append(time.perf_counter() - started)
        if any(terminated | truncated):
            _, infos = batch.reset(seed=rng.randrange(10_000))
    batch.close()
    where = "in process" if workers == 0 else f"{workers} worker processes"
    print(f"batch step, {BATCH} dataset-size games, {where}: {summary(timings)}")
    return statistics.median(timings) * 1000


def bench_async_vector(data_dir: str, steps: int) -> None:
    import gymnasium as gym

    import envs  # noqa: F401

    vector = gym.vector.AsyncVectorEnv(
        [lambda: gym.make("gflowvlm/ALFWorld-v0", split="train", data_dir=data_dir) for _ in range(BATCH)],
        autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    rng = random.Random(2)
    _, infos = vector.reset(seed=0)
    timings = []
    for _ in range(steps):
        actions = [rng.choice(list(a)) for a in infos["admissible_actions"]]
        started = time.perf_counter()
        _, _, _, _, infos = vector.step(actions)
        timings.append(time.perf_counter() - started)
    vector.close()
    print(f"batch step, {BATCH} dataset-size games, gymnasium AsyncVectorEnv ({BATCH} processes, autoreset "
          f"inside the timings): {summary(timings)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", type=int, default=100, help="games generated for the throughput figure")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per measurement")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--async-vector", action="store_true", help="also time gymnasium's AsyncVectorEnv")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as out:
        bench_generation(out, args.games, args.workers)
        small, large = os.path.join(out, "small"), os.path.join(out, "large")
        generate(small, GenerationRequest("train", seed=1, size="small"), 12, workers=args.workers)
        generate(large, GenerationRequest("train", seed=1, size="large"), 12, workers=args.workers)
        bench_env(small, "small scenes (6-10 receptacles, 2-8 objects)", args.steps)
        bench_env(large, "dataset-size scenes (16-22 receptacles, 35-55 objects)", args.steps)
        results = [bench_batch(large, workers, args.steps) for workers in sorted({0, args.workers})]
        if args.async_vector:
            bench_async_vector(large, args.steps)
    best = min(results)
    verdict = "met" if best < TARGET_MS else "missed"
    print(f"target: batch step of {BATCH} dataset-size games under {TARGET_MS:.0f} ms -> {verdict} "
          f"(best median {best:.1f} ms)")


if __name__ == "__main__":
    main()
