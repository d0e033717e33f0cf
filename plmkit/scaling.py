"""Scaling laws: how loss falls with parameters N and training tokens D, and how to split a compute budget.

Hoffmann et al. (2022, "Chinchilla") model the final loss of a model of N
parameters trained on D tokens as

    L(N, D) = E + A / N**alpha + B / D**beta                      (their eq. 2)

E is the entropy of text that no model removes; the two other terms are what a
finite model and a finite data set leave on the table. Training costs about
C = 6 N D floating-point operations (2 per parameter per token forward, 4
backward; Kaplan et al., 2020), so for a budget C the best split minimises L
on the curve N D = C / 6, which has a closed form (``compute_optimal``).

This module has the three tools of the chapter:

    flops_6nd, training_flops_per_token    the cost of a run (rule of thumb and the count with attention)
    fit_chinchilla                         approach 3: fit (E, A, B, alpha, beta) to (N, D, L) runs
    isoflop_minimum, fit_power_law         approach 2: best N at each budget, then N_opt = k C**a

Approach 3 as in the paper: Huber loss (delta = 1e-3) between the predicted and
observed log-loss, with A = e**a, B = e**b, E = e**e and log L written as a
log-sum-exp, minimised by L-BFGS from a grid of starting points (we evaluate
the whole grid first and run L-BFGS from its best points; the paper ran all).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

__all__ = ["ScalingLaw", "CHINCHILLA", "flops_6nd", "training_flops_per_token", "huber", "chinchilla_objective",
           "fit_chinchilla", "compute_optimal", "isoflop_minimum", "fit_power_law"]


def _positive(name, value):
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.numel() == 0 or not bool(torch.all(t > 0)) or not bool(torch.all(torch.isfinite(t))):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return t


@dataclass(frozen=True)
class ScalingLaw:
    """L(N, D) = E + A / N**alpha + B / D**beta, with N in parameters and D in tokens."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, N, D):
        """Predicted loss for N parameters trained on D tokens (floats or tensors).

        >>> round(float(CHINCHILLA.loss(70e9, 1.4e12)), 3)
        1.937
        """
        N, D = _positive("N", N), _positive("D", D)
        return self.E + self.A / N ** self.alpha + self.B / D ** self.beta

    def compute_optimal(self, C, flops_per_param_token: float = 6.0):
        """(N_opt, D_opt) minimising the loss for C FLOPs with C = 6 N D; see ``compute_optimal``."""
        return compute_optimal(C, self, flops_per_param_token)


# The fitted coefficients as printed in Hoffmann et al. (2022), section D.2 (approach 3).
CHINCHILLA = ScalingLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


# ---------------------------------------------------------------- counting FLOPs
def flops_6nd(N, D):
    """Training FLOPs by the rule of thumb C = 6 N D (forward 2 N D, backward 4 N D).

    >>> f"{flops_6nd(70e9, 1.4e12):.2e}"          # Chinchilla
    '5.88e+23'
    """
    return 6.0 * _positive("N", N) * _positive("D", D)


def training_flops_per_token(*, n_layers: int, d_model: int, n_heads: int, seq_len: int, vocab_size: int,
                             d_ff: int, head_dim: int | None = None, n_kv_heads: int | None = None,
                             gated: bool = False) -> float:
    """Training FLOPs per token counted layer by layer (Hoffmann et al. 2022, appendix F), backward = 2 x forward.

    Counts the embedding lookup as a matmul, the q/k/v/out projections (k/v with
    n_kv_heads), the T x T attention logits, softmax (3 per entry) and weighted
    sum, the feed-forward (three matrices if gated), and the output logits.
    Attention's T x T terms are what 6 N leaves out; they grow with seq_len.

    >>> cfg = dict(n_layers=12, d_model=768, n_heads=12, seq_len=1024, vocab_size=50257, d_ff=3072)
    >>> f"{training_flops_per_token(**cfg):.3e}"
    '1.087e+09'
    """
    for name, v in (("n_layers", n_layers), ("d_model", d_model), ("n_heads", n_heads), ("seq_len", seq_len),
                    ("vocab_size", vocab_size), ("d_ff", d_ff)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    head_dim = head_dim or d_model // n_heads
    n_kv_heads = n_kv_heads or n_heads
    if n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads must divide n_heads = {n_heads}, got {n_kv_heads}")
    T, q_width, kv_width = seq_len, n_heads * head_dim, n_kv_heads * head_dim
    embeddings = 2 * T * vocab_size * d_model
    projections = 2 * T * d_model * (q_width + 2 * kv_width)            # q, k, v
    logits_qk = 2 * T * T * q_width                                      # q @ k^T for every head
    softmax = 3 * n_heads * T * T
    weighted_sum = 2 * T * T * q_width                                   # softmax @ v
    out_proj = 2 * T * q_width * d_model
    ffn = 2 * T * d_model * d_ff * (3 if gated else 2)
    output_logits = 2 * T * d_model * vocab_size
    forward = embeddings + n_layers * (projections + logits_qk + softmax + weighted_sum + out_proj + ffn) \
        + output_logits
    return 3.0 * forward / T                                             # forward + backward (2x), per token


# ---------------------------------------------------------------- approach 3: the parametric fit
def huber(residual: torch.Tensor, delta: float = 1e-3) -> torch.Tensor:
    """Quadratic for |r| <= delta, linear beyond: large residuals (outlier runs) pull less than in least squares.

    >>> huber(torch.tensor([0.0005, 0.01]), delta=1e-3)
    tensor([1.2500e-07, 9.5000e-06])
    """
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta!r}")
    r = residual.abs()
    return torch.where(r <= delta, 0.5 * r ** 2, delta * (r - 0.5 * delta))


def chinchilla_objective(params: torch.Tensor, N: torch.Tensor, D: torch.Tensor, L: torch.Tensor,
                         delta: float = 1e-3) -> torch.Tensor:
    """Sum over runs of Huber(log L_hat - log L), params (..., 5) = (a, b, e, alpha, beta), A = e**a etc.

    log L_hat = LSE(a - alpha log N, b - beta log D, e) is log(A/N**alpha + B/D**beta + E) computed stably.
    Works on a batch of parameter vectors (..., 5) at once, returning (...,).
    """
    a, b, e, alpha, beta = params.unbind(-1)
    logN, logD, logL = N.log(), D.log(), L.log()                         # (R,)
    terms = torch.stack([a[..., None] - alpha[..., None] * logN,
                         b[..., None] - beta[..., None] * logD,
                         e[..., None].expand(*e.shape, logN.shape[0])], dim=-1)   # (..., R, 3)
    log_pred = torch.logsumexp(terms, dim=-1)                            # (..., R)
    return huber(log_pred - logL, delta).sum(-1)


DEFAULT_GRID = dict(alpha=(0.0, 0.5, 1.0, 1.5, 2.0), beta=(0.0, 0.5, 1.0, 1.5, 2.0), e=(-1.0, -0.5, 0.0, 0.5, 1.0),
                    a=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0), b=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0))  # the paper's grid


def fit_chinchilla(N, D, L, *, delta: float = 1e-3, grid: dict | None = None, n_starts: int = 16,
                   max_iter: int = 500) -> ScalingLaw:
    """Fit L(N, D) = E + A/N**alpha + B/D**beta to runs (N_i, D_i, L_i) (Hoffmann et al. 2022, approach 3).

    The objective is evaluated on every point of ``grid`` (4500 starts by default);
    L-BFGS (float64, strong-Wolfe line search) runs from the ``n_starts`` best; the
    lowest final objective wins.
    """
    N, D, L = _positive("N", N).flatten(), _positive("D", D).flatten(), _positive("L", L).flatten()
    if not N.shape == D.shape == L.shape:
        raise ValueError(f"N, D and L must have the same number of runs, got {N.numel()}, {D.numel()}, {L.numel()}")
    if N.numel() < 5:
        raise ValueError(f"need at least 5 runs to fit 5 coefficients, got {N.numel()}")
    if not isinstance(n_starts, int) or n_starts < 1:
        raise ValueError(f"n_starts must be a positive int, got {n_starts!r}")
    g = {**DEFAULT_GRID, **(grid or {})}
    starts = torch.tensor(list(itertools.product(g["a"], g["b"], g["e"], g["alpha"], g["beta"])),
                          dtype=torch.float64)                            # (S, 5), order (a, b, e, alpha, beta)
    with torch.no_grad():
        order = chinchilla_objective(starts, N, D, L, delta).argsort()
    best, best_value = None, math.inf
    for start in starts[order[:n_starts]]:
        params = start.clone().requires_grad_()
        opt = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12,
                                tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            value = chinchilla_objective(params, N, D, L, delta)
            value.backward()
            return value

        opt.step(closure)
        with torch.no_grad():
            value = float(chinchilla_objective(params, N, D, L, delta))
        if math.isfinite(value) and value < best_value:
            best, best_value = params.detach().clone(), value
    a, b, e, alpha, beta = best.tolist()
    return ScalingLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


def compute_optimal(C, law: ScalingLaw = CHINCHILLA, flops_per_param_token: float = 6.0):
    """(N_opt, D_opt) minimising law.loss(N, D) subject to flops_per_param_token * N * D = C.

    Setting dL/dN = 0 along D = C / (6 N) gives

        N_opt = G (C/6)**(beta/(alpha+beta)),  D_opt = G**-1 (C/6)**(alpha/(alpha+beta)),
        G = (alpha A / (beta B))**(1/(alpha+beta)).

    >>> N, D = compute_optimal(5.76e23)          # Gopher's budget, the paper's printed coefficients
    >>> f"N_opt = {float(N):.3g}, D_opt = {float(D):.3g}, {float(D / N):.0f} tokens per parameter"
    'N_opt = 3.22e+10, D_opt = 2.98e+12, 93 tokens per parameter'
    """
    C = _positive("C", C)
    if not flops_per_param_token > 0:
        raise ValueError(f"flops_per_param_token must be > 0, got {flops_per_param_token!r}")
    s = law.alpha + law.beta
    G = (law.alpha * law.A / (law.beta * law.B)) ** (1.0 / s)
    budget = C / flops_per_param_token                                   # = N * D
    N_opt = G * budget ** (law.beta / s)
    return N_opt, budget / N_opt


# ---------------------------------------------------------------- approach 2: isoFLOP profiles
def isoflop_minimum(N, L):
    """Fit a parabola to loss against log N for runs of one budget; return (N at its minimum, loss there).

    >>> N = torch.tensor([1e6, 1e7, 1e8], dtype=torch.float64); L = 3 + (N.log10() - 7.2) ** 2
    >>> [round(float(v), 3) for v in isoflop_minimum(N, L)]
    [15848931.925, 3.0]
    """
    N, L = _positive("N", N).flatten(), torch.as_tensor(L, dtype=torch.float64).flatten()
    if N.numel() < 3 or N.shape != L.shape:
        raise ValueError(f"N and L must hold the same number (>= 3) of runs, got {N.numel()} and {L.numel()}")
    x = N.log10()
    X = torch.stack([x ** 2, x, torch.ones_like(x)], dim=1)
    c2, c1, c0 = torch.linalg.lstsq(X, L[:, None]).solution.flatten().tolist()
    if c2 <= 0:
        raise ValueError("the isoFLOP profile has no minimum (loss is not convex in log N): widen the sizes")
    x_min = -c1 / (2 * c2)
    return 10.0 ** x_min, c0 - c1 ** 2 / (4 * c2)


def fit_power_law(x, y):
    """Least squares in log-log: y = k * x**a; returns (k, a).

    >>> k, a = fit_power_law([1e18, 1e19, 1e20], [1e8, 10 ** 8.5, 1e9]); round(a, 3)
    0.5
    """
    x, y = _positive("x", x).flatten(), _positive("y", y).flatten()
    if x.numel() < 2 or x.shape != y.shape:
        raise ValueError(f"x and y must hold the same number (>= 2) of points, got {x.numel()} and {y.numel()}")
    X = torch.stack([x.log(), torch.ones_like(x)], dim=1)
    a, log_k = torch.linalg.lstsq(X, y.log()[:, None]).solution.flatten().tolist()
    return math.exp(log_k), a
