"""Batched ALFWorld play: in-process and in worker processes, same results, whole episodes."""
from __future__ import annotations

import numpy as np
import pytest

from envs.alfworld.batch import ALFWorldBatch
from envs.alfworld.generator import GenerationRequest, generate

pytestmark = pytest.mark.alfworld


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("alfworld_batch"))
    generate(out, GenerationRequest("train", seed=1, size="small"), 6)
    return out


def _play_to_the_end(batch: ALFWorldBatch) -> tuple[list, list]:
    obs, infos = batch.reset(seed=10)
    trace = [[o["text"] for o in obs]]
    done = [False] * batch.num_envs
    while not all(done):
        actions = [None if d else a for d, a in zip(done, batch.expert_actions())]
        before = obs
        obs, rewards, terminated, truncated, infos = batch.step(actions)
        for i, action in enumerate(actions):
            if action is None:   # a finished env is left alone
                assert rewards[i] == 0.0 and obs[i]["text"] == before[i]["text"]
        done = [d or te or tr for d, te, tr in zip(done, terminated, truncated)]
        trace.append([o["text"] for o in obs])
    return trace, infos


def test_workers_and_in_process_batches_agree_and_win(data_dir):
    with ALFWorldBatch(3, workers=0, data_dir=data_dir, split="train", image_size=64) as local:
        local_trace, local_infos = _play_to_the_end(local)
    with ALFWorldBatch(3, workers=2, data_dir=data_dir, split="train", image_size=64) as remote:
        remote_trace, remote_infos = _play_to_the_end(remote)
        assert len(remote.expert_thoughts()) == 3
    assert local_trace == remote_trace
    assert all(info["success"] for info in local_infos + remote_infos)
    assert [i["game_file"] for i in local_infos] == [i["game_file"] for i in remote_infos]


def test_step_returns_arrays_and_rejects_bad_input(data_dir):
    batch = ALFWorldBatch(2, data_dir=data_dir, split="train", reward="rl4vlm", image_size=64)
    obs, infos = batch.reset(seed=0)
    obs, rewards, terminated, truncated, infos = batch.step(["look", "not a command"])
    assert rewards.dtype == np.float64 and terminated.dtype == bool and truncated.dtype == bool
    assert [i["illegal"] for i in infos] == [False, True]
    assert rewards[1] == pytest.approx(infos[1]["goal_progress"] - 1.0)
    with pytest.raises(ValueError, match="expected 2 entries"):
        batch.step(["look"])
    batch.close()
    with pytest.raises(RuntimeError, match="closed"):
        batch.step(["look", "look"])
    with pytest.raises(ValueError, match="num_envs"):
        ALFWorldBatch(0)


def test_worker_start_failure_is_reported(tmp_path):
    with pytest.raises(RuntimeError, match="does not exist"):
        ALFWorldBatch(2, workers=1, data_dir=str(tmp_path / "missing"), split="train")
