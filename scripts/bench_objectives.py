"""Time the vectorised subtrajectory_balance against a per-pair Python loop, in the same run.

    python scripts/bench_objectives.py --batch 64 --steps 35

Prints forward and forward+backward times (median over repeats) of both, the speed-up, and how closely the
two losses and gradients agree (they compute the same number).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from gflowvlm.objectives import subtrajectory_balance  # noqa: E402


def subtb_pair_loop(log_pf: torch.Tensor, log_flow: torch.Tensor, lengths: list[int], lam: float) -> torch.Tensor:
    """The formula as written: one Python iteration per sub-trajectory (i, j) of every trajectory."""
    losses = []
    for b, n in enumerate(lengths):
        numerator, denominator = log_pf.new_zeros(()), 0.0
        # Weights relative to the largest one (length n if lam > 1, else 1), which cancels in the ratio:
        # lam ** 64 for lam = 1e4 would overflow float32 in the numerator.
        largest = n if lam > 1 else 1
        for i in range(n + 1):
            for j in range(i + 1, n + 1):
                weight = lam ** (j - i - largest)
                residual = log_flow[b, i] + log_pf[b, i:j].sum() - log_flow[b, j]
                numerator = numerator + weight * residual * residual
                denominator += weight
        losses.append(numerator / denominator)
    return torch.stack(losses).mean()


def median_seconds(run: Callable[[], None], repeats: int) -> float:
    run()  # warm-up: first-call allocations are not what a training loop pays
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="trajectories B")
    parser.add_argument("--steps", type=int, default=35, help="longest trajectory T (ALFWorld: 35)")
    parser.add_argument("--lam", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=50, help="timed calls of the vectorised loss")
    parser.add_argument("--loop-repeats", type=int, default=3, help="timed calls of the Python-loop reference")
    # One thread by default: these tensors are tiny, and on a shared machine extra OpenMP threads mostly wait
    # for a core (medians of 0.5 ms became 300 ms on a loaded 2-core box), which would measure the box.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.batch < 1 or args.steps < 1 or args.repeats < 1 or args.loop_repeats < 1:
        parser.error("--batch, --steps, --repeats and --loop-repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(args.seed)
    # Ragged lengths like a real batch, with the longest trajectory always present.
    lengths = torch.randint(1, args.steps + 1, (args.batch,), generator=generator)
    lengths[0] = args.steps
    mask = torch.arange(args.steps)[None, :] < lengths[:, None]
    log_pf = (-torch.rand(args.batch, args.steps, generator=generator) * 5).requires_grad_(True)
    log_flow = (torch.randn(args.batch, args.steps + 1, generator=generator) * 3).requires_grad_(True)
    length_list = lengths.tolist()

    def vectorised() -> torch.Tensor:
        return subtrajectory_balance(log_pf, log_flow, mask, args.lam)

    def loop() -> torch.Tensor:
        return subtb_pair_loop(log_pf, log_flow, length_list, args.lam)

    def forward_only(loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                loss_fn()
        return run

    def forward_backward(loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            torch.autograd.grad(loss_fn(), (log_pf, log_flow))
        return run

    fast_loss, slow_loss = vectorised(), loop()
    fast_grads = torch.autograd.grad(fast_loss, (log_pf, log_flow))
    slow_grads = torch.autograd.grad(slow_loss, (log_pf, log_flow))
    loss_diff = abs(fast_loss.item() - slow_loss.item()) / abs(slow_loss.item())
    grad_diff = max(float((fast - slow).abs().max()) for fast, slow in zip(fast_grads, slow_grads))

    pairs = sum(n * (n + 1) // 2 for n in length_list)
    print(f"subtrajectory_balance  B={args.batch} T={args.steps} lam={args.lam} pairs={pairs} "
          f"threads={torch.get_num_threads()}")
    print(f"agreement: relative loss diff = {loss_diff:.2e}, max |grad diff| = {grad_diff:.2e}")
    print(f"{'pass':<18}{'vectorised (ms)':>17}{'python loop (ms)':>18}{'speed-up':>11}")
    for name, wrap in (("forward", forward_only), ("forward+backward", forward_backward)):
        fast = median_seconds(wrap(vectorised), args.repeats)
        slow = median_seconds(wrap(loop), args.loop_repeats)
        print(f"{name:<18}{fast * 1e3:>17.3f}{slow * 1e3:>18.1f}{slow / fast:>10.0f}x")


if __name__ == "__main__":
    main()
