"""Which weights train: LoRA on the language model (default), the vision side frozen / LoRA / full, or everything.

`model.adapter`: lora / qlora put LoRA on the decoder's attention projections (q, k, v, o; `lora_targets=
"attention_mlp"` adds gate / up / down); full trains every decoder weight; none trains nothing of the decoder.
`model.vision`: frozen (default), lora (LoRA on every linear layer of the vision tower and projector), full
(the tower and projector train fully; with peft they are `modules_to_save`, so the adapter directory carries them).

Targets are listed by their full module paths, read off the model: a bare `q_proj` would also match CLIP's
attention, and a name pattern written for one transformers version breaks on the next.

A saved adapter is loaded from adapter_model.safetensors only (peft would fall back to unpickling
adapter_model.bin), and checked: readable, finite, and exactly the tensors this model's adapter has (peft itself
only warns about missing keys and leaves those weights at their fresh initialisation).
"""
from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors import SafetensorError, safe_open

from gflowvlm.config import ModelConfig
from gflowvlm.model.families import (ATTENTION_PROJECTIONS, MLP_PROJECTIONS, language_model_path,
                                     vision_module_paths)
from gflowvlm.model.loading import ModelLoadError


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


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def load_adapter(model: torch.nn.Module, directory: str, trainable: bool = True) -> PeftModel:
    """Wrap `model` with the peft adapter saved in `directory` (LoRA weights + any modules_to_save)."""
    weights = Path(directory) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ModelLoadError(f"adapter {directory} has no {ADAPTER_WEIGHTS} (pickled adapter_model.bin files are "
                             "never loaded)")
    saved = _saved_keys(weights, ModelLoadError)
    try:
        adapted = PeftModel.from_pretrained(model, directory, is_trainable=trainable)
    except (ValueError, KeyError, TypeError, RuntimeError, OSError, SafetensorError) as error:
        raise ModelLoadError(f"cannot load adapter {directory}: {_first_line(error)}") from None
    required = set(get_peft_model_state_dict(adapted, save_embedding_layers=False))
    allowed = required | set(get_peft_model_state_dict(adapted, save_embedding_layers=True))
    missing, extra = sorted(required - saved), sorted(saved - allowed)
    if missing or extra:
        problem = f"{missing[0]} is missing" if missing else f"it holds {extra[0]}, which this model has not"
        raise ModelLoadError(f"adapter {directory} does not match this model: {problem}")
    return adapted


def _saved_keys(weights: Path, error_type: type[Exception]) -> set[str]:
    """The tensor names in a safetensors file, each tensor read once to check it is finite."""
    try:
        with safe_open(str(weights), framework="pt") as handle:
            keys = set(handle.keys())
            for key in keys:
                tensor = handle.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise error_type(f"{weights} has non-finite values ({key})")
    except (SafetensorError, OSError) as error:
        raise error_type(f"{weights} is unreadable ({_first_line(error)}): truncated or not a safetensors "
                         "file") from None
    return keys


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]


def _is_linear(module: torch.nn.Module) -> bool:
    # bitsandbytes' Linear4bit / Linear8bitLt subclass nn.Linear, so quantized layers count too.
    return isinstance(module, torch.nn.Linear)
