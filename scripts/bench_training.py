"""Training-loop throughput on the tiny VLM: collector env-steps/s at B=16 vs B=1, and seconds per SubTB iteration
split into collect / score+backward / optimizer step. Ratios come from the same run.

    python scripts/bench_training.py                     # builds a tiny VLM in a temp dir (random weights)
    python scripts/bench_training.py --model runs/tiny/numberline_sft/final --threads 2

An untrained model writes max_new_tokens of noise every step, which is the worst case for the collector; a trained
one stops at the end of its JSON. Pass --model to measure a trained one.

What bounds the B=16 / B=1 ratio on a CPU (measured with torch's profiler on 2 cores, trained tiny VLM, ~200-token
prompts): a batch-1 decode step is ~2.3 ms of fixed per-step cost (Python, op dispatch); a batch-16 step ~4.1 ms,
the extra being real work that grows with the batch (matrix products, the KV cache growing by concatenation,
attention over padded prompts, drawing 16 x vocabulary exponentials to sample); the prefill of 16 prompts (~65 ms)
is compute-bound, ~8x one prompt's. Rows per generation call fall below 16 in a round's tail, while the last long
episodes finish. A preallocated (static) cache and an inverse-CDF sampler were tried: no gain beyond run-to-run noise.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: a fresh tiny VLM)")
    parser.add_argument("--env", default="gflowvlm/NumberLine-v0")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3, help="collection rounds timed per batch size")
    parser.add_argument("--iterations", type=int, default=3, help="training iterations timed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--episodes-per-slot", type=int, default=8, help="episodes per environment per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from gflowvlm.algorithms.common import make_generate
    from gflowvlm.collector import Collector
    from gflowvlm.config import load_config
    from gflowvlm.algorithms.gflownet import chunk_by_group, gflownet_loss
    from gflowvlm.trainer import Trainer

    model = args.model
    scratch = tempfile.TemporaryDirectory()
    if model is None:
        from gflowvlm.model.tiny_vlm import build_tiny_vlm, save_tiny_vlm

        save_tiny_vlm(*build_tiny_vlm("llava", 64, seed=0), scratch.name)
        model = scratch.name

    def config(num_envs: int, episodes: int = 0):
        return load_config(None, [
            "algorithm=subtb", f"env.id={args.env}", f"env.num_envs={num_envs}", "env.image_size=64",
            f"collect.episodes={episodes}",
            f"model.name_or_path={model}", f"generation.max_new_tokens={args.max_new_tokens}",
            f"output_dir={scratch.name}/run", "logging.progress=false", "optim.batch_size=512"])

    trainer = Trainer(config(16))
    generate = make_generate(trainer.context)
    # Rounds alternate between the batch sizes, so a machine that slows down or speeds up during the run (other
    # jobs, frequency scaling) weighs on both figures alike and the ratio stays meaningful.
    collectors = {}
    for batch in (1, 16):
        # several episodes per slot: freed slots start the next episode, so the batch stays full until the tail
        collectors[batch] = Collector(config(batch, episodes=args.episodes_per_slot * batch))
        collectors[batch].collect(generate, iteration=0)  # warm-up
    steps, seconds, calls = {1: 0, 16: 0}, {1: 0.0, 16: 0.0}, {1: 0, 16: 0}

    def counted(prompts, seed):
        calls[batch] += 1
        return generate(prompts, seed)

    for round_index in range(1, args.rounds + 1):
        for batch, collector in collectors.items():
            started = time.perf_counter()
            steps[batch] += sum(t.length for t in collector.collect(counted, iteration=round_index))
            seconds[batch] += time.perf_counter() - started
    rates = {batch: steps[batch] / seconds[batch] for batch in steps}
    for batch in rates:
        # rows per call below B: the tail of a round, when the last long episodes run with freed slots idle
        print(f"collector B={batch:>2}: {rates[batch]:8.2f} env-steps/s ({steps[batch]} steps, "
              f"{steps[batch] / calls[batch]:.1f} prompts per generation call)")
    print(f"collector speed-up B=16 vs B=1: {rates[16] / rates[1]:.1f}x (target >= 6x)")

    collector = Collector(config(16))
    phases = {"collect": 0.0, "score+backward": 0.0, "optimizer step": 0.0}
    trainer.model.eval()
    for iteration in range(args.iterations):
        started = time.perf_counter()
        batch = collector.collect(generate, iteration=100 + iteration)
        phases["collect"] += time.perf_counter() - started
        started = time.perf_counter()
        for chunk in chunk_by_group(batch, trainer.config.optim.batch_size):
            loss, _ = gflownet_loss(trainer.model, trainer.policy, chunk, trainer.config)
            trainer.accelerator.backward(loss * len(chunk) / len(batch))
        phases["score+backward"] += time.perf_counter() - started
        started = time.perf_counter()
        trainer.optimizer_step(True)
        phases["optimizer step"] += time.perf_counter() - started
    total = sum(phases.values()) / args.iterations
    print(f"SubTB iteration with B=16 ({args.iterations} timed): {total:.2f} s")
    for name, seconds in phases.items():
        print(f"  {name:<16} {seconds / args.iterations:6.2f} s  ({100 * seconds / args.iterations / total:4.1f}%)")


if __name__ == "__main__":
    main()
