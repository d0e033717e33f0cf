"""Synthetic biographies of invented people: the data of chapters 7-9.

Each person has a two-word name made of invented syllables and five facts:
birth date, birth city, university, field of study and employer
(after Allen-Zhu & Li, "Physics of Language Models 3.1", 2023). A biography
writes each fact as one sentence; ``variety`` sets how many phrasings each
fact may take and whether the sentence order is shuffled:

    variety=1   one fixed template per fact, always in the same order
    variety=k   a template drawn from the first k for each sentence,
                sentences in random order (a new draw every time)

Questions use phrasings that never appear in a biography, so answering
them needs the fact, not a copied sentence.

    >>> people = make_people(3, seed=0)
    >>> sorted(people[0])
    ['birth_city', 'birth_date', 'employer', 'major', 'name', 'university']
    >>> biography(people[0], random.Random(0), variety=1).split(" . ")[0].startswith(people[0]["name"])
    True
"""
from __future__ import annotations

import random

__all__ = ["ATTRIBUTES", "TEMPLATES", "QUESTIONS", "MAX_VARIETY", "make_people", "biography", "qa_pairs",
           "corpus_words", "bio_batch", "qa_conversations", "split_people", "multi_turn_conversations"]

ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer")

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "gl"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
_CODAS = ["", "n", "r", "l", "s", "th", "m", "x"]

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Kyoto", "Dublin", "Quito", "Hanoi", "Tunis", "Perth", "Cusco",
          "Bergen", "Accra", "Porto", "Turin", "Leeds", "Busan", "Kazan", "Cork", "Malmo", "Graz", "Split",
          "Riga", "Lyon", "Delft", "Adelaide", "Hobart", "Fresno", "Tampa", "Denver"]
UNIVERSITIES = [f"{w} University" for w in
                ["Alder", "Birchwood", "Crestmoor", "Dunmore", "Elmsfield", "Fairhaven", "Glenrock", "Hollins",
                 "Ironwood", "Juniper", "Kestrel", "Larkspur", "Millbrook", "Northgate", "Oakridge", "Pinecrest",
                 "Quarry", "Ravenhill", "Stonebridge", "Thornfield"]]
MAJORS = ["physics", "history", "chemistry", "economics", "biology", "linguistics", "mathematics", "music",
          "philosophy", "geology", "astronomy", "architecture", "medicine", "law", "sociology", "statistics"]
EMPLOYERS = ["Tessaron", "Velmont", "Quorra", "Brightline", "Arkwell", "Nimbra", "Caldera", "Orison", "Pyxel",
             "Halden", "Zephyra", "Lumetra", "Corvane", "Mistral", "Solvane", "Trellis", "Vantor", "Wexford",
             "Yarrow", "Zenthe", "Ostrava", "Kindred", "Fathom", "Granite", "Helix"]

TEMPLATES = {   # five phrasings per fact; variety=1 uses only the first
    "birth_date": ["{name} was born on {value} .", "{name} came into this world on {value} .",
                   "The birthday of {name} is {value} .", "{name} entered life on {value} .",
                   "On {value} , {name} was born ."],
    "birth_city": ["{name} was born in {value} .", "{name} spent the early years in {value} .",
                   "{name} is a native of {value} .", "{name} first saw the light of day in {value} .",
                   "The birthplace of {name} is {value} ."],
    "university": ["{name} studied at {value} .", "{name} graduated from {value} .",
                   "{name} received an education at {value} .", "{name} attended {value} .",
                   "{name} is a graduate of {value} ."],
    "major": ["{name} majored in {value} .", "{name} completed a degree in {value} .",
              "{name} focused on {value} in college .", "{name} chose the field of {value} .",
              "The college major of {name} was {value} ."],
    "employer": ["{name} worked for {value} .", "{name} was employed by {value} .", "{name} had a job at {value} .",
                 "{name} built a career at {value} .", "{value} employed {name} ."],
}
MAX_VARIETY = 5

QUESTIONS = {   # worded differently from every template
    "birth_date": "When was {name} born ?",
    "birth_city": "Which city is {name} from ?",
    "university": "Which university did {name} go to ?",
    "major": "What subject did {name} study ?",
    "employer": "Which company does {name} work for ?",
}


def _names(rng: random.Random, n: int) -> list[str]:
    """n distinct invented words of two syllables, capitalised."""
    out: set[str] = set()
    while len(out) < n:
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(2))
        out.add(word.capitalize())
    return sorted(out)


def make_people(n: int, seed: int = 0, n_first: int = 60, n_last: int = 60) -> list[dict]:
    """n people with distinct full names (first x last from invented pools) and random facts.

    Returns a list of dicts with keys ``name`` and :data:`ATTRIBUTES`, each a string.
    """
    if not isinstance(n, int) or not 1 <= n <= n_first * n_last:
        raise ValueError(f"n must be an int in [1, n_first * n_last = {n_first * n_last}], got {n!r}")
    rng = random.Random(seed)
    pool = _names(rng, n_first + n_last)
    rng.shuffle(pool)
    first, last = pool[:n_first], pool[n_first:]
    names = rng.sample([f"{f} {l}" for f in first for l in last], n)
    people = []
    for name in names:
        people.append({
            "name": name,
            "birth_date": f"{rng.choice(MONTHS)} {rng.randint(1, 28)} , {rng.randint(1900, 1999)}",
            "birth_city": rng.choice(CITIES),
            "university": rng.choice(UNIVERSITIES),
            "major": rng.choice(MAJORS),
            "employer": rng.choice(EMPLOYERS),
        })
    return people


def biography(person: dict, rng: random.Random, variety: int = 1) -> str:
    """One biography of `person`: one sentence per fact, space-separated words.

    variety=1: template 0 for each fact in :data:`ATTRIBUTES` order; variety=k>1:
    templates drawn from the first k, sentence order shuffled, using `rng`.
    """
    if not isinstance(variety, int) or not 1 <= variety <= MAX_VARIETY:
        raise ValueError(f"variety must be an int in [1, {MAX_VARIETY}], got {variety!r}")
    sentences = []
    for attr in ATTRIBUTES:
        template = TEMPLATES[attr][0 if variety == 1 else rng.randrange(variety)]
        sentences.append(template.format(name=person["name"], value=person[attr]))
    if variety > 1:
        rng.shuffle(sentences)
    return " ".join(sentences)


def qa_pairs(person: dict) -> list[tuple[str, str]]:
    """(question, answer) for each fact of `person`, in :data:`ATTRIBUTES` order."""
    return [(QUESTIONS[a].format(name=person["name"]), person[a]) for a in ATTRIBUTES]


def corpus_words(people: list[dict]) -> list[str]:
    """Every word that biographies and questions about `people` can use (sorted, distinct)."""
    words: set[str] = set()
    texts = [t for ts in TEMPLATES.values() for t in ts] + list(QUESTIONS.values())
    for t in texts:
        words.update(w for w in t.replace("{name}", " ").replace("{value}", " ").split())
    for p in people:
        for key, value in p.items():
            words.update(value.split())
    for m in MONTHS:
        words.add(m)
    words.update(str(d) for d in range(1, 29))
    words.update(str(y) for y in range(1900, 2000))
    return sorted(words)


def bio_batch(tokenizer, people: list[dict], rng: random.Random, variety: int, batch_size: int,
              length: int = 56):
    """A pretraining batch: `batch_size` biographies of people drawn from `people` with `rng`.

    Each row is ``<s> biography </s>`` padded with ``<pad>`` to `length` (56 fits any biography).
    Returns (inputs, targets), both (batch_size, length - 1) LongTensors;
    targets are the inputs shifted by one, -100 on padding.
    """
    import torch

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    pad, bos, eos = (tokenizer.token_to_id(t) for t in ("<pad>", "<s>", "</s>"))
    rows = torch.full((batch_size, length), pad, dtype=torch.long)
    targets = torch.full((batch_size, length), -100, dtype=torch.long)
    for i in range(batch_size):
        ids = [bos] + tokenizer.encode(biography(rng.choice(people), rng, variety)).ids + [eos]
        if len(ids) > length:
            raise ValueError(f"length must be at least {len(ids)} for these biographies, got {length}")
        rows[i, :len(ids)] = torch.tensor(ids)
        targets[i, :len(ids)] = rows[i, :len(ids)]
    return rows[:, :-1], targets[:, 1:]


def qa_conversations(people: list[dict]) -> list[list[dict]]:
    """One single-turn conversation per (person, fact): the SFT data of chapter 7."""
    return [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            for p in people for q, a in qa_pairs(p)]


def split_people(people: list[dict], seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Two halves, shuffled with `seed`: the people SFT sees, and the people it is tested on."""
    order = list(range(len(people)))
    random.Random(seed).shuffle(order)
    half = len(people) // 2
    return [people[i] for i in order[:half]], [people[i] for i in order[half:]]


def multi_turn_conversations(people: list[dict], rng: random.Random, max_turns: int = 3) -> list[list[dict]]:
    """Each person's five question-answer pairs, shuffled and grouped into conversations of 1..max_turns turns."""
    out = []
    for p in people:
        pairs = qa_pairs(p)
        rng.shuffle(pairs)
        while pairs:
            k = rng.randint(1, max_turns)
            turn, pairs = pairs[:k], pairs[k:]
            out.append([m for q, a in turn for m in ({"role": "user", "content": q},
                                                      {"role": "assistant", "content": a})])
    return out
