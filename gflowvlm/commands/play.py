"""`gflowvlm play`: play episodes with the environment's oracle and save what the agent would see.

For each step it writes the observation image (PNG) and a transcript line (state text, oracle thoughts, action,
reward), so a user can check an environment's rules and rendering before training on it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from gflowvlm.env_factory import make_env


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gflowvlm play", description=__doc__)
    parser.add_argument("--env", action="append", required=True, help="environment id (repeatable)")
    parser.add_argument("--split", default="id")
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder for images and transcript.jsonl")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "transcript.jsonl", "w", encoding="utf-8") as transcript:
        for env_id in args.env:
            env = make_env(env_id, split=args.split, image_size=args.image_size)
            name = env_id.split("/")[-1]
            wins = 0
            for episode in tqdm(range(args.episodes), desc=f"play {name}", unit="episode"):
                wins += play_episode(env, args.seed + episode, out / f"{name}_ep{episode}", transcript)
            env.close()
            print(f"{env_id} ({args.split}): oracle solved {wins}/{args.episodes}; images in {out}")
    return 0


def play_episode(env, seed: int, prefix: Path, transcript) -> bool:
    observation, info = env.reset(seed=seed)
    for step in range(10_000):
        Image.fromarray(observation["image"]).save(f"{prefix}_step{step:02d}.png")
        thoughts, action = env.unwrapped.expert_thoughts(), env.unwrapped.expert_action()
        record = {"image": f"{prefix.name}_step{step:02d}.png", "task": info["task"], "state": observation["text"],
                  "thoughts": thoughts, "action": action}
        observation, reward, terminated, truncated, info = env.step(action)
        record.update(reward=reward, log_reward=info["log_reward"], done=terminated or truncated)
        transcript.write(json.dumps(record) + "\n")
        if terminated or truncated:
            Image.fromarray(observation["image"]).save(f"{prefix}_step{step + 1:02d}.png")
            return bool(info["success"])
    return False
