"""`gflowvlm alfworld generate ...`: procedurally generated ALFWorld games for the real engine."""
from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gflowvlm alfworld")
    parser.add_argument("action", choices=["generate"], help="what to do")
    parser.parse_args(argv[:1])
    from envs.alfworld.generator import generate_main

    return generate_main(argv[1:])
