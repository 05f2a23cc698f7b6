"""Two real ranks over gloo on CPU (ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2)."""
import json

import pytest

from helpers.launching import launch_two_ranks


@pytest.mark.parametrize("algorithm, anchored, prior", [
    ("subtb", False, False), ("ppo", False, False), ("grpo", False, False), ("subtb", True, False),
    ("subtb", False, True),  # the prior's reference forward (swapped weights, no gradient) runs through DDP too
])
def test_two_ranks_stay_identical_and_gather_metrics(tiny_vlm_dir, tmp_path, algorithm, anchored, prior):
    out = tmp_path / algorithm
    anchor = ["objective.prior_weight=1"] if prior else []
    if anchored:  # the SFT anchor's backward runs under no_sync before the synced one: the ranks must still agree
        from gflowvlm.sft_data import write_sft_data

        data = write_sft_data("gflowvlm/NumberLine-v0", tmp_path / "sft.jsonl", 12, image_size=64, progress=False)
        anchor = ["anchor.coef=0.5", f"anchor.data={data}", "anchor.batch_size=2"]
    overrides = [*anchor, f"algorithm={algorithm}", f"model.name_or_path={tiny_vlm_dir}", "steps=3",
                 "env.num_envs=2", "env.max_steps=3", "generation.max_new_tokens=16", "logging.progress=false",
                 "model.lora_r=4", "model.head_hidden=[32]", "optim.lr=1e-2", "prompt.max_history_steps=2",
                 "ppo.minibatch_size=2", "ppo.epochs=1", "grpo.minibatch_size=2", "grpo.epochs=1",
                 "env.reward=rl4vlm" if algorithm in ("ppo", "grpo") else "seed=0"]
    if algorithm == "grpo":  # one task per rank and round, played twice
        overrides.append("collect.trajectories_per_task=2")
    ranks = launch_two_ranks(["--multi_gpu", "--mixed_precision", "no"], overrides, out)
    assert [r["world"] for r in ranks] == [2, 2]  # really two processes, not two worlds of one
    assert ranks[0]["params"] == ranks[1]["params"]  # DDP kept every trainable parameter identical
    assert ranks[0]["task_seeds"] != ranks[1]["task_seeds"]  # each rank rolled its own tasks
    # env_steps in the metrics is the SUM over ranks: gathered from both
    assert ranks[0]["total_env_steps"] == ranks[0]["local_env_steps"] + ranks[1]["local_env_steps"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(("anchor_loss" in r) == anchored for r in records)
    assert all(("log_ratio_to_start" in r) == prior for r in records)
    assert ranks[0]["params"] != ranks[0]["initial_params"]  # and they did train
