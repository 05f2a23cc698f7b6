"""The SFT anchor of the online methods: validated, off by default at no cost, its gradient is exactly coef times
the SFT loss's on seeded records without [DONE] ones, and PPO and the GFlowNet objectives train with it."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gflowvlm.algorithms.common import SFTAnchor, response_nll
from gflowvlm.config import ConfigError, load_config
from gflowvlm.seeding import Stream, stream_seed
from gflowvlm.sft_data import read_sft_data, write_sft_data
from gflowvlm.trainer import Trainer

FAST = ["env.id=gflowvlm/NumberLine-v0", "env.image_size=64", "env.num_envs=4", "env.max_steps=3",
        "generation.max_new_tokens=20", "logging.progress=false", "logging.save_every=100", "optim.batch_size=64",
        "model.lora_r=4", "model.head_hidden=[32]", "prompt.max_history_steps=2"]


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("anchor") / "sft.jsonl"
    return write_sft_data("gflowvlm/NumberLine-v0", out, 40, image_size=64, progress=False, done_fraction=0.25)


def config_for(tiny_vlm_dir, tmp_path, algorithm, *extra):
    return load_config(None, FAST + [f"algorithm={algorithm}", f"model.name_or_path={tiny_vlm_dir}",
                                     f"output_dir={tmp_path / algorithm}", *extra])


@pytest.mark.parametrize("overrides, message", [
    (["anchor.coef=-1"], "anchor.coef must be >= 0"),
    (["anchor.coef=0.5", "anchor.data=x.jsonl", "anchor.batch_size=0"], "anchor.batch_size must be positive"),
    (["algorithm=sft", "sft.data=x.jsonl", "anchor.coef=0.5", "anchor.data=x.jsonl"], "for the online methods"),
])
def test_bad_anchor_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(None, ["algorithm=ppo", *overrides])
    assert "\n" not in str(error.value)


def test_off_by_default_reads_nothing_and_adds_no_gradient(tiny_vlm_dir, tmp_path):
    trainer = Trainer(config_for(tiny_vlm_dir, tmp_path, "subtb", "anchor.data=/no/such/file.jsonl"))
    anchor = SFTAnchor(trainer.context)
    assert anchor.records == [] and anchor.backward(0) == {}
    assert all(p.grad is None for p in trainer.model.parameters())


def test_gradient_is_coef_times_the_sft_loss_on_seeded_records_without_done(tiny_vlm_dir, tmp_path, sft_data):
    config = config_for(tiny_vlm_dir, tmp_path, "subtb", "anchor.coef=0.3", f"anchor.data={sft_data}",
                        "anchor.batch_size=6", "seed=4")
    trainer = Trainer(config)
    trainer.model.eval()  # as the online updates run it: no dropout, so the two passes below are the same function
    anchor = SFTAnchor(trainer.context)
    records = read_sft_data(sft_data)
    assert len(anchor.records) == sum(not r.get("done") for r in records) < len(records)  # [DONE] left out
    metrics = anchor.backward(iteration=7, index=2)
    got = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.optimizer.zero_grad(set_to_none=True)

    # by hand: the same draw from the named stream, the SFT loss, times coef
    rng = np.random.default_rng(stream_seed(Stream.ANCHOR, 4, 0, 7, 2))
    picks = rng.choice(len(anchor.records), size=6, replace=False)
    loss, tokens, _ = response_nll(trainer.context, [anchor.records[int(i)] for i in picks])
    (0.3 * loss).backward()
    want = {name: p.grad for name, p in trainer.model.named_parameters() if p.grad is not None}
    assert metrics["anchor_loss"] == pytest.approx(float(loss.detach()), rel=1e-6) and int(tokens) > 0
    assert got.keys() == want.keys() and got  # the adapters get a gradient, nothing else is touched
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)
    # another step draws other records
    other = np.random.default_rng(stream_seed(Stream.ANCHOR, 4, 0, 7, 3)).choice(len(anchor.records), 6, False)
    assert sorted(other) != sorted(picks)


@pytest.mark.parametrize("algorithm, extra", [
    ("subtb", ["objective.flow=done"]), ("tb", []), ("ppo", ["ppo.minibatch_size=4", "ppo.epochs=1"]),
    ("grpo", ["collect.trajectories_per_task=2", "grpo.minibatch_size=4", "grpo.epochs=1"]),
])
def test_online_methods_train_with_the_anchor_and_log_it(tiny_vlm_dir, tmp_path, sft_data, algorithm, extra):
    config = config_for(tiny_vlm_dir, tmp_path, algorithm, "steps=2", "anchor.coef=1.0", f"anchor.data={sft_data}",
                        "anchor.batch_size=4", *extra)
    Trainer(config).train()
    records = [json.loads(line) for line in Path(config.output_dir, "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(np.isfinite(r["anchor_loss"]) and r["anchor_loss"] > 0 for r in records)


@pytest.mark.parametrize("data, message", [("", "anchor.coef > 0 needs anchor.data"),
                                           ("nope.jsonl", "anchor.data: file not found")])
def test_a_missing_anchor_file_is_refused_before_the_model_loads(tiny_vlm_dir, tmp_path, data, message):
    from gflowvlm.config import check_run_paths

    data = str(tmp_path / data) if data else ""
    config = config_for(tiny_vlm_dir, tmp_path, "ppo", "anchor.coef=0.2", f"anchor.data={data}")
    with pytest.raises(ConfigError, match=message) as error:
        check_run_paths(config)
    assert "\n" not in str(error.value)
