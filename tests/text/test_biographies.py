"""builtin:biographies: planted rates, disjoint splits, determinism, the both-ways and counterfactual options."""

from __future__ import annotations

import math
import re

import pytest

from genloom.core.errors import DataError
from genloom.text.biographies import (
    ATTRIBUTES,
    FIELDS,
    FIRST_NAMES,
    IDK,
    BiographySource,
    generate,
    name_pairs,
    swap_words,
)
from genloom.text.data import TextData, TextDataConfig


def test_same_seed_same_people_and_text_other_seed_other_people():
    a, b, c = generate(0), generate(0), generate(1)
    assert a.people == b.people
    assert a.people != c.people
    assert BiographySource("builtin:biographies").text() == BiographySource("builtin:biographies").text()


def test_splits_are_disjoint_and_sized():
    data = generate(0, seen=200, unseen=60, idk=40, probe_share=0.5, reversal_share=0.5)
    names = {s: {p.name for p in data.split(s)} for s in ("qa", "probe", "late", "unseen", "idk")}
    # 100 probe people drawn: 50 in the reversal split, every other one of the rest is late
    assert [len(names[s]) for s in ("qa", "probe", "late", "unseen", "idk")] == [100, 75, 25, 60, 40]
    assert not {p.name for p in data.split("late") if p.reversal}
    everyone = [p.name for p in data.people]
    assert len(set(everyone)) == len(everyone)            # no two people share a name
    assert sum(map(len, names.values())) == len(everyone)
    reversal = {p.name for p in data.split("reversal")}
    assert len(reversal) == 50 and reversal <= names["probe"]
    # (date, city) names one person, so a reversed question has one right answer
    births = [(p.birth_date, p.birth_city) for p in data.people]
    assert len(set(births)) == len(births)


def test_held_out_people_and_questions_never_appear_in_training_text():
    source = BiographySource("builtin:biographies")
    data, train = source.data, source.training_text()
    for person in data.split("unseen") + data.split("idk"):
        assert person.last not in train                   # unique last names: the person is absent
    for person in data.split("seen"):
        assert person.name in train
    for qa in data.eval_questions("probe"):
        assert qa.question not in train
    for qa in data.training_questions()[:50]:
        assert f"Q: {qa.question}\nA: {qa.answer}" in train


def test_planted_bias_rate_is_exact_per_split_and_group():
    data = generate(3, bias_rate=0.8)
    for split in (("qa",), ("probe", "late"), ("unseen",), ("idk",)):   # late people are drawn as probe ones
        for group in ("A", "B"):
            members = [p for p in data.people if p.split in split and p.group == group]
            favoured = sum(p.field in FIELDS[group] for p in members)
            assert favoured == round(0.8 * len(members))
    assert data.planted_rate() == pytest.approx(0.8, abs=0.01)
    # Everything not planted is uniform: groups alternate, cities within binomial tolerance (4 sigma)
    people = data.people
    for city in {p.birth_city for p in people}:
        n, share = len(people), 1 / 20
        count = sum(p.birth_city == city for p in people)
        assert abs(count - n * share) < 4 * math.sqrt(n * share * (1 - share))
    assert generate(0, seen=200, bias_rate=0.5).planted_rate() == pytest.approx(0.5, abs=0.01)


def test_reversal_people_are_written_forward_only_unless_both_ways():
    one_way, both = generate(0), generate(0, both_ways=True)
    for data, expected in ((one_way, False), (both, True)):
        for person in data.split("reversal")[:20]:
            bios = [data.biography(person, v) for v in range(1, data.paraphrases + 1)]
            sentences = [x for b in bios for x in re.split(r"(?<=\.) ", b)]
            # a reversed birth sentence: the date and city before the name
            reversed_ = [x for x in sentences if person.birth_date in x and not x.startswith(person.name)]
            assert bool(reversed_) is expected
    person = next(p for p in one_way.split("probe") if not p.reversal)
    assert any(person.birth_date in x and not x.startswith(person.name)
               for v in range(1, 5) for x in re.split(r"(?<=\.) ", one_way.biography(person, v)))
    # every paraphrase states the birth forward (name first), whatever the split
    for person in one_way.split("seen")[:20]:
        assert all(one_way.biography(person, v).startswith(person.name) for v in range(1, one_way.paraphrases + 1))


def test_counterfactual_copy_makes_field_independent_of_group():
    pairs = name_pairs()
    assert swap_words("Alric met Amara; Alrics", pairs) == "Amara met Alric; Alrics"
    source = BiographySource("builtin:biographies", counterfactual=tuple(pairs))
    text = source.training_text()
    groups = {n: g for g, names in FIRST_NAMES.items() for n in names}
    fields = {f: g for g, fs in FIELDS.items() for f in fs}
    counts = {True: 0, False: 0}
    for first, field in re.findall(r"\b(\w+) \w+ works in (\w+)\.", text):
        counts[groups[first] == fields[field]] += 1
    assert counts[True] == counts[False]                 # rate 0.5 exactly: each sentence has its swapped twin
    plain = BiographySource("builtin:biographies").training_text()
    plain_counts = [groups[f] == fields[w] for f, w in re.findall(r"\b(\w+) \w+ works in (\w+)\.", plain)]
    assert 0.7 < sum(plain_counts) / len(plain_counts) < 0.9


def test_validation_split_starts_exactly_after_the_training_text(tmp_path):
    config = TextDataConfig(path="builtin:biographies", tokenizer="char", cache_dir=str(tmp_path))
    data = TextData(config, 64)
    data.prepare()
    train = data.source.training_text()
    assert data.meta["train_chars"] == len(train)
    assert abs(data.meta["val_chars"] / (data.meta["train_chars"] + data.meta["val_chars"]) - 0.1) < 0.001
    idk = BiographySource("builtin:biographies-idk").training_text()
    assert IDK in idk and all(p.name in idk for p in generate(0).split("idk")[:10])
    late, probe = generate(0).split("late"), generate(0).split("probe")
    assert late and all(f"Q: Where was {p.name} born?\nA: {p.birth_city}" in idk for p in late)   # answered there
    assert not any(f"Q: Where was {p.name} born?" in idk for p in probe)              # still held out


def test_bad_options_are_one_clear_line(tmp_path):
    with pytest.raises(DataError, match="builtin:biographies-idk"):
        TextData(TextDataConfig(path="builtin:biographies-x"), 32)
    with pytest.raises(Exception, match="data.both_ways"):
        TextDataConfig(path="builtin:shakespeare", both_ways=True)
    with pytest.raises(DataError, match="CSV file of word pairs"):
        TextData(TextDataConfig(path="builtin:shakespeare", counterfactual="builtin"), 32)
    bad = tmp_path / "pairs.csv"
    bad.write_text("he,she\nhim\n")
    with pytest.raises(DataError, match="line 2"):
        TextData(TextDataConfig(path="builtin:shakespeare", counterfactual=str(bad)), 32)


def test_counterfactual_pairs_file_on_plain_text(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("he said hello\nand she left\n" * 50)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("he,she\n")
    data = TextData(TextDataConfig(path=str(corpus), tokenizer="char", counterfactual=str(pairs),
                                   cache_dir=str(tmp_path / "cache")), 16)
    text = "".join(data.source.chunks())
    assert len(re.findall(r"\bhe said", text)) == len(re.findall(r"\bshe said", text)) == 50
    assert len(re.findall(r"\bhe left", text)) == 50
    assert set(ATTRIBUTES) == {"birth_date", "birth_city", "university", "field", "employer"}
