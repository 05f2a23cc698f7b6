"""Trust model: nothing read from disk turns on remote code, and a checkpoint holds safetensors + JSON only.

The hostile checkpoint is a real run's final/ whose metadata (gflowvlm_policy.json and the run's config.yaml) asks
for trust_remote_code and whose processor config names a module that sits in the folder (`auto_map`), under a
manifest that matches (anyone who shares a checkpoint can write one). Importing the module writes a marker file:
the control test shows transformers does import it under trust_remote_code=True; the others show gflowvlm never
does unless the person asks on that very call.
"""
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from gflowvlm import checkpoint, cli
from gflowvlm.config import ModelConfig, load_config
from gflowvlm.evaluation import base_run_config, resolve_checkpoint

ENV = "gflowvlm/NumberLine-v0"
FAST = [f"env.id={ENV}", "env.image_size=64", "env.num_envs=2", "env.max_steps=2", "generation.max_new_tokens=12",
        "logging.progress=false", "optim.batch_size=64", "model.lora_r=4", "model.head_hidden=[16]",
        "prompt.max_history_steps=1", "algorithm=tb"]
MODULE = "planted_processor"


def run_config(tiny_vlm_dir, output_dir, *extra):
    return load_config(None, FAST + [f"model.name_or_path={tiny_vlm_dir}", f"output_dir={output_dir}", *extra])


def plant_remote_code(directory: Path, marker: Path) -> None:
    """Make `directory` ask for its own code: an AutoProcessor `auto_map` naming a module in it that writes
    `marker` when imported; its policy metadata (if any) says trust_remote_code; its manifest (if any) is redone."""
    (directory / f"{MODULE}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('remote code ran')\n\n\n"
        "class PlantedProcessor:\n    @classmethod\n    def from_pretrained(cls, *args, **kwargs):\n"
        "        return cls()\n")
    processor_config = directory / "processor_config.json"
    data = json.loads(processor_config.read_text())
    data["auto_map"] = {"AutoProcessor": f"{MODULE}.PlantedProcessor"}
    processor_config.write_text(json.dumps(data))
    meta = directory / "gflowvlm_policy.json"
    if meta.is_file():
        data = json.loads(meta.read_text())
        data["model"]["trust_remote_code"] = True
        meta.write_text(json.dumps(data))
    if (directory / checkpoint.MANIFEST).is_file():
        checkpoint.write_manifest(directory)


def ask_for_trust_in_config(run_dir: Path) -> None:
    data = yaml.safe_load((run_dir / "config.yaml").read_text())
    data["model"]["trust_remote_code"] = True
    (run_dir / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def trained_run(tiny_vlm_dir, tmp_path_factory):
    """A finished one-step run (config.yaml, checkpoint-00000001/, final/); copy it before changing it."""
    from gflowvlm.trainer import Trainer

    run_dir = tmp_path_factory.mktemp("trust") / "run"
    Trainer(run_config(tiny_vlm_dir, run_dir, "steps=1")).train()
    return run_dir


@pytest.fixture
def hostile_run(trained_run, tmp_path):
    """A copy of the run whose final/, checkpoint policy/ and config.yaml all ask for remote code."""
    run_dir = tmp_path / "shared-run"
    shutil.copytree(trained_run, run_dir)
    marker = tmp_path / "MARKER"
    plant_remote_code(run_dir / "final", marker)
    policy_dir = run_dir / checkpoint.checkpoint_name(1) / "policy"
    plant_remote_code(policy_dir, marker)
    checkpoint.write_manifest(policy_dir.parent)
    ask_for_trust_in_config(run_dir)
    return run_dir, marker


def eval_command(checkpoint_dir, *extra):
    return ["eval", "--checkpoint", str(checkpoint_dir), "--env", ENV, "--split", "id", "--episodes", "1",
            "--max-steps", "1", "--transcripts", "0", "--quiet", *extra]


def test_control_transformers_runs_the_planted_module_only_under_trust_remote_code(tiny_vlm_dir, tmp_path,
                                                                                monkeypatch):
    import transformers.dynamic_module_utils as dynamic

    from gflowvlm.model.loading import load_processor

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # keep ~/.cache clean
    monkeypatch.setattr(sys, "path", list(sys.path))
    base = tmp_path / "base"
    shutil.copytree(tiny_vlm_dir, base)
    marker = tmp_path / "MARKER"
    plant_remote_code(base, marker)
    assert type(load_processor(str(base), trust_remote_code=False)).__name__ == "LlavaProcessor"
    assert not marker.exists()
    with pytest.raises(Exception):  # the planted class is no processor; its module has run by then
        load_processor(str(base), trust_remote_code=True)
    assert marker.read_text() == "remote code ran"


def test_eval_refuses_a_checkpoint_that_carries_code_and_never_runs_it(hostile_run, capsys):
    run_dir, marker = hostile_run
    capsys.readouterr()
    for target in (run_dir, run_dir / checkpoint.checkpoint_name(1)):
        assert cli.main(eval_command(target)) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and f"{MODULE}.py" in error and "Python code" in error, error
    # The same code left out of the manifest is refused too (a file the manifest does not list).
    (run_dir / "final" / f"{MODULE}.py").unlink()
    checkpoint.write_manifest(run_dir / "final")
    (run_dir / "final" / f"{MODULE}.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    assert cli.main(eval_command(run_dir)) == 2
    assert f"{MODULE}.py is not in its manifest" in capsys.readouterr().err
    assert not marker.exists()


def test_eval_loads_a_checkpoint_asking_for_trust_without_remote_code(trained_run, tmp_path, capsys):
    """Metadata alone (no code in the folder, e.g. an auto_map naming a hub repo) changes nothing either."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    ask_for_trust_in_config(run_dir)
    final = run_dir / "final"
    data = json.loads((final / "gflowvlm_policy.json").read_text())
    data["model"]["trust_remote_code"] = True
    (final / "gflowvlm_policy.json").write_text(json.dumps(data))
    processor_config = json.loads((final / "processor_config.json").read_text())
    processor_config["auto_map"] = {"AutoProcessor": "someone/remote-repo--module.Processor"}
    (final / "processor_config.json").write_text(json.dumps(processor_config))
    checkpoint.write_manifest(final)
    assert cli.main(eval_command(run_dir, "--out", str(tmp_path / "eval.json"))) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["episodes"] == 1


def test_run_config_and_policy_metadata_cannot_turn_on_remote_code(trained_run, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    ask_for_trust_in_config(run_dir)
    resolved = resolve_checkpoint(run_dir)
    assert base_run_config(resolved, ENV).model.trust_remote_code is False
    assert base_run_config(resolved, ENV, trust_remote_code=True).model.trust_remote_code is True

    import gflowvlm.policy as policy_module

    seen = []

    class Stop(Exception):
        pass

    def spy(config, *args, **kwargs):
        seen.append(config.trust_remote_code)
        raise Stop

    monkeypatch.setattr(policy_module, "load_model_and_processor", spy)
    final = run_dir / "final"
    data = json.loads((final / "gflowvlm_policy.json").read_text())
    data["model"]["trust_remote_code"] = True
    (final / "gflowvlm_policy.json").write_text(json.dumps(data))
    checkpoint.write_manifest(final)
    trusting = ModelConfig(name_or_path=data["model"]["name_or_path"], trust_remote_code=True)
    for kwargs, expected in (({}, False), ({"config": trusting}, False), ({"trust_remote_code": True}, True)):
        with pytest.raises(Stop):
            policy_module.VLMPolicy.from_pretrained(str(final), **kwargs)
        assert seen.pop() is expected, kwargs


def test_eval_passes_trust_remote_code_only_from_its_own_flag(trained_run, monkeypatch):
    from gflowvlm import evaluation
    from gflowvlm.commands import evaluate as evaluate_command

    seen = []

    class Stop(Exception):
        pass

    def fake_load_policy(resolved, model_config, trust_remote_code=False):
        seen.append(trust_remote_code)
        raise Stop

    monkeypatch.setattr(evaluation, "load_policy", fake_load_policy)
    for flag, expected in (([], False), (["--trust-remote-code"], True)):
        with pytest.raises(Stop):
            evaluate_command.main(eval_command(trained_run, *flag)[1:])
        assert seen.pop() is expected


def test_init_from_a_directory_that_carries_code_is_refused(hostile_run, tiny_vlm_dir, tmp_path):
    from gflowvlm.policy import VLMPolicy

    run_dir, marker = hostile_run
    config = run_config(tiny_vlm_dir, tmp_path / "next", f"model.init_from={run_dir / 'final'}")
    with pytest.raises(checkpoint.CheckpointError, match=f"{MODULE}.py, Python code"):
        VLMPolicy.from_config(config.model, heads=("log_z",))
    assert not marker.exists()


def test_resume_uses_this_calls_trust_remote_code_not_the_old_config(tiny_vlm_dir, tmp_path):
    from gflowvlm.trainer import Trainer

    base = tmp_path / "base"
    shutil.copytree(tiny_vlm_dir, base)
    marker = tmp_path / "MARKER"
    plant_remote_code(base, marker)
    run_dir = tmp_path / "run"
    first = Trainer(run_config(base, run_dir, "steps=2", "logging.save_every=1"))
    first.train(until=1)
    ask_for_trust_in_config(run_dir)  # the old run's config.yaml says trust_remote_code: true
    resumed = Trainer(run_config(base, run_dir, "steps=2", "logging.save_every=1", "resume=true"))
    resumed.train()
    assert resumed.step == 2 and resumed.config.model.trust_remote_code is False
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["trust_remote_code"] is False
    assert not marker.exists()


def test_a_checkpoint_holding_a_pickle_is_refused(trained_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    final = run_dir / "final"
    (final / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle; peft would torch.load it
    checkpoint.write_manifest(final)
    capsys.readouterr()
    assert cli.main(eval_command(run_dir)) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "adapter_model.bin, a pickle" in error
