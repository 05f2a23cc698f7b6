"""Config files: `base:` composition (deep merge, relative paths, cycles, depth) and a reader that refuses what no
hand-written config needs (alias bombs, self-referencing aliases, huge files), in one line and well under a second."""
import time

import pytest
import yaml

from gflowvlm import cli
from gflowvlm.config import config_to_dict, load_config
from gflowvlm.config_schema import MAX_BASE_DEPTH, MAX_CONFIG_BYTES, ConfigError, deep_merge, load_composed_yaml


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----- composition -------------------------------------------------------------------------------------------
def test_two_level_base_deep_merges(tmp_path):
    write(tmp_path / "grand.yaml",
          "algorithm: tb\noptim:\n  lr: 1.0e-3\n  head_lr: 0.5\nlogging:\n  trackers: [wandb]\n")
    write(tmp_path / "parent.yaml", "base: grand.yaml\noptim:\n  lr: 2.0e-3\nenv:\n  max_steps: 7\n")
    child = write(tmp_path / "child.yaml", "base: parent.yaml\nenv:\n  max_steps: null\n  num_envs: 2\n"
                                           "logging:\n  trackers: []\n")
    data = load_composed_yaml(child)
    assert data == {"algorithm": "tb", "optim": {"lr": 2.0e-3, "head_lr": 0.5},
                    "env": {"max_steps": None, "num_envs": 2},  # key: null sets null (not "inherit")
                    "logging": {"trackers": []}}  # lists replace, never concatenate
    assert "base" not in data


def test_a_list_of_bases_applies_in_order(tmp_path):
    write(tmp_path / "a.yaml", "seed: 1\nsteps: 5\noptim:\n  lr: 0.1\n")
    write(tmp_path / "b.yaml", "seed: 2\noptim:\n  head_lr: 0.2\n")
    child = write(tmp_path / "c.yaml", "base: [a.yaml, b.yaml]\nsteps: 9\n")
    assert load_composed_yaml(child) == {"seed": 2, "steps": 9, "optim": {"lr": 0.1, "head_lr": 0.2}}


def test_base_paths_are_relative_to_the_file_that_names_them(tmp_path, monkeypatch):
    write(tmp_path / "shared" / "common.yaml", "seed: 3\n")
    write(tmp_path / "shared" / "env.yaml", "base: common.yaml\nenv:\n  num_envs: 4\n")  # beside env.yaml
    recipe = write(tmp_path / "recipes" / "deep" / "r.yaml", "base: ../../shared/env.yaml\nsteps: 2\n")
    monkeypatch.chdir(tmp_path / "recipes")  # the working directory plays no part
    assert load_composed_yaml(recipe) == {"seed": 3, "env": {"num_envs": 4}, "steps": 2}


def test_load_config_composes_then_applies_overrides_and_drops_base(tmp_path):
    write(tmp_path / "base.yaml", "algorithm: tb\noptim:\n  lr: 1.0e-3\n")
    child = write(tmp_path / "run.yaml", "base: base.yaml\noptim:\n  head_lr: 0.01\n")
    config = load_config(str(child), ["optim.lr=5e-4"])
    assert config.algorithm == "tb" and config.optim.lr == 5e-4 and config.optim.head_lr == 0.01
    assert "base" not in config_to_dict(config)  # what a run writes into its config.yaml
    assert "base" not in yaml.safe_load(yaml.safe_dump(config_to_dict(config)))


def test_a_base_cycle_is_one_line(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"config base cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_composed_yaml(tmp_path / "a.yaml")
    write(tmp_path / "self.yaml", "base: ./self.yaml\n")
    with pytest.raises(ConfigError, match="config base cycle"):
        load_composed_yaml(tmp_path / "self.yaml")


def test_bases_deeper_than_the_limit(tmp_path):
    for level in range(MAX_BASE_DEPTH + 2):
        write(tmp_path / f"l{level}.yaml", f"base: l{level + 1}.yaml\n")
    write(tmp_path / f"l{MAX_BASE_DEPTH + 2}.yaml", "seed: 1\n")
    with pytest.raises(ConfigError, match=f"deeper than {MAX_BASE_DEPTH} levels"):
        load_composed_yaml(tmp_path / "l0.yaml")
    # exactly the limit is fine
    assert load_composed_yaml(tmp_path / "l2.yaml") == {"seed": 1}


def test_a_missing_base_names_both_files(tmp_path):
    child = write(tmp_path / "run.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError) as error:
        load_composed_yaml(child)
    assert "config file not found" in str(error.value) and "nowhere.yaml" in str(error.value)
    assert "the base of" in str(error.value) and "run.yaml" in str(error.value)


@pytest.mark.parametrize("base_text, base, message", [
    ("- a\n- b\n", "list.yaml", "must hold a mapping at the top level"),
    ("just a string\n", "scalar.yaml", "must hold a mapping at the top level"),
    (None, "3", "base must be a path or a list of paths, got 3"),
    (None, "[a.yaml, 4]", "base must be a path or a list of paths"),
    (None, "[]", "base must be a path or a list of paths"),
])
def test_a_base_that_is_not_a_mapping_or_not_a_path(tmp_path, base_text, base, message):
    if base_text is not None:
        write(tmp_path / base, base_text)
    child = write(tmp_path / "run.yaml", f"base: {base}\n")
    with pytest.raises(ConfigError) as error:
        load_composed_yaml(child)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_deep_merge_leaves_its_inputs_alone():
    base = {"a": {"b": 1, "c": [1]}}
    merged = deep_merge(base, {"a": {"c": [2]}, "d": None})
    assert merged == {"a": {"b": 1, "c": [2]}, "d": None}
    assert base == {"a": {"b": 1, "c": [1]}}


def test_cli_base_errors_are_one_line(tmp_path, capsys):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    assert cli.main(["train", "--config", str(tmp_path / "a.yaml")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "config base cycle" in lines[0]


# ----- what the reader refuses ---------------------------------------------------------------------------------
BILLION_LAUGHS = "".join(
    ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n']
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)])


def test_billion_laughs_fails_fast_in_one_line(tmp_path, capsys):
    path = write(tmp_path / "laughs.yaml", BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 600  # expands to 9**9 ~ 387 million strings
    started = time.perf_counter()
    code = cli.main(["train", "--config", str(path)])
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2
    assert elapsed < 1.0, elapsed
    lines = err.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 300, err[:500]
    assert "aliases expand to more than" in lines[0] and str(path) in lines[0]


def test_an_alias_bomb_in_an_override_is_refused_too():
    bomb = "[" + ", ".join(["&x0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"&x{i} [{', '.join([f'*x{i - 1}'] * 10)}]" for i in range(1, 7)]) + "]"
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases expand"):
        load_config(None, [f"model.head_hidden={bomb}"])
    assert time.perf_counter() - started < 1.0


def test_a_recursive_alias_is_refused(tmp_path):
    path = write(tmp_path / "loop.yaml", "env:\n  kwargs: &k\n    again: *k\n")
    with pytest.raises(ConfigError, match="refers to itself"):
        load_config(str(path))


def test_small_aliases_still_work(tmp_path):
    path = write(tmp_path / "ok.yaml", "optim:\n  lr: &rate 3.0e-4\n  head_lr: *rate\n")
    config = load_config(str(path))
    assert config.optim.lr == config.optim.head_lr == 3.0e-4


def test_file_size_is_capped(tmp_path):
    path = write(tmp_path / "big.yaml", "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="larger than"):
        load_config(str(path))
    assert time.perf_counter() - started < 1.0


def test_deep_nesting_and_binary_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="nested more than 64 levels"):
        load_config(str(write(tmp_path / "deep.yaml", "a: " + "[" * 100 + "]" * 100 + "\n")))
    with pytest.raises(ConfigError, match="nested more than|not valid YAML"):  # libyaml has a limit of its own
        load_config(str(write(tmp_path / "deeper.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n")))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(binary))


def test_bad_values_are_quoted_short(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(None, ["optim.lr=[" + ", ".join(["1"] * 5000) + "]"])
    assert len(str(error.value)) < 200 and "..." in str(error.value)
    with pytest.raises(ConfigError, match="unknown config key 1 "):  # mixed key types must not crash the sort
        load_config(str(write(tmp_path / "keys.yaml", "1: 2\nzzz: 3\nseed: 0\n")))
