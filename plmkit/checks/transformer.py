"""Checkers for chapter 2, attention and the Transformer.

    2.1 attention            softmax(q k^T / sqrt(D), masked) v, and the weights; differentiable
    2.2 causal_mask          boolean (T, T), True on and below the diagonal
    2.3 split/merge heads    (B, T, C) <-> (B, H, T, D), channels [head 0 | head 1 | ...]
    2.4 sinusoidal_encoding  sin on even channels, cos on odd, frequencies 10000^(2i / C)
    2.5 layer_norm           biased variance, eps inside the root, any leading dims, dtype kept
    2.6 pre_ln_block         x + attn(norm1(x)), then + ffn(norm2(.)) around the learner's own
                             MultiHeadAttention (2.7), judged against plmkit's Pre-LN EncoderBlock
                             loaded with the same weights
    2.7 multi_head_attention the learner's MultiHeadAttention module (q/k/v/out projections, head
                             split/merge, mask), judged against `torch.nn.MultiheadAttention`
                             loaded with the same weights

(2.7 comes before 2.6 in the notebook: the block is built from the learner's attention.)

Each names the classic bug when it sees one: softmax over the wrong axis, a
missing 1/sqrt(D), a mask applied after the softmax, heads merged in the wrong
order, a Post-LN block where a Pre-LN one was asked, heads scaled by sqrt(d_model) instead of
sqrt(head_dim), a missing output projection, cross-attention that reads its own input.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..nn import attention as _attn
from ..nn import blocks as _blocks
from ..nn import norms as _norms
from ..nn import positional as _pos
from ._core import Exercise, reference_grads
from ._guard import Rule, aten_ops

SDPA = Rule("`F.scaled_dot_product_attention`",
            [F.scaled_dot_product_attention, *aten_ops(
                "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
                "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_attention_math",
                "_fused_sdp_choice", "_native_multi_head_attention")])
TORCH_MHA = Rule("`nn.MultiheadAttention`", [torch.nn.MultiheadAttention, F.multi_head_attention_forward])
PLMKIT_ATTENTION = Rule("plmkit's `pn.scaled_dot_product_attention` / `pn.MultiHeadAttention`",
                        [_attn.scaled_dot_product_attention, _attn.MultiHeadAttention])


# ----------------------------------------------------------------------------- 2.1

check_attention = Exercise("2.1", "attention",
                           goal="computes attention itself from matrix products, masked_fill and softmax",
                           forbid=[SDPA, TORCH_MHA, PLMKIT_ATTENTION])


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
    cases = []
    for what, (b, h, tq, tk), mask in shapes:
        cases.append({"q": g.randn(b, h, tq, D) * 2, "k": g.randn(b, h, tk, D) * 2, "v": g.randn(b, h, tk, D),
                      "mask": mask, "what": f"attention(q, k, v, mask) with {what}"})
    # blocked keys: their values must not leak into the output
    q, k, v = g.randn(1, 1, 3, 8), g.randn(1, 1, 4, 8), g.randn(1, 1, 4, 8)
    keep = torch.tensor([True, True, False, False])
    v2 = v.clone()
    v2[..., 2:, :] += 100.0
    blocked = "attention(q, k, v, mask) with keys 2 and 3 blocked"
    cases.append({"q": q, "k": k, "v": v, "mask": keep, "what": blocked})
    cases.append({"q": q, "k": k, "v": v2, "mask": keep, "what": blocked + " and their values changed by +100"})
    # 3-D inputs (no head axis) and float64
    cases.append({"q": g.randn(2, 5, 4), "k": g.randn(2, 7, 4), "v": g.randn(2, 7, 3), "mask": None,
                  "what": "attention(q, k, v) for 3-D q (2, 5, 4), k (2, 7, 4), v (2, 7, 3) (no head axis)"})
    grad = {"q": g.randn(1, 2, 3, 4, dtype=torch.float64), "k": g.randn(1, 2, 5, 4, dtype=torch.float64),
            "v": g.randn(1, 2, 5, 4, dtype=torch.float64), "mask": g.randn(1, 1, 3, 5) > -0.5,
            "what": "attention(q, k, v, mask) in float64, gradients of the output"}
    grad["mask"][..., 0] = True
    grad["cotangent"] = g.randn(1, 2, 3, 4, dtype=torch.float64)
    cases.append(grad)
    return cases


def _ref_attention(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, dim=-1)
    return w @ v, w


@check_attention.probe
def _attention_probe(p, attention, cases):
    out = []
    for c in cases:
        if "cotangent" in c:
            out.append(p.call(lambda q, k, v, m: attention(q, k, v, m)[0], c["q"], c["k"], c["v"], c["mask"],
                              grad=(0, 1, 2), cotangent=c["cotangent"]))
        else:
            out.append(p.call(attention, c["q"], c["k"], c["v"], c["mask"]))
    return out


def _diagnose_attention(q, k, v, mask):
    """A hint that names the bug whose weights match what the learner returned."""
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
        candidates["the mask is ignored"] = torch.softmax(scores / math.sqrt(D), dim=-1)

    def hint(w):
        for name, cand in candidates.items():
            if w.shape == cand.shape and torch.allclose(w.double(), cand.double(), atol=1e-5):
                return f"looks like {name}"
        return ""
    return hint


@check_attention.judge
def _attention_judge(r, cases, results):
    blocked_outputs = []
    for c, rec in zip(cases, results):
        q, k, v, mask, what = c["q"], c["k"], c["v"], c["mask"], c["what"]
        want_out, want_w = _ref_attention(q, k, v, mask)
        if "cotangent" in c:
            got = r.value(rec, what)
            if got is not None and r.close(got, want_out, what, atol=1e-10):
                case = {"args": [q, k, v, mask], "grad": [0, 1, 2], "cotangent": c["cotangent"]}
                r.grads_close(rec, reference_grads(lambda *a: _ref_attention(*a)[0], case), what)
            continue
        got = r.value(rec, what, tuple)
        if got is None:
            continue
        if not r.check(len(got) == 2, f"{what}: expected a tuple (output, weights), got {len(got)} items"):
            continue
        out, w = got
        if r.close(w, want_w, f"{what}, the weights", hint=_diagnose_attention(q, k, v, mask)):
            r.close(out, want_out, f"{what}, the output")
        else:
            r.fail(f"{what}: the output is wrong because the weights are")
        if "blocked" in what and isinstance(w, torch.Tensor):
            blocked_outputs.append(out)
            r.check(w.shape == want_w.shape and bool((w[..., 2:] == 0).all()),
                    f"{what}: blocked keys must get weight exactly 0 (masked_fill with -inf before the softmax)")
    if len(blocked_outputs) == 2 and all(isinstance(o, torch.Tensor) for o in blocked_outputs):
        a, b = blocked_outputs
        r.check(a.shape == b.shape and torch.allclose(a, b, atol=1e-4),
                "changing the values of blocked keys changed the output: blocked keys leak")
    r.check(not any(rec["mutated"] for rec in results), "attention changed q, k, v or the mask in place")


# ----------------------------------------------------------------------------- 2.2

def _triangle(T):
    return torch.ones(T, T, dtype=torch.bool).tril()


CAUSAL_RULES = [Rule("plmkit's `pn.causal_mask`", [_attn.causal_mask]),
                Rule("`nn.Transformer.generate_square_subsequent_mask`",
                     [torch.nn.Transformer.generate_square_subsequent_mask])]


def causal_mask_checker(exercise: str) -> Exercise:
    """The causal-mask exercise (chapter 2 and again in chapter 4)."""
    ex = Exercise(exercise, "causal_mask", goal="builds the mask itself (torch.ones + tril, or a comparison)",
                  forbid=CAUSAL_RULES)

    @ex.cases
    def _(g):
        return [1, 2, 4, g.int(5, 12)]

    @ex.probe
    def _(p, causal_mask, cases):
        return [p.call(causal_mask, T) for T in cases]

    @ex.judge
    def _(r, cases, results):
        for T, rec in zip(cases, results):
            want = _triangle(T)
            what = f"causal_mask({T})"
            got = r.value(rec, what, torch.Tensor)
            if got is None:
                continue

            def hint(got, want=want, T=T):
                got = got.bool()
                if torch.equal(got, want.T):
                    return ("the mask is transposed: it lets position i see the FUTURE (upper triangle); "
                            "query i may attend to keys j <= i")
                if torch.equal(got, ~want) and T > 1:
                    return "True/False are swapped; True must mean 'may attend'"
                if torch.equal(got, want.tril(-1)):
                    return "the diagonal is False: a position may attend to itself"
                return ""
            if got.dtype != torch.bool:
                r.fail(f"{what}: expected a boolean tensor (True = may attend), got dtype {got.dtype}")
                continue
            r.close(got, want, what, hint=hint)
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
        H = c["shape"][2]
        out.append({"split": p.call(split_heads, c["x"], H), "merge": p.call(merge_heads, c["y"]),
                    "round": p.call(lambda x, h: merge_heads(split_heads(x, h)), c["x2"], H)})
    return out


@check_heads.judge
def _heads_judge(r, cases, results):
    for c, rec in zip(cases, results):
        B, T, H, D = c["shape"]
        x, y = c["x"], c["y"]
        what = f"split_heads(x, n_heads={H}) for x of shape {(B, T, H * D)}"
        got = r.value(rec["split"], what)
        if got is not None:
            r.close(got, x.view(B, T, H, D).transpose(1, 2), what, atol=0, rtol=0,
                    hint=lambda g: "x.view(B, H, T, D) mixes positions into heads: view as (B, T, H, D), then "
                                   "transpose(1, 2)" if torch.equal(g, x.view(B, H, T, D)) else "")
        what = f"merge_heads(y) for y of shape {(B, H, T, D)}"
        got = r.value(rec["merge"], what)
        if got is not None:
            def hint(g, y=y):
                if torch.equal(g, y.reshape(B, T, H * D)):
                    return "reshaped without moving the head axis next to D: transpose(1, 2) first"
                if torch.equal(g, y.permute(0, 2, 3, 1).reshape(B, T, H * D)):
                    return "heads merged in the wrong order: channels must be [head 0 | head 1 | ...]"
                return ""
            r.close(got, y.transpose(1, 2).reshape(B, T, H * D), what, atol=0, rtol=0, hint=hint)
        what = f"merge_heads(split_heads(x, {H})) must give x back for x of shape {(B, T, H * D)}"
        got = r.value(rec["round"], what)
        if got is not None:
            r.close(got, c["x2"], what, atol=0, rtol=0)
    r.check(not any(v["mutated"] for rec in results for v in rec.values()),
            "split_heads or merge_heads changed its input in place")


# ----------------------------------------------------------------------------- 2.4

check_sinusoidal = Exercise("2.4", "sinusoidal_encoding", goal="builds the sine/cosine table itself",
                            forbid=[Rule("plmkit's `pn.sinusoidal_table` / `SinusoidalPositionalEncoding`",
                                         [_pos.sinusoidal_table, _pos.SinusoidalPositionalEncoding])])


@check_sinusoidal.cases
def _sin_cases(g):
    return [(1, 2), (6, 8), (g.int(5, 40), 2 * g.int(2, 17)), (50, 64)]


@check_sinusoidal.probe
def _sin_probe(p, sinusoidal_encoding, cases):
    return [p.call(sinusoidal_encoding, T, C) for T, C in cases]


def _sin_ref(T, C):
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    angle = pos / 10000 ** (torch.arange(0, C, 2, dtype=torch.float64) / C)
    pe = torch.zeros(T, C, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = angle.sin(), angle.cos()
    return pe.float()


@check_sinusoidal.judge
def _sin_judge(r, cases, results):
    for (T, C), rec in zip(cases, results):
        want = _sin_ref(T, C)
        what = f"sinusoidal_encoding({T}, {C})"
        got = r.value(rec, what, torch.Tensor)
        if got is None:
            continue

        def hint(g, want=want, T=T):
            g = g.double()
            if torch.allclose(g[:, 0::2], want[:, 1::2].double(), atol=1e-4):
                return "sin and cos are swapped: even channels are sin, odd channels cos"
            if T > 1 and not torch.allclose(g[:, 2::2], want[:, 2::2].double(), atol=1e-4):
                return "check the frequencies: pair i uses 10000^(2i / C)"
            return ""
        r.close(got, want, what, atol=1e-4, hint=hint)


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
    out = [{"args": [x, w, b, eps], "what": what, "grad": []} for what, x, w, b, eps in cases]
    x = g.randn(3, 4, 6, dtype=torch.float64)
    out.append({"args": [x, g.randn(6, dtype=torch.float64), g.randn(6, dtype=torch.float64), 1e-5],
                "what": "x of shape (3, 4, 6) in float64, with gradients for x, weight and bias",
                "grad": [0, 1, 2], "cotangent": g.randn(3, 4, 6, dtype=torch.float64)})
    return out


@check_layer_norm.probe
def _ln_probe(p, layer_norm, cases):
    return [p.call(layer_norm, *c["args"], grad=c["grad"], cotangent=c.get("cotangent")) for c in cases]


def _ln_ref(x, w, b, eps):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


@check_layer_norm.judge
def _ln_judge(r, cases, results):
    for c, rec in zip(cases, results):
        x, w, b, eps = c["args"]
        want = _ln_ref(x, w, b, eps)
        what = f"layer_norm(x, weight, bias, eps={eps}) for {c['what']}"
        got = r.value(rec, what)
        if got is None:
            continue

        def hint(g, x=x, w=w, b=b, eps=eps):
            g = g.double()
            unbiased = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b
            std_eps = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True, unbiased=False) + eps) * w + b
            over_all = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + eps) * w + b
            if torch.allclose(g, unbiased.double(), atol=1e-4):
                return "LayerNorm uses the biased variance: divide by C, e.g. var(unbiased=False)"
            if torch.allclose(g, std_eps.double(), atol=1e-4):
                return "eps goes inside the square root: sqrt(var + eps)"
            if torch.allclose(g, over_all.double(), atol=1e-4):
                return "statistics taken over the whole tensor: take them over the last dim only (dim=-1)"
            return ""
        r.close(got, want, what, atol=1e-4 if x.dtype == torch.float32 else 1e-9, hint=hint)
        if c["grad"]:
            r.grads_close(rec, reference_grads(_ln_ref, c), what, atol=1e-9)
    r.check(not any(rec["mutated"] for rec in results), "layer_norm changed x, weight or bias in place")


# ----------------------------------------------------------------------------- 2.6

check_pre_ln_block = Exercise(
    "2.6", "pre_ln_block", goal="arranges its own Pre-LN block around its own MultiHeadAttention (Exercise 2.7)",
    forbid=[Rule("plmkit's `pn.EncoderBlock` / `pn.DecoderBlock`", [_blocks.EncoderBlock, _blocks.DecoderBlock]),
            Rule("`nn.TransformerEncoderLayer`", [torch.nn.TransformerEncoderLayer, torch.nn.TransformerDecoderLayer]),
            SDPA, TORCH_MHA, PLMKIT_ATTENTION])

_C, _H, _F = 16, 4, 32


def _reference_block(state, norm_first=True):
    block = _blocks.EncoderBlock(_C, _H, _F, norm_first=norm_first)
    block.load_state_dict(state)
    return block.eval()


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
    out = {"runs": [p.call(block, cases["x"], mask) for _, mask in cases["runs"]],
           "grad": p.call(block, cases["x"], None, grad=(0,), cotangent=cases["cotangent"])}
    block.load_state_dict(cases["silent"])
    out["silent"] = p.call(block, cases["x"], None)
    return out


@check_pre_ln_block.judge
def _block_judge(r, cases, results):
    ref, post = _reference_block(cases["state"]), _reference_block(cases["state"], norm_first=False)
    x = cases["x"]
    for (what, mask), rec in zip(cases["runs"], results["runs"]):
        what = f"PreLNBlock.forward for {what}"
        with torch.no_grad():
            want, want_post, want_nomask = ref(x, mask), post(x, mask), ref(x, None)
        got = r.value(rec, what)
        if got is None:
            continue

        def hint(g, want_post=want_post, want_nomask=want_nomask, mask=mask):
            if torch.allclose(g, want_post, atol=1e-5):
                return "this is the Post-LN arrangement: normalise the sub-layer's input, not the sum"
            if mask is not None and torch.allclose(g, want_nomask, atol=1e-5):
                return "the mask was not passed to the attention"
            return ""
        r.close(got, want, what, hint=hint)
    what = "PreLNBlock.forward: the gradient with respect to x"
    if r.value(results["grad"], what) is not None:
        case = {"args": [x, None], "grad": [0], "cotangent": cases["cotangent"]}
        r.grads_close(results["grad"], reference_grads(ref, case), what, atol=1e-4)
    what = "PreLNBlock.forward with attention and FFN outputs zeroed (a Pre-LN block must then return x itself)"
    got = r.value(results["silent"], what)
    if got is not None:
        r.close(got, x, what)
    r.check(not results["grad"]["mutated"] and not any(rec["mutated"] for rec in results["runs"]),
            "PreLNBlock.forward changed its input x in place: use x = x + ..., not x += ...")


# ----------------------------------------------------------------------------- 2.7

check_mha = Exercise(
    "2.7", "multi_head_attention",
    goal="builds multi-head attention itself from four nn.Linear layers, its split/merge and its attention",
    forbid=[SDPA, TORCH_MHA, PLMKIT_ATTENTION])

_PROJ = ("q_proj", "k_proj", "v_proj", "out_proj")


def _mha_state(in_w, in_b, out_w, out_b):
    """torch's packed weights -> the learner's module: in_proj_weight (3C, C) is [W_q; W_k; W_v]."""
    C = out_w.shape[0]
    state = {}
    for i, name in enumerate(_PROJ[:3]):
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
        bad = [n for n in _PROJ if not isinstance(getattr(m, n, None), torch.nn.Linear)]
        if bad:
            raise ValueError(f"MultiHeadAttention needs nn.Linear submodules {list(_PROJ)}; missing or not "
                             f"nn.Linear: {bad}")
        m.load_state_dict(_mha_state(c["in_w"], c["in_b"], c["out_w"], c["out_b"]))   # strict: no other weights
        m.eval()

        def fwd(x, context, mask, m=m):
            return m(x, context=context, mask=mask)
        rec = {"runs": [p.call(fwd, c["x"], c["context"] if cross else None, mask) for _, cross, mask in c["runs"]],
               "grad": p.call(fwd, c["x"], None, None, grad=(0,), cotangent=c["cotangent"])}
        out.append(rec)
    return out


def _torch_mha(c):
    C, H = c["C"], c["H"]
    ref = torch.nn.MultiheadAttention(C, H, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(c["in_w"])
        ref.in_proj_bias.copy_(c["in_b"])
        ref.out_proj.weight.copy_(c["out_w"])
        ref.out_proj.bias.copy_(c["out_b"])
    ref.eval()

    def run(x, context=None, mask=None):
        kv = x if context is None else context
        kw = {}
        if mask is not None and mask.ndim == 2:                  # (T_q, T_k); torch: True = blocked
            kw["attn_mask"] = ~mask
        elif mask is not None:                                   # (B, 1, 1, T_k) padding
            kw["key_padding_mask"] = ~mask[:, 0, 0, :]
        return ref(x, kv, kv, need_weights=False, **kw)[0]
    return run


def _mha_variants(c, x, context, mask):
    """What the classic bugs compute, for the hints (plain torch, trusted side)."""
    C, H = c["C"], c["H"]
    st = _mha_state(c["in_w"], c["in_b"], c["out_w"], c["out_b"])
    lin = {n: (lambda t, n=n: t @ st[f"{n}.weight"].T + st[f"{n}.bias"]) for n in _PROJ}

    def mha(*, scale=None, out=True, merge="ok", own_kv=False, use_mask=True, heads=H):
        kv = x if (context is None or own_kv) else context
        d = C // heads
        q, k, v = (lin[n](t).view(t.shape[0], t.shape[1], heads, d).transpose(1, 2)
                   for n, t in (("q_proj", x), ("k_proj", kv), ("v_proj", kv)))
        s = q @ k.transpose(-2, -1) / math.sqrt(scale or d)
        if mask is not None and use_mask:
            s = s.masked_fill(~mask, float("-inf"))
        y = torch.softmax(s, -1) @ v                                              # (B, h, T, d)
        B, _, T, _ = y.shape
        y = y.reshape(B, T, C) if merge == "no_transpose" else y.transpose(1, 2).reshape(B, T, C)
        return lin["out_proj"](y) if out else y
    bugs = {
        "the scores are divided by sqrt(d_model) instead of sqrt(head_dim)": mha(scale=C),
        "the output projection out_proj is missing": mha(out=False),
        "heads merged without transpose(1, 2): positions and heads are mixed": mha(merge="no_transpose"),
        "the heads are never split (one head of width d_model)": mha(heads=1),
    }
    if context is not None:
        bugs["keys and values come from x, not from `context`"] = mha(own_kv=True)
    if mask is not None:
        bugs["the mask is not passed to the attention"] = mha(use_mask=False)
    return bugs


@check_mha.judge
def _mha_judge(r, cases, results):
    for c, rec in zip(cases, results):
        ref = _torch_mha(c)
        for (what, cross, mask), run in zip(c["runs"], rec["runs"]):
            context = c["context"] if cross else None
            with torch.no_grad():
                want = ref(c["x"], context, mask)
            what = f"MultiHeadAttention({c['C']}, n_heads={c['H']}) on {what}"
            got = r.value(run, what)
            if got is None:
                continue

            def hint(g, c=c, context=context, mask=mask):
                with torch.no_grad():
                    for name, bug in _mha_variants(c, c["x"], context, mask).items():
                        if g.shape == bug.shape and torch.allclose(g.double(), bug.double(), atol=1e-4):
                            return f"looks like {name}"
                return ""
            r.close(got, want, what, hint=hint)
        what = f"MultiHeadAttention({c['C']}, n_heads={c['H']}): the gradient with respect to x"
        if r.value(rec["grad"], what) is not None:
            case = {"args": [c["x"]], "grad": [0], "cotangent": c["cotangent"]}
            r.grads_close(rec["grad"], reference_grads(ref, case), what, atol=1e-4)
    r.check(not any(run["mutated"] for rec in results for run in [*rec["runs"], rec["grad"]]),
            "MultiHeadAttention.forward changed x, the context or the mask in place")
