"""ALFWorld for gflowvlm: generated household games played on the real ALFWorld engine.

- `generator`: `gflowvlm alfworld generate` (games in the official format, verified by the planner);
- `env.ALFWorldEnv`: `gflowvlm/ALFWorld-v0`; `batch.ALFWorldBatch`: several games stepped together;
- `engine`: the lazy door to the optional `alfworld` extra (`pip install 'gflowvlm[alfworld]'`).

Nothing here imports alfworld at import time; a missing extra surfaces as `AlfworldMissingError`.
"""
from envs.alfworld.engine import INSTALL_HINT, AlfworldMissingError, require_alfworld

__all__ = ["INSTALL_HINT", "AlfworldMissingError", "require_alfworld"]
