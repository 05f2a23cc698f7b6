"""Checkpoint files: pickle-free state round trips, atomic directories, corruption detection, pruning."""
import json
import random

import numpy as np
import pytest
import torch

from gflowvlm import checkpoint
from gflowvlm.safe_state import load_state, save_state


def test_optimizer_and_rng_state_round_trip(tmp_path):
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    save_state(optimizer.state_dict(), tmp_path, "optimizer")
    restored = load_state(tmp_path, "optimizer")
    fresh = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=1e-3)
    fresh.load_state_dict(restored)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(fresh.state_dict()["state"][0][key], optimizer.state_dict()["state"][0][key])
    assert fresh.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_state(checkpoint.rng_state(), tmp_path, "rng")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoint.set_rng_state(load_state(tmp_path, "rng"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_no_pickle_on_disk(tmp_path):
    save_state({"a": (1, 2.5, float("inf")), "b": [torch.ones(2)], "c": None}, tmp_path, "s")
    assert json.loads((tmp_path / "s.json").read_text())  # plain JSON skeleton
    state = load_state(tmp_path, "s")
    assert state["a"] == (1, 2.5, float("inf")) and state["c"] is None and torch.equal(state["b"][0], torch.ones(2))
    with pytest.raises(TypeError):
        save_state({"x": object()}, tmp_path, "bad")


def make_checkpoint(root, step):
    temporary = checkpoint.temporary_dir(root, step)
    temporary.mkdir(parents=True)
    (temporary / "weights.bin").write_bytes(b"x" * 100)
    return checkpoint.finalize(temporary, root / checkpoint.checkpoint_name(step))


def test_atomic_write_verify_and_corruption(tmp_path):
    path = make_checkpoint(tmp_path, 5)
    assert checkpoint.verify(path) == path
    assert not checkpoint.temporary_dir(tmp_path, 5).exists()
    (path / "weights.bin").write_bytes(b"x" * 99)
    with pytest.raises(checkpoint.CheckpointError, match="does not match its manifest"):
        checkpoint.verify(path)
    (path / "weights.bin").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="weights.bin is missing"):
        checkpoint.verify(path)
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint not found"):
        checkpoint.verify(tmp_path / "nope")


def test_latest_skips_partial_and_prune_keeps_newest(tmp_path):
    for step in (1, 2, 3):
        make_checkpoint(tmp_path, step)
    partial = tmp_path / checkpoint.checkpoint_name(4)
    partial.mkdir()  # a directory without manifest: a crash mid-write under the final name
    with pytest.raises(checkpoint.CheckpointError, match="incomplete"):
        checkpoint.verify(partial)
    assert checkpoint.latest(tmp_path).name == checkpoint.checkpoint_name(3)
    checkpoint.temporary_dir(tmp_path, 9).mkdir()
    checkpoint.prune(tmp_path, keep_last=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [checkpoint.checkpoint_name(3), checkpoint.checkpoint_name(4)]
