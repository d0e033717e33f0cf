"""Chapter 5's text-to-text tasks, batches, FLOP counts, and the objective study script at smoke size."""
import doctest
import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

import plmkit.text2text as t2t
from plmkit.objectives import IGNORE_INDEX, reassemble_spans

ROOT = Path(__file__).resolve().parents[1]


def test_doctests():
    assert doctest.testmod(t2t, raise_on_error=False).failed == 0


def test_tasks_are_what_their_prefix_says():
    words = [f"w{c}" for c in "abcdefghij"] * 10
    rng = random.Random(0)
    for _ in range(20):
        a, b = t2t.make_task("reverse", words, rng)
        assert a.startswith("reverse: ") and b.split() == a[len("reverse: "):].split()[::-1]
        a, b = t2t.make_task("sort", words, rng)
        assert b.split() == sorted(a[len("sort: "):].split()) and len(b.split()) == 2
        a, b = t2t.make_task("fill", words, rng)
        assert a.count("_") == 1 and " " not in b
    with pytest.raises(ValueError, match="task"):
        t2t.make_task("translate", words, rng)


def test_pretrain_pairs_follow_their_objective():
    v = t2t.CharVocab()
    words = t2t.word_list()[:2000]
    rng, g = random.Random(1), torch.Generator().manual_seed(1)
    for a, b in t2t.pretrain_pairs("span", words, v, 16, rng, generator=g):
        assert b[-1] == v.eos and a[-1] == v.eos
        assert v.decode(reassemble_spans(torch.tensor(a), torch.tensor(b), len(v), v.eos)).count(" ") == 5
    for a, b in t2t.pretrain_pairs("bart", words, v, 16, rng, generator=g):
        assert v.mask in a and v.mask not in b and b[-1] == v.eos
    for a, b in t2t.pretrain_pairs("prefix", words, v, 16, rng):
        assert v.decode(a) + v.decode(b) == v.decode(a[:-1] + b)
    assert all(a == [] for a, _ in t2t.pretrain_pairs("clm", words, v, 4, rng))
    with pytest.raises(ValueError, match="objective"):
        t2t.pretrain_pairs("mlm", words, v, 4, rng)


def test_batches_score_the_right_tokens():
    pairs = [([5, 6, 7], [8, 9, 1]), ([5], [10, 1])]
    enc = t2t.collate(pairs)
    assert enc["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]] and enc["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert enc["labels"].tolist() == [[8, 9, 1], [10, 1, IGNORE_INDEX]]
    dec = t2t.decoder_only_batch(pairs, sep=33)
    assert dec["input_ids"].tolist() == [[5, 6, 7, 33, 8, 9, 1], [5, 33, 10, 1, 0, 0, 0]]
    # the logits at position t are scored on token t + 1, only where that token belongs to the target
    assert dec["labels"].tolist() == [[-100, -100, -100, 8, 9, 1, -100], [-100, 10, 1, -100, -100, -100, -100]]
    clm = t2t.decoder_only_batch([([], [5, 6, 1])], sep=33)
    assert clm["labels"].tolist() == [[6, 1, -100]]


def test_encoder_decoder_has_twice_the_parameters_for_the_same_per_token_cost():
    v = t2t.CharVocab()
    ed = t2t.build_model("encdec", len(v), d_model=64, n_layers=2)
    do = t2t.build_model("dec", len(v), d_model=64, n_layers=2)
    n_ed, n_do = t2t._non_embedding_params(ed), t2t._non_embedding_params(do)
    assert 1.5 < (n_ed[0] + n_ed[1]) / n_do[0] < 2.5          # ~2x non-embedding parameters
    batch = t2t.collate([([5] * 10, [6] * 4 + [1])])
    assert t2t.train_flops(ed, batch) == 6.0 * (n_ed[0] * 10 + n_ed[1] * 5)
    with pytest.raises(ValueError, match="kind"):
        t2t.build_model("rnn", 10)


def test_objective_study_smoke_writes_a_labelled_json(tmp_path):
    spec = importlib.util.spec_from_file_location("t5_objectives", ROOT / "experiments" / "t5_objectives.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "smoke.json"
    record = mod.main(["--smoke", "--out", str(out), "--device", "cpu"])
    saved = json.loads(out.read_text())
    assert saved["summary"].keys() == {"span", "bart", "prefix", "clm"} == record["summary"].keys()
    for key in ("command", "date", "device", "seeds", "git_commit", "settings"):
        assert saved[key], key
    if (ROOT / ".git").exists():                                # a checkout (a worktree has a .git file)
        assert len(saved["git_commit"]) == 40
    flops = [saved["summary"][o]["pretrain_flops"] for o in ("span", "bart", "prefix", "clm")]
    assert max(flops) / min(flops) < 3                          # equal budgets, up to whole steps at smoke size
    for r in saved["results"]:
        assert 0.0 <= r["exact_match_mean"] <= 1.0 and r["eval_loss"] > 0


def test_decoder_only_equals_t5s_decoder_with_cross_attention_switched_off():
    torch.manual_seed(0)
    ed = t2t.build_model("encdec", 40, d_model=32, n_layers=2).eval()
    do = t2t.build_model("dec", 40, d_model=32, n_layers=2).eval()
    with torch.no_grad():
        for block in ed.decoder.blocks:
            block.cross_attn.out_proj.weight.zero_()               # cross-attention adds nothing now
    state = {k: v for k, v in ed.state_dict().items() if k.startswith(("shared.", "decoder."))
             and ".cross_attn." not in k and ".norm_cross." not in k}
    assert do.load_state_dict(state, strict=True) is not None
    ids = torch.randint(2, 40, (3, 11))
    with torch.no_grad():
        want = ed(torch.randint(2, 40, (3, 5)), decoder_input_ids=ids)       # any encoder input
        got = do(ids)
    assert torch.allclose(got, want, atol=1e-5)


def test_decoder_only_is_causal_and_ignores_left_padding():
    torch.manual_seed(1)
    do = t2t.build_model("dec", 40, d_model=32, n_layers=2).eval()
    ids = torch.randint(2, 40, (1, 9))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 1) % 40
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], dim=1)
    with torch.no_grad():
        a, b = do(ids), do(changed)
        c = do(padded, attention_mask=mask)[:, 3:]
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6) and not torch.allclose(a[:, 6:], b[:, 6:])
    assert torch.allclose(a, c, atol=1e-5)                           # relative positions: padding changes nothing
