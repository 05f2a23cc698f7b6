"""Token strings shared by the model code and the data code, in a module light enough for either to import (the
SFT data writer does not load transformers)."""
from __future__ import annotations

# The paper's termination token: one ordinary (non-special) added token that the policy scores and decoding keeps.
DONE_TOKEN = "[DONE]"
