"""The argument parser every subcommand uses."""
from __future__ import annotations

import argparse

from gflowvlm.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse's usage errors become a UserError: one line on stderr, exit code 2 (as every other bad input)."""

    def error(self, message: str):
        raise UserError(message)
