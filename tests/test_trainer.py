"""The trainer on the tiny VLM: every objective learns, only trainable weights move, runs resume exactly,
broken checkpoints are refused, and SFT improves the untrained model."""
import json
from pathlib import Path

import pytest
import torch

from gflowvlm import checkpoint
from gflowvlm.algorithms.common import make_generate
from gflowvlm.collector import Collector
from gflowvlm.config import load_config
from gflowvlm.algorithms.gflownet import gflownet_loss
from gflowvlm.errors import UserError
from gflowvlm.sft_data import write_sft_data
from gflowvlm.trainer import Trainer

FAST = ["env.id=gflowvlm/NumberLine-v0", "env.image_size=64", "env.num_envs=4", "env.max_steps=3",
        "generation.max_new_tokens=20", "logging.progress=false", "logging.save_every=100", "optim.batch_size=64",
        "model.lora_r=4", "model.head_hidden=[32]", "prompt.max_history_steps=2"]


def make_config(tiny_vlm_dir, tmp_path, algorithm, *extra):
    overrides = FAST + [f"algorithm={algorithm}", f"model.name_or_path={tiny_vlm_dir}",
                        f"output_dir={tmp_path / algorithm}", *extra]
    if algorithm == "vartb":
        overrides.append("collect.trajectories_per_task=2")
    return load_config(None, overrides)


@pytest.mark.parametrize("overrides, heads", [
    (["algorithm=tb"], ("log_z",)), (["algorithm=vartb", "collect.trajectories_per_task=2"], ()),
    (["algorithm=subtb"], ()), (["algorithm=subtb", "objective.flow=head"], ("flow",)),
    (["algorithm=db", "objective.flow=forward_looking"], ("flow",)),
    (["algorithm=db", "objective.flow=done_pinned"], ()),
    (["algorithm=ppo"], ("value",)), (["algorithm=grpo", "collect.trajectories_per_task=2"], ()),
    (["algorithm=sft", "sft.data=x.jsonl"], ()),
])
def test_each_algorithm_declares_the_heads_it_trains(overrides, heads):
    """Asked by the Trainer before the policy is built: DDP needs every trainable parameter to get a gradient."""
    from gflowvlm.algorithms import algorithm_class

    config = load_config(None, overrides)
    assert algorithm_class(config.algorithm).required_heads(config) == heads


def snapshot(policy):
    return {name: p.detach().clone() for name, p in policy.named_parameters()}


@pytest.mark.parametrize("algorithm, extra", [
    ("tb", []), ("vartb", []), ("subtb", ["objective.flow=done", "objective.lam=0.9"]),
    ("subtb", ["objective.flow=head"]), ("subtb", ["objective.flow=forward_looking"]), ("db", []),
])
def test_each_objective_lowers_its_loss_and_moves_only_trainable_weights(tiny_vlm_dir, tmp_path, algorithm, extra):
    config = make_config(tiny_vlm_dir, tmp_path, algorithm, "optim.lr=3e-3", "optim.head_lr=3e-2", *extra)
    trainer = Trainer(config)
    collector = Collector(config)
    batch = collector.collect(make_generate(trainer.context), iteration=0)
    before = snapshot(trainer.policy)
    trainer.model.eval()
    losses = []
    for _ in range(4):  # a fixed batch: the loss must go down as the policy fits it
        loss, _ = gflownet_loss(trainer.model, trainer.policy, batch, config)
        trainer.accelerator.backward(loss)
        assert trainer.optimizer_step(bool(torch.isfinite(loss)))
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses
    after = dict(trainer.policy.named_parameters())
    changed = {name for name, value in before.items() if not torch.equal(value, after[name].detach())}
    trainable = {name for name, p in after.items() if p.requires_grad}
    assert changed and changed <= trainable
    assert any("lora" in name for name in changed)
    if algorithm == "tb" or extra[-1:] in (["objective.flow=head"], ["objective.flow=forward_looking"]):
        assert any(name.startswith("heads.") for name in changed)


def test_full_run_writes_metrics_checkpoints_and_final_adapter(tiny_vlm_dir, tmp_path):
    config = make_config(tiny_vlm_dir, tmp_path, "subtb", "steps=3", "logging.save_every=2",
                         "logging.sample_every=1", "collect.replay_size=4", "collect.replay_samples=2",
                         "collect.expert_injection=true")
    final = Trainer(config).train()
    out = Path(config.output_dir)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("loss", "env_steps", "success_rate", "log_z", "log_pf", "illegal_rate", "seconds_collect"):
        assert key in records[-1]
    assert records[-1]["env_steps"] > records[0]["env_steps"] > 0
    assert checkpoint.latest(out).name == checkpoint.checkpoint_name(3)
    assert (out / "samples" / "step_000001.txt").read_text().startswith("=== trajectory")
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    assert isinstance(PeftModel.from_pretrained(base, str(final)), PeftModel)


def test_resume_continues_exactly(tiny_vlm_dir, tmp_path):
    steps = ["steps=4", "collect.replay_size=4", "collect.replay_samples=2", "collect.expert_injection=true"]
    whole = Trainer(make_config(tiny_vlm_dir, tmp_path / "whole", "subtb", *steps))
    whole.train()
    first = Trainer(make_config(tiny_vlm_dir, tmp_path / "split", "subtb", *steps))
    first.train(until=2)
    del first
    second = Trainer(make_config(tiny_vlm_dir, tmp_path / "split", "subtb", *steps, "resume=true"))
    assert second.step == 0
    second.train()
    assert second.step == 4
    whole_params, resumed_params = dict(whole.policy.named_parameters()), dict(second.policy.named_parameters())
    for name, value in whole_params.items():
        assert torch.equal(value, resumed_params[name]), name
    metrics = (tmp_path / "split" / "subtb" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2, 3, 4]


def test_corrupt_or_partial_checkpoints_are_refused(tiny_vlm_dir, tmp_path):
    config = make_config(tiny_vlm_dir, tmp_path, "tb", "steps=1")
    trainer = Trainer(config)
    trainer.train()
    saved = checkpoint.latest(config.output_dir)
    weights = saved / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(checkpoint.CheckpointError, match="trainable.safetensors does not match its manifest"):
        trainer.resume(saved)
    (saved / checkpoint.MANIFEST).unlink()
    with pytest.raises(checkpoint.CheckpointError, match="incomplete"):
        trainer.resume(saved)


def test_sft_lowers_the_loss_and_beats_the_untrained_model(tiny_vlm_dir, tmp_path):
    from gflowvlm.evaluation import evaluate

    data = write_sft_data("gflowvlm/NumberLine-v0", tmp_path / "sft.jsonl", 300, image_size=64, progress=False,
                          done_fraction=0.2)
    overrides = ["model.adapter=full", f"sft.data={data}", "steps=120", "optim.lr=3e-3", "optim.batch_size=16",
                 "optim.warmup_steps=10", "generation.max_new_tokens=60", "env.max_steps=10"]
    config = make_config(tiny_vlm_dir, tmp_path, "sft", *overrides)
    trainer = Trainer(config)
    untrained = evaluate(make_generate(trainer.context, greedy=True), config, "id", episodes=8, seed=1,
                         progress=False, unparseable="illegal")
    trainer.train()
    losses = [json.loads(line)["loss"] for line in Path(config.output_dir, "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    trained = evaluate(make_generate(trainer.context, greedy=True), config, "id", episodes=8, seed=1,
                       progress=False, unparseable="illegal")
    assert trained["parse_rate"] > untrained["parse_rate"]
    assert trained["success_rate"] > untrained["success_rate"]


def test_sft_refuses_replies_longer_than_the_generation_limit(tiny_vlm_dir, tmp_path, capsys):
    """An expert reply longer than generation.max_new_tokens is learnt and never written back: every reply the
    trained policy tries is cut before its action (Points24's ran to 93 tokens against 72, ALFWorld's to 119 against
    48, and both grids trained on them). SFT stops before its first step, as one line naming the limit that fits."""
    from transformers import AutoTokenizer

    from gflowvlm import cli

    data = write_sft_data("gflowvlm/NumberLine-v0", tmp_path / "sft.jsonl", 40, image_size=64, progress=False,
                          done_fraction=0.25)
    tokenizer = AutoTokenizer.from_pretrained(tiny_vlm_dir)
    lengths = [len(tokenizer(json.loads(line)["response"], add_special_tokens=False)["input_ids"])
               for line in Path(data).read_text().splitlines()]
    longest, over = max(lengths), sum(length > max(lengths) - 1 for length in lengths)
    assert min(lengths) < longest  # the [DONE] records are short: the count below is not every record's

    short = ["model.adapter=full", f"sft.data={data}", "steps=1", f"generation.max_new_tokens={longest - 1}"]
    with pytest.raises(UserError, match=rf"{over} of 40 SFT responses .* = {longest - 1} tokens .* at least "
                                        rf"{longest}$"):
        Trainer(make_config(tiny_vlm_dir, tmp_path, "sft", *short))
    assert not (tmp_path / "sft" / "metrics.jsonl").exists()  # nothing trained, nothing written

    (tmp_path / "run.yaml").write_text("algorithm: sft\n")
    argv = ["train", "--config", str(tmp_path / "run.yaml"), *FAST, *short, f"model.name_or_path={tiny_vlm_dir}",
            f"output_dir={tmp_path / 'cli'}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err  # (transformers' weight-loading bar may precede the error on stderr)
    assert [line for line in err.splitlines() if "error" in line] == [
        f"gflowvlm train: error: {data}: {over} of 40 SFT responses are longer than generation.max_new_tokens = "
        f"{longest - 1} tokens (the longest has {longest}); a policy cannot write them back, so raise "
        f"generation.max_new_tokens to at least {longest}"]
    assert not (tmp_path / "cli" / "metrics.jsonl").exists()

    fits = ["model.adapter=full", f"sft.data={data}", "steps=1", f"generation.max_new_tokens={longest}"]
    config = make_config(tiny_vlm_dir, tmp_path / "fits", "sft", *fits)
    Trainer(config).train()  # a reply of exactly the limit can be written back
    assert len(Path(config.output_dir, "metrics.jsonl").read_text().splitlines()) == 1


def test_non_finite_losses_skip_the_step_and_stop_the_run(tiny_vlm_dir, tmp_path):
    from gflowvlm.trainer import NonFiniteLossError

    config = make_config(tiny_vlm_dir, tmp_path, "tb", "objective.max_nonfinite_steps=3")
    trainer = Trainer(config)
    before = snapshot(trainer.policy)
    for parameter in trainer.policy.parameters():
        if parameter.requires_grad:
            parameter.grad = torch.ones_like(parameter)  # a step would move every weight
    assert trainer.optimizer_step(False) is False and trainer.optimizer_step(False) is False
    assert all(torch.equal(before[n], p) for n, p in trainer.policy.named_parameters())  # nothing moved
    assert all(p.grad is None for p in trainer.policy.parameters())  # the bad gradients were dropped
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row"):
        trainer.optimizer_step(False)


def test_gradient_accumulation_and_tensorboard_tracking(tiny_vlm_dir, tmp_path):
    config = make_config(tiny_vlm_dir, tmp_path, "subtb", "steps=2", "optim.grad_accum=2",
                         "logging.trackers=[tensorboard]")
    Trainer(config).train()
    records = [json.loads(line) for line in Path(config.output_dir, "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["env_steps"] >= 2 * 2 * 4  # two collection rounds of 4 episodes per optimizer step
    assert list(Path(config.output_dir).rglob("events.out.tfevents.*"))  # written through accelerate's tracker


@pytest.mark.parametrize("flow", ["done", "done_pinned"])
def test_both_done_flow_forms_train(tiny_vlm_dir, tmp_path, flow):
    """The paper's form scores each trajectory's final state as an extra row; the pinned form does not."""
    config = make_config(tiny_vlm_dir, tmp_path, "subtb", f"objective.flow={flow}", "optim.lr=3e-3")
    trainer = Trainer(config)
    batch = Collector(config).collect(make_generate(trainer.context), iteration=0)
    loss, _ = gflownet_loss(trainer.model, trainer.policy, batch, config)
    assert torch.isfinite(loss)
    trainer.accelerator.backward(loss)
    assert trainer.optimizer_step(True)


def test_a_parse_collapse_stops_the_run_with_one_line_and_a_checkpoint(tiny_vlm_dir, tmp_path):
    from gflowvlm.trainer import ParseCollapseError

    # The untrained tiny VLM never writes a parseable action, so its parse rate is 0 from the first iteration.
    config = make_config(tiny_vlm_dir, tmp_path, "subtb", "collect.stop_below_parse_rate=0.5", "steps=50",
                         "env.num_envs=2", "generation.max_new_tokens=6")
    with pytest.raises(ParseCollapseError, match="stop_below_parse_rate=0.5") as error:
        Trainer(config).train()
    assert "\n" not in str(error.value)
    assert checkpoint.latest(config.output_dir) is not None  # the run can be inspected and resumed
    records = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 5 and all(record["parse_rate"] < 0.5 for record in records)
