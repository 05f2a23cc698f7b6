"""Which modules train: LoRA placement (both families), vision options, full / none, QLoRA on CPU."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gflowvlm.config import ModelConfig
from gflowvlm.model.adapters import apply_adapters
from gflowvlm.model.loading import ModelLoadError
from gflowvlm.model.tiny_vlm import build_tiny_vlm, save_tiny_vlm, tiny_model, tiny_model_config, tiny_tokenizer
from gflowvlm.policy import VLMPolicy
from gflowvlm.prompting import Prompt

LAYERS = range(4)
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
LANGUAGE_ATTENTION = {f"model.language_model.layers.{i}.self_attn.{p}" for i in LAYERS for p in ATTENTION}
LANGUAGE_MLP = {f"model.language_model.layers.{i}.mlp.{p}" for i in LAYERS for p in MLP}
CLIP_AND_PROJECTOR = {f"model.vision_tower.encoder.layers.{i}.{p}" for i in range(2) for p in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")} | {
    "model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2"}
QWEN_VISUAL = {f"model.visual.blocks.{i}.{p}" for i in range(2) for p in ("attn.qkv", "attn.proj", "mlp.fc1",
                                                                           "mlp.fc2")} | {
    "model.visual.merger.mlp.0", "model.visual.merger.mlp.2"}




@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, corpus):
    directory = tmp_path_factory.mktemp("tiny_llava")
    save_tiny_vlm(*build_tiny_vlm("llava", 64, seed=0, corpus=corpus), directory)
    return directory


def fresh_model(family, corpus):
    return tiny_model(tiny_model_config(family, tiny_tokenizer(family, corpus), 64), seed=0)


def adapted_modules(model) -> set[str]:
    """Paths (as in the base model) of the modules peft put LoRA on."""
    prefix = "base_model.model."
    return {name[len(prefix):] for name, module in model.named_modules() if hasattr(module, "lora_A")}


def trainable_names(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family,vision_set", [("llava", CLIP_AND_PROJECTOR), ("qwen2_vl", QWEN_VISUAL)])
def test_lora_placement_per_option(corpus, family, vision_set):
    config = ModelConfig(name_or_path="unused", lora_r=4)
    model = apply_adapters(fresh_model(family, corpus), config)
    assert adapted_modules(model) == LANGUAGE_ATTENTION  # the vision tower is NOT adapted by default
    model = apply_adapters(fresh_model(family, corpus), dataclasses.replace(config, lora_targets="attention_mlp"))
    assert adapted_modules(model) == LANGUAGE_ATTENTION | LANGUAGE_MLP
    model = apply_adapters(fresh_model(family, corpus), dataclasses.replace(config, vision="lora"))
    assert adapted_modules(model) == LANGUAGE_ATTENTION | vision_set
    assert all(".lora_" in name for name in trainable_names(model))


@pytest.mark.parametrize("family,vision_prefixes", [
    ("llava", ("model.vision_tower.", "model.multi_modal_projector.")), ("qwen2_vl", ("model.visual.",))])
def test_full_vision_trains_the_tower_through_modules_to_save(corpus, family, vision_prefixes):
    config = ModelConfig(name_or_path="unused", lora_r=4, vision="full")
    model = apply_adapters(fresh_model(family, corpus), config)
    trainable = trainable_names(model)
    vision = {name for name in trainable if ".lora_" not in name}
    assert vision and all("modules_to_save" in name for name in vision)
    for prefix in vision_prefixes:  # the tower and the projector, completely
        assert any(prefix in name for name in vision)
    assert all(any(prefix in name for prefix in vision_prefixes) for name in vision)
    assert len(vision) == sum(1 for name, _ in fresh_model(family, corpus).named_parameters()
                              if name.startswith(vision_prefixes))
    assert not any("language_model" in name and ".lora_" not in name for name in trainable)
    assert not any(name.endswith("lm_head.weight") for name in trainable)


def test_full_and_none_adapters(corpus):
    base = ModelConfig(name_or_path="unused")
    model = apply_adapters(fresh_model("llava", corpus), dataclasses.replace(base, adapter="full"))
    trainable = trainable_names(model)
    frozen = {name for name, _ in model.named_parameters()} - trainable
    assert frozen and all(name.startswith(("model.vision_tower.", "model.multi_modal_projector.")) for name in frozen)
    assert "lm_head.weight" in trainable and "model.language_model.embed_tokens.weight" in trainable
    model = apply_adapters(fresh_model("llava", corpus), dataclasses.replace(base, adapter="full", vision="full"))
    assert all(p.requires_grad for p in model.parameters())
    model = apply_adapters(fresh_model("llava", corpus), dataclasses.replace(base, adapter="none"))
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="adapter=full with model.vision=lora"):
        apply_adapters(fresh_model("llava", corpus), dataclasses.replace(base, adapter="full", vision="lora"))


def test_qlora_quantizes_the_decoder_only_and_trains_on_cpu(tiny_dir):
    import bitsandbytes as bnb

    config = ModelConfig(name_or_path=str(tiny_dir), adapter="qlora", lora_r=4, lora_dropout=0.0, head_hidden=[32])
    policy = VLMPolicy.from_config(config, heads=("value",))
    quantized = {name for name, m in policy.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert any("language_model.layers.0.self_attn.q_proj" in name for name in quantized)
    assert any("language_model.layers.3.mlp.down_proj" in name for name in quantized)
    assert not any("vision_tower" in name or "projector" in name or "lm_head" in name for name in quantized)
    rng = np.random.default_rng(0)
    prompts = [Prompt(text="Task: reach 3\n" * (i + 1), image=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
               for i in range(2)]
    out = policy.score(prompts, ['{"thoughts": "up", "action": "+"}', '{"action": "-"}'])
    loss = out.log_pf.sum() + policy.head("value", out.hidden).sum()
    loss.backward()
    adapters, heads = policy.parameter_groups()
    assert adapters and all(".lora_" in n for n, p in policy.model.named_parameters() if p.requires_grad)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in adapters + heads)
    assert any(float(p.grad.abs().sum()) > 0 for p in adapters)


def test_loading_errors_name_the_problem(tmp_path):
    with pytest.raises(ModelLoadError, match="name_or_path is empty"):
        VLMPolicy.from_config(ModelConfig())
    with pytest.raises(ModelLoadError, match="cannot load the processor"):
        VLMPolicy.from_config(ModelConfig(name_or_path=str(tmp_path)))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelLoadError, match="not a directory"):
        VLMPolicy.from_config(ModelConfig(name_or_path=str(tmp_path / "file")))


def _samples(n: int = 2):
    rng = np.random.default_rng(3)
    prompts = [Prompt(text="Task: reach 3\n" * (i + 1), image=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
               for i in range(n)]
    return prompts, ['{"thoughts": "up", "action": "+"}', '{"action": "-"}'][:n]


def test_gradient_checkpointing_gives_the_same_scores_and_gradients(tiny_dir):
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # same LoRA initialisation
        config = ModelConfig(name_or_path=str(tiny_dir), lora_r=4, lora_dropout=0.0, head_hidden=[8],
                             gradient_checkpointing=checkpointing)
        policy = VLMPolicy.from_config(config, heads=()).train()
        assert policy._base_model().is_gradient_checkpointing == checkpointing
        with torch.no_grad():
            for name, parameter in policy.named_parameters():
                if "lora_B" in name:
                    parameter.fill_(0.01)
        out = policy.score(*_samples())
        out.log_pf.sum().backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}
        results.append((out.log_pf.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys()
    for name in results[0][1]:
        torch.testing.assert_close(results[0][1][name], results[1][1][name], atol=1e-5, rtol=1e-4)


def test_bfloat16_loading_scores_in_float32(tiny_dir):
    config = ModelConfig(name_or_path=str(tiny_dir), dtype="bfloat16", lora_r=4, head_hidden=[8])
    policy = VLMPolicy.from_config(config, heads=("value",))
    assert policy._base_model().dtype == torch.bfloat16
    out = policy.score(*_samples())
    assert out.log_pf.dtype == torch.float32 and out.hidden.dtype == torch.float32
    assert torch.isfinite(out.log_pf).all() and torch.isfinite(policy.head("value", out.hidden)).all()


def test_qlora_policy_reloads_exactly(tiny_dir, tmp_path):
    config = ModelConfig(name_or_path=str(tiny_dir), adapter="qlora", lora_r=4, lora_dropout=0.0, head_hidden=[8])
    policy = VLMPolicy.from_config(config, heads=("log_z",)).eval()
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.02)
        before = policy.score(*_samples())
    policy.save_pretrained(str(tmp_path))
    reloaded = VLMPolicy.from_pretrained(str(tmp_path)).eval()
    assert reloaded.config.adapter == "qlora"
    with torch.no_grad():
        after = reloaded.score(*_samples())
    assert torch.equal(after.log_pf, before.log_pf)
    assert torch.equal(reloaded.head("log_z", after.hidden), policy.head("log_z", before.hidden))
