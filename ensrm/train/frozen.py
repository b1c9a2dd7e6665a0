"""Frozen-encoder training: pooled features once, then K linear heads fitted in seconds.

With the encoder fixed, head k's Bradley–Terry loss depends on its weights only through the
feature difference of each pair, so the fit is a K-way weighted logistic regression on
``[pairs, hidden]`` differences. It is convex: with the L2 term the optimum does not depend on
the seeded initialisation, so heads differ through their bootstrap resamples (``bootstrap=True``).

Pooled features can be nearly constant per dimension (MiniLM's pooler output has a per-dimension
std of about 0.04), which makes the fit badly conditioned and the L2 term meaningless; the fit
therefore runs on standardised features and folds the scaling back into the head weights, so
the result is still a plain linear layer on the unmodified features.
"""

from __future__ import annotations

from typing import NamedTuple

from ensrm._optional import require
from ensrm.train.losses import bradley_terry_loss

torch = require("torch", "export")


class FittedHeads(NamedTuple):
    weight: torch.Tensor  # [K, hidden]
    bias: torch.Tensor  # [K]
    loss: float  # final training BT loss (without the L2 term)


def fit_heads(chosen, rejected, counts, init_weight, *, l2: float = 1e-3, max_iter: int = 200,
              center=None) -> FittedHeads:
    """Fit K heads on pooled features with full-batch L-BFGS.

    ``chosen``/``rejected`` are ``[pairs, hidden]`` features, ``counts`` ``[pairs, K]`` per-head
    sample weights, ``init_weight`` ``[K, hidden]`` (in units of standardised features). ``l2``
    (on standardised features) keeps separable data from sending the weights to infinity. The bias,
    which the loss cannot see, is set so that each head's mean
    reward over ``center`` (``[n, hidden]`` features, default: all training responses) is 0.

    >>> import torch
    >>> x = torch.randn(64, 8)
    >>> heads = fit_heads(x + 1, x, torch.ones(64, 2), torch.zeros(2, 8))
    >>> heads.weight.shape, heads.loss < 0.69
    (torch.Size([2, 8]), True)
    """
    responses = torch.cat([chosen, rejected]).double()  # [2 * pairs, hidden]
    scale = responses.std(dim=0).clamp_min(1e-6)  # [hidden]
    diff = (chosen - rejected).double() / scale  # [pairs, hidden], standardised (the mean cancels)
    weights = counts.double()  # [pairs, K]
    w = init_weight.detach().double().clone().requires_grad_(True)  # [K, hidden]
    optimizer = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")
    zeros = torch.zeros(diff.shape[0], w.shape[0], dtype=torch.float64)  # [pairs, K]

    def closure():
        optimizer.zero_grad()
        margins = diff @ w.T  # [pairs, K]
        loss = bradley_terry_loss(margins, zeros, weights) + 0.5 * l2 * (w * w).sum(dim=1).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        loss = float(bradley_terry_loss(diff @ w.T, zeros, weights))
        weight = w.detach() / scale  # [K, hidden], now applies to raw features
        reference = responses if center is None else center.double()  # [n, hidden]
        bias = -(reference @ weight.T).mean(dim=0)  # [K]
    return FittedHeads(weight.float(), bias.float(), loss)
