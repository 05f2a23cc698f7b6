"""`python -m gflowvlm ...` and `accelerate launch -m gflowvlm ...` enter here."""
import sys

from gflowvlm.cli import main

sys.exit(main())
