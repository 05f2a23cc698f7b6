"""Watching the share of responses that name an admissible action while a run trains.

When a policy stops writing parseable responses, every action it takes comes from the fallback (random, or an
illegal no-op), its trajectories stop saying anything about the model, and a GFlowNet objective can keep
"improving" on them: a SubTB run on Blackjack fell from ~100% to near 0% parse rate in 20 iterations while its
loss grew 100x. The trainer therefore warns (once per collapse) when the moving average over the last `window`
iterations falls below `warn_below`, and stops the run when it falls below `stop_below` (off by default).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class ParseRateWatch:
    warn_below: float = 0.2
    stop_below: float = 0.0
    window: int = 5
    history: deque = field(default_factory=deque)
    warned: bool = False

    def update(self, parse_rate: float, step: int) -> tuple[str | None, bool]:
        """(a warning to print or None, whether to stop) after iteration `step` with this `parse_rate`."""
        self.history.append(float(parse_rate))
        while len(self.history) > self.window:
            self.history.popleft()
        if len(self.history) < self.window:
            return None, False
        mean = sum(self.history) / len(self.history)
        if mean < self.stop_below:
            return (f"step {step}: the parse rate averaged {mean:.2f} over the last {self.window} iterations, below "
                    f"collect.stop_below_parse_rate={self.stop_below}: stopping (the fallback, not the model, is "
                    "acting; lower optim.lr or check the samples/ transcripts)"), True
        if mean < self.warn_below and not self.warned:
            self.warned = True
            return (f"warning: step {step}: only {100 * mean:.0f}% of responses named an admissible action over the "
                    f"last {self.window} iterations (collect.warn_below_parse_rate={self.warn_below}); the "
                    "fallback is choosing the actions (see samples/)"), False
        if mean >= self.warn_below:
            self.warned = False  # recovered: warn again at the next collapse
        return None, False
