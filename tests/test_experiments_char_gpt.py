"""experiments/char_gpt.py runs end to end at smoke size and writes a labelled JSON."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_char_gpt_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("char_gpt", ROOT / "experiments" / "char_gpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "smoke.json"
    module.main(["--smoke", "--out", str(out)])
    record = json.loads(out.read_text())
    for key in ("command", "date", "device", "git_commit", "seeds", "settings", "results", "vocabulary_words"):
        assert key in record
    assert record["command"].endswith("--smoke --out " + str(out)) and record["seeds"] == [0]
    (row,) = record["results"]
    for name in ("gpt", "bigram", "untrained"):
        assert 0.0 <= row[f"{name}_T1.0"] <= 1.0
    assert row["eval_loss"] > 0 and isinstance(row["example_T1.0"], str)
    assert record["vocabulary_words"] > 10_000              # the words of 41 works of Shakespeare


def test_the_experiment_trains_the_notebooks_cpu_model():
    """The JSON's seeds are the chapter's run: the same CPU profile as the notebook's CHAR."""
    import re
    nb = json.loads((ROOT / "solutions" / "04_gpt.ipynb").read_text())
    src = next("".join(c["source"]) for c in nb["cells"] if "CHAR = P.pick(" in "".join(c["source"]))
    cpu = re.search(r"CHAR = P.pick\(cpu=(dict\([^)]*\))", src).group(1)
    spec = importlib.util.spec_from_file_location("char_gpt", ROOT / "experiments" / "char_gpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert eval(cpu) == module.MODEL


def test_words_and_known_word_fraction():
    import pytest
    from plmkit.generate import known_word_fraction, words
    assert words("Thou art, my lord -- 'tis o'er!\nHAMLET.") == ["thou", "art", "my", "lord", "tis", "o'er", "hamlet"]
    assert known_word_fraction(["a b zz c", "zz a"], {"a", "b"}) == pytest.approx(2 / 4)   # a b zz | zz
    with pytest.raises(ValueError, match="texts"):
        known_word_fraction("a b c", {"a"})
    assert known_word_fraction(["one"], {"one"}) == 0.0                                  # no complete word


def test_bigram_lm_matches_counted_frequencies():
    """BigramLM's probabilities are the add-one relative frequencies of collections.Counter's pair counts."""
    import collections
    import random

    import pytest
    import torch
    from plmkit.objectives.clm import BigramLM
    rng = random.Random(0)
    ids = [rng.randrange(5) for _ in range(300)]
    lm = BigramLM(torch.tensor(ids), vocab_size=6)
    pairs, firsts = collections.Counter(zip(ids, ids[1:])), collections.Counter(ids[:-1])
    for a in range(6):
        for b in range(6):
            want = (pairs[(a, b)] + 1) / (firsts[a] + 6)
            assert lm.log_probs[a, b].exp().item() == pytest.approx(want, rel=1e-5)
    x = torch.tensor([[1, 4, 2]])
    assert torch.equal(lm(x)[0, 1], lm.log_probs[4])
    with pytest.raises(ValueError, match="vocab_size"):
        BigramLM(torch.tensor(ids), vocab_size=4)
