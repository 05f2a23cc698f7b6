"""Config loading: YAML + overrides, strict validation with key-path errors, and the CLI's one-line errors."""
import glob
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gflowvlm.config import ConfigError, RunConfig, load_config
from gflowvlm.config_schema import load_composed_yaml


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_and_overrides_are_typed(tmp_path):
    path = write(tmp_path, "algorithm: tb\nmodel:\n  lora_r: 8\noptim:\n  lr: 1\n")
    config = load_config(path, ["optim.head_lr=3e-3", "objective.lam=0.5", "env.id=gflowvlm/Blackjack-v0",
                                "env.kwargs.strategy=stand17", "logging.trackers=[wandb]"])
    assert isinstance(config, RunConfig)
    assert config.algorithm == "tb" and config.model.lora_r == 8
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)  # int in YAML becomes a float
    assert config.objective.lam == 0.5 and config.env.kwargs == {"strategy": "stand17"}
    assert config.optim.head_lr == 3e-3  # YAML 1.1 reads 3e-3 as a string; a float field accepts it
    assert config.logging.trackers == ["wandb"]


@pytest.mark.parametrize("overrides, message", [
    (["model.lora_rank=4"], "unknown config key model.lora_rank"),
    (["nonsense=1"], "unknown config key nonsense"),
    (["optim.lr=fast"], "optim.lr: expected a number"),
    (["model.lora_r=2.5"], "model.lora_r: expected an integer"),
    (["algorithm=reinforce"], "algorithm: 'reinforce' is not one of"),
    (["model=3"], "model: expected a mapping"),
    (["steps=0"], "steps must be positive"),
    (["algorithm=vartb"], "vartb needs collect.trajectories_per_task >= 2"),
    (["env.num_envs=6", "collect.trajectories_per_task=4"], "multiple of collect.trajectories_per_task"),
    (["collect.episodes=6", "collect.trajectories_per_task=4"], "multiple of collect.trajectories_per_task"),
    (["collect.epsilon=2"], "collect.epsilon must be in [0, 1]"),
    (["logging.trackers=[mlflow]"], "unknown tracker 'mlflow'"),
    (["noequals"], "is not of the form key.sub=value"),
])
def test_bad_configs_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_shipped_configs_are_valid():
    files = sorted(glob.glob("configs/tiny/*.yaml") + glob.glob("configs/paper/*.yaml"))
    assert len(files) >= 20
    algorithms = {load_config(f).algorithm for f in files}
    assert algorithms == {"tb", "vartb", "subtb", "db", "ppo", "grpo", "sft"}


def _bases(path: Path) -> list[Path]:
    """The files `path` names under `base:` (one or a list, relative to it), resolved."""
    named = yaml.safe_load(path.read_text()).get("base") or []
    return [(path.parent / name).resolve() for name in ([named] if isinstance(named, str) else named)]


def _depth(path: Path) -> int:
    """`base:` hops from `path` to its deepest base (0: no base)."""
    return max((1 + _depth(base) for base in _bases(path)), default=0)


def test_shipped_configs_compose_from_their_bases_with_no_orphans():
    # configs/<folder>/base/*.yaml are partial configs (one per env, plus the online methods' part on it); every
    # one is some shipped config's base, and every shipped config resolves through a short chain
    shipped = sorted(Path(f) for folder in ("tiny", "paper") for f in glob.glob(f"configs/{folder}/*.yaml"))
    partial = sorted(Path(f).resolve() for f in glob.glob("configs/*/base/*.yaml"))
    assert partial, "configs/*/base/ holds the shared parts"
    reached, todo = set(), list(shipped)
    while todo:  # every file some shipped config composes, directly or through another base
        for base in _bases(todo.pop()):
            if base not in reached:
                reached.add(base)
                todo.append(base)
    orphans = [str(path) for path in partial if path not in reached]
    assert not orphans, f"base files no shipped config composes: {orphans}"
    for path in partial:
        assert yaml.safe_load(path.read_text()), path
        assert path.read_text().startswith("# Partial config, not runnable on its own"), path
    for path in shipped:
        data = load_composed_yaml(path)
        assert "base" not in data and data["algorithm"] and data["output_dir"], path
        assert _depth(path) <= 3, f"{path}: base chain deeper than 3"


@pytest.mark.parametrize("args, message", [
    (["train", "--config", "missing.yaml"], "config file not found: missing.yaml"),
    (["train", "--config", "configs/tiny/numberline_subtb.yaml", "optim.lrr=1"], "unknown config key optim.lrr"),
    (["train", "--config", "configs/tiny/numberline_subtb.yaml", "steps=many"], "steps: expected an integer"),
    (["play", "--env", "gflowvlm/Nope-v0", "--out", "/tmp/gflowvlm_play_test"], "unknown environment id"),
])
def test_cli_bad_input_is_one_line(args, message):
    result = subprocess.run([sys.executable, "-m", "gflowvlm", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "Traceback" not in result.stderr
