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
    tiny_llama_config, stream_batches,     measuring a grid point: one model trained once on
    train_and_evaluate                     D tokens never seen twice, scored on held-out text

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
           "fit_chinchilla", "compute_optimal", "isoflop_minimum", "fit_power_law",
           "tiny_llama_config", "non_embedding_parameters", "stream_batches", "train_and_evaluate",
           "closest_config", "run_grid"]


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


# ---------------------------------------------------------------- measuring one point of a grid
def tiny_llama_config(vocab_size: int, d_model: int, n_layers: int = 2, head_dim: int = 16, *,
                      max_position_embeddings: int = 1024, **overrides):
    """A small LLaMA for scaling runs: heads of width `head_dim`, SwiGLU width 8/3 d rounded up to a multiple of 8.

    >>> cfg = tiny_llama_config(vocab_size=100, d_model=48)
    >>> cfg.num_attention_heads, cfg.intermediate_size
    (3, 128)
    """
    from .models.llama import LlamaConfig

    if not isinstance(d_model, int) or d_model < head_dim or d_model % head_dim:
        raise ValueError(f"d_model must be a positive multiple of head_dim={head_dim}, got {d_model!r}")
    d_ff = -(-8 * d_model // 3 // 8) * 8
    return LlamaConfig(**{**dict(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_ff,
                                 num_hidden_layers=n_layers, num_attention_heads=d_model // head_dim,
                                 max_position_embeddings=max_position_embeddings), **overrides})


def non_embedding_parameters(config) -> int:
    """Parameters outside the token embedding and the LM head (Kaplan et al.'s N); the count scaling laws use."""
    embeddings = config.vocab_size * config.hidden_size * (1 if config.tie_word_embeddings else 2)
    return config.num_parameters() - embeddings


def stream_batches(ids: torch.Tensor, block_size: int, batch_size: int, offset: int = 0):
    """Consecutive, non-overlapping windows of a token stream, in order: no token is trained on twice.

    Yields (x, y) pairs (B, T); raises ValueError when the stream runs out.

    >>> x, y = next(stream_batches(torch.arange(20), block_size=4, batch_size=2))
    >>> x.tolist(), y[0].tolist()
    ([[0, 1, 2, 3], [4, 5, 6, 7]], [1, 2, 3, 4])
    """
    if ids.ndim != 1:
        raise ValueError(f"ids must be a 1-D token stream, got shape {tuple(ids.shape)}")
    start = offset
    while True:
        end = start + batch_size * block_size
        if end + 1 > len(ids):
            raise ValueError(f"the stream of {len(ids)} tokens ran out at offset {start}: ask for fewer tokens")
        chunk = ids[start:end + 1]
        x = chunk[:-1].view(batch_size, block_size)
        y = chunk[1:].view(batch_size, block_size)
        yield x, y
        start = end


def train_and_evaluate(config, train_ids: torch.Tensor, val_ids: torch.Tensor, tokens: int, *, batch_size: int = 16,
                       block_size: int = 64, lr: float = 3e-3, seed: int = 0, offset: int = 0,
                       eval_tokens: int = 20_000, device: str | torch.device | None = None) -> dict:
    """Train a fresh model of `config` on `tokens` tokens (rounded down to whole steps) of `train_ids`, read once
    from `offset`, with AdamW and a cosine schedule that ends with the run; return its held-out loss.

    Returns {'N' (non-embedding parameters), 'D' (tokens trained), 'C' (6 N D), 'loss', 'seconds', 'tokens_per_s',
    'seed'}. The model is built by ``plmkit.models.Llama`` (so `config` may hold any ablation switch).
    """
    import time

    from .models.llama import Llama
    from .objectives.clm import evaluate_lm
    from .train import Trainer

    steps = tokens // (batch_size * block_size)
    if steps < 1:
        raise ValueError(f"tokens must be at least one batch ({batch_size * block_size}), got {tokens!r}")
    torch.manual_seed(seed)
    model = Llama(config)
    trainer = Trainer(model, stream_batches(train_ids, block_size, batch_size, offset), max_steps=steps, lr=lr,
                      warmup_steps=max(1, steps // 20), min_lr_ratio=0.1, log_every=steps, progress=False,
                      device=device)
    start = time.perf_counter()
    trainer.fit()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    loss = evaluate_lm(model, val_ids, block_size, batch_size=64, max_tokens=eval_tokens)["loss"]
    N, D = non_embedding_parameters(config), steps * batch_size * block_size
    return dict(N=N, D=D, C=6.0 * N * D, loss=loss, seconds=seconds, tokens_per_s=D / seconds, seed=seed,
                model=model)


def closest_config(N_target: float, vocab_size: int, n_layers: int = 2, head_dim: int = 16, **overrides):
    """The tiny_llama_config whose non-embedding parameter count is closest (in log) to `N_target`."""
    N_target = float(_positive("N_target", N_target))
    candidates = [tiny_llama_config(vocab_size, d, n_layers, head_dim, **overrides)
                  for d in range(head_dim, 64 * head_dim + 1, head_dim)]
    return min(candidates, key=lambda c: abs(math.log(non_embedding_parameters(c) / N_target)))


def run_grid(train_ids: torch.Tensor, val_ids: torch.Tensor, vocab_size: int, *, widths, budgets, seeds=(0,),
             n_layers: int = 2, predict_factor: float = 4.0, log=print, **run_options) -> dict:
    """Train every (width, token budget, seed), fit L(N, D) (approach 3), then predict and train one run at
    `predict_factor` times the largest compute of the grid; return everything as plain numbers (JSON-ready).

    No model reads a token twice (each run is one pass over part of the stream); seed s starts at
    s * max(budgets), so that seeds differ in their text as well as their initialisation.
    """
    configs = {d: tiny_llama_config(vocab_size, d, n_layers) for d in widths}     # bad widths fail before training
    runs = []
    for d in widths:
        config = configs[d]
        for tokens in budgets:
            for seed in seeds:
                r = train_and_evaluate(config, train_ids, val_ids, tokens, seed=seed, offset=seed * max(budgets),
                                       **run_options)
                r.pop("model")
                runs.append(dict(width=d, n_layers=n_layers, **r))
                log(f"d={d:4d} N={r['N']:>9,} D={r['D']:>10,} seed={seed}  loss {r['loss']:.4f}  "
                    f"({r['seconds']:.1f} s, {r['tokens_per_s']:,.0f} tok/s)")
    N = torch.tensor([r["N"] for r in runs], dtype=torch.float64)
    D = torch.tensor([r["D"] for r in runs], dtype=torch.float64)
    L = torch.tensor([r["loss"] for r in runs], dtype=torch.float64)
    law = fit_chinchilla(N, D, L)
    C_pred = predict_factor * max(r["C"] for r in runs)
    N_opt, D_opt = law.compute_optimal(C_pred)
    block, batch = run_options.get("block_size", 64), run_options.get("batch_size", 16)
    # the width closest to N_opt whose D = C / 6N still fits in one pass over the training text
    widths = sorted(range(16, 64 * 16 + 1, 16), key=lambda d: abs(math.log(
        non_embedding_parameters(tiny_llama_config(vocab_size, d, n_layers)) / float(N_opt))))
    for d in widths:
        config = tiny_llama_config(vocab_size, d, n_layers)
        N_run = non_embedding_parameters(config)
        D_run = int(C_pred / (6 * N_run)) // (block * batch) * (block * batch)
        if D_run + 1 <= len(train_ids):
            break
    predicted = float(law.loss(N_run, D_run))
    r = train_and_evaluate(config, train_ids, val_ids, D_run, seed=0, **run_options)
    r.pop("model")
    log(f"predicted run: d={config.hidden_size} N={N_run:,} D={D_run:,} C={6 * N_run * D_run:.3g}: "
        f"predicted {predicted:.4f}, measured {r['loss']:.4f} ({r['seconds']:.1f} s)")
    return dict(runs=runs, fit=dict(E=law.E, A=law.A, B=law.B, alpha=law.alpha, beta=law.beta),
                prediction=dict(C=6.0 * N_run * D_run, C_target=C_pred, N_opt=float(N_opt), D_opt=float(D_opt),
                                width=config.hidden_size, n_layers=n_layers, N=N_run, D=D_run,
                                text_limited=config.hidden_size != widths[0],
                                predicted_loss=predicted, measured_loss=r["loss"], seconds=r["seconds"]))
