"""Launch tests/helpers/distributed_train.py on two real CPU ranks (gloo) with `accelerate launch`."""
import json
import os
import subprocess
import sys
from pathlib import Path

HELPER = Path(__file__).with_name("distributed_train.py")
REPO = Path(__file__).resolve().parents[2]


def launch_two_ranks(launch_args, overrides, output_dir, timeout=600):
    """`accelerate launch LAUNCH_ARGS --num_processes 2 distributed_train.py OVERRIDES` with ACCELERATE_USE_CPU=1;
    returns the two ranks' records. The launched script imports this checkout's gflowvlm (PYTHONPATH), whatever
    the environment has installed."""
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", *launch_args, "--num_processes", "2", "--num_machines", "1",
               "--dynamo_backend", "no", "--main_process_port", "0", str(HELPER), *overrides,
               f"output_dir={output_dir}"]
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", WANDB_MODE="disabled",
               PYTHONPATH=python_path)
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((Path(output_dir) / f"rank{r}.json").read_text()) for r in (0, 1)]
