"""What differs between VLM families, in one small table; everything else is read off the loaded model.

The model layer never branches on a family name for inputs: whatever the processor returns (LLaVA's
`pixel_values`, LLaVA-NeXT's `image_sizes`, Qwen2-VL's `image_grid_thw` and `mm_token_type_ids`) is passed to the
model as it is. Module names do differ, and they matter in three places:

- LoRA targets: the decoder's attention (and MLP) projections, found under the decoder module wherever it sits;
- the vision side (tower + projector), which LoRA leaves alone by default and which can be adapted or fully trained;
- 4-bit loading, which must skip the vision side and `lm_head` BEFORE the model exists (so by name).

Module paths are those of transformers >= 5 (`model.language_model`, `model.vision_tower`, `model.visual`);
they changed between major versions, which is why they are looked up here and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # `config.model_type` values of this family
    vision_modules: tuple[str, ...]  # the vision tower and projector, as module paths of the loaded model
    # transformers builds this family's processor with a video processor, which needs torchvision.
    needs_torchvision: bool = False


FAMILIES: tuple[Family, ...] = (
    Family("llava", ("llava", "llava_next", "llava_onevision", "vipllava"),
           ("model.vision_tower", "model.multi_modal_projector")),
    Family("qwen2_vl", ("qwen2_vl", "qwen2_5_vl"), ("model.visual",), needs_torchvision=True),
)

# Kept in full precision under 4-bit loading (names that a model lacks are ignored by transformers). The short
# "vision_tower" does NOT match in transformers 5.23: the full paths are needed.
QUANTIZATION_SKIP_MODULES = ("model.vision_tower", "model.multi_modal_projector", "model.visual", "lm_head")


def family_for_model_type(model_type: str) -> Family | None:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return None


def language_model_path(model: torch.nn.Module) -> str:
    """Module path of the decoder (the language model) inside `model`."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for name, module in model.named_modules():
        if module is decoder and name:
            return name
    for name, _ in model.named_modules():
        if name.endswith("language_model"):
            return name
    raise ValueError(f"cannot find the language model inside {type(model).__name__}")


def vision_module_paths(model: torch.nn.Module) -> list[str]:
    """Module paths of the vision tower and projector of `model`.

    Known families use the table; any other image-text-to-text model gets the decoder's sibling modules (the
    layout every Hugging Face VLM shares: `model.<vision parts>` next to `model.language_model`).
    """
    names = {name for name, _ in model.named_modules()}
    family = family_for_model_type(getattr(model.config, "model_type", ""))
    if family is not None:
        return [path for path in family.vision_modules if path in names]
    decoder = language_model_path(model)
    parent = decoder.rpartition(".")[0]
    parent_module = model.get_submodule(parent) if parent else model
    prefix = f"{parent}." if parent else ""
    return [prefix + child for child, _ in parent_module.named_children() if prefix + child != decoder]
