"""plmkit.scaling: the Chinchilla fit recovers known coefficients, the closed-form allocation agrees with a
brute-force search and with the paper's printed coefficients, isoFLOP minima follow the law, FLOP counts add up."""
import doctest
import math

import pytest
import torch

import plmkit.scaling as scaling
from plmkit.scaling import (CHINCHILLA, ScalingLaw, chinchilla_objective, compute_optimal, fit_chinchilla, flops_6nd,
                            fit_power_law, huber, isoflop_minimum, training_flops_per_token)


def synthetic_runs(law, noise, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = torch.logspace(7, 10, 7, dtype=torch.float64)
    D = torch.logspace(8, 11, 7, dtype=torch.float64)
    NN, DD = (t.flatten() for t in torch.meshgrid(N, D, indexing="ij"))
    L = law.loss(NN, DD) * torch.exp(noise * torch.randn(NN.shape, generator=g, dtype=torch.float64))
    return NN, DD, L


@pytest.mark.parametrize("law", [CHINCHILLA, ScalingLaw(E=2.1, A=120.0, B=900.0, alpha=0.45, beta=0.3)])
def test_fit_recovers_known_coefficients_from_noisy_losses(law):
    fit = fit_chinchilla(*synthetic_runs(law, noise=0.003))
    assert abs(fit.alpha - law.alpha) < 0.02 and abs(fit.beta - law.beta) < 0.02, fit
    assert abs(fit.E - law.E) < 0.03, fit
    assert abs(math.log(fit.A / law.A)) < 0.3 and abs(math.log(fit.B / law.B)) < 0.3, fit
    # and the allocation it implies is close to the true one
    n_fit, _ = fit.compute_optimal(1e22)
    n_true, _ = law.compute_optimal(1e22)
    assert abs(math.log(float(n_fit / n_true))) < 0.3


def test_fit_is_exact_without_noise():
    fit = fit_chinchilla(*synthetic_runs(CHINCHILLA, noise=0.0))
    for name in ("E", "alpha", "beta"):
        assert getattr(fit, name) == pytest.approx(getattr(CHINCHILLA, name), rel=2e-3), (name, fit)


def test_objective_is_huber_of_log_residuals():
    N, D, L = synthetic_runs(CHINCHILLA, noise=0.01)
    law = CHINCHILLA
    p = torch.tensor([math.log(law.A), math.log(law.B), math.log(law.E), law.alpha, law.beta], dtype=torch.float64)
    by_hand = sum(huber((law.loss(n, d) / l).log(), 1e-3) for n, d, l in zip(N, D, L))
    torch.testing.assert_close(chinchilla_objective(p, N, D, L), by_hand)
    # batched over parameter vectors
    assert chinchilla_objective(torch.stack([p, p + 0.1]), N, D, L).shape == (2,)
    torch.testing.assert_close(huber(torch.tensor([0.5e-3, -2e-3]), 1e-3), torch.tensor([1.25e-7, 1.5e-6]))


def test_gopher_budget_with_printed_coefficients():
    """Pinned: the printed approach-3 coefficients give 32B params on 3.0T tokens (~93 tokens/param), not 70B/1.4T."""
    N, D = compute_optimal(5.76e23)
    assert float(N) == pytest.approx(32.2e9, rel=0.01)
    assert float(D) == pytest.approx(2.98e12, rel=0.01)
    assert float(D / N) == pytest.approx(93, abs=1)
    torch.testing.assert_close(flops_6nd(N, D), torch.tensor(5.76e23, dtype=torch.float64))


@pytest.mark.parametrize("C", [1e18, 5.76e23])
def test_closed_form_agrees_with_brute_force(C):
    N = torch.logspace(5, 13, 200001, dtype=torch.float64)
    L = CHINCHILLA.loss(N, C / (6 * N))
    n_brute = N[L.argmin()]
    n_closed, _ = compute_optimal(C)
    assert float(n_closed / n_brute) == pytest.approx(1.0, rel=1e-3)


def test_isoflop_minima_follow_the_law():
    """Approach 2 on runs generated from the law: per-budget minima match the closed form; exponent b/(a+b)."""
    budgets = [1e17, 1e18, 1e19, 1e20]
    n_opts = []
    for C in budgets:
        n_true, _ = compute_optimal(C)
        N = float(n_true) * torch.logspace(-0.5, 0.5, 9, dtype=torch.float64)
        n_min, l_min = isoflop_minimum(N, CHINCHILLA.loss(N, C / (6 * N)))
        assert n_min == pytest.approx(float(n_true), rel=0.05)
        assert l_min == pytest.approx(float(CHINCHILLA.loss(n_true, C / (6 * n_true))), rel=1e-3)
        n_opts.append(n_min)
    _, a = fit_power_law(budgets, n_opts)
    assert a == pytest.approx(CHINCHILLA.beta / (CHINCHILLA.alpha + CHINCHILLA.beta), abs=0.01)


def test_flop_count_with_attention():
    cfg = dict(n_layers=4, d_model=64, n_heads=4, seq_len=128, vocab_size=1000, d_ff=256)
    L, d, T, V, H, F = 4, 64, 128, 1000, 4, 256
    n_matmul = 2 * V * d + L * (4 * d * d + 2 * d * F)        # every weight matrix, embeddings and output counted
    expected = 6 * n_matmul + 3 * L * (4 * T * d + 3 * H * T)  # + the T x T attention terms
    assert training_flops_per_token(**cfg) == pytest.approx(expected, rel=1e-12)
    # attention's share grows with the context, and vanishes relative to 6N as d grows
    assert training_flops_per_token(**{**cfg, "seq_len": 4096}) > training_flops_per_token(**cfg)
    big = dict(n_layers=80, d_model=8192, n_heads=64, seq_len=2048, vocab_size=32000, d_ff=28672, n_kv_heads=8,
               gated=True)
    n_big = 2 * 32000 * 8192 + 80 * (2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672)
    assert training_flops_per_token(**big) / (6 * n_big) == pytest.approx(1.0, abs=0.05)
    # GQA shrinks only the k/v projections
    assert training_flops_per_token(**{**cfg, "n_kv_heads": 1}) < training_flops_per_token(**cfg)


def test_validation():
    with pytest.raises(ValueError, match="N must"):
        flops_6nd(0, 10)
    with pytest.raises(ValueError, match="C must"):
        compute_optimal(-1.0)
    with pytest.raises(ValueError, match="at least 5 runs"):
        fit_chinchilla([1e6] * 3, [1e8] * 3, [3.0] * 3)
    with pytest.raises(ValueError, match="same number"):
        fit_chinchilla([1e6] * 6, [1e8] * 5, [3.0] * 6)
    with pytest.raises(ValueError, match="n_kv_heads"):
        training_flops_per_token(n_layers=1, d_model=8, n_heads=4, seq_len=4, vocab_size=10, d_ff=8, n_kv_heads=3)
    with pytest.raises(ValueError, match="no minimum"):
        isoflop_minimum([1e6, 1e7, 1e8], [3.0, 2.0, 1.0 - 0.5])
    with pytest.raises(ValueError, match="delta"):
        huber(torch.zeros(1), 0.0)


def test_docstring_examples():
    result = doctest.testmod(scaling, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_stream_batches_never_repeat_a_token():
    from plmkit.scaling import stream_batches
    ids = torch.arange(1000)
    stream = stream_batches(ids, block_size=8, batch_size=4, offset=10)
    seen = torch.cat([next(stream)[0].flatten() for _ in range(5)])
    assert seen.unique().numel() == seen.numel() == 5 * 32 and int(seen[0]) == 10
    x, y = next(stream_batches(ids, 8, 4))
    assert bool((y == x + 1).all())
    with pytest.raises(ValueError, match="ran out"):
        for _ in stream_batches(torch.arange(50), 8, 4):
            pass


def test_tiny_config_and_closest_config():
    from plmkit.scaling import closest_config, non_embedding_parameters, tiny_llama_config
    cfg = tiny_llama_config(100, 64)
    assert cfg.num_attention_heads == 4 and cfg.intermediate_size % 8 == 0
    assert non_embedding_parameters(cfg) == cfg.num_parameters() - 2 * 100 * 64
    target = non_embedding_parameters(tiny_llama_config(100, 96))
    assert closest_config(target * 1.05, 100).hidden_size == 96
    with pytest.raises(ValueError, match="d_model"):
        tiny_llama_config(100, 50)


def test_scaling_grid_script_smoke(tmp_path):
    """The full-grid script on a grid of seconds: a labelled JSON with runs, fit and the predicted run."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = tmp_path / "corpus.txt"
    text.write_text("to be or not to be, that is the question.\n" * 400)
    out = tmp_path / "grid.json"
    proc = subprocess.run([sys.executable, str(root / "experiments" / "scaling_grid.py"), "--smoke", "--text",
                           str(text), "--device", "cpu", "--out", str(out)], capture_output=True, text=True,
                          cwd=root, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    for key in ("command", "date", "device", "torch", "git_commit", "seeds", "settings"):
        assert key in result["label"], key
    assert len(result["runs"]) == 3 * 2
    assert all(r["loss"] > 0 and r["D"] > 0 for r in result["runs"])
    assert set(result["fit"]) == {"E", "A", "B", "alpha", "beta"}
    assert result["prediction"]["C"] >= 2 * max(r["C"] for r in result["runs"])
