"""A user's own environment, defined here and registered with gymnasium, trains with every algorithm without any
change to gflowvlm: the environment contract (envs/base.py) is all the trainer relies on."""
import gymnasium as gym
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from envs.base import VLMEnv
from gflowvlm.config import load_config
from gflowvlm.trainer import Trainer

ENV_ID = "usertest/PickColour-v0"


class PickColourEnv(VLMEnv):
    """Name the colour of the square, then stop: two steps, rewards known in advance."""

    COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220)}

    def default_max_steps(self) -> int:
        return 2

    def _reset_state(self, options):
        self.colour = str(self.np_random.choice(sorted(self.COLOURS)))
        self.said = None
        self.stopped = False

    def task(self) -> str:
        return "Say the colour of the square, then stop."

    def state_text(self) -> str:
        return f"you said {self.said or 'nothing'}"

    def admissible_actions(self) -> list[str]:
        return ["stop"] if self.said else sorted(self.COLOURS)

    def _apply(self, command: str):
        if command == "stop":
            self.stopped = True
            return float(self.said == self.colour), True
        self.said = command
        return 0.0, False

    def log_reward(self) -> float:
        return float(np.log(5.0 if self.said == self.colour else 1.0))

    def is_success(self) -> bool:
        return self.stopped and self.said == self.colour

    def draw(self) -> np.ndarray:
        image = Image.new("RGB", (self.image_size, self.image_size), "white")
        margin = self.image_size // 4
        ImageDraw.Draw(image).rectangle([margin, margin, 3 * margin, 3 * margin], fill=self.COLOURS[self.colour])
        return np.asarray(image, dtype=np.uint8).copy()

    def expert_action(self) -> str:
        return "stop" if self.said else self.colour

    def expert_thoughts(self) -> str:
        return "I have named it." if self.said else f"The square is {self.colour}."


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=PickColourEnv)


@pytest.mark.parametrize("algorithm, extra", [
    ("tb", []), ("vartb", ["collect.trajectories_per_task=2"]), ("subtb", ["objective.flow=done"]),
    ("subtb", ["objective.flow=forward_looking"]), ("db", ["objective.flow=head"]), ("ppo", ["env.reward=rl4vlm"]),
])
def test_every_algorithm_trains_on_a_user_env(tiny_vlm_dir, tmp_path, algorithm, extra):
    config = load_config(None, [
        f"algorithm={algorithm}", f"env.id={ENV_ID}", "env.image_size=64", "env.num_envs=2", "steps=2",
        f"model.name_or_path={tiny_vlm_dir}", f"output_dir={tmp_path}", "generation.max_new_tokens=16",
        "logging.progress=false", "model.lora_r=4", "model.head_hidden=[32]", "ppo.minibatch_size=2",
        "ppo.epochs=1", "collect.expert_injection=true", *extra])
    trainer = Trainer(config)
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.policy.named_parameters() if n in before)
    metrics = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and '"loss": NaN' not in metrics[-1]
