"""Two real ranks over gloo on CPU (ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2)."""
import json

import pytest

from helpers.launching import launch_two_ranks


@pytest.mark.parametrize("algorithm", ["subtb", "ppo"])
def test_two_ranks_stay_identical_and_gather_metrics(tiny_vlm_dir, tmp_path, algorithm):
    out = tmp_path / algorithm
    overrides = [f"algorithm={algorithm}", f"model.name_or_path={tiny_vlm_dir}", "steps=3",
                 "env.num_envs=2", "env.max_steps=3", "generation.max_new_tokens=16", "logging.progress=false",
                 "model.lora_r=4", "model.head_hidden=[32]", "optim.lr=1e-2", "prompt.max_history_steps=2",
                 "ppo.minibatch_size=2", "ppo.epochs=1", "env.reward=rl4vlm" if algorithm == "ppo" else "seed=0"]
    ranks = launch_two_ranks(["--multi_gpu", "--mixed_precision", "no"], overrides, out)
    assert [r["world"] for r in ranks] == [2, 2]  # really two processes, not two worlds of one
    assert ranks[0]["params"] == ranks[1]["params"]  # DDP kept every trainable parameter identical
    assert ranks[0]["task_seeds"] != ranks[1]["task_seeds"]  # each rank rolled its own tasks
    # env_steps in the metrics is the SUM over ranks: gathered from both
    assert ranks[0]["total_env_steps"] == ranks[0]["local_env_steps"] + ranks[1]["local_env_steps"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert ranks[0]["params"] != ranks[0]["initial_params"]  # and they did train
