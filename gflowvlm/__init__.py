"""gflowvlm: fine-tune vision-language models as multi-step agents with GFlowNet objectives."""
__version__ = "0.1.0"
