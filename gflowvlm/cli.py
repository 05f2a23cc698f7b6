"""The `gflowvlm` command line. Each subcommand lives in its own module and is imported only when used, so
`gflowvlm --help` is instant and a missing optional extra only matters for the subcommand that needs it.

Errors a user can cause (bad config, missing file, unknown env id, broken checkpoint) end as ONE line on stderr with
exit code 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from gflowvlm.errors import UserError  # also re-exported: gflowvlm.cli.UserError is the same class

# name -> (module:function taking argv and returning an exit code, one-line help)
COMMANDS = {
    "train": ("gflowvlm.commands.train:main", "train with a config (tb, vartb, subtb, db, ppo, grpo, sft)"),
    "eval": ("gflowvlm.commands.evaluate:main", "evaluate a checkpoint or model on an environment split"),
    "compare": ("gflowvlm.commands.compare:main", "compare runs: markdown table and PNG plots"),
    "play": ("gflowvlm.commands.play:main", "play episodes with the oracle and save images + transcript"),
    "make-tiny-model": ("gflowvlm.model.tiny_vlm:make_tiny_model_main", "build the built-in tiny VLM"),
    "make-sft-data": ("gflowvlm.commands.make_sft_data:main", "write oracle SFT data (JSONL + images)"),
    "alfworld": ("gflowvlm.commands.alfworld:main", "ALFWorld tools: `alfworld generate` games"),
    "reproduce": ("gflowvlm.commands.reproduce:main", "every (method, seed) cell of a recipe: results, report, plots"),
    "demo": ("gflowvlm.commands.demo:main", "the end-to-end CPU demo: tiny VLM, SFT, SubTB, eval, compare"),
}


# Commands whose numbers must repeat run to run: their thread count may not depend on the load (see threads.py).
REPEATABLE_COMMANDS = ("reproduce", "demo")


def _user_error_types() -> tuple[type[BaseException], ...]:
    from gflowvlm.config_schema import ConfigError

    return (UserError, ConfigError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="gflowvlm", description="Fine-tune vision-language models as agents with GFlowNet objectives.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<16} {text}" for name, (_, text) in COMMANDS.items()))
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] in ("-V", "--version"):
        from gflowvlm import __version__

        print(f"gflowvlm {__version__}")
        return 0
    namespace = parser.parse_args(argv[:1])
    # Before any subcommand imports torch: its OpenMP pool reads the thread count and wait policy once.
    from gflowvlm.threads import configure_threads

    configure_threads(measure_load=namespace.command not in REPEATABLE_COMMANDS)
    _quiet_libraries()
    target, _ = COMMANDS[namespace.command]
    module_name, function_name = target.split(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        return int(function(argv[1:]) or 0)
    except _user_error_types() as error:
        print(f"gflowvlm {namespace.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gflowvlm {namespace.command}: interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Our own tqdm bars report progress; library bars and import-time notices would bury them."""
    import logging
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # peft asks transformers 5 for a deprecated attribute on every adapter load; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        if getattr(error, "filename", None):
            text = f"{error.strerror or 'cannot open'}: {error.filename}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
