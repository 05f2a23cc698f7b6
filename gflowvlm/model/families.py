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
    # transformers builds this family's processor with a video processor, which needs torchvision (without it,
    # gflowvlm.model.loading falls back to the same processor minus the video part: image_only_processors.py).
    needs_torchvision: bool = False
    # Per-token processor outputs whose value for a response token is not 0: PaliGemma's prefix-LM reads
    # token_type_ids 0 as "prefix" (attended both ways) and 1 as the answer (causal), as generation appends it.
    response_token_types: tuple[tuple[str, int], ...] = ()


_LLAVA_VISION = ("model.vision_tower", "model.multi_modal_projector")
FAMILIES: tuple[Family, ...] = (
    Family("llava", ("llava", "llava_next", "vipllava"), _LLAVA_VISION),
    Family("llava_onevision", ("llava_onevision",), _LLAVA_VISION, needs_torchvision=True),
    Family("qwen2_vl", ("qwen2_vl", "qwen2_5_vl"), ("model.visual",), needs_torchvision=True),
    Family("idefics3", ("idefics3", "smolvlm"), ("model.vision_model", "model.connector")),
    Family("gemma3", ("gemma3",), _LLAVA_VISION),
    Family("paligemma", ("paligemma",), _LLAVA_VISION, response_token_types=(("token_type_ids", 1),)),
)

# Kept in full precision under 4-bit loading (names that a model lacks are ignored by transformers). The short
# "vision_tower" does NOT match in transformers 5.23: the full paths are needed.
QUANTIZATION_SKIP_MODULES = ("model.vision_tower", "model.multi_modal_projector", "model.visual",
                             "model.vision_model", "model.connector", "lm_head")


def family_for_model_type(model_type: str) -> Family | None:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return None


def response_token_types(model: torch.nn.Module) -> dict[str, int]:
    """{per-token input name: its value on response tokens} where that is not 0 (see Family)."""
    family = family_for_model_type(getattr(getattr(model, "config", None), "model_type", ""))
    return dict(family.response_token_types) if family is not None else {}


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
