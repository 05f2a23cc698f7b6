"""Thread settings: the pure decision (cores, load, environment -> settings), user settings winning, and the start-up
path that applies them before torch is imported."""
import json
import os
import subprocess
import sys

from gflowvlm.threads import available_cpus, busy_cores, cgroup_cpu_limit, configure_threads, decide

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "GFLOWVLM_NUM_THREADS",
               "LOCAL_WORLD_SIZE")
CLEAN = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}  # this environment without thread variables


def test_idle_machine_takes_every_core_and_sleeping_waits():
    settings = decide(2, 0.0, {})
    assert settings.threads == 2
    assert settings.env == {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}


def test_busy_cores_are_left_to_their_owners():
    assert decide(2, 1.0, {}).threads == 1  # a busy loop on one of two cores
    assert decide(2, 0.95, {}).threads == 1
    assert decide(2, 0.3, {}).threads == 2  # light background work rounds away
    assert decide(2, 2.0, {}).threads == 1  # never zero
    assert decide(16, 5.2, {}).threads == 11


def test_ranks_of_one_node_split_the_cores():
    assert decide(16, 0.0, {"LOCAL_WORLD_SIZE": "4"}).threads == 4
    # the three sibling ranks, busy importing, are not counted against the cores again
    assert decide(16, 3.0, {"LOCAL_WORLD_SIZE": "4"}).threads == 4
    assert decide(16, 7.0, {"LOCAL_WORLD_SIZE": "4"}).threads == 3
    assert decide(2, 0.0, {"LOCAL_WORLD_SIZE": "8"}).threads == 1


def test_a_cpu_quota_caps_the_threads():
    assert decide(64, 40.0, {}, quota=8).threads == 8  # the host's other 24 CPUs are free, the quota is 8
    assert decide(64, 60.0, {}, quota=8).threads == 4
    assert decide(4, 0.0, {}, quota=None).threads == 4


def test_the_users_thread_count_wins():
    settings = decide(2, 2.0, {"OMP_NUM_THREADS": "2"})
    assert settings.threads == 2 and "OMP_NUM_THREADS" not in settings.env and "user" in settings.reason
    settings = decide(2, 0.0, {"MKL_NUM_THREADS": "1"})
    assert settings.threads == 1 and "OMP_NUM_THREADS" not in settings.env
    assert decide(2, 0.0, {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "1"}).threads == 1  # torch reads MKL's first
    # the project's own knob is the most specific and beats both (accelerate sets OMP_NUM_THREADS itself)
    settings = decide(2, 0.0, {"OMP_NUM_THREADS": "1", "GFLOWVLM_NUM_THREADS": "3"})
    assert settings.threads == 3
    assert settings.env["OMP_NUM_THREADS"] == settings.env["MKL_NUM_THREADS"] == "3"


def test_a_bad_project_knob_is_ignored_and_said_so():
    settings = decide(2, 0.0, {"GFLOWVLM_NUM_THREADS": "many"})
    assert settings.threads == 2 and "ignored" in settings.reason
    assert decide(2, 0.0, {"GFLOWVLM_NUM_THREADS": "0"}).threads == 2


def test_the_users_wait_policy_wins():
    assert "OMP_WAIT_POLICY" not in decide(2, 0.0, {"OMP_WAIT_POLICY": "ACTIVE"}).env
    assert "OMP_WAIT_POLICY" not in decide(2, 0.0, {"GOMP_SPINCOUNT": "1000"}).env
    assert decide(2, 0.0, {"OMP_NUM_THREADS": "2"}).env == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_too_late_once_torch_is_imported():
    """The suite imported torch (conftest): nothing is decided or written."""
    environ = {}
    settings = configure_threads(environ)
    assert settings.threads is None and settings.env == {} and "already imported" in settings.reason
    assert environ == {}


def test_measurements_are_in_range(tmp_path):
    cpus = available_cpus()
    assert cpus and all(isinstance(c, int) for c in cpus)
    assert 0.0 <= busy_cores(cpus, seconds=0.05) <= len(cpus)
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(str(tmp_path)) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(str(tmp_path)) is None


def _run(code: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_settings_reach_torch_in_a_fresh_process():
    code = ("import json, os\n"
            "from gflowvlm.threads import configure_threads\n"
            "settings = configure_threads()\n"
            "import torch\n"
            "print(json.dumps({'chosen': settings.threads, 'torch': torch.get_num_threads(),\n"
            "                  'wait': os.environ.get('OMP_WAIT_POLICY')}))")
    auto = _run(code, CLEAN)
    assert auto["torch"] == auto["chosen"] and 1 <= auto["chosen"] <= len(available_cpus())
    assert auto["wait"] == "PASSIVE"
    # as many ranks as CPUs: the automatic choice is 1, so 2 can only come from the user, whose wait policy stays
    ranks = {"LOCAL_WORLD_SIZE": str(len(available_cpus()))}
    assert _run(code, {**CLEAN, **ranks})["torch"] == 1
    user = _run(code, {**CLEAN, **ranks, "GFLOWVLM_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"})
    assert user == {"chosen": 2, "torch": min(2, os.cpu_count()), "wait": "ACTIVE"}  # torch caps at the cores


def test_the_command_line_configures_before_torch():
    code = ("import json, os, sys\n"
            "import gflowvlm.threads as threads\n"
            "from gflowvlm import cli\n"
            "seen = {}\n"
            "original = threads.configure_threads\n"
            "def spy(**options):\n"
            "    seen['torch_loaded'] = 'torch' in sys.modules\n"
            "    return original(**options)\n"
            "threads.configure_threads = spy\n"
            "code = cli.main(['compare', '--smoothing', '5', 'no-such-run'])\n"
            "print(json.dumps({'code': code, **seen, 'wait': os.environ.get('OMP_WAIT_POLICY'),\n"
            "                  'threads': os.environ.get('OMP_NUM_THREADS')}))")
    result = _run(code, CLEAN)
    assert result["code"] == 2  # the bad option is still reported as a user error
    assert result["torch_loaded"] is False
    assert result["wait"] == "PASSIVE" and int(result["threads"]) >= 1


def test_repeatable_commands_take_every_core_whatever_the_load(monkeypatch):
    """reproduce/demo: the thread count changes a run's numbers, so the momentary load may not choose it."""
    import gflowvlm.threads as threads

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda: [0, 1])
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    monkeypatch.setattr(threads, "busy_cores", lambda cpus, seconds=0.2: 1.7)
    loaded, fixed = {}, {}
    assert threads.configure_threads(loaded).threads == 1
    assert threads.configure_threads(fixed, measure_load=False).threads == 2
    assert fixed["OMP_NUM_THREADS"] == "2" and fixed["OMP_WAIT_POLICY"] == "PASSIVE"
