"""experiments/bert_cpu.py runs end to end at smoke size and writes a labelled JSON."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bert_cpu_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bert_cpu", ROOT / "experiments" / "bert_cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "smoke.json"
    module.main(["--smoke", "--out", str(out)])
    record = json.loads(out.read_text())
    for key in ("command", "date", "device", "git_commit", "seeds", "settings", "results"):
        assert key in record
    res = record["results"]
    assert [r["seed"] for r in res["pretrain"]] == record["seeds"] == [0, 1]
    for r in res["pretrain"]:
        assert r["heldout_loss"] > 0 and r["unigram_loss"] > 0 and len(r["eval_loss"]) == len(r["eval_step"])
    assert {r["start"] for r in res["finetune"]} == {"random", "tiny, pre-trained", "MiniLM"}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in res["finetune"])
    feats = res["features"]
    assert {(r["seed"], r["start"]) for r in feats} == {(s, name) for s in (0, 1)
                                                     for name in ("random", "tiny, pre-trained", "MiniLM")}
    for r in feats:
        assert len(r["draws"]) == record["settings"]["feat_draws"] and all(0.0 <= a <= 1.0 for a in r["draws"])
        assert abs(r["accuracy"] - sum(r["draws"]) / len(r["draws"])) < 1e-12
    long = res["long"]
    assert long["steps"] == record["settings"]["long_steps"] and [r["seed"] for r in long["pretrain"]] == [0, 1]
    for part in ("finetune", "features"):                 # only the tiny start depends on the longer pre-training
        assert {r["start"] for r in long[part]} == {"tiny, pre-trained"}
        assert len(long[part]) == 2 * len(record["settings"]["n_trains"])
    for r in res["qa"]:
        assert set(r["scores"]) == {"MiniLM + QA head", "capitalised word", "most common position"}
        assert all(0.0 <= v["exact_match"] <= v["f1"] <= 1.0 for v in r["scores"].values())


def test_qa_examples_mark_the_name():
    spec = importlib.util.spec_from_file_location("bert_cpu", ROOT / "experiments" / "bert_cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from plmkit.tokenize import WordPiece
    import os
    tok = WordPiece.from_vocab_file(os.path.join(module.minilm_path(), "vocab.txt"), lowercase=True)
    scenes = {"Play": [[("Ham", ["Good morrow, Horatio, my friend.", "No name here at all.",
                                 "Horatio and Hamlet both."])]]}
    (ex,) = module.qa_examples(tok, scenes, {"Play": {"horatio", "hamlet"}}, ["Play"])   # one name per line only
    assert tok.convert_ids_to_tokens(ex["ids"][ex["start"]:ex["end"] + 1]) == tok.tokenize("horatio")
    assert ex["context"][ex["start"]] == 1 and ex["context"][0] == 0 and ex["ids"][-1] == tok.sep_id
    assert module.span_f1((3, 4), (4, 5)) == 0.5 and module.span_f1((1, 1), (2, 2)) == 0.0
