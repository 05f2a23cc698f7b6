"""Config validation: every number in range and finite, the env and its options checked against the env class,
output paths checked, and all of it as one line with exit code 2 BEFORE any model loads."""
import dataclasses
import sys
import types
import typing

import gymnasium as gym
import pytest

from envs.base import VLMEnv
from gflowvlm import cli
from gflowvlm.config import FIELD_BOUNDS, ConfigError, RunConfig, load_config

TINY = "configs/tiny/numberline_subtb.yaml"


@pytest.mark.parametrize("overrides, message", [
    (["optim.lr=nan"], "optim.lr must be a finite number, got nan"),
    (["optim.lr=inf"], "optim.lr must be a finite number, got inf"),
    (["optim.lr=-1"], "optim.lr must be positive, got -1.0"),
    (["optim.lr=0"], "optim.lr must be positive"),
    (["optim.head_lr=-inf"], "optim.head_lr must be a finite number"),
    (["optim.min_lr=-1e-9"], "optim.min_lr must be >= 0"),
    (["optim.grad_clip=nan"], "optim.grad_clip must be a finite number"),
    (["optim.grad_clip=-1"], "optim.grad_clip must be >= 0"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay must be >= 0"),
    (["optim.cosine_period=0"], "optim.cosine_period must be positive"),
    (["optim.warmup_steps=-1"], "optim.warmup_steps must be >= 0"),
    (["model.lora_dropout=1"], "model.lora_dropout must be in [0, 1), got 1.0"),
    (["model.lora_alpha=0"], "model.lora_alpha must be positive"),
    (["model.head_hidden=[64,0]"], "model.head_hidden must be positive, got 0"),
    (["ppo.clip=0"], "ppo.clip must be positive"),
    (["ppo.gamma=1.5"], "ppo.gamma must be in [0, 1], got 1.5"),
    (["ppo.gae_lambda=nan"], "ppo.gae_lambda must be a finite number"),
    (["ppo.epochs=0"], "ppo.epochs must be positive"),
    (["objective.lam=inf"], "objective.lam must be a finite number"),
    (["objective.min_log_reward=-inf"], "objective.min_log_reward must be a finite number"),
    (["objective.reward_beta=0"], "objective.reward_beta must be positive"),
    (["seed=-1"], "seed must be in [0, 4294967295], got -1"),
    (["seed=4294967296"], "seed must be in [0, 4294967295]"),
    (["env.max_steps=-1"], "env.max_steps must be positive, got -1"),
    (["env.image_size=8"], "env.image_size must be in [16, 2048], got 8"),
    (["generation.top_p=0"], "generation.top_p must be in (0, 1]"),
    (["generation.temperature=-1"], "generation.temperature must be >= 0"),
    (["prompt.max_history_steps=-1"], "prompt.max_history_steps must be >= 0, got -1"),
    (["prompt.max_prompt_tokens=0"], "prompt.max_prompt_tokens must be positive"),
    (["logging.sample_every=0"], "logging.sample_every must be positive"),
    (["logging.log_every=0"], "logging.log_every must be positive"),
    (["collect.replay_tasks=0"], "collect.replay_tasks must be positive"),
    (["collect.replay_samples=4"], "collect.replay_samples > 0 needs collect.replay_size > 0"),
])
def test_every_number_is_checked(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("algorithm, extra, instead", [
    ("sft", ["sft.data=x.jsonl"], "optim.batch_size"),
    ("ppo", [], "ppo.minibatch_size"),
    ("grpo", ["collect.trajectories_per_task=2"], "grpo.minibatch_size"),
])
def test_grad_accum_is_refused_where_it_would_be_ignored(algorithm, extra, instead):
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"algorithm={algorithm}", "optim.grad_accum=2", *extra])
    message = str(error.value)
    assert message.startswith(f"optim.grad_accum > 1 is for the GFlowNet objectives; {algorithm} ignores it")
    assert f"set {instead}" in message and "\n" not in message
    assert load_config(None, [f"algorithm={algorithm}", "optim.grad_accum=1", *extra]).optim.grad_accum == 1


@pytest.mark.parametrize("algorithm", ["tb", "vartb", "subtb", "db"])
def test_grad_accum_is_accepted_by_the_gflownets(algorithm):
    extra = ["collect.trajectories_per_task=2"] if algorithm == "vartb" else []
    assert load_config(None, [f"algorithm={algorithm}", "optim.grad_accum=3", *extra]).optim.grad_accum == 3


def test_every_numeric_field_has_a_bound():
    """A new int/float field must get a FIELD_BOUNDS entry: counts and rates are never left unchecked."""
    def numeric(hint) -> bool:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return hint in (int, float) or any(numeric(a) for a in args)

    def walk(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            hint = hints[item.name]
            if dataclasses.is_dataclass(hint):
                yield from walk(hint, f"{prefix}{item.name}.")
            elif numeric(hint):
                yield f"{prefix}{item.name}"

    fields = set(walk(RunConfig))
    assert len(fields) > 40
    assert fields - set(FIELD_BOUNDS) == set()
    assert set(FIELD_BOUNDS) - fields == set()  # no stale entries either


def test_temperature_zero_is_refused_only_where_sampling_is_used():
    with pytest.raises(ConfigError, match=r"generation.temperature=0 cannot sample .* tb .*--greedy"):
        load_config(None, ["algorithm=tb", "generation.temperature=0"])
    config = load_config(None, ["algorithm=sft", "sft.data=x.jsonl", "generation.temperature=0"])
    assert config.generation.temperature == 0.0


@pytest.mark.parametrize("overrides, message", [
    (["env.kwargs.foo=1"], "env.kwargs.foo: gflowvlm/NumberLine-v0 takes no option 'foo'"),
    (["env.id=gflowvlm/ALFWorld-v0", "env.split=train", "env.kwargs.bogus=1"],
     "its options: data_dir, task_types, games, data_seed"),
    (["env.kwargs.split=ood"], "env.kwargs.split: set env.split instead"),
    (["env.split=train"], "env.split: gflowvlm/NumberLine-v0 has no split 'train' (it has: id, ood)"),
    (["env.id=gflowvlm/Nope-v0"], "env.id: unknown environment id 'gflowvlm/Nope-v0'"),
    (["env.id="], "env.id must be a gymnasium environment id"),
    (["env.id=CartPole-v1"], "env.id: CartPole-v1 (gymnasium.envs.classic_control.cartpole.CartPoleEnv) is not a "
                             "gflowvlm environment: a gflowvlm env subclasses envs.base.VLMEnv"),
    (["collect.expert_strategy=basic"], "collect.expert_strategy: gflowvlm/NumberLine-v0 has a single oracle"),
    (["env.id=gflowvlm/Blackjack-v0", "collect.expert_strategy=lucky"],
     "collect.expert_strategy: gflowvlm/Blackjack-v0 has no strategy 'lucky' (it has: basic, stand17, max_win)"),
    (["env.id=gflowvlm/EZPoints-v0", "collect.expert_strategy=basic"],
     "collect.expert_strategy: gflowvlm/EZPoints-v0 has no strategy 'basic' (it has: shortest, varied)"),
])
def test_env_and_its_options_are_checked_against_the_env_class(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_the_formula_games_take_the_varied_oracle():
    for env_id in ("gflowvlm/EZPoints-v0", "gflowvlm/Points24-v0"):
        config = load_config(None, [f"env.id={env_id}", "collect.expert_strategy=varied"])
        assert config.collect.expert_strategy == "varied"


def test_a_contract_message_says_what_a_user_env_must_provide():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["env.id=CartPole-v1"])
    text = str(error.value)
    for needed in ("'image'", "'text'", "admissible_actions", "log_reward", "expert_action", "README"):
        assert needed in text


class _OptionEnv(VLMEnv):
    """A user env with one option of its own; never instantiated here (validation reads the signature)."""

    def __init__(self, split="id", reward="gflowvlm", image_size=64, render_mode=None, max_steps=None, level=1):
        raise AssertionError("validation must not make the env")


class _AnyOptionEnv(_OptionEnv):
    def __init__(self, **kwargs):
        raise AssertionError("validation must not make the env")


class _NoImageSizeEnv(_OptionEnv):
    def __init__(self, split="id", reward="gflowvlm"):
        raise AssertionError("validation must not make the env")


for _name, _cls in (("OptionEnv", _OptionEnv), ("AnyOptionEnv", _AnyOptionEnv), ("NoImageSize", _NoImageSizeEnv)):
    if f"validtest/{_name}-v0" not in gym.registry:
        gym.register(f"validtest/{_name}-v0", entry_point=_cls)


def test_user_env_options_come_from_its_signature_without_making_it():
    config = load_config(None, ["env.id=validtest/OptionEnv-v0", "env.kwargs.level=3"])
    assert config.env.kwargs == {"level": 3}
    with pytest.raises(ConfigError, match=r"env.kwargs.lvl: validtest/OptionEnv-v0 takes no option 'lvl' "
                                          r"\(its options: level\)"):
        load_config(None, ["env.id=validtest/OptionEnv-v0", "env.kwargs.lvl=3"])
    # **kwargs: anything may be meant for the env, nothing is refused
    assert load_config(None, ["env.id=validtest/AnyOptionEnv-v0", "env.kwargs.whatever=1"]).env.kwargs
    with pytest.raises(ConfigError, match="does not take image_size"):
        load_config(None, ["env.id=validtest/NoImageSize-v0"])


def test_an_env_factory_function_is_read_by_signature():
    def factory(split="id", reward="gflowvlm", image_size=64, max_steps=None, size=4):
        raise AssertionError("validation must not make the env")

    if "validtest/Factory-v0" not in gym.registry:
        gym.register("validtest/Factory-v0", entry_point=factory)
    load_config(None, ["env.id=validtest/Factory-v0", "env.kwargs.size=8"])
    with pytest.raises(ConfigError, match="takes no option 'colour'"):
        load_config(None, ["env.id=validtest/Factory-v0", "env.kwargs.colour=1"])


# ----- the command line: one line, exit 2, nothing loaded or written ------------------------------------------
@pytest.fixture
def no_model(monkeypatch):
    """train/eval must fail before they reach the modules that load a model."""
    for name, attribute in (("gflowvlm.trainer", "Trainer"), ("gflowvlm.evaluation", "evaluate_checkpoint")):
        fake = types.ModuleType(name)

        def refuse(*args, **kwargs):
            raise AssertionError("a model was about to load")
        setattr(fake, attribute, refuse)
        monkeypatch.setitem(sys.modules, name, fake)


def run_cli(capsys, args):
    code = cli.main(args)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    return code, lines


@pytest.mark.parametrize("override, key", [
    ("optim.lr=nan", "optim.lr"), ("optim.lr=-1", "optim.lr"), ("seed=-1", "seed"),
    ("env.max_steps=-1", "env.max_steps"), ("generation.temperature=0", "generation.temperature"),
    ("env.kwargs.foo=1", "env.kwargs.foo"), ("env.id=CartPole-v1", "env.id"),
    ("prompt.max_history_steps=-2", "prompt.max_history_steps"),
])
def test_train_refuses_bad_values_before_the_model(no_model, capsys, tmp_path, override, key):
    out = tmp_path / "run"
    code, lines = run_cli(capsys, ["train", "--config", TINY, f"output_dir={out}", override])
    assert code == 2
    assert len(lines) == 1 and key in lines[0], lines
    assert not out.exists()


def test_train_output_dir_that_is_a_file(no_model, capsys, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    for target in (blocker, blocker / "run"):
        code, lines = run_cli(capsys, ["train", "--config", TINY, f"output_dir={target}"])
        assert code == 2 and len(lines) == 1 and "output_dir" in lines[0] and str(blocker) in lines[0]
    assert blocker.read_text() == "not a directory"


def test_train_missing_inputs_are_named(no_model, capsys, tmp_path):
    code, lines = run_cli(capsys, ["train", "--config", "configs/tiny/numberline_sft.yaml",
                                   f"output_dir={tmp_path / 'r'}", f"sft.data={tmp_path / 'absent.jsonl'}"])
    assert code == 2 and len(lines) == 1 and "sft.data: file not found" in lines[0]
    code, lines = run_cli(capsys, ["train", "--config", TINY, f"output_dir={tmp_path / 'r'}",
                                   f"model.init_from={tmp_path / 'nope'}"])
    assert code == 2 and len(lines) == 1 and "model.init_from" in lines[0]
    code, lines = run_cli(capsys, ["train", "--config", TINY, f"output_dir={tmp_path / 'r'}",
                                   "--resume", str(tmp_path / "nope")])
    assert code == 2 and len(lines) == 1 and "--resume" in lines[0]
    code, lines = run_cli(capsys, ["train"])
    assert code == 2 and len(lines) == 1 and "--config" in lines[0]
    assert not (tmp_path / "r").exists()


def test_compare_out_that_is_a_file(capsys, tmp_path):
    blocker = tmp_path / "report"
    blocker.write_text("x")
    code, lines = run_cli(capsys, ["compare", str(tmp_path / "no_run"), "--out", str(blocker)])
    assert code == 2 and len(lines) == 1 and "--out" in lines[0] and "is a file" in lines[0]


def test_eval_out_under_a_file_fails_before_any_episode(no_model, capsys, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    for out in (blocker / "eval.json", tmp_path):
        code, lines = run_cli(capsys, ["eval", "--model", "m", "--env", "gflowvlm/NumberLine-v0", "--split", "id",
                                       "--episodes", "4", "--out", str(out)])
        assert code == 2 and len(lines) == 1 and "--out" in lines[0], lines


def test_prompt_builder_checks_are_the_config_checks():
    from gflowvlm.config import PromptConfig
    from gflowvlm.prompting import PromptBuilder, check_prompt_config

    for bad in (PromptConfig(max_history_steps=-1), PromptConfig(max_prompt_tokens=0)):
        with pytest.raises(ConfigError):
            check_prompt_config(bad)
        with pytest.raises(ValueError):  # ConfigError is a ValueError: direct callers see what they did before
            PromptBuilder("gflowvlm/NumberLine-v0", bad)
    check_prompt_config(PromptConfig())
