"""`gflowvlm eval`: success rate (Wilson 95% CI), return, length, illegal rate, Div@K of a checkpoint or base model.

    gflowvlm eval --checkpoint runs/tiny/numberline_subtb --env gflowvlm/NumberLine-v0 --split ood --episodes 200
    gflowvlm eval --model llava-hf/llava-v1.6-mistral-7b-hf --env gflowvlm/Blackjack-v0 --split id --episodes 500

--checkpoint takes a run directory (its final/, else its newest complete checkpoint), a checkpoint-* directory (its
policy/) or an adapter directory; the model settings come from the run's config.yaml, else from --model. Episodes =
tasks x --samples-per-task (K); Div@K needs K >= 2. The JSON goes to <checkpoint>/eval_<env>_<split>.json (or --out),
a transcript of the first --transcripts episodes with their images into <json name>_transcript/.
"""
from __future__ import annotations

import argparse

from gflowvlm.commands._parser import Parser
from gflowvlm.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gflowvlm eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("what to evaluate (--checkpoint, --model, or both)")
    source.add_argument("--checkpoint", metavar="DIR", help="run, checkpoint-* or adapter directory")
    source.add_argument("--model", metavar="NAME_OR_PATH",
                        help="base model (alone: evaluate it without adapters; with --checkpoint: its base model)")
    parser.add_argument("--env", required=True, metavar="ID", help="environment id, e.g. gflowvlm/NumberLine-v0")
    parser.add_argument("--split", required=True, metavar="SPLIT", help="id or ood (the splits the env has)")
    parser.add_argument("--episodes", required=True, type=int, metavar="N", help="episodes = tasks x K")
    parser.add_argument("--samples-per-task", type=int, default=1, metavar="K",
                        help="samples of each task (K of Div@K; default 1)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="greedy decoding")
    mode.add_argument("--temperature", type=float, metavar="T",
                      help="sampling temperature (default: the run's generation.temperature)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the tasks and the sampling (default 0)")
    parser.add_argument("--num-envs", type=int, metavar="B",
                        help="episodes rolled together (a multiple of K; default: the run's env.num_envs)")
    parser.add_argument("--out", metavar="FILE", help="where to write the JSON")
    parser.add_argument("--transcripts", type=int, default=3, metavar="N",
                        help="episodes written as a readable transcript with images (default 3; 0: none)")
    parser.add_argument("--unparseable", choices=("random", "illegal"), default="random",
                        help="a response naming no admissible action: a random one (RL4VLM, default) or illegal")
    parser.add_argument("--image-size", type=int, metavar="PIXELS", help="observation size (default: the run's)")
    parser.add_argument("--max-steps", type=int, metavar="N",
                        help="episode horizon (default: the run's on its own split, else the env's for the split)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--env-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an env option for this evaluation, e.g. horizon=optimal (NumberLine); repeatable")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the model's own Python code (transformers' trust_remote_code) for this call; a "
                             "checkpoint or config file can never turn this on")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.checkpoint is None and args.model is None:
        raise UserError("give --checkpoint DIR or --model NAME_OR_PATH")
    if args.episodes <= 0:
        raise UserError(f"--episodes must be positive, got {args.episodes}")
    if args.samples_per_task <= 0:
        raise UserError(f"--samples-per-task must be positive, got {args.samples_per_task}")
    if args.out is not None:  # a file in the way would otherwise be found after every episode ran
        from gflowvlm.config_schema import check_output_file

        check_output_file(args.out, "--out")
    from gflowvlm.config_schema import apply_overrides

    env_kwargs = apply_overrides({}, args.env_option)  # parsed as YAML scalars, with the config reader's limits
    from gflowvlm.evaluation import evaluate_checkpoint  # deferred: torch is slow to import

    result = evaluate_checkpoint(
        args.checkpoint, args.env, args.split, args.episodes, args.samples_per_task, model=args.model,
        greedy=args.greedy, temperature=args.temperature, seed=args.seed, num_envs=args.num_envs, out=args.out,
        transcripts=args.transcripts, unparseable=args.unparseable, image_size=args.image_size,
        max_steps=args.max_steps, progress=not args.quiet, trust_remote_code=args.trust_remote_code,
        env_kwargs=env_kwargs)
    print(summary_line(result))
    print(f"wrote {result['output']}")
    return 0


def summary_line(result: dict) -> str:
    settings = result["settings"]
    low, high = result["ci95"]
    text = (f"{settings['env']} ({settings['split']}): success {100 * result['success_rate']:.1f}% "
            f"[{100 * low:.1f}, {100 * high:.1f}] over {result['episodes']} episodes, "
            f"mean return {result['mean_return']:.3f}, mean length {result['mean_length']:.2f}, "
            f"illegal {100 * result['illegal_rate']:.1f}%")
    if result.get("div_at_k") is not None:
        text += f", Div@{settings['samples_per_task']} {result['div_at_k']:.2f}"
    return text
