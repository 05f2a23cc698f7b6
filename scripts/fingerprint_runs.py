"""A behaviour fingerprint of training: short runs of every algorithm on the tiny VLM, reduced to one JSON.

    PYTHONPATH=. python scripts/fingerprint_runs.py --out /tmp/fingerprint_before.json   # on the old code
    PYTHONPATH=. python scripts/fingerprint_runs.py --out /tmp/fingerprint_after.json    # on the new code
    cmp /tmp/fingerprint_before.json /tmp/fingerprint_after.json                          # must be identical

A refactor that must not change behaviour (the same config and seed give bitwise-identical weights and metrics)
is checked by running this before and after it. Each run builds a Trainer on a fresh tiny LLaVA (random weights,
built as tests/conftest.py's `tiny_vlm_dir` fixture builds it), trains 3 iterations on NumberLine with the tiny
settings of tests/test_trainer.py's FAST list, and records
    params:  sha256 of every trainable parameter's bytes after training (name -> "dtype shape sha256")
    metrics: metrics.jsonl's records minus timing keys (every key starting with "seconds")
The runs: subtb (replay, expert injection), tb, vartb (K=2), db, ppo and grpo (K=2) on env.reward=rl4vlm, subtb
with objective.prior_weight=1, sft (on data from sft_data.write_sft_data), and a few more paths a refactor of the
algorithms touches (gradient accumulation, the SFT anchor, GRPO's KL). One torch thread, so the reductions'
order, and so every bit, does not depend on the machine's load. Takes a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

FAST = ["env.id=gflowvlm/NumberLine-v0", "env.image_size=64", "env.num_envs=4", "env.max_steps=3",
        "generation.max_new_tokens=20", "logging.progress=false", "logging.save_every=100", "optim.batch_size=64",
        "model.lora_r=4", "model.head_hidden=[32]", "prompt.max_history_steps=2"]

# name -> overrides (on top of FAST, steps=3 and the model / output directory); "{sft}" is the SFT data file.
RUNS: dict[str, list[str]] = {
    "subtb": ["algorithm=subtb", "collect.replay_size=4", "collect.replay_samples=2", "collect.expert_injection=true"],
    "tb": ["algorithm=tb"],
    "vartb": ["algorithm=vartb", "collect.trajectories_per_task=2"],
    "db": ["algorithm=db"],
    "ppo": ["algorithm=ppo", "env.reward=rl4vlm"],
    "grpo": ["algorithm=grpo", "collect.trajectories_per_task=2", "env.reward=rl4vlm"],
    "subtb_prior": ["algorithm=subtb", "objective.prior_weight=1"],
    "sft": ["algorithm=sft", "sft.data={sft}", "optim.batch_size=8"],
    # further paths through the algorithms' code
    "subtb_grad_accum": ["algorithm=subtb", "optim.grad_accum=2", "objective.flow=forward_looking"],
    "tb_anchor": ["algorithm=tb", "anchor.coef=0.5", "anchor.data={sft}", "anchor.batch_size=4"],
    "ppo_anchor": ["algorithm=ppo", "env.reward=rl4vlm", "anchor.coef=0.5", "anchor.data={sft}",
                   "anchor.batch_size=4"],
    "grpo_kl": ["algorithm=grpo", "collect.trajectories_per_task=2", "env.reward=rl4vlm", "grpo.kl_coef=0.1"],
}


def tensor_digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()
    return f"{str(data.dtype).removeprefix('torch.')} {list(data.shape)} {digest}"


def run_one(name: str, overrides: list[str], model_dir: Path, work: Path, sft_data: Path) -> dict:
    from gflowvlm.config import load_config
    from gflowvlm.trainer import Trainer

    out = work / name
    config = load_config(None, FAST + ["steps=3", f"model.name_or_path={model_dir}", f"output_dir={out}"]
                         + [o.replace("{sft}", str(sft_data)) for o in overrides])
    trainer = Trainer(config)
    trainer.train()
    params = {n: tensor_digest(p) for n, p in trainer.policy.named_parameters() if p.requires_grad}
    metrics = [{k: v for k, v in json.loads(line).items() if not k.startswith("seconds")}
               for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"params": params, "metrics": metrics}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--only", nargs="*", help="run only these (names of RUNS)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from gflowvlm.model.corpus import build_corpus
    from gflowvlm.model.tiny_vlm import build_tiny_vlm, save_tiny_vlm
    from gflowvlm.sft_data import write_sft_data

    names = args.only or list(RUNS)
    with tempfile.TemporaryDirectory(prefix="fingerprint-") as tmp:
        work = Path(tmp)
        model, processor = build_tiny_vlm("llava", image_size=64, seed=0, corpus=build_corpus(episodes_per_env=5))
        save_tiny_vlm(model, processor, work / "tiny-vlm")
        sft_data = write_sft_data("gflowvlm/NumberLine-v0", work / "sft.jsonl", 40, image_size=64, progress=False,
                                  done_fraction=0.2)
        result = {}
        for name in names:
            print(f"fingerprint: {name}", file=sys.stderr, flush=True)
            result[name] = run_one(name, RUNS[name], work / "tiny-vlm", work / "runs", sft_data)
    text = json.dumps(result, indent=1, sort_keys=True)
    Path(args.out).write_text(text + "\n")
    print(hashlib.sha256(text.encode()).hexdigest(), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
