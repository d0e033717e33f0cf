"""Linear probes: what a frozen encoder's features say about a task.

The *feature-based* way to use a pre-trained encoder (Devlin et al., 2019, §5.3)
keeps every encoder weight fixed, computes one vector per input, and trains only
a linear classifier on those vectors. Because the classifier is a convex problem,
its result depends on the features and the labelled examples alone, not on a
learning-rate schedule or an initialisation, which makes it a clean measure of
what pre-training stored.

    mean_pooled_features   frozen encoder -> one mean-pooled vector per input
    LinearProbe            L2-regularised multinomial logistic regression,
                           fitted to its optimum with L-BFGS
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from plmkit.models.bert import mean_pool

__all__ = ["mean_pooled_features", "LinearProbe"]


def mean_pooled_features(encoder: torch.nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor,
                         batch_size: int = 200) -> torch.Tensor:
    """Mean-pooled last hidden states (N, H) of a frozen encoder, in eval mode, without gradients.

    `encoder(ids, attention_mask=...)` must return (B, T, H); padding positions
    (attention_mask 0) are left out of the mean. The encoder's train/eval mode is
    restored afterwards.
    """
    if ids.shape != attention_mask.shape or ids.dim() != 2:
        raise ValueError(f"ids and attention_mask must both be (N, T), got {tuple(ids.shape)} "
                         f"and {tuple(attention_mask.shape)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(ids), batch_size):
                x, m = ids[i:i + batch_size].to(device), attention_mask[i:i + batch_size].to(device)
                out.append(mean_pool(encoder(x, attention_mask=m).float(), m).cpu())   # (b, H)
    finally:
        encoder.train(was_training)
    return torch.cat(out)


class LinearProbe:
    """Multinomial logistic regression with an L2 penalty, fitted with L-BFGS.

    Minimises  mean cross-entropy + l2/2 * ||W||^2  (the bias is not penalised)
    over features standardised with the training set's mean and standard
    deviation. The objective is strictly convex in W, so the fit is the unique
    optimum, reached to `tol` on the gradient.

    >>> X = torch.tensor([[0.0], [1.0], [2.0], [3.0]]); y = torch.tensor([0, 0, 1, 1])
    >>> LinearProbe().fit(X, y).predict(X).tolist()
    [0, 0, 1, 1]
    """

    def __init__(self, l2: float = 0.1, max_iter: int = 500, tol: float = 1e-6):
        if not l2 > 0:
            raise ValueError(f"l2 must be > 0 (it makes the optimum unique), got {l2!r}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol!r}")
        self.l2, self.max_iter, self.tol = float(l2), max_iter, float(tol)
        self.weight = self.bias = None

    def _standardise(self, X: torch.Tensor) -> torch.Tensor:
        return (X.double() - self.mean) / self.std

    def objective(self, X: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The regularised loss at (weight, bias) on raw features X (standardised inside)."""
        logits = self._standardise(X) @ weight.T + bias
        return F.cross_entropy(logits, y) + 0.5 * self.l2 * weight.pow(2).sum()

    def fit(self, X: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> "LinearProbe":
        """Fit on features X (N, H) and integer labels y (N,); returns self."""
        if X.dim() != 2 or y.dim() != 1 or len(X) != len(y) or len(y) == 0:
            raise ValueError(f"X must be (N, H) and y (N,) with N > 0, got {tuple(X.shape)} and {tuple(y.shape)}")
        if not X.is_floating_point():
            raise ValueError(f"X must hold floating-point features, got {X.dtype}")
        if y.dtype not in (torch.int64, torch.int32) or int(y.min()) < 0:
            raise ValueError("y must hold non-negative integer class labels")
        k = int(y.max()) + 1 if num_classes is None else num_classes
        if not isinstance(k, int) or k < max(2, int(y.max()) + 1):
            raise ValueError(f"num_classes must be an int >= 2 and above every label (max {int(y.max())}), "
                             f"got {num_classes!r}")
        self.mean = X.double().mean(0)
        self.std = X.double().std(0, unbiased=False).clamp(min=1e-8)
        y = y.long()
        weight = torch.zeros(k, X.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=self.max_iter, tolerance_grad=self.tol,
                                tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = self.objective(X, y, weight, bias)
            loss.backward()
            return loss
        opt.step(closure)
        self.weight, self.bias = weight.detach(), bias.detach()
        return self

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """The most likely class of each row of X."""
        if self.weight is None:
            raise RuntimeError("LinearProbe.predict called before fit")
        if X.dim() != 2 or X.shape[1] != self.weight.shape[1]:
            raise ValueError(f"X must be (N, {self.weight.shape[1]}) like the features it was fitted on, "
                             f"got {tuple(X.shape)}")
        return (self._standardise(X) @ self.weight.T + self.bias).argmax(-1)

    def score(self, X: torch.Tensor, y: torch.Tensor) -> float:
        """Accuracy on (X, y)."""
        return (self.predict(X) == y).double().mean().item()
