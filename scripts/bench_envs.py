"""Environment steps per second of each card game on one CPU core, driven by its oracle.

Every step counts a full env step (the new state drawn into an image, as training needs it); episodes are reset
(and their first frame drawn) inside the timed loop too. Prints a markdown table, one row per game and size.

    python scripts/bench_envs.py --steps 2000
    python scripts/bench_envs.py --envs gflowvlm/NumberLine-v0 --sizes 64 --profile
"""
from __future__ import annotations

import os

# Pin numeric libraries to one thread before numpy is imported: the figure is per core.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gymnasium as gym  # noqa: E402

import envs  # noqa: E402,F401 - registers the games

TARGET_STEPS_PER_SECOND_64 = 1_000


def pin_to_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity on this platform)"
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return f"pinned to core {core}"


def run_oracle_steps(env: gym.Env, steps: int, seed: int) -> tuple[int, int]:
    """Drive the oracle for `steps` env steps; returns (steps, episodes)."""
    oracle = env.unwrapped
    env.reset(seed=seed)
    episodes = 1
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(oracle.expert_action())
        if terminated or truncated:
            env.reset()
            episodes += 1
    return steps, episodes


def bench(env_id: str, image_size: int, steps: int, seed: int, warm_steps: int) -> dict:
    """Cold: the first `steps` steps of a process (after 50 for fonts/card art). Warm: `steps` more after
    `warm_steps` untimed ones, once per-process caches (the formula solver's tables) hold what a long rollout
    keeps reusing. A training run lives in the warm regime after its first minutes."""
    env = gym.make(env_id, image_size=image_size)
    try:
        run_oracle_steps(env, min(50, steps), seed)
        started = time.perf_counter()
        done_steps, episodes = run_oracle_steps(env, steps, seed + 1)
        cold = time.perf_counter() - started
        run_oracle_steps(env, warm_steps, seed + 2)
        started = time.perf_counter()
        run_oracle_steps(env, steps, seed + 3)
        warm = time.perf_counter() - started
    finally:
        env.close()
    return {"env": env_id, "size": image_size, "steps": done_steps, "episodes": episodes,
            "seconds": cold, "steps_per_s": done_steps / cold, "warm_steps_per_s": steps / warm}


def profile(env_id: str, image_size: int, steps: int, seed: int, top: int) -> str:
    env = gym.make(env_id, image_size=image_size)
    profiler = cProfile.Profile()
    try:
        run_oracle_steps(env, min(50, steps), seed)
        profiler.enable()
        run_oracle_steps(env, steps, seed + 1)
        profiler.disable()
    finally:
        env.close()
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(top)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="timed env steps per game and size")
    parser.add_argument("--envs", nargs="+", default=list(envs.CARD_ENV_IDS), help="env ids to measure")
    parser.add_argument("--sizes", nargs="+", type=int, default=[300, 64], help="image sizes in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm-steps", type=int, default=20000, help="untimed steps before the warm measurement")
    parser.add_argument("--profile", action="store_true", help="also print where the time goes (cProfile)")
    parser.add_argument("--top", type=int, default=15, help="functions shown per profile")
    args = parser.parse_args(argv)
    if args.steps <= 0:
        parser.error(f"--steps must be positive, got {args.steps}")
    unknown = [env_id for env_id in args.envs if env_id not in gym.registry]
    if unknown:
        parser.error(f"unknown env id(s): {', '.join(unknown)}; registered: {', '.join(envs.ENV_IDS)}")

    print(f"# env steps per second, oracle policy, {pin_to_one_core()}, {args.steps} steps each")
    print("| env | image | cold steps/s | cold ms/step | warm steps/s | episodes |")
    print("|---|---|---|---|---|---|")
    slow = []
    for env_id in args.envs:
        for size_index, size in enumerate(args.sizes):
            # A fresh seed per size: repeating the same episodes would time an oracle whose caches are warm.
            result = bench(env_id, size, args.steps, args.seed + 7919 * size_index, args.warm_steps)
            print(f"| {env_id} | {size}x{size} | {result['steps_per_s']:,.0f} | "
                  f"{1000 * result['seconds'] / result['steps']:.3f} | {result['warm_steps_per_s']:,.0f} | "
                  f"{result['episodes']} |", flush=True)
            if size == 64 and result["warm_steps_per_s"] < TARGET_STEPS_PER_SECOND_64:
                slow.append(env_id)
    if slow:
        print(f"\nbelow the {TARGET_STEPS_PER_SECOND_64} steps/s target at 64x64: {', '.join(slow)}")
    if args.profile:
        for env_id in args.envs:
            size = min(args.sizes)
            print(f"\n## profile: {env_id} at {size}x{size}\n")
            print(profile(env_id, size, args.steps, args.seed, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
