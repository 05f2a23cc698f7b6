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
    (temporary / "weights.safetensors").write_bytes(b"x" * 100)
    return checkpoint.finalize(temporary, root / checkpoint.checkpoint_name(step))


def test_atomic_write_verify_and_corruption(tmp_path):
    path = make_checkpoint(tmp_path, 5)
    assert checkpoint.verify(path) == path
    assert not checkpoint.temporary_dir(tmp_path, 5).exists()
    (path / "weights.safetensors").write_bytes(b"x" * 99)
    with pytest.raises(checkpoint.CheckpointError, match="does not match its manifest"):
        checkpoint.verify(path)
    (path / "weights.safetensors").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="weights.safetensors is missing"):
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


# ----- the manifest: complete, exact, safetensors + JSON only -------------------------------------------------
def test_the_manifest_must_list_exactly_the_files_present(tmp_path):
    path = make_checkpoint(tmp_path, 1)
    (path / "extra.json").write_text("{}")
    with pytest.raises(checkpoint.CheckpointError, match="extra.json is not in its manifest"):
        checkpoint.verify(path)
    (path / "extra.json").unlink()
    (path / checkpoint.MANIFEST).write_text(json.dumps({"files": {}}))  # an emptied manifest proves nothing
    with pytest.raises(checkpoint.CheckpointError, match="weights.safetensors is not in its manifest"):
        checkpoint.verify(path)
    checkpoint.write_manifest(path)
    with pytest.raises(checkpoint.CheckpointError, match="does not list trainer_state.json"):
        checkpoint.verify(path, required=["trainer_state.json"])
    # What `gflowvlm eval` writes beside a checkpoint is not part of it.
    (path / "eval_NumberLine-v0_id.json").write_text("{}")
    (path / "eval_NumberLine-v0_id_transcript").mkdir()
    (path / "eval_NumberLine-v0_id_transcript" / "transcript.txt").write_text("...")
    assert checkpoint.verify(path) == path


@pytest.mark.parametrize("files, problem", [
    ("[]", "unreadable"), ('{"../outside.json": {"bytes": 1, "sha256": "' + "0" * 64 + '"}}', "bad file name"),
    ('{"weights.safetensors": {"bytes": "100", "sha256": "x"}}', "bad entry"),
])
def test_a_malformed_manifest_is_one_line(tmp_path, files, problem):
    path = make_checkpoint(tmp_path, 1)
    (path / checkpoint.MANIFEST).write_text('{"files": ' + files + "}")
    with pytest.raises(checkpoint.CheckpointError, match=problem):
        checkpoint.verify(path)


def test_pickles_code_and_links_are_refused(tmp_path):
    path = make_checkpoint(tmp_path, 1)
    (path / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    checkpoint.write_manifest(path)
    with pytest.raises(checkpoint.CheckpointError, match="pytorch_model.bin, a pickle"):
        checkpoint.verify(path)
    (path / "pytorch_model.bin").unlink()
    (path / "modeling_x.py").write_text("print('hi')\n")
    checkpoint.write_manifest(path)
    with pytest.raises(checkpoint.CheckpointError, match="modeling_x.py, Python code"):
        checkpoint.verify(path)
    assert checkpoint.verify(path, allow_code=True) == path  # remote code asked for on this call
    (path / "modeling_x.py").unlink()
    (path / "link.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(checkpoint.CheckpointError, match="symbolic link"):
        checkpoint.verify(path)


def test_finalize_replaces_an_existing_directory_whole(tmp_path):
    old = make_checkpoint(tmp_path, 1)
    (old / "stale.json").write_text("{}")
    checkpoint.write_manifest(old)
    new = make_checkpoint(tmp_path, 1)
    assert not (new / "stale.json").exists() and checkpoint.verify(new) == new
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.checkpoint_name(1)]


def test_malformed_state_files_are_state_file_errors(tmp_path):
    from gflowvlm.safe_state import StateFileError

    save_state({"a": [torch.ones(2)]}, tmp_path, "s")
    (tmp_path / "s.json").write_text('{"__dict__": [["a", {"__tensor__": "t7"}]]}')
    with pytest.raises(StateFileError, match="not in the file"):
        load_state(tmp_path, "s")
    (tmp_path / "s.json").write_text('{"__dict__": [["a", ')
    with pytest.raises(StateFileError, match="unreadable"):
        load_state(tmp_path, "s")
    (tmp_path / "s.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(StateFileError, match="unreadable"):
        load_state(tmp_path, "s")


# ----- what a real run's checkpoints and final/ must survive ---------------------------------------------------
FAST = ["env.id=gflowvlm/NumberLine-v0", "env.image_size=64", "env.num_envs=2", "env.max_steps=2",
        "generation.max_new_tokens=12", "logging.progress=false", "optim.batch_size=64", "model.lora_r=4",
        "model.head_hidden=[16]", "prompt.max_history_steps=1", "algorithm=tb", "steps=2", "logging.save_every=1",
        "logging.keep_last=3"]


def run_config(tiny_vlm_dir, output_dir, *extra):
    from gflowvlm.config import load_config

    return load_config(None, FAST + [f"model.name_or_path={tiny_vlm_dir}", f"output_dir={output_dir}", *extra])


@pytest.fixture(scope="module")
def trained_run(tiny_vlm_dir, tmp_path_factory):
    """A finished two-step run: checkpoint-00000001/, checkpoint-00000002/, final/ (copy it before changing it)."""
    from gflowvlm.trainer import Trainer

    run_dir = tmp_path_factory.mktemp("checkpoints") / "run"
    Trainer(run_config(tiny_vlm_dir, run_dir)).train()
    return run_dir


@pytest.fixture
def run_copy(trained_run, tmp_path):
    import shutil

    shutil.copytree(trained_run, tmp_path / "run")
    return tmp_path / "run"


def resumer(tiny_vlm_dir, run_dir):
    from gflowvlm.trainer import Trainer

    return Trainer(run_config(tiny_vlm_dir, run_dir, "resume=true"))


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def rewrite_tensors(path, change):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def test_resume_refuses_a_checkpoint_whose_manifest_was_emptied_or_cut(tiny_vlm_dir, run_copy):
    newest = run_copy / checkpoint.checkpoint_name(2)
    flip_a_byte(newest / "trainable.safetensors")
    manifest = json.loads((newest / checkpoint.MANIFEST).read_text())
    trainer = resumer(tiny_vlm_dir, run_copy)
    (newest / checkpoint.MANIFEST).write_text(json.dumps({"files": {}}))
    with pytest.raises(checkpoint.CheckpointError, match="incomplete: its manifest.json does not list"):
        trainer.resume()
    del manifest["files"]["trainable.safetensors"]
    (newest / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(checkpoint.CheckpointError, match="does not list trainable.safetensors"):
        trainer.resume()
    del manifest["files"]["policy/heads.safetensors"]  # an optional-looking file, byte-flipped as well
    manifest["files"]["trainable.safetensors"] = {"bytes": 1, "sha256": "0" * 64}
    (newest / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(checkpoint.CheckpointError, match="policy/heads.safetensors is not in its manifest"):
        trainer.resume()


@pytest.mark.parametrize("damage, problem", [
    ("nan", "trainable.safetensors has non-finite values"), ("extra key", "holds bogus.weight"),
    ("trainer_state garbage", "trainer_state.json is not JSON"),
    ("trainer_state fields", "trainer_state.json must hold step"),
    ("optimizer nan", "optimizer exp_avg of parameter .* non-finite"),
    ("optimizer skeleton", "is corrupt: optimizer: malformed"),
])
def test_resume_refuses_edited_contents_in_one_line(tiny_vlm_dir, run_copy, damage, problem):
    """Even under a manifest that matches (edited, then rehashed): the contents themselves are checked."""
    import torch as _torch

    newest = run_copy / checkpoint.checkpoint_name(2)
    if damage == "nan":
        rewrite_tensors(newest / "trainable.safetensors",
                        lambda t: next(v for k, v in sorted(t.items()) if "lora_B" in k).fill_(float("nan")))
    elif damage == "extra key":
        rewrite_tensors(newest / "trainable.safetensors", lambda t: t.update({"bogus.weight": _torch.zeros(2)}))
    elif damage == "trainer_state garbage":
        (newest / "trainer_state.json").write_text('{"step": 2, "env_st')
    elif damage == "trainer_state fields":
        (newest / "trainer_state.json").write_text(json.dumps({"step": "2"}))
    elif damage == "optimizer nan":
        rewrite_tensors(newest / "optimizer.safetensors",
                        lambda t: [v.fill_(float("nan")) for v in t.values() if v.dim() > 0])
    else:
        (newest / "optimizer.json").write_text(json.dumps({"__dict__": [["state", {"__tensor__": "nope"}]]}))
    checkpoint.write_manifest(newest)
    with pytest.raises(checkpoint.CheckpointError, match=problem):
        resumer(tiny_vlm_dir, run_copy).resume()


def test_resume_says_which_checkpoint_it_used_when_the_newest_lost_its_manifest(tiny_vlm_dir, run_copy, capsys):
    (run_copy / checkpoint.checkpoint_name(2) / checkpoint.MANIFEST).unlink()
    trainer = resumer(tiny_vlm_dir, run_copy)
    capsys.readouterr()
    trainer.resume()
    err = capsys.readouterr().err.splitlines()
    assert trainer.step == 1
    assert any(f"{checkpoint.checkpoint_name(2)} has no manifest.json" in line and "skipped" in line for line in err)
    assert any(f"resuming from {run_copy / checkpoint.checkpoint_name(1)} (step 1)" in line for line in err)


def test_a_broken_checkpoint_is_one_line_on_the_command_line(tiny_vlm_dir, run_copy, tmp_path, capsys):
    from gflowvlm import cli

    newest = run_copy / checkpoint.checkpoint_name(2)
    rewrite_tensors(newest / "trainable.safetensors", lambda t: t.update({"bogus.weight": torch.zeros(2)}))
    checkpoint.write_manifest(newest)
    config_file = tmp_path / "run.yaml"
    config_file.write_text((run_copy / "config.yaml").read_text())
    capsys.readouterr()
    assert cli.main(["train", "--config", str(config_file), f"output_dir={run_copy}", "resume=true", "steps=3"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("gflowvlm train: error: checkpoint") and "bogus.weight" in error[-1]
    assert not any("Traceback" in line for line in error)


def test_final_is_written_atomically(tiny_vlm_dir, run_copy, monkeypatch):
    import gflowvlm.policy as policy_module
    from gflowvlm.policy import VLMPolicy

    final = run_copy / "final"
    before = {p.name: p.read_bytes() for p in final.iterdir()}
    policy = VLMPolicy.from_pretrained(str(final))
    with torch.no_grad():
        next(p for n, p in policy.model.named_parameters() if "lora_B" in n).add_(1.0)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after the adapter is written, before the heads and metadata

    monkeypatch.setattr(policy_module, "save_heads", killed)
    with pytest.raises(KeyboardInterrupt):
        policy.save_pretrained(str(final))
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before  # the old final/, whole
    assert (run_copy / ".tmp-final").is_dir()
    checkpoint.verify(final)
    monkeypatch.undo()
    policy.save_pretrained(str(final))  # the next save clears the leftover and replaces final/ whole
    assert not (run_copy / ".tmp-final").exists() and checkpoint.verify(final) == final
    assert (final / "adapter_model.safetensors").read_bytes() != before["adapter_model.safetensors"]


def test_a_mixed_or_truncated_final_is_refused_wherever_it_is_loaded(tiny_vlm_dir, run_copy, tmp_path, capsys):
    import dataclasses

    from gflowvlm import cli
    from gflowvlm.policy import VLMPolicy

    final = run_copy / "final"
    older = run_copy / checkpoint.checkpoint_name(1) / "policy" / "adapter_model.safetensors"
    (final / "adapter_model.safetensors").write_bytes(older.read_bytes())  # step-1 adapters beside step-2 metadata
    with pytest.raises(checkpoint.CheckpointError, match="adapter_model.safetensors does not match its manifest"):
        VLMPolicy.from_pretrained(str(final))
    data = (final / "adapter_model.safetensors").read_bytes()
    (final / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    capsys.readouterr()
    eval_args = ["eval", "--checkpoint", str(run_copy), "--env", "gflowvlm/NumberLine-v0", "--split", "id",
                 "--episodes", "1", "--transcripts", "0", "--quiet"]
    assert cli.main(eval_args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "does not match its manifest" in error
    config = run_config(tiny_vlm_dir, tmp_path / "next", f"model.init_from={final}").model
    with pytest.raises(checkpoint.CheckpointError, match="does not match its manifest"):
        VLMPolicy.from_config(config)
    (final / checkpoint.MANIFEST).unlink()  # a final/ with no manifest is one that was never completely written
    with pytest.raises(checkpoint.CheckpointError, match="incomplete"):
        VLMPolicy.from_pretrained(str(final))
    # A plain peft adapter from elsewhere (no manifest, no gflowvlm metadata) is still parsed, never trusted.
    (final / "gflowvlm_policy.json").unlink()
    from gflowvlm.model.loading import ModelLoadError

    with pytest.raises(ModelLoadError, match="adapter_model.safetensors is unreadable"):
        VLMPolicy.from_config(dataclasses.replace(config, init_from=str(final)))


def test_a_base_model_directory_written_by_gflowvlm_is_verified(tiny_vlm_dir, tmp_path):
    import shutil

    from gflowvlm.config import ModelConfig
    from gflowvlm.model.loading import load_model_and_processor

    base = tmp_path / "base"
    shutil.copytree(tiny_vlm_dir, base)
    checkpoint.write_manifest(base)
    flip_a_byte(base / "model.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="model.safetensors does not match its manifest"):
        load_model_and_processor(ModelConfig(name_or_path=str(base)), "cpu")


def test_the_policy_of_an_older_checkpoint_is_covered_by_the_checkpoint_manifest(tmp_path):
    temporary = checkpoint.temporary_dir(tmp_path, 3)
    (temporary / "policy").mkdir(parents=True)
    (temporary / "policy" / "adapter_config.json").write_text("{}")
    path = checkpoint.finalize(temporary, tmp_path / checkpoint.checkpoint_name(3))
    assert checkpoint.verify_saved_policy(path / "policy") == path / "policy"
    (path / "policy" / "adapter_config.json").write_text('{"r": 64}')
    with pytest.raises(checkpoint.CheckpointError, match="policy/adapter_config.json does not match"):
        checkpoint.verify_saved_policy(path / "policy")
    (tmp_path / "final").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="final is incomplete"):
        checkpoint.verify_saved_policy(tmp_path / "final")
