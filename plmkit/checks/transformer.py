"""Checkers for chapter 2, attention and the Transformer.

Each one runs the learner's code on fresh random inputs, compares it with
plmkit.nn's reference, and names the classic bug when it sees one: softmax
over the wrong axis, a missing 1/sqrt(D), a mask applied after the softmax,
heads merged in the wrong order, a Post-LN block where a Pre-LN one was asked.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import nn as pn
from ._legacy import Report, checker

_NO_LIBRARY = "this exercise asks you to build it from matrix products, masked_fill and softmax"


def _pair(r: Report, result, what: str):
    """The learner's attention must return (output, weights); fail clearly otherwise."""
    ok = isinstance(result, tuple) and len(result) == 2 and all(isinstance(t, torch.Tensor) for t in result)
    r.check(ok, f"{what}: expected a tuple (output, weights) of two tensors, got {type(result).__name__}")
    return result if ok else (None, None)


def _diagnose_attention(q, k, v, mask, weights) -> str:
    """Name the bug whose weights match what the learner returned, if any."""
    D = q.shape[-1]
    scores = q @ k.transpose(-2, -1)
    blocked = (lambda s: s.masked_fill(~mask, float("-inf"))) if mask is not None else (lambda s: s)
    candidates = {
        "softmax taken over the query axis (dim=-2) instead of the key axis (dim=-1)":
            torch.softmax(blocked(scores / math.sqrt(D)), dim=-2).nan_to_num(0.0),
        "the scores are not divided by sqrt(D)": torch.softmax(blocked(scores), dim=-1),
        "the scores are divided by D instead of sqrt(D)": torch.softmax(blocked(scores / D), dim=-1),
    }
    if mask is not None:
        candidates["the mask is applied after the softmax (rows no longer sum to 1)"] = \
            torch.softmax(scores / math.sqrt(D), dim=-1) * mask
        candidates["the mask is inverted (True must mean 'may attend')"] = \
            torch.softmax(scores.masked_fill(mask, float("-inf")) / math.sqrt(D), dim=-1).nan_to_num(0.0)
    for name, cand in candidates.items():
        if weights is not None and weights.shape == cand.shape and torch.allclose(weights.detach(), cand, atol=1e-5):
            return f" (looks like {name})"
    return ""


@checker("2.1", "attention")
def check_attention(r: Report, attention) -> None:
    r.forbid_calls(attention, {"scaled_dot_product_attention", "multi_head_attention_forward", "MultiheadAttention"},
                   _NO_LIBRARY)
    B, H, Tq, Tk, D = 2, 3, 4, 6, 16
    causal = pn.causal_mask(5)
    pad = torch.ones(B, 1, 1, Tk, dtype=torch.bool)
    pad[1, ..., -2:] = False
    rand = r.randn(B, 1, Tq, Tk) > 0
    rand[..., 0] = True                                           # every query may see at least key 0
    cases = [
        ("no mask, q (2, 3, 4, 16), k and v (2, 3, 6, 16)", (B, H, Tq, Tk), None),
        ("a causal mask (5, 5) on self-attention", (B, H, 5, 5), causal),
        ("a padding mask (2, 1, 1, 6) hiding the last 2 keys of batch 1", (B, H, Tq, Tk), pad),
        ("a random boolean mask (2, 1, 4, 6)", (B, H, Tq, Tk), rand),
    ]
    for what, (b, h, tq, tk), mask in cases:
        q, k, v = r.randn(b, h, tq, D) * 2, r.randn(b, h, tk, D) * 2, r.randn(b, h, tk, D)
        want_out, want_w = pn.scaled_dot_product_attention(q, k, v, mask, return_weights=True)
        call = f"attention(q, k, v, mask) with {what}"
        out, w = _pair(r, r.call(attention, q, k, v, mask, what=call), call)
        if out is None:
            r.check(False, f"{call}: no weights to compare")
            r.check(False, f"{call}: no output to compare")
            continue
        hint = _diagnose_attention(q, k, v, mask, w) if w.shape == want_w.shape else ""
        if not r.close(w, want_w, f"{call}, the weights{hint}"):
            r.check(False, f"{call}: the output is wrong because the weights are")
        else:
            r.close(out, want_out, f"{call}, the output")
    # blocked keys must get exactly zero weight and must not leak into the output
    q, k, v = r.randn(1, 1, 3, 8), r.randn(1, 1, 4, 8), r.randn(1, 1, 4, 8)
    mask = torch.tensor([True, True, False, False])
    v_changed = v.clone()
    v_changed[..., 2:, :] += 100.0
    call = "attention(q, k, v, mask) with keys 2 and 3 blocked"
    out1, w1 = _pair(r, r.call(attention, q, k, v, mask, what=call), call)
    out2, _ = _pair(r, r.call(attention, q, k, v_changed, mask, what=call), call)
    if w1 is not None and out2 is not None:
        r.check(bool((w1[..., 2:] == 0).all()), f"{call}: blocked keys must get weight exactly 0, "
                                                f"got up to {w1[..., 2:].abs().max().item():.3g}")
        r.check(torch.allclose(out1, out2, atol=1e-4),
                f"{call}: changing the values of blocked keys changed the output")
    else:
        r.total += 2
        r.failures.append(f"{call}: could not test the blocked keys")


@checker("2.2", "causal_mask")
def check_causal_mask(r: Report, causal_mask) -> None:
    sizes = [1, 4, int(r.randint(5, 12, (1,)))]
    for T in sizes:
        want = pn.causal_mask(T)
        what = f"causal_mask({T})" if T != sizes[-1] else "causal_mask(T) for a random T between 5 and 11"
        got = r.call(causal_mask, T, what=what)
        if not isinstance(got, torch.Tensor):
            r.check(False, f"{what}: expected a torch.Tensor, got {type(got).__name__}")
            r.check(False, f"{what}: no values to compare")
            continue
        r.check(got.dtype == torch.bool, f"{what}: expected dtype torch.bool (True = may attend), got {got.dtype}")
        if tuple(got.shape) != (T, T):
            r.check(False, f"{what}: expected shape {(T, T)}, got {tuple(got.shape)}")
        elif torch.equal(got.bool(), want):
            r.check(True, "")
        elif torch.equal(got.bool(), want.T):
            r.check(False, f"{what}: this mask lets position i see the FUTURE (upper triangle); "
                           "query i may attend to keys j <= i")
        elif torch.equal(got.bool(), want.tril(-1)):
            r.check(False, f"{what}: the diagonal is False, so a position cannot attend to itself "
                           "(and position 0 sees nothing)")
        elif torch.equal(got.bool(), ~want):
            r.check(False, f"{what}: True/False are swapped; True must mean 'may attend'")
        else:
            r.check(False, f"{what}: expected {want.int().tolist()}, got {got.int().tolist()}")


@checker("2.3", "split_merge_heads")
def check_heads(r: Report, split_heads, merge_heads) -> None:
    for B, T, H, D in [(2, 5, 3, 4), (1, 1, 2, 6), (3, 7, 4, 2)]:
        x = r.randn(B, T, H * D)
        what = f"split_heads(x, n_heads={H}) for x of shape {(B, T, H * D)}"
        got = r.call(split_heads, x, H, what=what)
        if r.close(got, pn.split_heads(x, H), what, atol=0, rtol=0) is False and isinstance(got, torch.Tensor) \
                and got.shape == (B, H, T, D) and torch.equal(got, x.view(B, H, T, D)):
            r.failures[-1] += " (x.view(B, H, T, D) mixes positions into heads: view as (B, T, H, D), then transpose)"
        y = r.randn(B, H, T, D)
        what = f"merge_heads(y) for y of shape {(B, H, T, D)}"
        got = r.call(merge_heads, y, what=what)
        want = pn.merge_heads(y)
        if not r.close(got, want, what, atol=0, rtol=0) and isinstance(got, torch.Tensor) and got.shape == want.shape:
            if torch.equal(got, y.reshape(B, T, H * D)):
                r.failures[-1] += " (reshaped without moving the head axis next to D: transpose(1, 2) first)"
            elif torch.equal(got, y.permute(0, 2, 3, 1).reshape(B, T, H * D)):
                r.failures[-1] += " (heads merged in the wrong order: channels must be [head 0 | head 1 | ...])"
        x = r.randn(B, T, H * D)
        what = f"merge_heads(split_heads(x, {H})) must give x back for x of shape {(B, T, H * D)}"
        split = r.call(split_heads, x, H, what=what)
        r.close(r.call(merge_heads, split, what=what), x, what, atol=0, rtol=0)


@checker("2.4", "sinusoidal_encoding")
def check_sinusoidal(r: Report, sinusoidal_encoding) -> None:
    T_rand, C_rand = int(r.randint(5, 40, (1,))), 2 * int(r.randint(2, 17, (1,)))
    for T, C, what in [(1, 2, "sinusoidal_encoding(1, 2)"), (6, 8, "sinusoidal_encoding(6, 8)"),
                       (T_rand, C_rand, "sinusoidal_encoding(T, C) for random T < 40 and even C <= 32")]:
        want = pn.sinusoidal_table(T, C)
        got = r.call(sinusoidal_encoding, T, C, what=what)
        if r.close(got, want, what, atol=1e-4) or not isinstance(got, torch.Tensor) or got.shape != want.shape:
            continue
        g = got.detach().double()
        if torch.allclose(g[:, 0::2], want[:, 1::2].double(), atol=1e-4):
            r.failures[-1] += " (sin and cos are swapped: even channels are sin, odd channels cos)"
        elif T > 1 and not torch.allclose(g[:, 2::2], want[:, 2::2].double(), atol=1e-4):
            r.failures[-1] += " (check the frequencies: pair i uses 10000^(2i / C))"


@checker("2.5", "layer_norm")
def check_layer_norm(r: Report, layer_norm) -> None:
    r.forbid_calls(layer_norm, {"layer_norm", "LayerNorm", "group_norm", "batch_norm", "instance_norm"},
                   "this exercise asks you to build it from mean, var and sqrt")
    C = 10
    x = r.randn(2, 3, C)
    x2 = x.clone()
    x2[1] *= 50.0
    what = "layer_norm on a batch where one sequence is scaled by 50"
    a = r.call(layer_norm, x, torch.ones(C), torch.zeros(C), 1e-5, what=what)
    b2 = r.call(layer_norm, x2, torch.ones(C), torch.zeros(C), 1e-5, what=what)
    r.check(isinstance(a, torch.Tensor) and isinstance(b2, torch.Tensor) and torch.allclose(a[0], b2[0], atol=1e-5),
            f"{what}: the other sequence's result changed; statistics must be per token (over the last dim only)")
    cases = [
        ("x of shape (3, 4, 10) with random weight and bias", r.randn(3, 4, C) * 3 + 1, r.randn(C), r.randn(C), 1e-5),
        ("x of shape (5, 2): two channels", r.randn(5, 2) * 2, r.randn(2), r.randn(2), 1e-5),
        ("x of shape (4, 10) with eps=0.5 and small values", r.randn(4, C) * 0.3, r.randn(C), r.randn(C), 0.5),
        ("x of shape (6, 10) whose rows have very different scales",
         r.randn(6, C) * torch.logspace(-2, 2, 6)[:, None], torch.ones(C), torch.zeros(C), 1e-5),
    ]
    for what, x, w, b, eps in cases:
        call = f"layer_norm(x, weight, bias, eps={eps}) for {what}"
        got = r.call(layer_norm, x, w, b, eps, what=call)
        want = F.layer_norm(x, (x.shape[-1],), w, b, eps)
        if r.close(got, want, call, atol=1e-4) or not isinstance(got, torch.Tensor) or got.shape != want.shape:
            continue
        unbiased = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b
        std_eps = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True, unbiased=False) + eps) * w + b
        if torch.allclose(got.detach(), unbiased, atol=1e-4):
            r.failures[-1] += " (LayerNorm uses the biased variance: divide by C, e.g. var(unbiased=False))"
        elif torch.allclose(got.detach(), std_eps, atol=1e-4):
            r.failures[-1] += " (eps goes inside the square root: sqrt(var + eps))"


def _reference_pre_ln(block, x, mask):
    h = x + block.attn(block.norm1(x), mask=mask)
    return h + block.ffn(block.norm2(h))


@checker("2.6", "pre_ln_block")
def check_pre_ln_block(r: Report, PreLNBlock) -> None:
    C, H, F_ = 16, 4, 32
    with torch.random.fork_rng():                             # fresh weights, the notebook's RNG untouched
        torch.manual_seed(int(r.randint(0, 2**31 - 1, (1,))))
        block = r.call(PreLNBlock, C, H, F_, what=f"PreLNBlock({C}, {H}, {F_})")
    missing = [n for n in ("attn", "norm1", "ffn", "norm2") if not isinstance(getattr(block, n, None), torch.nn.Module)]
    if not r.check(not missing, f"PreLNBlock is missing the submodules {missing} (keep the __init__ as given)"):
        return
    block.eval()
    with torch.no_grad():
        for norm in (block.norm1, block.norm2):               # make the norms do more than the identity
            for p in norm.parameters():
                p.add_(torch.randn(p.shape, generator=r.gen) * 0.5)
    x = r.randn(2, 5, C) * 2
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[1, 3:] = False
    for what, mask in [("x of shape (2, 5, 16), no mask", None),
                       ("x of shape (2, 5, 16) with a padding mask (2, 1, 1, 5)", pn.padding_mask(keep)),
                       ("x of shape (2, 5, 16) with a causal mask (5, 5)", pn.causal_mask(5))]:
        call = f"PreLNBlock.forward for {what}"
        with torch.no_grad():
            got = r.call(block, x, mask, what=call)
            want = _reference_pre_ln(block, x, mask)
            if not r.close(got, want, call) and isinstance(got, torch.Tensor) and got.shape == want.shape:
                post = block.norm1(x + block.attn(x, mask=mask))
                post = block.norm2(post + block.ffn(post))
                no_mask = _reference_pre_ln(block, x, None)
                if torch.allclose(got, post, atol=1e-5):
                    r.failures[-1] += " (this is the Post-LN arrangement: normalise the sub-layer's input, not the sum)"
                elif mask is not None and torch.allclose(got, no_mask, atol=1e-5):
                    r.failures[-1] += " (the mask was not passed to the attention)"
    # the Pre-LN identity path: with both sub-layers silenced, the block returns its input unchanged
    with torch.no_grad():
        for lin in (block.attn.out_proj, block.ffn.fc2):
            lin.weight.zero_()
            if lin.bias is not None:
                lin.bias.zero_()
        call = "PreLNBlock.forward with attention and FFN outputs zeroed (a Pre-LN block must then return x itself)"
        r.close(r.call(block, x, None, what=call), x, call)
