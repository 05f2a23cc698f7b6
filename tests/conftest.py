"""Test-wide settings.

One torch thread per test process: the suite runs as two pytest-xdist workers on a 2-core machine, and tiny
matmuls with two threads each were measured 10-100x slower under that load than with one.
"""
import os

import torch

os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(1)
