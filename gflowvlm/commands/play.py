"""`gflowvlm play`: play episodes with the environment's oracle and save what the agent would see.

For each step it writes the observation image (PNG) and a transcript line (state text, oracle thoughts, action,
reward), so a user can check an environment's rules and rendering before training on it. With --no-images it
only measures the oracle (the ceiling an SFT run can reach), e.g.

    gflowvlm play --env gflowvlm/Blackjack-v0 --split id --episodes 1000 --no-images --expert-strategy basic
"""
from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

from tqdm import tqdm

from gflowvlm.commands._parser import Parser
from gflowvlm.config import FIELD_BOUNDS
from gflowvlm.config_schema import check_output_dir
from gflowvlm.env_factory import check_env_options, check_has_expert, make_env
from gflowvlm.errors import UserError
from gflowvlm.stats import wilson_interval


def main(argv: list[str]) -> int:
    parser = Parser(prog="gflowvlm play", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", action="append", required=True, help="environment id (repeatable)")
    parser.add_argument("--split", default="id")
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="episode i plays the task of reset(seed + i)")
    parser.add_argument("--expert-strategy", metavar="NAME",
                        help="the oracle to play, for envs that have several (Blackjack: basic, stand17, max_win)")
    parser.add_argument("--out", help="folder for images and transcript.jsonl (optional with --no-images)")
    parser.add_argument("--no-images", action="store_true",
                        help="write no images: print the oracle's success rate (and a transcript if --out is given)")
    args = parser.parse_args(argv)
    _check(args)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    images = out if out is not None and not args.no_images else None
    options = {"strategy": args.expert_strategy} if args.expert_strategy else {}
    with open(out / "transcript.jsonl", "w", encoding="utf-8") if out else nullcontext() as transcript:
        for env_id in args.env:
            env = make_env(env_id, split=args.split, image_size=args.image_size, **options)
            name = env_id.split("/")[-1]
            wins = 0
            for episode in tqdm(range(args.episodes), desc=f"play {name}", unit="episode"):
                prefix = images / f"{name}_ep{episode}" if images is not None else None
                wins += play_episode(env, args.seed + episode, prefix, transcript)
            env.close()
            print(success_line(env_id, args.split, wins, args.episodes, args.expert_strategy)
                  + (f"; images in {images}" if images is not None else ""))
    return 0


def _check(args: argparse.Namespace) -> None:
    """Every flag and env, before anything is played or written (one line naming the flag)."""
    if args.episodes <= 0:
        raise UserError(f"--episodes must be positive, got {args.episodes}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    size = FIELD_BOUNDS["env.image_size"]
    if not size.allows(args.image_size):
        raise UserError(f"--image-size must be {size.describe()}, got {args.image_size}")
    if args.out is None and not args.no_images:
        raise UserError("give --out DIR for the images and transcript (or --no-images to only measure the oracle)")
    if args.out is not None:
        check_output_dir(args.out, "--out")
    for env_id in args.env:
        check_env_options(env_id, args.split, strategy=args.expert_strategy,
                          keys={"id": "--env", "split": "--split", "strategy": "--expert-strategy"})
        check_has_expert(env_id, None, "--env", "play its oracle")


def success_line(env_id: str, split: str, wins: int, episodes: int, strategy: str | None = None) -> str:
    low, high = wilson_interval(wins, episodes)
    setting = f"{split}, strategy {strategy}" if strategy else split
    return (f"{env_id} ({setting}): oracle success {100 * wins / episodes:.1f}% [{100 * low:.1f}, {100 * high:.1f}] "
            f"over {episodes} episodes")


def play_episode(env, seed: int, prefix: Path | None, transcript) -> bool:
    """One oracle episode from reset(seed); images under `prefix` (None: none), lines into `transcript` (or None)."""
    observation, info = env.reset(seed=seed)
    for step in range(10_000):
        if prefix is not None:
            _save(observation["image"], f"{prefix}_step{step:02d}.png")
        thoughts, action = env.unwrapped.expert_thoughts(), env.unwrapped.expert_action()
        record = {"task": info["task"], "state": observation["text"], "thoughts": thoughts, "action": action}
        if prefix is not None:
            record = {"image": f"{prefix.name}_step{step:02d}.png", **record}
        observation, reward, terminated, truncated, info = env.step(action)
        record.update(reward=reward, log_reward=info["log_reward"], done=terminated or truncated)
        if transcript is not None:
            transcript.write(json.dumps(record) + "\n")
        if terminated or truncated:
            if prefix is not None:
                _save(observation["image"], f"{prefix}_step{step + 1:02d}.png")
            return bool(info["success"])
    return False


def _save(image, path: str) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)
