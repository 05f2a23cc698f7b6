"""Slowdown of a tiny training slice next to a CPU-bound busy loop: the project's thread settings vs torch's defaults.

    python scripts/bench_contention.py                  # alone, then beside one busy loop; prints the ratios
    python scripts/bench_contention.py --busy 2 --steps 20
    GFLOWVLM_NUM_THREADS=2 python scripts/bench_contention.py   # the user's settings win, as in the CLI

The slice, on the built-in tiny LLaVA (random weights, 64 px NumberLine images): caption-training steps (batch 32,
forward + backward + AdamW, as in `make-tiny-model --align`) and a decode slice (8 prompts, 24 sampled tokens, as
in trajectory collection). Each runs in a fresh interpreter so its thread settings apply before torch starts. Rows:
the project's settings (gflowvlm.threads.configure_threads) alone; beside the busy loop, decided with the loop
already running; beside the busy loop with the settings decided while alone (a competitor that starts later); and
torch's defaults (every core, OpenMP's spin-waiting) alone and beside the loop; each the median s per step.
Target: loaded / alone <= 2.5x.

Findings (2-core VM, torch 2.13 CPU wheel: "ATen parallel backend: OpenMP", libgomp, MKL on the same pool; measured
while 4 other processes shared the machine, load average 2-6, so figures are noisy; s per caption step / decode):
- 1 thread alone 0.18 / 0.075; beside a busy loop 0.55-0.60 / 0.32-0.38 (the others' load included).
- 2 threads, default wait policy, alone 0.13-1.6 / 0.10-4.0; beside a busy loop 5.1-16.8 / 5.2-9.5: 30-100x.
- 2 threads, OMP_WAIT_POLICY=PASSIVE (= GOMP_SPINCOUNT=0), alone 0.19-0.42 / 0.11-0.24; beside a busy loop
  0.52-0.68 / 0.11-0.12.
- GOMP_SPINCOUNT beside a busy loop: 1,000 -> 0.34 / 0.30; 10,000 -> 1.2 / 3.7; 100,000 -> 4.3 / 6.4; the
  default (300,000) -> 16.8 / 5.2. The longer idle threads spin, the worse.
Cause: libgomp's spin-waiting. A thread that finishes its share of a parallel region spins before sleeping; the
tiny model runs thousands of small regions per step, and when a core is shared the spinning thread takes the time
slice its partner needs to reach the barrier, so each region waits for the scheduler (milliseconds) instead of
microseconds. Sleeping idle threads (PASSIVE) remove almost all of it; taking only the free cores removes the
rest, so gflowvlm.threads sets OMP_WAIT_POLICY=PASSIVE and OMP_NUM_THREADS = free cores / ranks per node.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ENV_ID = "gflowvlm/NumberLine-v0"
IMAGE_SIZE = 64
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "GFLOWVLM_NUM_THREADS")


def worker(args) -> None:
    """One measurement in this fresh interpreter: thread settings first, then torch."""
    if args.configure:
        from gflowvlm.threads import configure_threads

        settings = configure_threads()
        chosen = {"threads": settings.threads, "reason": settings.reason}
    else:
        chosen = {"threads": None, "reason": "torch defaults (configure_threads not called)"}
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from gflowvlm.model.vision_alignment import (_pad_id, _to_model, caption_loss, caption_pairs, collate,
                                                 encode_example, generate_captions)

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(args.model)
    processor = AutoProcessor.from_pretrained(args.model)
    pairs = caption_pairs([ENV_ID], 64, IMAGE_SIZE, seed=0)
    examples = [encode_example(processor, image, caption) for image, caption in pairs]
    pad_id = _pad_id(processor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step(i: int) -> None:
        batch = collate([examples[(i * 32 + j) % len(examples)] for j in range(32)], pad_id, left=False)
        loss = caption_loss(model, _to_model(model, batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    images = [image for image, _ in pairs[:8]]

    def decode_step(i: int) -> None:
        generate_captions(model, processor, images, max_new_tokens=24)

    model.train()
    train = timed(train_step, args.steps, args.seconds)
    model.eval()
    decode = timed(decode_step, max(1, args.steps // 3), args.seconds)
    print(json.dumps({**chosen, "torch_threads": torch.get_num_threads(), "train_s": train, "decode_s": decode,
                      "env": {k: os.environ[k] for k in THREAD_VARS if k in os.environ}}))


def timed(step, steps: int, seconds: float) -> float:
    """Median seconds per step after one warm-up step (the median: other processes' bursts are not the question);
    stops early after `seconds` (at least one timed step)."""
    step(-1)
    started, times = time.perf_counter(), []
    while len(times) < steps and (not times or time.perf_counter() - started < seconds):
        begin = time.perf_counter()
        step(len(times))
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def measure(args, model: str, env: dict[str, str], busy: int, configure: bool = True) -> dict:
    """Run the worker with `env` (thread variables replaced), beside `busy` busy loops."""
    full = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    full.update(env)
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0.0)  # let the loops get going before the worker looks at the load
        load = open("/proc/loadavg").read().split()[:4] if os.path.exists("/proc/loadavg") else []
        command = [sys.executable, __file__, "--worker", "--model", model, "--steps", str(args.steps),
                   "--seconds", str(args.seconds)] + ([] if configure else ["--no-configure"])
        out = subprocess.run(command, env=full, capture_output=True, text=True, check=True)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load"] = " ".join(load)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=1, help="CPU-bound busy loops beside the loaded runs")
    parser.add_argument("--steps", type=int, default=10, help="caption steps timed per run (decode: a third)")
    parser.add_argument("--seconds", type=float, default=15.0, help="time cap per timed phase")
    parser.add_argument("--no-baseline", action="store_true", help="skip the torch-defaults rows")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-configure", dest="configure", action="store_false", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    user = {k: os.environ[k] for k in THREAD_VARS if k in os.environ}
    with tempfile.TemporaryDirectory() as scratch:
        build = ("from gflowvlm.model.tiny_vlm import build_tiny_vlm, save_tiny_vlm; "
                 f"save_tiny_vlm(*build_tiny_vlm('llava', {IMAGE_SIZE}, seed=0), {scratch!r})")
        subprocess.run([sys.executable, "-c", build], check=True, capture_output=True)
        rows = []
        alone = measure(args, scratch, user, 0)
        rows.append(("project settings, alone", alone))
        rows.append(("project settings, busy loop first", measure(args, scratch, user, args.busy)))
        late = {**user, **{k: v for k, v in alone["env"].items()}}  # what the idle start chose, kept
        rows.append(("project settings, busy loop started later", measure(args, scratch, late, args.busy)))
        if not args.no_baseline:
            rows.append(("torch defaults, alone", measure(args, scratch, {}, 0, configure=False)))
            rows.append(("torch defaults, busy loop", measure(args, scratch, {}, args.busy, configure=False)))

    print(f"CPUs {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}, "
          f"{args.busy} busy loop(s); thread variables given: {user or 'none'}")
    print(f"{'run':<44} {'threads':>7} {'train s/it':>11} {'decode s/it':>12}  load (1/5/15 min, running)  settings")
    for name, row in rows:
        settings = ", ".join(f"{k}={v}" for k, v in row["env"].items()) or "none"
        print(f"{name:<44} {row['torch_threads']:>7} {row['train_s']:>11.3f} {row['decode_s']:>12.3f}  "
              f"{row['load']:<27} {settings}  [{row['reason']}]")
    by_name = dict(rows)
    pairs = [("project, busy loop first", "project settings, busy loop first", "project settings, alone"),
             ("project, busy loop later", "project settings, busy loop started later", "project settings, alone"),
             ("torch defaults", "torch defaults, busy loop", "torch defaults, alone")]
    for label, loaded, base in pairs:
        if loaded in by_name:
            train = by_name[loaded]["train_s"] / by_name[base]["train_s"]
            decode = by_name[loaded]["decode_s"] / by_name[base]["decode_s"]
            print(f"slowdown loaded / alone, {label:<26} train {train:5.1f}x  decode {decode:5.1f}x  (target <= 2.5x)")


if __name__ == "__main__":
    main()
