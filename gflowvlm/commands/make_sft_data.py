"""`gflowvlm make-sft-data --env ID --split id --samples N --out FILE`: oracle SFT data (JSONL + PNG images)."""
from __future__ import annotations

import argparse

from gflowvlm.config import PromptConfig


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gflowvlm make-sft-data", description=__doc__)
    parser.add_argument("--env", required=True)
    parser.add_argument("--split", default="id")
    parser.add_argument("--samples", type=int, required=True, help="records to write (action + [DONE] samples)")
    parser.add_argument("--out", required=True, help="output .jsonl (images go to <name>_images/ beside it)")
    parser.add_argument("--done-fraction", type=float, default=0.0,
                        help="fraction of [DONE] samples at terminal states (the paper: about 0.25-0.3)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-history", action="store_true", help="Markovian prompts (no past states)")
    parser.add_argument("--max-history-steps", type=int, default=PromptConfig.max_history_steps)
    args = parser.parse_args(argv)
    from gflowvlm.sft_data import write_sft_data

    prompt = PromptConfig(history=not args.no_history, max_history_steps=args.max_history_steps)
    path = write_sft_data(args.env, args.out, args.samples, split=args.split, done_fraction=args.done_fraction,
                          image_size=args.image_size, seed=args.seed, prompt_config=prompt)
    print(f"wrote {args.samples} records to {path}")
    return 0
