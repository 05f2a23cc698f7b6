"""Which weights train: LoRA on the language model (default), the vision side frozen / LoRA / full, or everything.

`model.adapter`: lora / qlora put LoRA on the decoder's attention projections (q, k, v, o; `lora_targets=
"attention_mlp"` adds gate / up / down); full trains every decoder weight; none trains nothing of the decoder.
`model.vision`: frozen (default), lora (LoRA on every linear layer of the vision tower and projector), full
(the tower and projector train fully; with peft they are `modules_to_save`, so the adapter directory carries them).

Targets are listed by their full module paths, read off the model: a bare `q_proj` would also match CLIP's
attention, and a name pattern written for one transformers version breaks on the next.
"""
from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from gflowvlm.config import ModelConfig
from gflowvlm.model.families import (ATTENTION_PROJECTIONS, MLP_PROJECTIONS, language_model_path,
                                     vision_module_paths)


def lora_target_modules(model: torch.nn.Module, config: ModelConfig) -> list[str]:
    """Full paths of the linear layers that get LoRA under `config` (sorted)."""
    targets: list[str] = []
    if config.adapter in ("lora", "qlora"):
        decoder = language_model_path(model) + "."
        suffixes = ATTENTION_PROJECTIONS + (MLP_PROJECTIONS if config.lora_targets == "attention_mlp" else ())
        targets += [name for name, module in model.named_modules()
                    if name.startswith(decoder) and name.rpartition(".")[2] in suffixes and _is_linear(module)]
        if not targets:
            raise ValueError(f"no {'/'.join(suffixes)} layers found in the language model of "
                             f"{type(model).__name__}: cannot place LoRA adapters")
    if config.vision == "lora":
        for path in vision_module_paths(model):
            targets += [f"{path}.{name}" for name, module in model.get_submodule(path).named_modules()
                        if name and _is_linear(module)]
    return sorted(targets)


def apply_adapters(model: torch.nn.Module, config: ModelConfig) -> torch.nn.Module:
    """Freeze / wrap `model` so that exactly the weights `config` asks for are trainable."""
    if config.adapter == "full" and config.vision == "lora":
        raise ValueError("model.adapter=full with model.vision=lora is not supported: a full decoder is saved as a "
                         "whole model, LoRA as an adapter; use vision=full (or frozen) with adapter=full")
    vision_paths = vision_module_paths(model)
    targets = lora_target_modules(model, config)
    if targets:
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=targets, bias="none",
                          modules_to_save=vision_paths if config.vision == "full" else None)
        # No task_type: the plain PeftModel passes every keyword (pixel_values, image_grid_thw, ...) through.
        return get_peft_model(model, lora)
    train_decoder = config.adapter == "full"
    for name, parameter in model.named_parameters():
        in_vision = any(name.startswith(path + ".") for path in vision_paths)
        parameter.requires_grad = (config.vision == "full") if in_vision else train_decoder
    return model


def load_adapter(model: torch.nn.Module, directory: str, trainable: bool = True) -> PeftModel:
    """Wrap `model` with the peft adapter saved in `directory` (LoRA weights + any modules_to_save)."""
    return PeftModel.from_pretrained(model, directory, is_trainable=trainable)


def _is_linear(module: torch.nn.Module) -> bool:
    # bitsandbytes' Linear4bit / Linear8bitLt subclass nn.Linear, so quantized layers count too.
    return isinstance(module, torch.nn.Linear)
