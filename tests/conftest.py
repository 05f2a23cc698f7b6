"""Test-wide settings.

One torch thread per test process: the suite runs as two pytest-xdist workers on a 2-core machine, and tiny
matmuls with two threads each were measured 10-100x slower under that load than with one.
"""
import os

import torch

os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory):
    """A tiny LLaVA saved as an ordinary Hugging Face directory (random weights), built once per test process."""
    from gflowvlm.model.corpus import build_corpus
    from gflowvlm.model.tiny_vlm import build_tiny_vlm, save_tiny_vlm

    directory = tmp_path_factory.mktemp("tiny-vlm")
    model, processor = build_tiny_vlm("llava", image_size=32 * 2, seed=0, corpus=build_corpus(episodes_per_env=5))
    save_tiny_vlm(model, processor, directory)
    return str(directory)


@pytest.fixture(scope="module")
def corpus():
    """A small tokenizer corpus (one oracle episode per env): enough vocabulary for tiny test models."""
    from gflowvlm.model.corpus import build_corpus

    return build_corpus(episodes_per_env=1, seed=0)
