"""The Bradley–Terry loss for K reward heads at once."""

from __future__ import annotations

from ensrm._optional import require

torch = require("torch", "export")
F = torch.nn.functional


def bradley_terry_loss(r_chosen, r_rejected, weights=None):
    """Mean over pairs and heads of ``w * -logsigmoid(r_chosen - r_rejected)``.

    ``r_chosen`` and ``r_rejected`` are ``[batch, K]`` rewards; ``weights`` (``[batch, K]``,
    optional) are per-head sample weights such as bootstrap counts, whose mean over the
    training set is 1, so the weighted loss has the scale of the plain one.

    >>> import torch
    >>> round(float(bradley_terry_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]))), 4)
    0.3133
    """
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 2:
        raise ValueError(f"rewards must both be [batch, K]; got {tuple(r_chosen.shape)} and {tuple(r_rejected.shape)}")
    losses = F.softplus(r_rejected - r_chosen)  # [batch, K]; softplus(-m) == -logsigmoid(m), stable
    if weights is not None:
        losses = losses * weights
    return losses.mean()
