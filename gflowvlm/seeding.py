"""Seeds derived from the run seed: one named stream per purpose, so no two purposes ever share a seed.

Randomness is derived from (run seed, coordinates such as rank, iteration, index), never carried in state, so a
resumed run draws exactly what an uninterrupted one would. Each purpose has its own `Stream`; its name is hashed
together with the coordinates, in a position no coordinate can take. The old scheme put bare tags 1-4 in the
place where the collector put the task-group index, so task group 1's reset seed was the exploration RNG's seed
and group 3's the replay sampler's.

    stream_seed(Stream.TASK_RESET, seed, rank, iteration, group)   # reset seed of a training task group
    stream_seed(Stream.EVAL_TASK, seed, index)                     # reset seed of an evaluation task

The hash is BLAKE2b over a text encoding of the stream name and the integers: stable across processes, Python
versions and platforms (unlike `hash()`, which is randomised per process). Seeds are 63-bit, so the ~10^5 seeds of a
large run collide with probability ~10^-9 (31-bit seeds would give a few collisions among that many); every
consumer here (random.Random, numpy, torch.manual_seed, gymnasium's reset) takes any non-negative int that size.

Changing this scheme changes every derived seed: training tasks and evaluation tasks after this module replaced
`derived_seed` differ from the ones before, so compare evaluation numbers only between runs of the same version.
"""
from __future__ import annotations

import enum
import hashlib

import numpy as np


class Stream(enum.Enum):
    """What a seed is for; the value is the name hashed into the seed (never rename one: seeds would change)."""
    TASK_RESET = "task-reset"  # collector: reset seed of a training task group (rank, iteration, group)
    EXPLORATION = "exploration"  # collector: epsilon / unparseable-fallback choices of a round (rank, iteration)
    GENERATION = "generation"  # collector: sampling of one batched generation call (rank, iteration, step)
    REPLAY = "replay"  # GFlowNet trainer: which replayed trajectories join a round (rank, iteration)
    PPO_MINIBATCH = "ppo-minibatch"  # PPO: minibatch order of one update (rank, iteration)
    SFT_ORDER = "sft-order"  # SFT: permutation of the data in one epoch (epoch); the same on every rank
    EVAL_TASK = "eval-task"  # evaluation: reset seed of evaluation task `index` (index)
    ANCHOR = "anchor"  # online methods: the SFT-anchor records of one optimizer step (rank, iteration, index)
    TASK_POOL = "task-pool"  # collector: which of collect.task_pool fixed tasks a group plays (rank, iteration, group)
    EXPERT_DRAW = "expert-draw"  # reference rows: a randomised oracle's own draws in play j of task `index` (index, j)
    SFT_CAPTIONS = "sft-captions"  # SFT data: which alignment caption pairs join the records (no coordinates)


SEED_BITS = 63
_DOMAIN = "gflowvlm-seed-v1"


def stream_seed(stream: Stream, seed: int, *coordinates: int) -> int:
    """A 63-bit seed for `stream`, from the run seed and the stream's coordinates (any ints, negatives included).

    The text encoded is "domain|stream|seed|c1,c2,...": ints are written in decimal and the separators cannot
    occur inside a field, so distinct (stream, seed, coordinates) give distinct hash inputs.
    """
    if not isinstance(stream, Stream):
        raise TypeError(f"stream must be a Stream, not {type(stream).__name__}")
    fields = ",".join(str(int(c)) for c in coordinates)
    text = f"{_DOMAIN}|{stream.value}|{int(seed)}|{fields}"
    digest = hashlib.blake2b(text.encode("ascii"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - SEED_BITS)


def derived_seed(*parts: int) -> int:
    """The former scheme: a 31-bit seed from integers, without a stream name. Kept only so code that imported it
    keeps working; use `stream_seed`, whose named streams cannot collide with each other."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)
