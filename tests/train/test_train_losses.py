"""The Bradley–Terry loss and the held-out metrics against hand-computed cases."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ensrm.train.losses import bradley_terry_loss  # noqa: E402
from ensrm.train.metrics import pairwise_metrics  # noqa: E402

# -logsigmoid(m) = log(1 + exp(-m)), written out for each margin used below:
#   m =  1: log(1 + 1/e)   = 0.3132616875
#   m =  0: log(2)         = 0.6931471806
#   m =  2: log(1 + e^-2)  = 0.1269280110
#   m = -2: log(1 + e^2)   = 2.1269280110
CHOSEN = [[1.0, 0.0], [2.0, -1.0]]
REJECTED = [[0.0, 0.0], [0.0, 1.0]]  # margins [[1, 0], [2, -2]]


def test_bt_loss_is_mean_over_pairs_and_heads():
    loss = bradley_terry_loss(torch.tensor(CHOSEN), torch.tensor(REJECTED))
    # (0.3132616875 + 0.6931471806 + 0.1269280110 + 2.1269280110) / 4
    assert float(loss) == pytest.approx(0.8150662225, abs=1e-7)


def test_bt_loss_with_per_head_weights():
    weights = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    loss = bradley_terry_loss(torch.tensor(CHOSEN), torch.tensor(REJECTED), weights)
    # (2 * 0.3132616875 + 0 * 0.6931471806 + 0.1269280110 + 2.1269280110) / 4
    assert float(loss) == pytest.approx(0.7200948493, abs=1e-7)


def test_bt_loss_gradient_pushes_chosen_up():
    chosen = torch.tensor([[0.0]], requires_grad=True)
    bradley_terry_loss(chosen, torch.tensor([[0.0]])).backward()
    assert float(chosen.grad) == pytest.approx(-0.5)  # d/dm log(1 + e^-m) at m = 0 is -sigmoid(0)


def test_bt_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[batch, K\]"):
        bradley_terry_loss(torch.zeros(3, 2), torch.zeros(3, 1))


def test_pairwise_metrics_hand_case():
    chosen = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    rejected = np.array([[1.0, 1.0], [0.0, 2.0], [1.0, 0.0]])
    m = pairwise_metrics(chosen, rejected, uwo_lambda=0.5)
    # head 0 margins 1, 1, -1; head 1 margins -1, -1, 3
    assert m["per_head_accuracy"] == pytest.approx([2 / 3, 1 / 3])
    # mean: 1 vs 1 (tie), 1 vs 1 (tie), 1.5 vs 0.5 -> (0.5 + 0.5 + 1) / 3
    assert m["accuracy"]["mean"] == pytest.approx(2 / 3)
    # min: 0 vs 1, 1 vs 0, 0 vs 0 (tie) -> (0 + 1 + 0.5) / 3
    assert m["accuracy"]["wco"] == pytest.approx(0.5)
    # mean - 0.5 * var: chosen 0.5, 1, 0.375; rejected 1, 0.5, 0.375 -> (0 + 1 + 0.5) / 3
    assert m["accuracy"]["uwo"] == pytest.approx(0.5)
    assert m["spread"]["head_accuracy_range"] == pytest.approx(1 / 3)
    assert m["spread"]["disagreement_rate"] == pytest.approx(1.0)
    # std across the two heads of the six responses: 1, 0, 1.5, 0, 1, 0.5
    assert m["spread"]["mean_head_std"] == pytest.approx(4 / 6)
