"""Checkers for chapter 2, attention and the Transformer: the kernel half (cases, probes, rules).

    2.1 attention            softmax(q k^T / sqrt(D), masked) v, and the weights; differentiable
    2.2 causal_mask          boolean (T, T), True on and below the diagonal
    2.3 split/merge heads    (B, T, C) <-> (B, H, T, D), channels [head 0 | head 1 | ...]
    2.4 sinusoidal_encoding  sin on even channels, cos on odd, frequencies 10000^(2i / C)
    2.5 layer_norm           biased variance, eps inside the root, any leading dims, dtype kept
    2.6 pre_ln_block         x + attn(norm1(x)), then + ffn(norm2(.)) around the learner's own
                             MultiHeadAttention (2.7), judged against plmkit's Pre-LN EncoderBlock
                             loaded with the same weights
    2.7 multi_head_attention the learner's MultiHeadAttention module (q/k/v/out projections, head
                             split/merge, mask), judged against torch's multi-head attention
                             loaded with the same weights

(2.7 comes before 2.6 in the notebook: the block is built from the learner's attention.)

The references and the likely bugs (softmax over the wrong axis, a missing 1/sqrt(D), a mask
applied after the softmax, heads merged in the wrong order, a Post-LN block where a Pre-LN
one was asked, a missing output projection, cross-attention that reads its own input, ...)
are in `plmkit/checks/_judges/transformer.py`. The rules other chapters share are in `_rules`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nn import attention as _attn
from ..nn import blocks as _blocks
from ..nn import norms as _norms
from ..nn import positional as _pos
from ._core import Exercise, call
from ._guard import Rule, aten_ops
from ._rules import CAUSAL_MASKS, PLMKIT_ATTENTION, SDPA, TORCH_MHA


# ----------------------------------------------------------------------------- 2.1

check_attention = Exercise("2.1", "attention",
                           goal="computes attention itself from matrix products, masked_fill and softmax",
                           forbid=[SDPA, TORCH_MHA, PLMKIT_ATTENTION])
BLOCKED = "attention(q, k, v, mask) with keys 2 and 3 blocked"


@check_attention.cases
def _attention_cases(g):
    B, H, Tq, Tk, D = 2, 3, 4, 6, 16
    pad = torch.ones(B, 1, 1, Tk, dtype=torch.bool)
    pad[1, ..., -2:] = False
    rand = g.randn(B, 1, Tq, Tk) > 0
    rand[..., 0] = True                                           # every query may see at least key 0
    shapes = [("no mask, q (2, 3, 4, 16), k and v (2, 3, 6, 16)", (B, H, Tq, Tk), None),
              ("a causal mask (5, 5) on self-attention", (B, H, 5, 5), torch.ones(5, 5, dtype=torch.bool).tril()),
              ("a padding mask (2, 1, 1, 6) hiding the last 2 keys of batch 1", (B, H, Tq, Tk), pad),
              ("a random boolean mask (2, 1, 4, 6)", (B, H, Tq, Tk), rand)]
    cases = [call(g.randn(b, h, tq, D) * 2, g.randn(b, h, tk, D) * 2, g.randn(b, h, tk, D), mask,
                  what=f"attention(q, k, v, mask) with {what}") for what, (b, h, tq, tk), mask in shapes]
    # blocked keys: their values must not leak into the output
    q, k, v = g.randn(1, 1, 3, 8), g.randn(1, 1, 4, 8), g.randn(1, 1, 4, 8)
    keep = torch.tensor([True, True, False, False])
    v2 = v.clone()
    v2[..., 2:, :] += 100.0
    cases.append(call(q, k, v, keep, what=BLOCKED))
    cases.append(call(q, k, v2, keep, what=BLOCKED + " and their values changed by +100"))
    # 3-D inputs (no head axis) and float64
    cases.append(call(g.randn(2, 5, 4), g.randn(2, 7, 4), g.randn(2, 7, 3), None,
                      what="attention(q, k, v) for 3-D q (2, 5, 4), k (2, 7, 4), v (2, 7, 3) (no head axis)"))
    q, k, v = (g.randn(1, 2, t, 4, dtype=torch.float64) for t in (3, 5, 5))
    mask = g.randn(1, 1, 3, 5) > -0.5
    mask[..., 0] = True
    cases.append(call(q, k, v, mask, grad=(0, 1, 2), cotangent=g.randn(1, 2, 3, 4, dtype=torch.float64),
                      atol=1e-10, what="attention(q, k, v, mask) in float64, the output and its gradients"))
    return cases


@check_attention.probe
def _attention_probe(p, attention, cases):
    """(output, weights) per case; the gradient case back-propagates through the output only."""
    out = []
    for c in cases:
        if c["grad"]:
            out.append(p.call(lambda q, k, v, m: attention(q, k, v, m)[0], *c["args"], grad=c["grad"],
                              cotangent=c["cotangent"]))
        else:
            out.append({**p.call(attention, *c["args"]), "parts": ["the output", "the weights"]})
    return out


# ----------------------------------------------------------------------------- 2.2

def causal_mask_checker(exercise: str) -> Exercise:
    """The causal-mask exercise (chapter 2 and again in chapter 4); its trusted half is chapter 2's."""
    ex = Exercise(exercise, "causal_mask", goal="builds the mask itself (torch.ones + tril, or a comparison)",
                  forbid=CAUSAL_MASKS, trusted=f"{__package__}._judges.transformer")

    @ex.cases
    def _(g):
        return [call(T, what=f"causal_mask({T})") for T in (1, 2, 4, g.int(5, 12))]
    return ex


check_causal_mask = causal_mask_checker("2.2")


# ----------------------------------------------------------------------------- 2.3

check_heads = Exercise("2.3", "split_merge_heads", goal="reshapes the heads itself with view/transpose/reshape",
                       forbid=[Rule("plmkit's `pn.split_heads` / `pn.merge_heads`",
                                    [_attn.split_heads, _attn.merge_heads])])


@check_heads.cases
def _heads_cases(g):
    return [{"shape": (B, T, H, D), "x": g.randn(B, T, H * D), "y": g.randn(B, H, T, D), "x2": g.randn(B, T, H * D)}
            for B, T, H, D in [(2, 5, 3, 4), (1, 1, 2, 6), (3, 7, 4, 2)]]


@check_heads.probe
def _heads_probe(p, split_heads, merge_heads, cases):
    out = []
    for c in cases:
        B, T, H, D = c["shape"]
        out.append({
            "split": {**p.call(split_heads, c["x"], H), "atol": 0.0,
                      "what": f"split_heads(x, n_heads={H}) for x of shape {(B, T, H * D)}"},
            "merge": {**p.call(merge_heads, c["y"]), "atol": 0.0,
                      "what": f"merge_heads(y) for y of shape {(B, H, T, D)}"},
            "round": {**p.call(lambda x, h: merge_heads(split_heads(x, h)), c["x2"], H), "atol": 0.0,
                      "what": f"merge_heads(split_heads(x, {H})) must give x back for x of shape {(B, T, H * D)}"}})
    return out


# ----------------------------------------------------------------------------- 2.4

check_sinusoidal = Exercise("2.4", "sinusoidal_encoding", goal="builds the sine/cosine table itself",
                            forbid=[Rule("plmkit's `pn.sinusoidal_table` / `SinusoidalPositionalEncoding`",
                                         [_pos.sinusoidal_table, _pos.SinusoidalPositionalEncoding])])


@check_sinusoidal.cases
def _sin_cases(g):
    return [call(T, C, atol=1e-4, what=f"sinusoidal_encoding({T}, {C})")
            for T, C in [(1, 2), (6, 8), (g.int(5, 40), 2 * g.int(2, 17)), (50, 64)]]


# ----------------------------------------------------------------------------- 2.5

TORCH_NORMS = Rule("torch's layer norm (`F.layer_norm`, `nn.LayerNorm`, or another normalisation op)",
                   [F.layer_norm, torch.layer_norm, F.group_norm, F.batch_norm, F.instance_norm,
                    torch.nn.LayerNorm, *aten_ops("native_layer_norm", "layer_norm", "native_group_norm",
                                                  "native_batch_norm", "_native_batch_norm_legit",
                                                  "_native_batch_norm_legit_no_training", "rms_norm",
                                                  "_fused_rms_norm")])
PLMKIT_NORMS = Rule("plmkit's `pn.layer_norm` / `pn.LayerNorm`", [_norms.layer_norm, _norms.LayerNorm])

check_layer_norm = Exercise("2.5", "layer_norm", goal="normalises with mean, var and sqrt itself",
                            forbid=[TORCH_NORMS, PLMKIT_NORMS])


@check_layer_norm.cases
def _ln_cases(g):
    C = 10
    x = g.randn(2, 3, C)
    x2 = x.clone()
    x2[1] *= 50.0
    cases = [
        ("x of shape (3, 4, 10) with random weight and bias", g.randn(3, 4, C) * 3 + 1, g.randn(C), g.randn(C), 1e-5),
        ("x of shape (5, 2): two channels", g.randn(5, 2) * 2, g.randn(2), g.randn(2), 1e-5),
        ("x of shape (10,): one vector", g.randn(C) * 2, g.randn(C), g.randn(C), 1e-5),
        ("x of shape (4, 10) with eps=0.5 and small values", g.randn(4, C) * 0.3, g.randn(C), g.randn(C), 0.5),
        ("x of shape (6, 10) whose rows have very different scales",
         g.randn(6, C) * torch.logspace(-2, 2, 6)[:, None], torch.ones(C), torch.zeros(C), 1e-5),
        ("x of shape (2, 3, 10) (the first of a pair)", x, torch.ones(C), torch.zeros(C), 1e-5),
        ("the same x with sequence 1 scaled by 50: sequence 0's result must not change", x2,
         torch.ones(C), torch.zeros(C), 1e-5),
    ]
    out = [call(x, w, b, eps, atol=1e-4, what=f"layer_norm(x, weight, bias, eps={eps}) for {what}")
           for what, x, w, b, eps in cases]
    x = g.randn(3, 4, 6, dtype=torch.float64)
    out.append(call(x, g.randn(6, dtype=torch.float64), g.randn(6, dtype=torch.float64), 1e-5, grad=(0, 1, 2),
                    cotangent=g.randn(3, 4, 6, dtype=torch.float64), atol=1e-9,
                    what="layer_norm(x, weight, bias, eps=1e-05) for x of shape (3, 4, 6) in float64, with "
                         "gradients for x, weight and bias"))
    return out


# ----------------------------------------------------------------------------- 2.6

check_pre_ln_block = Exercise(
    "2.6", "pre_ln_block", goal="arranges its own Pre-LN block around its own MultiHeadAttention (Exercise 2.7)",
    forbid=[Rule("plmkit's `pn.EncoderBlock` / `pn.DecoderBlock`", [_blocks.EncoderBlock, _blocks.DecoderBlock]),
            Rule("`nn.TransformerEncoderLayer`", [torch.nn.TransformerEncoderLayer, torch.nn.TransformerDecoderLayer]),
            SDPA, TORCH_MHA, PLMKIT_ATTENTION])

_C, _H, _F = 16, 4, 32


@check_pre_ln_block.cases
def _block_cases(g):
    with torch.random.fork_rng():
        torch.manual_seed(g.seed_int())
        template = _blocks.EncoderBlock(_C, _H, _F, norm_first=True).state_dict()
    state = {k: g.randn(*v.shape) * (0.5 if v.ndim == 1 else 0.3) + (1.0 if "norm" in k and "weight" in k else 0.0)
             for k, v in template.items()}
    silent = {k: (torch.zeros_like(v) if k.startswith(("attn.out_proj", "ffn.fc2")) else v.clone())
              for k, v in state.items()}
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[1, 3:] = False
    x = g.randn(2, 5, _C) * 2
    return {"state": state, "silent": silent, "seed": g.seed_int(), "x": x,
            "runs": [("x of shape (2, 5, 16), no mask", None),
                     ("x of shape (2, 5, 16) with a padding mask (2, 1, 1, 5)", keep[:, None, None, :]),
                     ("x of shape (2, 5, 16) with a causal mask (5, 5)", torch.ones(5, 5, dtype=torch.bool).tril())],
            "cotangent": g.randn(2, 5, _C)}


@check_pre_ln_block.probe
def _block_probe(p, PreLNBlock, cases):
    with torch.random.fork_rng():                         # the notebook's RNG stays untouched
        torch.manual_seed(cases["seed"])
        block = p.run(PreLNBlock, _C, _H, _F)
    missing = [n for n in ("attn", "norm1", "ffn", "norm2")
               if not isinstance(getattr(block, n, None), torch.nn.Module)]
    if missing:
        raise ValueError(f"PreLNBlock is missing the submodules {missing} (keep the __init__ as given)")
    block.load_state_dict(cases["state"])                 # the same weights as the reference's
    block.eval()
    x = cases["x"]
    out = {"runs": [{**p.call(block, x, mask), "what": f"PreLNBlock.forward for {what}"}
                    for what, mask in cases["runs"]],
           "grad": {**p.call(block, x, None, grad=(0,), cotangent=cases["cotangent"]), "atol": 1e-4,
                    "what": "PreLNBlock.forward for x of shape (2, 5, 16), with the gradient with respect to x"}}
    block.load_state_dict(cases["silent"])
    out["silent"] = {**p.call(block, x, None), "what": "PreLNBlock.forward with attention and FFN outputs zeroed "
                                                        "(a Pre-LN block must then return x itself)"}
    return out


# ----------------------------------------------------------------------------- 2.7

check_mha = Exercise(
    "2.7", "multi_head_attention",
    goal="builds multi-head attention itself from four nn.Linear layers, its split/merge and its attention",
    forbid=[SDPA, TORCH_MHA, PLMKIT_ATTENTION])

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


def mha_state(in_w, in_b, out_w, out_b):
    """torch's packed weights -> the learner's module: in_proj_weight (3C, C) is [W_q; W_k; W_v]."""
    C = out_w.shape[0]
    state = {}
    for i, name in enumerate(PROJECTIONS[:3]):
        state[f"{name}.weight"], state[f"{name}.bias"] = in_w[i * C:(i + 1) * C].clone(), in_b[i * C:(i + 1) * C].clone()
    state["out_proj.weight"], state["out_proj.bias"] = out_w.clone(), out_b.clone()
    return state


@check_mha.cases
def _mha_cases(g):
    configs = []
    for C, H, B, T, S in [(16, 4, 2, 5, 7), (12, 3, 1, 6, 4)]:
        keep_self = torch.ones(B, T, dtype=torch.bool)
        keep_self[-1, T - 2:] = False
        keep_ctx = torch.ones(B, S, dtype=torch.bool)
        keep_ctx[-1, S - 1:] = False
        configs.append({
            "C": C, "H": H, "seed": g.seed_int(),
            "in_w": g.randn(3 * C, C) * 0.4, "in_b": g.randn(3 * C) * 0.3,
            "out_w": g.randn(C, C) * 0.4, "out_b": g.randn(C) * 0.3,
            "x": g.randn(B, T, C), "context": g.randn(B, S, C), "cotangent": g.randn(B, T, C),
            "runs": [(f"self-attention, x ({B}, {T}, {C}), no mask", False, None),
                     (f"self-attention, x ({B}, {T}, {C}), a causal mask ({T}, {T})", False,
                      torch.ones(T, T, dtype=torch.bool).tril()),
                     (f"self-attention, x ({B}, {T}, {C}), a padding mask ({B}, 1, 1, {T})", False,
                      keep_self[:, None, None, :]),
                     (f"cross-attention, x ({B}, {T}, {C}) reading context ({B}, {S}, {C}), no mask", True, None),
                     (f"cross-attention, x ({B}, {T}, {C}) reading context ({B}, {S}, {C}), "
                      f"a padding mask ({B}, 1, 1, {S}) on the context", True, keep_ctx[:, None, None, :])]})
    return configs


@check_mha.probe
def _mha_probe(p, MultiHeadAttention, cases):
    out = []
    for c in cases:
        with torch.random.fork_rng():                     # the notebook's RNG stays untouched
            torch.manual_seed(c["seed"])
            m = p.run(MultiHeadAttention, c["C"], c["H"])
        if not isinstance(m, torch.nn.Module):
            raise ValueError(f"MultiHeadAttention({c['C']}, {c['H']}) returned {type(m).__name__}, not an nn.Module")
        bad = [n for n in PROJECTIONS if not isinstance(getattr(m, n, None), torch.nn.Linear)]
        if bad:
            raise ValueError(f"MultiHeadAttention needs nn.Linear submodules {list(PROJECTIONS)}; missing or not "
                             f"nn.Linear: {bad}")
        m.load_state_dict(mha_state(c["in_w"], c["in_b"], c["out_w"], c["out_b"]))   # strict: no other weights
        m.eval()

        def fwd(x, context, mask, m=m):
            return m(x, context=context, mask=mask)
        name = f"MultiHeadAttention({c['C']}, n_heads={c['H']})"
        out.append({"runs": [{**p.call(fwd, c["x"], c["context"] if cross else None, mask), "what": f"{name} on {what}"}
                             for what, cross, mask in c["runs"]],
                    "grad": {**p.call(fwd, c["x"], None, None, grad=(0,), cotangent=c["cotangent"]), "atol": 1e-4,
                             "what": f"{name} on self-attention, no mask, with the gradient with respect to x"}})
    return out
