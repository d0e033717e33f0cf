"""What is particular to chapter 2's checkers: modules that do not fit the probe, and the references.

The solutions, the blank notebook and every likely bug of chapter 2 are tested from the
specs' own tables by tests/test_specs.py, the shortcuts by tests/test_mutants.py.
"""
import torch
from torch import nn

import plmkit.nn as pn
from plmkit.checks import transformer as checks
from plmkit.checks._core import Gen
from plmkit.checks._judges import transformer as trusted


def _fails_saying(check, learner, words):
    verdict = check.honour(learner, seed=4)
    assert not verdict.passed and any(words in r for r in verdict.reasons), verdict.text()


def test_pre_ln_block_needs_the_documented_submodules():
    class Renamed(nn.Module):
        def __init__(self, d_model, n_heads, d_ff):
            super().__init__()
            self.block = pn.EncoderBlock(d_model, n_heads, d_ff, norm_first=True)

        def forward(self, x, mask=None):
            return self.block(x, mask)
    _fails_saying(checks.check_pre_ln_block, Renamed, "missing the submodules")


def test_mha_needs_the_documented_submodules_with_bias():
    class Packed(nn.Module):
        def __init__(self, d_model, n_heads):
            super().__init__()
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.out_proj = nn.Linear(d_model, d_model)

        def forward(self, x, context=None, mask=None):
            return x

    class NoBias(trusted.MHA):
        def __init__(self, d_model, n_heads):
            super().__init__(d_model, n_heads)
            self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model, bias=False)
                                                                    for _ in range(4))
    _fails_saying(checks.check_mha, Packed, "q_proj")
    _fails_saying(checks.check_mha, NoBias, "could not run your code")


def test_the_references_agree_with_torch_and_plmkit():
    """2.7's reference is torch's own nn.MultiheadAttention; 2.1's and 2.5's agree with torch's kernels."""
    c = checks._mha_cases(Gen(5, "2.7"))[0]
    ref = nn.MultiheadAttention(c["C"], c["H"], batch_first=True).eval()
    ours = trusted.TorchMHA(c["C"], c["H"]).eval()
    ours.load_state_dict(checks.mha_state(c["in_w"], c["in_b"], c["out_w"], c["out_b"]))
    with torch.no_grad():
        ref.in_proj_weight.copy_(c["in_w"])
        ref.in_proj_bias.copy_(c["in_b"])
        ref.out_proj.weight.copy_(c["out_w"])
        ref.out_proj.bias.copy_(c["out_b"])
        for _, cross, mask in c["runs"]:
            kv = c["context"] if cross else c["x"]
            kw = {} if mask is None else ({"attn_mask": ~mask} if mask.ndim == 2 else {"key_padding_mask": ~mask[:, 0, 0]})
            torch.testing.assert_close(ours(c["x"], kv if cross else None, mask), ref(c["x"], kv, kv, **kw)[0])
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    mask = torch.rand(2, 1, 4, 6) > 0.3
    mask[..., 0] = True
    out, w = trusted.attention(q, k, v, mask)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 4))
    torch.testing.assert_close(trusted.sin_table(7, 8), pn.sinusoidal_table(7, 8))
