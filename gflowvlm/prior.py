"""A prior over responses in the GFlowNet target: sample trajectories with probability proportional to
R(x)^beta * P_ref(x)^alpha instead of R(x)^beta, P_ref = the run's starting policy (the SFT model) scoring the same
responses, P_ref(x) = prod_t P_ref(r_t | z_t) (with the same cot_weight as log P_F).

Why: a sequence of text steps has astronomically many variants. Under the plain target every unparseable reply
still earns the floor reward (R = 1e-10 on these envs), and there are so many of them that their total mass
dwarfs that of well-formed play: the balance objectives then *raise* the probability of garbage, which is what the
tiny Blackjack runs show (the parse rate falls from 0.9 to 0.0; results/tiny/ablations/). With the prior a reply
the SFT model would never write gets P_ref ~ 0 and so no target mass, while among the replies it would write the
target reweights by reward. alpha = 1 is the KL-regularised RL optimum pi* ~ pi_ref exp(beta log R) (the target
gfn-lm-tuning's rewards take: a language model's likelihood times a task term).

How: the prior enters every balance condition through the transitions alone. With R'(z_{0:i}) =
R(z_{0:i}) prod_{t<i} P_ref(r_t)^alpha P_ref([DONE] | z_i)^alpha for the [DONE] flows, each of TB, Var-TB,
SubTB(lambda) and DB over (log P_F, log R) with R' equals the same objective over (log P_F - alpha log P_ref,
log R): the partial products cancel between the two ends of every (sub)trajectory. So `tilt` is applied to the
per-step log P_F and to log P([DONE] | z) before the objectives, and the objectives themselves stay as they are.
tests/test_prior.py checks this identity against a brute-force transcription of the tilted-reward formulas.
"""
from __future__ import annotations

from torch import Tensor


def tilt(log_prob: Tensor, reference_log_prob: Tensor, weight: float) -> Tensor:
    """log P_F - weight * log P_ref, elementwise (any shape, the two alike); weight = objective.prior_weight."""
    if log_prob.shape != reference_log_prob.shape:
        raise ValueError(f"log_prob and reference_log_prob must have one shape, got {tuple(log_prob.shape)} and "
                         f"{tuple(reference_log_prob.shape)}")
    return log_prob - weight * reference_log_prob.detach()
