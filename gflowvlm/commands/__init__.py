"""One module per `gflowvlm` subcommand; each exposes `main(argv) -> int`."""
