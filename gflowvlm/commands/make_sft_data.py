"""`gflowvlm make-sft-data --env ID --split id --samples N --out FILE`: oracle SFT data (JSONL + PNG images).

The prompts are built as training builds them: pass the run's prompt settings (--no-history for
`prompt.history=false`, --max-history-steps for `prompt.max_history_steps`) so SFT data and training prompts match,
and --expert-strategy for the oracle (the run's `collect.expert_strategy`, e.g. Blackjack's stand17).
--caption-samples N appends N caption records: the training pairs of the tiny VLM's alignment with the same --seed
and --image-size (`make-tiny-model --align ENV --seed S`), so a full fine-tune keeps writing what the model reads;
with --caption fields they are reading records, the reply's state fields as JSON ({"current number": 44, ...}).
"""
from __future__ import annotations

import argparse

from gflowvlm.commands._parser import Parser
from gflowvlm.config import PromptConfig


def main(argv: list[str]) -> int:
    parser = Parser(prog="gflowvlm make-sft-data", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True)
    parser.add_argument("--split", default="id")
    parser.add_argument("--samples", type=int, required=True, help="records to write (action + [DONE] samples)")
    parser.add_argument("--out", required=True, help="output .jsonl (images go to <name>_images/ beside it)")
    parser.add_argument("--done-fraction", type=float, default=0.0,
                        help="fraction of [DONE] samples at terminal states (the paper: about 0.25-0.3)")
    parser.add_argument("--caption-samples", type=int, default=0, metavar="N",
                        help="caption records appended: the alignment's training pairs for --seed (default 0)")
    parser.add_argument("--caption", default="image", choices=("image", "text", "fields"),  # CAPTION_SOURCES
                        help="the caption source those pairs use (make-tiny-model --align-caption; default image); "
                             "fields: reading records, the reply's state fields as JSON")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--expert-strategy", metavar="NAME",
                        help="the oracle, for envs that have several (Blackjack: basic, stand17, max_win)")
    parser.add_argument("--no-history", action="store_true", help="Markovian prompts (prompt.history=false)")
    parser.add_argument("--max-history-steps", type=int, default=PromptConfig.max_history_steps,
                        help=f"past steps in a prompt (prompt.max_history_steps; default "
                             f"{PromptConfig.max_history_steps})")
    args = parser.parse_args(argv)
    from gflowvlm.sft_data import write_sft_data

    prompt = PromptConfig(history=not args.no_history, max_history_steps=args.max_history_steps)
    options = {"strategy": args.expert_strategy} if args.expert_strategy else {}
    path = write_sft_data(args.env, args.out, args.samples, split=args.split, done_fraction=args.done_fraction,
                          image_size=args.image_size, seed=args.seed, prompt_config=prompt, env_kwargs=options,
                          caption_samples=args.caption_samples, caption=args.caption)
    print(f"wrote {args.samples + args.caption_samples} records to {path}")
    return 0
