"""One run per output directory: a fresh run never writes into an old one, resume continues only the same config,
and a metrics.jsonl torn by a crash does not block the resume."""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from gflowvlm import checkpoint, cli
from gflowvlm.cli import UserError
from gflowvlm.config import config_to_dict, load_config
from gflowvlm.run_directory import RunDirectoryError, check_resumable, holds_run, prepare
from gflowvlm.run_logger import RunLogger

FAST = ["env.id=gflowvlm/NumberLine-v0", "env.image_size=64", "env.num_envs=2", "env.max_steps=2",
        "generation.max_new_tokens=12", "logging.progress=false", "optim.batch_size=64", "model.lora_r=4",
        "model.head_hidden=[16]", "prompt.max_history_steps=1", "algorithm=tb", "logging.save_every=2"]


def run_config(tiny_vlm_dir, output_dir, *extra):
    return load_config(None, FAST + [f"model.name_or_path={tiny_vlm_dir}", f"output_dir={output_dir}", *extra])


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if a Trainer gets as far as loading the model: the checks must come first."""
    from gflowvlm.policy import VLMPolicy

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output directory was checked")

    monkeypatch.setattr(VLMPolicy, "from_config", classmethod(refuse))


def test_a_fresh_run_into_a_run_directory_is_refused_and_overwrite_starts_over(tiny_vlm_dir, tmp_path, capsys):
    from gflowvlm.trainer import Trainer

    run_dir = tmp_path / "run"
    Trainer(run_config(tiny_vlm_dir, run_dir, "steps=4")).train()
    assert steps_logged(run_dir) == [1, 2, 3, 4]
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(RunDirectoryError, match="already holds a run: continue it with resume=true, or choose a new "
                                                "output_dir"):
        Trainer(run_config(tiny_vlm_dir, run_dir, "steps=2"))
    assert (run_dir / "metrics.jsonl").read_text() == before  # nothing of the old run was touched
    # The command line says it in one line.
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(yaml.safe_load((run_dir / "config.yaml").read_text())))
    capsys.readouterr()  # what the first run printed
    assert cli.main(["train", "--config", str(config_file), "steps=2"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "resume=true" in error and "overwrite=true" in error

    fresh = Trainer(run_config(tiny_vlm_dir, run_dir, "steps=2", "overwrite=true"))
    fresh.train()
    assert steps_logged(run_dir) == [1, 2]
    assert [path.name for _, path in checkpoint.list_checkpoints(run_dir)] == [checkpoint.checkpoint_name(2)]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["steps"] == 2


def test_output_dir_checks_come_before_the_model_loads(tiny_vlm_dir, tmp_path, monkeypatch, no_model_load):
    from gflowvlm.trainer import Trainer

    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    with pytest.raises(RunDirectoryError, match="is a file, not a directory"):
        Trainer(run_config(tiny_vlm_dir, a_file))
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        Trainer(run_config(tiny_vlm_dir, old))
    with pytest.raises(RunDirectoryError, match="contradict"):
        Trainer(run_config(tiny_vlm_dir, old, "resume=true", "overwrite=true"))
    # overwrite=true deletes a directory whole: never the current one or one above it.
    monkeypatch.chdir(old)
    (old / "my-notes.txt").write_text("keep me")
    with pytest.raises(RunDirectoryError, match="will not delete"):
        Trainer(run_config(tiny_vlm_dir, ".", "overwrite=true"))
    assert (old / "my-notes.txt").exists()


def test_holds_run_and_an_empty_or_unrelated_directory(tmp_path):
    assert not holds_run(tmp_path / "missing") and not holds_run(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    assert not holds_run(tmp_path)
    prepare(load_config(None, [f"output_dir={tmp_path}"]))  # an unrelated directory is fine to write into
    checkpoint.temporary_dir(tmp_path, 3).mkdir()
    assert holds_run(tmp_path)  # a run killed while writing its first checkpoint


def test_resume_refuses_a_changed_config_before_loading_the_model(tiny_vlm_dir, tmp_path, no_model_load):
    from gflowvlm.trainer import Trainer

    run_dir = tmp_path / "run"
    config = run_config(tiny_vlm_dir, run_dir, "steps=4")
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config)))
    (run_dir / checkpoint.checkpoint_name(2)).mkdir()  # something to resume (its contents are checked later)
    for change, key in (("model.lora_r=8", "model.lora_r"), ("seed=1", "seed"), ("algorithm=db", "algorithm"),
                        (f"model.name_or_path={tmp_path}", "model.name_or_path"), ("optim.lr=0.5", "optim.lr"),
                        ("env.num_envs=4", "env.num_envs"), ("objective.cot_weight=0.1", "objective.cot_weight")):
        with pytest.raises(RunDirectoryError, match=rf"cannot resume: {key} is .* here but .* in the run being "
                                                    r"resumed .*exact resumption needs the same value"):
            Trainer(run_config(tiny_vlm_dir, run_dir, "steps=4", "resume=true", change))
    # Safe changes pass the check (and reach the model load, which the fixture stops).
    for safe in ("steps=8", "logging.log_every=2", "logging.save_every=5", "model.trust_remote_code=true",
                 "model.gradient_checkpointing=true"):
        check_resumable(run_config(tiny_vlm_dir, run_dir, "resume=true", safe), run_dir)
    with pytest.raises(AssertionError, match="model was loaded"):
        Trainer(run_config(tiny_vlm_dir, run_dir, "steps=8", "resume=true"))


def test_resume_with_a_changed_lora_rank_is_one_line_on_the_command_line(tiny_vlm_dir, tmp_path, capsys):
    from gflowvlm.trainer import Trainer

    run_dir = tmp_path / "run"
    Trainer(run_config(tiny_vlm_dir, run_dir, "steps=4")).train(until=2)
    config_file = tmp_path / "run.yaml"
    config_file.write_text((run_dir / "config.yaml").read_text())
    capsys.readouterr()
    assert cli.main(["train", "--config", str(config_file), "resume=true", "model.lora_r=8"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "model.lora_r is 8 here but 4" in error
    # Past the config check (config.yaml deleted), the checkpoint's own shapes still refuse it in one line.
    (run_dir / "config.yaml").unlink()
    with pytest.raises(checkpoint.CheckpointError, match=r"does not match this model: .*lora.* has shape"):
        Trainer(run_config(tiny_vlm_dir, run_dir, "steps=4", "resume=true", "model.lora_r=8")).train()


def test_resume_drops_a_torn_metrics_line_and_continues_exactly(tiny_vlm_dir, tmp_path, capsys):
    from gflowvlm.trainer import Trainer

    whole = tmp_path / "whole"
    Trainer(run_config(tiny_vlm_dir, whole, "steps=3")).train()
    run_dir = tmp_path / "run"
    Trainer(run_config(tiny_vlm_dir, run_dir, "steps=3")).train(until=2)
    with open(run_dir / "metrics.jsonl", "a") as handle:  # a kill in the middle of writing step 3's record
        handle.write('{"step": 3, "env_steps": 12, "lo')
    capsys.readouterr()
    Trainer(run_config(tiny_vlm_dir, run_dir, "steps=3", "resume=true")).train()
    err = capsys.readouterr().err
    assert "dropped a torn last line" in err and f"resuming from {run_dir / checkpoint.checkpoint_name(2)}" in err
    assert steps_logged(run_dir) == [1, 2, 3]
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if not k.startswith("seconds")}  # noqa: E731
                          for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert strip(run_dir) == strip(whole)


class _MainProcess:
    is_main_process = True


def test_truncate_after_keeps_whole_records_and_refuses_an_edited_file(tmp_path):
    logger = RunLogger(tmp_path, _MainProcess(), [])
    logger.metrics_path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "loss": 0.')
    assert logger.truncate_after(2) and logger.metrics_path.read_text() == '{"step": 1}\n{"step": 2}\n'
    logger.metrics_path.write_text('{"step": 1}\n{"step": 2}\n')
    assert logger.truncate_after(5) == [] and logger.metrics_path.read_text() == '{"step": 1}\n{"step": 2}\n'
    logger.metrics_path.write_text('{"step": 1}\ngarbage\n{"step": 3}\n')
    with pytest.raises(UserError, match="line 2 is not a JSON record"):
        logger.truncate_after(3)


def test_resume_without_a_checkpoint_starts_over_without_the_old_records(tiny_vlm_dir, tmp_path):
    from gflowvlm.trainer import Trainer

    run_dir = tmp_path / "run"
    Trainer(run_config(tiny_vlm_dir, run_dir, "steps=3", "logging.save_every=10")).train(until=1)
    for _, path in checkpoint.list_checkpoints(run_dir):  # killed before its first checkpoint was written
        shutil.rmtree(path)
    assert steps_logged(run_dir) == [1]
    # Nothing to continue: the run starts over, under this call's config (a changed seed is no mixing then).
    resumed = Trainer(run_config(tiny_vlm_dir, run_dir, "steps=2", "logging.save_every=10", "resume=true", "seed=1"))
    resumed.train()
    assert steps_logged(run_dir) == [1, 2]


def test_train_resume_dir_continues_that_checkpoint(tiny_vlm_dir, tmp_path, capsys):
    from gflowvlm.trainer import Trainer

    run_dir = tmp_path / "run"
    Trainer(run_config(tiny_vlm_dir, run_dir, "steps=4")).train(until=2)
    config_file = tmp_path / "run.yaml"
    config_file.write_text((run_dir / "config.yaml").read_text())
    assert cli.main(["train", "--config", str(config_file), "--resume",
                     str(run_dir / checkpoint.checkpoint_name(2))]) == 0
    assert steps_logged(run_dir) == [1, 2, 3, 4]
    assert cli.main(["train", "--config", str(config_file), "seed=3", "--resume",
                     str(run_dir / checkpoint.checkpoint_name(4))]) == 2
    assert "cannot resume: seed is 3 here but 0" in capsys.readouterr().err
