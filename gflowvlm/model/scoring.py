"""Log-probabilities of responses from one teacher-forced forward (the quantities every objective is built from).

For a batch from `batching.build_score_batch`, the model's logits at position t-1 give log p(token t). Per sample:
the sum over response tokens overlapping the action value (`action_logp`), the sum over every other response
token including the final EOS (`cot_logp`), log P_F = action + cot_weight * CoT, log p([DONE] as the first
response token), and the final hidden state of the last prompt token (the heads' input).

Only the rows that are needed are normalised (log-softmax in float32 on response positions), so the cost of the
vocabulary dimension is paid once per response token, not per prompt or padding token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ScoreOutput:
    action_logp: torch.Tensor  # [N] sum of log p over response tokens overlapping the action value span
    cot_logp: torch.Tensor  # [N] sum of log p over all OTHER response tokens (thoughts, fields, JSON, EOS)
    log_pf: torch.Tensor  # [N] action_logp + cot_weight * cot_logp
    done_logp: torch.Tensor  # [N] log p([DONE] as the first response token | prompt)
    hidden: torch.Tensor  # [N, H] final hidden state at the last prompt token (input of the heads), float32
    action_tokens: torch.Tensor  # [N] counts
    cot_tokens: torch.Tensor  # [N]
    # [N, T] log p of each response token, left-aligned (token j of response i at [i, j]; 0 past its length):
    # for per-token objectives and checks. The sums above are over these.
    token_logp: torch.Tensor | None = None


def score_from_outputs(logits: torch.Tensor, last_hidden: torch.Tensor, batch: dict[str, Any], done_token_id: int,
                       cot_weight: float) -> ScoreOutput:
    """ScoreOutput from the logits of the last `logits.shape[1]` positions and the final hidden states."""
    input_ids = batch["model_inputs"]["input_ids"].to(logits.device)
    response_mask = batch["response_mask"].to(logits.device)
    action_mask = batch["action_mask"].to(logits.device)
    prompt_lengths = batch["prompt_lengths"].to(logits.device)
    n, width = input_ids.shape
    kept = logits.shape[1]
    start = width - kept  # logits[:, j] belong to position start + j and predict token start + j + 1
    if int(prompt_lengths.min()) - 1 < start:
        raise ValueError("the logits do not reach back to the last prompt token of every sample")
    rows = torch.arange(n, device=logits.device)

    targets = input_ids[:, start + 1:]
    scored = response_mask[:, start + 1:]
    token_logp = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)
    if bool(scored.any()):
        selected = logits[:, :-1][scored].float().log_softmax(-1)
        token_logp = token_logp.masked_scatter(scored, selected.gather(-1, targets[scored][:, None]).squeeze(-1))
    is_action = action_mask[:, start + 1:]
    action_logp = (token_logp * is_action).sum(1)
    cot_logp = (token_logp * (scored & ~is_action)).sum(1)

    last_prompt = prompt_lengths - 1
    lengths = scored.sum(1)
    columns = torch.arange(int(lengths.max()), device=logits.device)
    first = (last_prompt - start)[:, None]  # column of token_logp holding each response's first token
    index = (first + columns).clamp(min=0, max=max(token_logp.shape[1] - 1, 0))
    aligned = token_logp.gather(1, index) * (columns[None, :] < lengths[:, None]) if len(columns) else \
        token_logp.new_zeros((n, 0))
    done_logits = logits[rows, last_prompt - start].float()
    done_logp = done_logits.log_softmax(-1)[:, done_token_id]
    hidden = last_hidden[rows, last_prompt.to(last_hidden.device)].float()
    return ScoreOutput(
        action_logp=action_logp, cot_logp=cot_logp, log_pf=action_logp + cot_weight * cot_logp,
        done_logp=done_logp, hidden=hidden, action_tokens=is_action.sum(1),
        cot_tokens=(scored & ~is_action).sum(1), token_logp=aligned)
