"""Every shipped launch config (configs/accelerate/*.yaml) is checked, as far as a CPU-only machine allows.

- All five parse with accelerate's own loader (the ClusterConfig `accelerate launch` reads), and accelerate's
  launcher turns each into the environment its ranks get, from which accelerate builds its FSDP / DeepSpeed
  plugin: the fields that matter are asserted at both levels.
- multi_gpu.yaml (DDP) and fsdp.yaml (FSDP2) launch a 2-step tiny TB run (adapters + the log Z head) on two real
  CPU ranks over gloo. DDP keeps the ranks' parameters identical; FSDP really shards them (each rank holds half of
  every parameter, decoder and vision layers are units of their own), the gathered parameters are identical on
  both ranks and equal the DDP run's, and its checkpoints hold whole tensors that resume, under FSDP, as DDP does.
  On CPU accelerate runs fsdp.yaml as DDP unless opened by hand: tests/helpers/distributed_train.py says how.
- zero2.yaml / zero3.yaml: parsed and turned into accelerate's DeepSpeedPlugin (no deepspeed needed for that);
  `gflowvlm train` refuses DeepSpeed before the model loads, with one line (gflowvlm/trainer.py says why). Where
  deepspeed is installed, the real launch reaches that refusal.
- single_gpu.yaml: parsed, its environment checked (one process, no distribution); on CPU there is no GPU to
  launch it on (a plain `gflowvlm train` is the same single process, tested elsewhere).
The launch files' `mixed_precision: bf16` does not reach the trainer: the run config's `mixed_precision` wins
(configs/paper/ say bf16 too; the tiny runs here train in float32, which makes FSDP and DDP comparable exactly).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env, prepare_simple_launcher_cmd_env
from safetensors.torch import load_file

from helpers.launching import REPO, launch_two_ranks

CONFIGS = REPO / "configs" / "accelerate"
SHIPPED = ("single_gpu", "multi_gpu", "zero2", "zero3", "fsdp")

# What each file must say, field by field (ClusterConfig attributes; nested dicts compared key by key).
COMMON = dict(compute_environment="LOCAL_MACHINE", num_machines=1, mixed_precision="bf16", use_cpu=False)
EXPECTED = {
    "single_gpu": dict(distributed_type=DistributedType.NO, num_processes=1, gpu_ids="0"),
    "multi_gpu": dict(distributed_type=DistributedType.MULTI_GPU, num_processes=8, gpu_ids="all", machine_rank=0),
    "zero2": dict(distributed_type=DistributedType.DEEPSPEED, num_processes=8, deepspeed_config=dict(
        zero_stage=2, offload_optimizer_device="none", offload_param_device="none", gradient_accumulation_steps=1,
        gradient_clipping=1.0, zero3_init_flag=False)),
    "zero3": dict(distributed_type=DistributedType.DEEPSPEED, num_processes=8, deepspeed_config=dict(
        zero_stage=3, offload_optimizer_device="none", offload_param_device="none", gradient_accumulation_steps=1,
        gradient_clipping=1.0, zero3_init_flag=True, zero3_save_16bit_model=True)),
    "fsdp": dict(distributed_type=DistributedType.FSDP, num_processes=8, fsdp_config=dict(
        fsdp_version=2, fsdp_auto_wrap_policy="TRANSFORMER_BASED_WRAP", fsdp_reshard_after_forward=True,
        fsdp_state_dict_type="SHARDED_STATE_DICT", fsdp_cpu_ram_efficient_loading=True,
        fsdp_offload_params=False)),
}


def test_the_shipped_configs_are_the_ones_checked():
    assert sorted(path.stem for path in CONFIGS.glob("*.yaml")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_parses_with_accelerates_loader(name):
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert isinstance(config, ClusterConfig)
    for field, expected in {**COMMON, **EXPECTED[name]}.items():
        assert getattr(config, field) == expected, field
    for nested in ("deepspeed_config", "fsdp_config"):
        if nested not in EXPECTED[name]:
            assert getattr(config, nested) == {}, nested
    # accelerate copies each nested key onto its launch argument of that name and ignores the rest without a
    # word: a misspelt key would silently fall back to a default
    arguments = vars(launch_command_parser().parse_args(["script.py"]))
    for key in {**config.deepspeed_config, **config.fsdp_config}:
        assert key in arguments, f"{name}.yaml: {key} is no `accelerate launch` setting"


def launcher_env(name: str) -> tuple[dict[str, str], object]:
    """The environment `accelerate launch --config_file NAME.yaml` gives each rank (accelerate's own argument
    merging and launcher code, without launching), as the keys it adds or changes; and the merged arguments."""
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / f"{name}.yaml"), "script.py"])
    args, defaults, mixed_precision_from_file = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before deepspeed_launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_file else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    elif args.use_fsdp or args.multi_gpu:
        env = prepare_multi_gpu_env(args)
    else:
        _, env = prepare_simple_launcher_cmd_env(args)
    return {key: value for key, value in env.items() if os.environ.get(key) != value}, args


@pytest.mark.parametrize("name", SHIPPED)
def test_the_launcher_turns_it_into_accelerates_plugins(name, monkeypatch):
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    env, args = launcher_env(name)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert args.num_processes == EXPECTED[name]["num_processes"]
    assert (env.get("ACCELERATE_USE_FSDP") == "true") == (name == "fsdp")
    assert (env.get("ACCELERATE_USE_DEEPSPEED") == "true") == name.startswith("zero")
    assert args.multi_gpu == (name == "multi_gpu")
    for key in [k for k in os.environ if k.startswith(("ACCELERATE_", "FSDP_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if name == "fsdp":
        from torch.distributed.fsdp import CPUOffloadPolicy
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

        plugin = FullyShardedDataParallelPlugin()  # as Accelerator() builds it from that environment
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
        assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
        assert plugin.cpu_ram_efficient_loading is True and not isinstance(plugin.cpu_offload, CPUOffloadPolicy)
    if name.startswith("zero"):
        plugin = DeepSpeedPlugin()  # as Accelerator() builds it (importing deepspeed only at prepare)
        plugin.set_mixed_precision(env["ACCELERATE_MIXED_PRECISION"])
        ds = plugin.deepspeed_config
        stage = 3 if name == "zero3" else 2
        assert ds["zero_optimization"]["stage"] == stage and plugin.zero_stage == stage
        assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
        assert ds["zero_optimization"]["offload_param"]["device"] == "none"
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] == (name == "zero3")
        assert ds["gradient_accumulation_steps"] == 1 and ds["gradient_clipping"] == 1.0
        assert plugin.zero3_init_flag == (name == "zero3")
        assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}


def test_the_paper_configs_train_in_the_launch_files_precision():
    """The run config's mixed_precision is the one that counts; every paper config states what the files do."""
    launch = {load_config_from_file(str(CONFIGS / f"{name}.yaml")).mixed_precision for name in SHIPPED}
    from gflowvlm.config import load_config

    # composed with their `base:` files (the grpo configs name the ppo ones), as `gflowvlm train` reads them
    paper = {load_config(str(path)).mixed_precision for path in (REPO / "configs" / "paper").glob("*.yaml")}
    assert launch == paper == {"bf16"}


# ----- two real CPU ranks ------------------------------------------------------------------------------------------
def tiny_tb(tiny_vlm_dir, steps=2):
    """TB: LoRA adapters and the log Z head, the head called outside the model's forward. optim.batch_size=2 scores
    each update in several chunks, so gradients are also accumulated unsynchronised (no_sync) before the last."""
    return ["algorithm=tb", f"model.name_or_path={tiny_vlm_dir}", f"steps={steps}", "env.num_envs=2",
            "env.max_steps=3", "generation.max_new_tokens=16", "logging.progress=false", "model.lora_r=4",
            "model.head_hidden=[32]", "optim.lr=1e-2", "optim.batch_size=2", "prompt.max_history_steps=2", "seed=0"]


def launch_config(name):
    return ["--config_file", str(CONFIGS / f"{name}.yaml")]  # the file's bf16 is not overridden: see above


@pytest.fixture(scope="module")
def ddp_run(tiny_vlm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("launch") / "multi_gpu"
    return out, launch_two_ranks(launch_config("multi_gpu"), tiny_tb(tiny_vlm_dir), out)


@pytest.fixture(scope="module")
def fsdp_run(tiny_vlm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("launch") / "fsdp"
    return out, launch_two_ranks(launch_config("fsdp"), tiny_tb(tiny_vlm_dir), out)


def trainable(run_dir, step=2):
    return load_file(str(Path(run_dir) / f"checkpoint-{step:08d}" / "trainable.safetensors"))


def assert_close(a, b):
    assert sorted(a) == sorted(b)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, worst


def test_multi_gpu_two_ranks_stay_identical(ddp_run):
    out, ranks = ddp_run
    assert [r["world"] for r in ranks] == [2, 2]
    assert {r["distributed_type"] for r in ranks} == {"MULTI_CPU"}  # accelerate's name for DDP over gloo
    assert ranks[0]["params"] == ranks[1]["params"]
    assert ranks[0]["params"] != ranks[0]["initial_params"]
    assert any("log_z" in name for name in ranks[0]["params"])
    # the file said bf16 (ACCELERATE_MIXED_PRECISION); the run config ("no") is what the trainer used
    assert {(r["launch_mixed_precision"], r["mixed_precision"]) for r in ranks} == {("bf16", "no")}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]


def test_fsdp_shards_over_two_ranks_and_trains_as_ddp(fsdp_run, ddp_run):
    out, ranks = fsdp_run
    assert [r["world"] for r in ranks] == [2, 2]
    assert {r["distributed_type"] for r in ranks} == {"FSDP"}
    units = ranks[0]["fsdp_units"]  # the policy is the root; the wrap policy found the layers (policy.py)
    assert {"FSDPVLMPolicy", "FSDPLlamaDecoderLayer", "FSDPCLIPEncoderLayer"} <= set(units)
    assert all(r["local_numel"] < r["numel"] for r in ranks)  # each rank holds a part ...
    assert ranks[0]["local_numel"] + ranks[1]["local_numel"] == ranks[0]["numel"]  # ... and together, all of it
    assert all(ranks[0]["local_params"][k] != ranks[1]["local_params"][k] for k in ranks[0]["local_params"])
    assert ranks[0]["params"] == ranks[1]["params"]  # gathered whole: the same model on both ranks
    assert ranks[0]["params"] != ranks[0]["initial_params"]
    # the same tasks, samples and averaged gradients as DDP: the same parameters (float32, to rounding)
    assert_close(trainable(out), trainable(ddp_run[0]))
    fsdp_metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ddp_metrics = [json.loads(line) for line in (ddp_run[0] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in fsdp_metrics] == [1, 2]
    assert fsdp_metrics[0]["loss"] == pytest.approx(ddp_metrics[0]["loss"], rel=1e-6)


def test_fsdp_final_adapter_holds_whole_tensors(fsdp_run):
    from gflowvlm.policy import VLMPolicy

    out, _ = fsdp_run
    policy = VLMPolicy.from_pretrained(str(out / "final"))  # verified: manifest, keys, shapes, finite
    saved = trainable(out)
    loaded = {name: p.detach() for name, p in policy.named_parameters() if p.requires_grad}
    assert sorted(loaded) == sorted(saved)
    assert all(bool((loaded[k] == saved[k]).all()) for k in saved)


def test_fsdp_checkpoint_resumes_as_ddp_does(fsdp_run, ddp_run, tiny_vlm_dir, tmp_path):
    """Each run resumes its own step-2 checkpoint for one more step: the optimizer moments saved whole are cut
    back into each rank's slices, and the third step matches DDP's."""
    resumed = {}
    for name, (out, _) in (("fsdp", fsdp_run), ("multi_gpu", ddp_run)):
        copy = tmp_path / name
        shutil.copytree(out, copy)
        launch_two_ranks(launch_config(name), tiny_tb(tiny_vlm_dir, steps=3) + ["resume=true"], copy)
        resumed[name] = trainable(copy, step=3)
    assert_close(resumed["fsdp"], resumed["multi_gpu"])


def test_heads_compute_in_the_dtype_fsdp_gathers_them_in():
    """fsdp.yaml's bf16 makes FSDP gather every weight in bf16, the heads' too (they sit in the root unit): the
    head then computes in bf16 and still returns float32, instead of failing on a float32 input."""
    import torch

    from gflowvlm.model.heads import MLPHead

    head = MLPHead(8, [4])
    hidden = torch.randn(3, 8, dtype=torch.bfloat16)
    assert head(hidden).dtype == torch.float32  # float32 weights: float32 compute, as before
    out = head.to(torch.bfloat16)(hidden.float())
    assert out.dtype == torch.float32 and out.shape == (3,) and bool(torch.isfinite(out).all())


# ----- DeepSpeed -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_deepspeed_is_refused_before_the_model_loads(name, tiny_vlm_dir, tmp_path, monkeypatch):
    from gflowvlm.cli import UserError
    from gflowvlm.config import load_config
    from gflowvlm.trainer import DEEPSPEED_UNSUPPORTED, Trainer

    for key, value in launcher_env(name)[0].items():
        monkeypatch.setenv(key, value)
    config = load_config(None, tiny_tb(tiny_vlm_dir) + [f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(UserError) as refused:
        Trainer(config)
    assert str(refused.value) == DEEPSPEED_UNSUPPORTED
    assert not (tmp_path / "run").exists()


def test_a_real_deepspeed_launch_gets_the_one_line_refusal(tiny_vlm_dir, tmp_path):
    """Only where deepspeed is installed (it is no dependency): accelerate's DeepSpeed launcher starts both ranks
    and `gflowvlm train` ends each with its one-line message."""
    pytest.importorskip("deepspeed")
    from gflowvlm.trainer import DEEPSPEED_UNSUPPORTED

    run_config = tmp_path / "tb.yaml"
    run_config.write_text("algorithm: tb\n")
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", *launch_config("zero2"), "--num_processes", "2", "--main_process_port",
               "0", "-m", "gflowvlm", "train", "--config", str(run_config), *tiny_tb(tiny_vlm_dir),
               f"output_dir={tmp_path / 'run'}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    assert result.stderr.count(DEEPSPEED_UNSUPPORTED) == 2, result.stderr[-3000:]  # one line from each rank
    assert not (tmp_path / "run").exists()
