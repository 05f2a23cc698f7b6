"""`gflowvlm demo`: the whole method end to end on a CPU, in minutes, with the built-in tiny VLM.

    1. build the tiny VLM and teach it to read its images (caption pre-training, LLaVA's stage 1)
    2. oracle SFT data for NumberLine, with the paper's [DONE] samples at terminal states
    3. SFT (the paper's starting point), then SubTB fine-tuning from the SFT model ([DONE] flows, replay, expert
       injection)
    4. evaluate both on the in-distribution and out-of-distribution splits
    5. the comparison table and plots

Every stage writes into --out and is skipped when its output is already there, so an interrupted demo picks up
where it stopped. The resolved configs of both training runs are saved with them and can be rerun with
`gflowvlm train --config <run>/config.yaml`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gflowvlm.config import load_config

ENV = "gflowvlm/NumberLine-v0"
IMAGE_SIZE = 64

# The recipe, in one place. Shared by both training runs:
COMMON = [f"env.id={ENV}", f"env.image_size={IMAGE_SIZE}", "env.split=id", "env.num_envs=8",
          "prompt.history=true", "prompt.max_history_steps=4", "generation.temperature=1.0", "logging.keep_last=1"]
SFT = ["algorithm=sft", "model.adapter=full", "optim.lr=1e-3", "optim.min_lr=1e-4", "optim.warmup_steps=30",
       "optim.batch_size=32", "logging.save_every=1000"]
SUBTB = ["algorithm=subtb", "model.adapter=lora", "model.lora_r=16", "model.lora_alpha=32", "model.lora_dropout=0.0",
         "model.lora_targets=attention_mlp", "model.head_hidden=[64]", "objective.flow=done", "objective.lam=1.0",
         "objective.cot_weight=0.4", "collect.expert_injection=true", "collect.replay_size=4",
         "collect.replay_samples=4", "collect.unparseable=illegal", "optim.lr=3e-4", "optim.min_lr=3e-5", "optim.batch_size=96",
         "logging.save_every=10", "logging.sample_every=5"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gflowvlm demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--align-steps", type=int, default=2000, help="upper bound of caption pre-training steps")
    parser.add_argument("--sft-samples", type=int, default=3000)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--subtb-steps", type=int, default=30)
    parser.add_argument("--eval-episodes", type=int, default=64)
    parser.add_argument("--eval-max-steps", type=int, default=None, help="cap evaluation episodes (default: the "
                        "split's own horizon, 100 steps for NumberLine OOD)")
    parser.add_argument("--max-new-tokens", type=int, default=72)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = COMMON + [f"generation.max_new_tokens={args.max_new_tokens}"]
    timings: dict[str, float] = {}
    started = time.perf_counter()

    model_dir = out / "tiny-vlm"
    with _timed(timings, "tiny VLM + caption pre-training"):
        alignment = build_seeing_model(model_dir, args.seed, args.align_steps)
    data = out / "data" / "numberline_sft.jsonl"
    with _timed(timings, "SFT data"):
        if not data.exists():
            from gflowvlm.sft_data import write_sft_data

            write_sft_data(ENV, data, args.sft_samples, done_fraction=0.25, image_size=IMAGE_SIZE, seed=args.seed)
    runs = out / "runs"
    sft_dir, subtb_dir = runs / "numberline_sft", runs / "numberline_subtb"
    with _timed(timings, "SFT"):
        train(common + SFT + [f"model.name_or_path={model_dir}", f"sft.data={data}", f"steps={args.sft_steps}",
                              f"output_dir={sft_dir}", f"seed={args.seed}"])
    with _timed(timings, "SubTB"):
        train(common + SUBTB + [f"model.name_or_path={sft_dir / 'final'}", f"steps={args.subtb_steps}",
                                f"output_dir={subtb_dir}", f"seed={args.seed}"])
    from gflowvlm.evaluation import evaluate_checkpoint

    results = {}
    for run in (sft_dir, subtb_dir):
        for split in ("id", "ood"):
            with _timed(timings, f"eval {run.name} {split}"):
                target = run / f"eval_NumberLine-v0_{split}.json"
                if not target.exists():
                    evaluate_checkpoint(run, ENV, split, episodes=args.eval_episodes, greedy=True, seed=args.seed,
                                        num_envs=32, out=target, transcripts=2, progress=True,
                                        max_steps=args.eval_max_steps)
                results[(run.name, split)] = json.loads(target.read_text())
    from gflowvlm.commands.compare import main as compare_main

    compare_main([str(sft_dir), str(subtb_dir), "--out", str(out / "report")])
    total = time.perf_counter() - started
    summary = {"seconds": total, "stages": timings, "caption_accuracy": alignment.get("accuracy"),
               "success": {f"{run} {split}": result["success_rate"] for (run, split), result in results.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\ndemo finished in {total / 60:.1f} min; report in {out / 'report'}; stage times:")
    for stage, seconds in timings.items():
        print(f"  {stage:<34} {seconds:7.1f} s")
    return 0


def build_seeing_model(model_dir: Path, seed: int, align_steps: int) -> dict:
    """The tiny VLM, pre-trained to caption NumberLine observations (it must read its images before SFT)."""
    marker = model_dir / "alignment.json"
    if marker.exists():
        return json.loads(marker.read_text())
    from gflowvlm.model.tiny_vlm import build_tiny_vlm, save_tiny_vlm
    from gflowvlm.model.vision_alignment import AlignmentConfig, align_vision, caption_pairs

    model, processor = build_tiny_vlm("llava", image_size=IMAGE_SIZE, seed=seed)
    pairs = caption_pairs([ENV], 4000, IMAGE_SIZE, seed) + caption_pairs([ENV], 4000, IMAGE_SIZE, seed, split="ood")
    result = align_vision(model, processor, pairs, AlignmentConfig(steps=align_steps, seed=seed))
    save_tiny_vlm(model, processor, model_dir)
    summary = {k: result[k] for k in ("accuracy", "steps", "seconds") if k in result}
    marker.write_text(json.dumps(summary))
    print(f"caption pre-training: {summary}")
    return summary


def train(overrides: list[str]) -> None:
    config = load_config(None, overrides)
    if (Path(config.output_dir) / "final").exists():
        print(f"{config.output_dir}: already trained, skipping")
        return
    from gflowvlm.trainer import Trainer

    Trainer(config).train()


class _timed:
    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.started = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = time.perf_counter() - self.started
