"""Per-sample attack losses on logits ``(B, K)`` with labels ``y`` ``(B,)``: larger = closer to fooled.

* :func:`cross_entropy` (APGD-CE);
* :func:`dlr` and :func:`dlr_targeted`: the Difference of Logits Ratio (Croce & Hein 2020), a margin divided
  by the spread of the top logits, so it does not change when the logits are rescaled (what defeats attacks on
  cross-entropy when a model saturates its softmax);
* :func:`margin`: ``z_y - max_{j != y} z_j``, positive while the sample is classified correctly (Square).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: keeps the DLR denominator away from zero when the top logits tie
DLR_GUARD = 1e-12


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B,)`` cross-entropy of each sample (to be maximised)."""
    return F.cross_entropy(logits, y, reduction="none")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B,)`` ``z_y - max_{j != y} z_j``: positive = still classified as ``y``."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - others


def _sorted(logits: torch.Tensor) -> torch.Tensor:
    return logits.sort(dim=1, descending=True).values


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B,)`` untargeted DLR ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)`` (to be maximised).

    ``pi`` orders the logits from the largest. Models with two classes have no third logit: the plain
    negative margin is used (it has the same sign and the same maximiser direction).
    """
    if logits.shape[1] < 3:
        return -margin(logits, y)
    top = _sorted(logits)
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + DLR_GUARD)


def dlr_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B,)`` targeted DLR ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` (to be maximised).

    With three classes ``z_pi4`` is missing and ``z_pi3`` alone is used; with two, the plain difference.
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    aimed = logits.gather(1, target[:, None]).squeeze(1)
    classes = logits.shape[1]
    if classes < 3:
        return aimed - true
    top = _sorted(logits)
    floor = top[:, 2] if classes == 3 else (top[:, 2] + top[:, 3]) / 2
    return -(true - aimed) / (top[:, 0] - floor + DLR_GUARD)
