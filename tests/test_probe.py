"""plmkit.probe: the linear probe reaches the optimum of its objective; features are masked means."""
import pytest
import torch
import torch.nn.functional as F

from plmkit.models import BertConfig, BertModel
from plmkit.probe import LinearProbe, mean_pooled_features


def noisy_problem(n=120, h=7, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, h, generator=g) * torch.linspace(0.5, 4, h) + 3.0      # unscaled, off-centre
    y = ((X[:, 0] - 3) + 0.5 * (X[:, 1] - 3) + torch.randn(n, generator=g)).argsort().argsort() * k // n
    return X, y


@pytest.mark.parametrize("l2", [1e-2, 0.1, 1.0])
def test_fit_is_the_optimum(l2):
    """Convex objective: the gradient at the fit is ~0, and every nearby point scores worse."""
    X, y = noisy_problem()
    probe = LinearProbe(l2=l2).fit(X, y)
    w = probe.weight.clone().requires_grad_(True)
    b = probe.bias.clone().requires_grad_(True)
    loss = probe.objective(X, y, w, b)
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert gw.abs().max() < 1e-5 and gb.abs().max() < 1e-5
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        dw, db = torch.randn(w.shape, generator=g, dtype=w.dtype), torch.randn(b.shape, generator=g, dtype=b.dtype)
        assert probe.objective(X, y, w + 1e-3 * dw, b + 1e-3 * db) > loss


def test_objective_is_cross_entropy_plus_penalty_on_standardised_features():
    X, y = noisy_problem()
    probe = LinearProbe(l2=0.3).fit(X, y)
    Z = (X.double() - X.double().mean(0)) / X.double().std(0, unbiased=False)
    w, b = probe.weight, probe.bias
    expected = F.cross_entropy(Z @ w.T + b, y) + 0.15 * (w ** 2).sum()
    assert torch.allclose(probe.objective(X, y, w, b), expected)
    assert torch.equal(probe.predict(X), (Z @ w.T + b).argmax(-1))


def test_stronger_penalty_shrinks_weights_and_separable_data_is_learned():
    X, y = noisy_problem()
    norms = [LinearProbe(l2=l2).fit(X, y).weight.norm().item() for l2 in (0.01, 0.1, 1.0)]
    assert norms[0] > norms[1] > norms[2]
    Xs = torch.tensor([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    assert LinearProbe().fit(Xs, torch.tensor([0, 0, 1, 1])).score(Xs, torch.tensor([0, 0, 1, 1])) == 1.0


def test_probe_errors_name_the_problem():
    with pytest.raises(ValueError, match="l2 must be > 0"):
        LinearProbe(l2=0)
    with pytest.raises(ValueError, match="max_iter must be a positive int"):
        LinearProbe(max_iter=0)
    with pytest.raises(ValueError, match="tol must be > 0"):
        LinearProbe(tol=0)
    X, y = noisy_problem()
    with pytest.raises(ValueError, match=r"X must be \(N, 7\) like the features it was fitted on"):
        LinearProbe().fit(X, y).predict(X[:, :3])
    with pytest.raises(RuntimeError, match="before fit"):
        LinearProbe().predict(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"X must be \(N, H\)"):
        LinearProbe().fit(torch.zeros(3), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="floating-point features"):
        LinearProbe().fit(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_classes must be"):
        LinearProbe().fit(torch.zeros(3, 2), torch.tensor([0, 2, 1]), num_classes=2)
    with pytest.raises(ValueError, match="integer class labels"):
        LinearProbe().fit(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))


def test_mean_pooled_features_are_masked_means_and_keep_the_mode():
    torch.manual_seed(0)
    enc = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=12, hidden_dropout_prob=0.1))
    enc.train()
    ids = torch.randint(5, 50, (7, 9))
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    mask[5, 1:] = 0
    X = mean_pooled_features(enc, ids, mask, batch_size=3)
    assert enc.training                                              # the mode is restored
    enc.eval()
    with torch.no_grad():
        for i in range(len(ids)):
            n = int(mask[i].sum())
            h = enc(ids[i:i + 1, :n], attention_mask=mask[i:i + 1, :n])[0]  # the row without its padding
            assert torch.allclose(X[i], h.mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="must both be"):
        mean_pooled_features(enc, ids, mask[:, :3])


def test_docstring_examples_run():
    import doctest
    import plmkit.probe
    failed, attempted = doctest.testmod(plmkit.probe)
    assert attempted > 0 and failed == 0
