"""CPU threads for torch: how many, and how idle threads wait. Applied before torch is imported.

Why: torch's CPU wheel runs its intra-op parallelism on GNU OpenMP (libgomp; `torch.__config__.parallel_info()`
says "ATen parallel backend: OpenMP", MKL on the same pool). With OMP_WAIT_POLICY unset, a libgomp thread that
runs out of work spin-waits (GOMP_SPINCOUNT, 300,000 spins) before it sleeps. The tiny VLM runs thousands of small
parallel regions per step; with one more CPU-bound process on a 2-core machine, a spinning thread burns the time
slice its partner needs to reach the barrier, and every region waits for the scheduler. Measured
(scripts/bench_contention.py has the figures): a caption-training step went from ~0.15 s to ~17 s, a decode slice
50x slower; with the passive policy (no spinning) the same runs slowed about as much as sharing the cores explains.
So: idle threads sleep (OMP_WAIT_POLICY=PASSIVE), and a process takes only the cores that are free when it
starts, split between the ranks of one node.

What the user set always wins: GFLOWVLM_NUM_THREADS (this project's knob), else OMP_NUM_THREADS /
MKL_NUM_THREADS (`accelerate launch` sets OMP_NUM_THREADS for each rank itself); OMP_WAIT_POLICY / GOMP_SPINCOUNT
likewise. Once torch is imported its pool exists and nothing here changes it (torch.set_num_threads still works).
torch itself takes MKL_NUM_THREADS over OMP_NUM_THREADS and caps either at the machine's cores.

    from gflowvlm.threads import configure_threads
    configure_threads()   # first thing in a script, before `import torch`
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

USER_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
OWN_VAR = "GFLOWVLM_NUM_THREADS"
SAMPLE_SECONDS = 0.2  # how long the CPUs are watched to see which are busy (/proc/stat ticks are 10 ms)


@dataclass(frozen=True)
class ThreadSettings:
    """The decision: `threads` torch will use (None: the user's own settings decide), the variables to set, why."""
    threads: int | None
    env: dict[str, str] = field(default_factory=dict)
    reason: str = ""


def decide(cpus: int, busy: float, env: Mapping[str, str], quota: int | None = None) -> ThreadSettings:
    """Thread settings from the CPUs this process may run on, how many of them other work keeps busy (0.0-`cpus`,
    sibling ranks included), a CPU quota in cores (None: none) and the environment (user settings,
    LOCAL_WORLD_SIZE). Pure: the caller measures and applies.

    Returns only variables the user has not set, except that GFLOWVLM_NUM_THREADS sets OMP/MKL_NUM_THREADS.
    """
    out: dict[str, str] = {}
    if not any(env.get(name) for name in WAIT_VARS):
        out["OMP_WAIT_POLICY"] = "PASSIVE"
    own = env.get(OWN_VAR, "").strip()
    note = ""
    if _own_threads(env):
        out.update({name: own for name in USER_THREAD_VARS})
        return ThreadSettings(int(own), out, f"{OWN_VAR}={own}")
    if own:
        note = f"ignored {OWN_VAR}={own!r} (not a positive integer); "
    set_by_user = [name for name in USER_THREAD_VARS if env.get(name)]
    if set_by_user:
        value = (env.get("MKL_NUM_THREADS") or env["OMP_NUM_THREADS"]).strip()  # torch reads MKL's first
        threads = int(value) if value.isdigit() else None
        return ThreadSettings(threads, out, note + ", ".join(f"{n}={env[n]}" for n in set_by_user) + " (user's)")
    ranks = _positive_int(env.get("LOCAL_WORLD_SIZE"), 1)
    # The node's other ranks are starting too and look busy; they are the ones the cores are split with.
    others = min(float(cpus), max(0.0, busy - (ranks - 1)))
    free = cpus - others
    limit = min(cpus, quota) if quota else cpus
    threads = max(1, min(limit, int(free + 0.5)) // ranks)
    out["OMP_NUM_THREADS"] = str(threads)
    quota_note = f", quota {quota}" if quota else ""
    return ThreadSettings(threads, out, note + f"{cpus} CPUs{quota_note}, {others:.1f} busy, {ranks} rank(s) per node")


def configure_threads(environ: MutableMapping[str, str] | None = None, measure_load: bool = True) -> ThreadSettings:
    """Decide and apply (into os.environ by default) before torch is imported; a no-op once it is.

    measure_load=False takes every core this process may use, whatever else runs now: the thread count changes a
    run's floating-point sums (measured: the same 30 caption steps with 1 and 2 threads end at different weights,
    each bitwise repeatable), so commands whose numbers must repeat run to run (`reproduce`, `demo`) cannot let
    the momentary load pick it. The passive wait policy still keeps a busy neighbour from stalling them.
    """
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules:
        return ThreadSettings(None, {}, "torch already imported: its thread pool is left as it is")
    cpus = available_cpus()
    needs_load = measure_load and not _own_threads(environ) and not any(environ.get(n) for n in USER_THREAD_VARS)
    busy = busy_cores(cpus) if needs_load else 0.0  # the sample costs SAMPLE_SECONDS: only when it decides
    settings = decide(len(cpus), busy, environ, cgroup_cpu_limit())
    environ.update(settings.env)
    return settings


def available_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity: taskset, cpusets), else every CPU."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> int | None:
    """Cores a CPU quota allows (`docker --cpus`, Kubernetes limits), rounded up; None when unlimited or unknown."""
    candidates = []
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                hierarchy, _, path = line.strip().split(":", 2)
                if hierarchy == "0":
                    candidates.append(os.path.join(root, path.lstrip("/"), "cpu.max"))
    except OSError:
        pass
    candidates.append(os.path.join(root, "cpu.max"))
    for path in candidates:
        try:
            with open(path) as f:
                quota, period = f.read().split()[:2]
        except (OSError, ValueError):
            continue
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    try:  # cgroup v1
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period = int(f.read())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 else max(1, math.ceil(quota / period))


def busy_cores(cpus: list[int], seconds: float = SAMPLE_SECONDS) -> float:
    """How many of `cpus` other work keeps busy, watched for `seconds` (this process sleeps meanwhile).

    Linux: from /proc/stat per-CPU ticks. Elsewhere: the 1-minute load average, a lagging stand-in.
    """
    first = _cpu_ticks()
    if first is None:
        try:
            return min(float(len(cpus)), os.getloadavg()[0])
        except (AttributeError, OSError):
            return 0.0
    time.sleep(seconds)
    second = _cpu_ticks() or {}
    busy = 0.0
    for cpu in cpus:
        if cpu in first and cpu in second:
            total = second[cpu][0] - first[cpu][0]
            idle = second[cpu][1] - first[cpu][1]
            busy += (total - idle) / total if total > 0 else 0.0
    return busy


def _cpu_ticks() -> dict[int, tuple[int, int]] | None:
    """cpu index -> (all ticks, idle + iowait ticks), or None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            lines = f.readlines()
    except OSError:
        return None
    ticks = {}
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            numbers = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            ticks[int(name[3:])] = (sum(numbers), numbers[3] + numbers[4])
    return ticks


def _own_threads(env: Mapping[str, str]) -> int | None:
    """GFLOWVLM_NUM_THREADS when it is a positive integer, else None."""
    value = env.get(OWN_VAR, "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


def _positive_int(value: str | None, default: int) -> int:
    return int(value) if value and value.strip().isdigit() and int(value) > 0 else default
