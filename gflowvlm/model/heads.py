"""Scalar heads on the policy's hidden state: log Z (TB), state flow log F(s) (SubTB / DB), value V(s) (PPO).

Each head is an MLP on the final hidden state of the last prompt token, as RL4VLM's value head
(hidden -> 1024 -> 512 -> 1 by default, `model.head_hidden`), in float32 whatever the model's dtype. The last
layer starts with weights scaled down 100x and a zero bias, so every head outputs ~0 at first (log Z = 0, a flow
of 1, a value of 0) while gradients still reach every layer from the first step.

Heads are saved to their own safetensors file next to the adapter (`heads.safetensors`), which keeps
`adapter_model.safetensors` a plain peft adapter that `PeftModel.from_pretrained` loads on any base.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from gflowvlm.model.loading import ModelLoadError

HEAD_NAMES = ("log_z", "flow", "value")
HEADS_FILE = "heads.safetensors"
LAST_LAYER_SCALE = 0.01


class MLPHead(nn.Module):
    def __init__(self, in_features: int, hidden: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            if size <= 0:
                raise ValueError(f"model.head_hidden sizes must be positive, got {list(hidden)}")
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        last = nn.Linear(width, 1)
        with torch.no_grad():
            last.weight.mul_(LAST_LAYER_SCALE)
            last.bias.zero_()
        self.net = nn.Sequential(*layers, last)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H] -> [N] (float32). The input takes the weights' dtype: float32, except under FSDP's bf16 mixed
        precision (fsdp.yaml), which gathers every weight, the heads' too, in bf16 for the computation."""
        dtype = next(self.net.parameters()).dtype
        return self.net(hidden.to(dtype)).float().squeeze(-1)


def build_heads(names: Sequence[str], in_features: int, hidden: Sequence[int]) -> nn.ModuleDict:
    unknown = [name for name in names if name not in HEAD_NAMES]
    if unknown:
        raise ValueError(f"unknown head {unknown[0]!r}; heads are {list(HEAD_NAMES)}")
    return nn.ModuleDict({name: MLPHead(in_features, hidden) for name in dict.fromkeys(names)})


def save_heads(heads: nn.ModuleDict, directory: str | Path,
               state: dict[str, torch.Tensor] | None = None) -> None:
    """`state`: whole tensors to write instead of `heads.state_dict()` (whose tensors are slices under FSDP2)."""
    state = heads.state_dict() if state is None else state
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    save_file(tensors, str(Path(directory) / HEADS_FILE))


def load_heads(heads: nn.ModuleDict, directory: str | Path, strict: bool = True) -> list[str]:
    """Load the saved weights of `heads` from `directory`; returns the names of the heads that were loaded.

    strict: every head must be in the file with the same shapes, and the file holds nothing else. Not strict (a
    run starting from an SFT checkpoint that has other heads): heads missing from the file keep their fresh
    initialisation, and heads this policy does not have are ignored. Every loaded value must be finite.
    Problems are ModelLoadError (one line; also a ValueError).
    """
    path = Path(directory) / HEADS_FILE
    try:
        saved = load_file(str(path)) if path.exists() else {}
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(f"{path} is unreadable ({str(error).strip()[:200]}): truncated or not a safetensors "
                             "file") from None
    if strict and not path.exists() and len(heads):
        raise ModelLoadError(f"{path} is missing: the saved policy has no heads")
    if strict:
        unknown = sorted(key for key in saved if key.split(".", 1)[0] not in heads)
        if unknown:
            raise ModelLoadError(f"{path} holds {unknown[0]}, which is not a weight of the heads "
                                 f"{list(heads.keys())}")
    loaded = []
    for name, head in heads.items():
        prefix = f"{name}."
        state = {key[len(prefix):]: value for key, value in saved.items() if key.startswith(prefix)}
        if not state:
            if strict:
                raise ModelLoadError(f"head {name!r} is not in {path} (saved heads: {_saved_names(saved)})")
            continue
        expected = {key: tuple(value.shape) for key, value in head.state_dict().items()}
        found = {key: tuple(value.shape) for key, value in state.items()}
        if expected != found:
            raise ModelLoadError(f"head {name!r} in {path} does not match model.head_hidden / the model's hidden "
                                 f"size (saved shapes {found}, expected {expected})")
        bad = sorted(key for key, value in state.items() if not bool(torch.isfinite(value).all()))
        if bad:
            raise ModelLoadError(f"head {name!r} in {path} has non-finite values ({bad[0]})")
        head.load_state_dict(state)
        loaded.append(name)
    return loaded


def _saved_names(saved: dict) -> list[str]:
    return sorted({key.split(".", 1)[0] for key in saved})
