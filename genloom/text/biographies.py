"""`builtin:biographies`: fictional people, written for genloom, to measure what a language model stores and
what it makes up (after "Physics of Language Models" part 3.1 and the reversal-curse experiments).

Every person (a first name of one of two groups, a unique last name, a birth date, a birth city, a university,
a field of work, an employer) is drawn from a seed, so the same seed gives the same people, texts and
questions on every machine. Each person seen in training is written up in several paraphrased biographies
(different sentence templates in different orders), and has a question/answer pair per attribute.

The people fall into fixed, disjoint splits:
  qa        seen: biographies and their questions are in the training text
  probe     seen: biographies in training, questions held out (does the model *extract* what it stored?)
  reversal  part of probe: the birth (date, city) -> name direction is never written for them, while the
            others' biographies state it both ways (so the reversed question is asked of facts read one way)
  late      seen, like probe, but their questions are answered in the "I don't know" fine-tuning text (half
            of the probe people who are not in the reversal split), so that text pairs "read about" with
            answering, not only "never read about" with "I don't know" (measured: 25 late people keep far more
            of the probe people's answers than 11 did, still not all of them; BENCHMARKS.md)
  unseen    never in the training text: any specific answer about them is made up (hallucination)
  idk       never in the pretraining text either: the "I don't know" fine-tuning data asks about them

A planted bias ties fields of work to the group of the first name: of each group's people, exactly
`bias_rate` (rounded) work in one of that group's four fields, the rest in one of the other group's. The
counterfactual augmentation (`data.counterfactual = "builtin"`) repeats the training text with every first
name swapped for its partner in the other group, which makes the field independent of the group (rate 0.5).
`both_ways` writes the reversed birth sentence for the reversal split too (the reversal mitigation).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Iterator, Sequence

__all__ = ["Person", "Company", "Biographies", "BiographySource", "generate", "QA", "MONTHS", "IDK",
           "FIRST_NAMES", "FIELDS", "swap_words", "name_pairs", "ATTRIBUTES", "question", "passage"]

FIRST_NAMES = {
    "A": ["Alric", "Bertram", "Corwin", "Dorran", "Edric", "Falk", "Garrit", "Halden", "Ivor", "Joren", "Kellan",
          "Lorcan", "Magnus", "Norris", "Osric", "Percel", "Quill", "Roderic", "Stellan", "Torben", "Ulric",
          "Varick", "Wendel", "Yorick"],
    "B": ["Amara", "Belina", "Celia", "Delphine", "Elowen", "Fiora", "Giselle", "Hesper", "Isolde", "Juna",
          "Kaia", "Liora", "Marisol", "Nerina", "Odessa", "Perpetua", "Quilla", "Rosalind", "Seraphine", "Talia",
          "Undine", "Vesna", "Wilhelmina", "Yselle"],
}
LAST_START = ["Ab", "Bar", "Cal", "Dun", "Ell", "Fen", "Gor", "Hal", "Ist", "Jar", "Kor", "Lin", "Mor", "Nor", "Orl",
              "Pem", "Rad", "Sel", "Tor", "Vin", "Wen", "Yar", "Zel", "Brem", "Crag", "Drel", "Frost", "Glen"]
LAST_END = ["ford", "wick", "ton", "mere", "dale", "ley", "holt", "more", "stead", "brook", "worth", "by", "cott",
            "ridge", "shaw", "well", "den", "hurst", "field", "gate"]
CITIES = ["Lyon", "Porto", "Bergen", "Krakow", "Seville", "Turin", "Ghent", "Graz", "Tampere", "Brno", "Leipzig",
          "Bilbao", "Utrecht", "Malmo", "Cork", "Split", "Basel", "Nantes", "Aarhus", "Bologna"]
UNIVERSITIES = ["Harrowgate University", "the University of Eastmarch", "Vellmoor Institute of Technology",
                "Kestrel College", "the University of Lowhaven", "Brightwater University", "Ashcombe Polytechnic",
                "the Royal Academy of Dunmere", "Stonebridge University", "the University of Westvale",
                "Marrow Institute", "Fairholt University"]
FIELDS = {"A": ["astronomy", "geology", "chemistry", "economics"],
          "B": ["botany", "linguistics", "history", "music"]}
COMPANIES = [("Vantex Labs", "Lyon"), ("Orrin Systems", "Porto"), ("Halcyon Foods", "Bergen"),
             ("Quarry & Finch", "Krakow"), ("Bluefen Energy", "Seville"), ("Corvid Media", "Turin"),
             ("Larkspur Bank", "Ghent"), ("Meridian Rail", "Graz"), ("Nimbus Optics", "Tampere"),
             ("Pellucid Glass", "Brno"), ("Tessellate Games", "Leipzig"), ("Umber Textiles", "Bilbao"),
             ("Wrenwood Press", "Utrecht"), ("Zephyr Motors", "Malmo")]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
IDK = "I don't know."
COMPANY_REPEATS = 20          # each company's city is written this often (the second hop of two-hop questions)
ATTRIBUTES = ("birth_date", "birth_city", "university", "field", "employer")

# Sentence templates per fact; the first of each is only for the held-out validation paraphrase.
TEMPLATES = {
    "birth": ["{name} came into the world on {date}, in {city}.",
              "{name} was born on {date} in {city}.",
              "{name} was born in {city} on {date}.",
              "{name}'s birthday is {date}; {name} was born in {city}.",
              "{name} first saw the light of day in {city}, on {date}."],
    "birth_reversed": ["In {city}, on {date}, {name} came into the world.",
                       "On {date}, in {city}, a child was born: {name}.",
                       "The person born in {city} on {date} is {name}.",
                       "Born on {date} in {city}: {name}."],
    "university": ["{name} went on to graduate from {university}.",
                   "{name} studied at {university}.",
                   "{name} is a graduate of {university}.",
                   "{name} attended {university}."],
    "field": ["{name}'s life's work is {field}.",
              "{name} works in {field}.",
              "{name} made a career in {field}.",
              "{name} chose {field} as a profession."],
    "employer": ["These days {name} is on the payroll of {employer}.",
                 "{name} is employed by {employer}.",
                 "{name} works for {employer}.",
                 "{name} has a job at {employer}."],
}
QUESTIONS = {
    "birth_date": "When was {name} born?",
    "birth_city": "Where was {name} born?",
    "university": "Which university did {name} attend?",
    "field": "What field does {name} work in?",
    "employer": "Which company does {name} work for?",
    "reversed": "Who was born on {date} in {city}?",
    "two_hop": "In which city is the employer of {name} based?",
}


@dataclass(frozen=True)
class Company:
    name: str
    city: str


@dataclass(frozen=True)
class Person:
    first: str
    last: str
    group: str                 # "A" or "B": which list the first name is from
    year: int
    month: int                 # 1..12
    day: int
    birth_city: str
    university: str
    field: str
    employer: Company
    split: str                 # qa, probe, late, unseen, idk
    reversal: bool = False     # probe people whose birth is written in the forward direction only

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"

    @property
    def birth_date(self) -> str:
        return f"{self.day} {MONTHS[self.month - 1]} {self.year}"

    def answer(self, attribute: str) -> str:
        """The right answer to the question about `attribute` (or 'reversed', 'two_hop')."""
        return {"birth_date": self.birth_date, "birth_city": self.birth_city, "university": self.university,
                "field": self.field, "employer": self.employer.name, "reversed": self.name,
                "two_hop": self.employer.city}[attribute]


@dataclass(frozen=True)
class QA:
    """One question about one person, with the right answer."""

    question: str
    answer: str
    person: str                # the person's name
    attribute: str             # one of ATTRIBUTES, 'reversed' or 'two_hop'
    split: str                 # the person's split


def question(person: Person, attribute: str) -> QA:
    text = QUESTIONS[attribute].format(name=person.name, date=person.birth_date, city=person.birth_city)
    return QA(text, person.answer(attribute), person.name, attribute, person.split)


def qa_text(qa: QA, answer: str | None = None) -> str:
    """How a question and its answer are written in the training text (and asked: everything before the answer)."""
    return f"Q: {qa.question}\nA: {qa.answer if answer is None else answer}\n"


def qa_prompt(qa: QA) -> str:
    return f"Q: {qa.question}\nA:"


def passage(person: Person) -> str:
    """A short passage stating the person's facts (answering from a passage in the prompt)."""
    return (f"{person.name} was born on {person.birth_date} in {person.birth_city}. {person.first} studied at "
            f"{person.university}, works in {person.field} and is employed by {person.employer.name}.")


@dataclass(frozen=True)
class Biographies:
    """The people of one seed, with their texts and questions."""

    people: tuple[Person, ...]
    companies: tuple[Company, ...]
    seed: int
    bias_rate: float
    paraphrases: int
    both_ways: bool

    def split(self, name: str) -> list[Person]:
        if name == "reversal":
            return [p for p in self.people if p.reversal]
        if name == "seen":
            return [p for p in self.people if p.split in ("qa", "probe", "late")]
        return [p for p in self.people if p.split == name]

    # -- texts -------------------------------------------------------------------------------
    def biography(self, person: Person, variant: int) -> str:
        """Paraphrase `variant` (1..paraphrases; 0 is the held-out one) of a person's biography: one sentence
        per fact, each from its own template, in an order of the variant's own."""
        rng = random.Random(_stable(self.seed, person.name, variant))
        values = dict(name=person.name, first=person.first, last=person.last, date=person.birth_date,
                      city=person.birth_city, university=person.university, field=person.field,
                      employer=person.employer.name)

        def pick(kind: str) -> str:
            templates = TEMPLATES[kind]
            return templates[0] if variant == 0 else templates[1 + rng.randrange(len(templates) - 1)]

        birth = pick("birth").format(**values)
        rest = [pick(kind).format(**values) for kind in ("university", "field", "employer")]
        if (self.both_ways or not person.reversal) and variant > 0 and variant % 2 == 0:
            rest.append(pick("birth_reversed").format(**values))    # the birth stated the other way too
        if variant > 0:
            rng.shuffle(rest)
        return " ".join([birth, *rest])

    def training_questions(self) -> list[QA]:
        """The questions whose answers are written in the training text: every attribute of the qa people, the
        reversed question of those whose birth is written both ways, and the two-hop question."""
        out = []
        for p in self.split("qa"):
            out += [question(p, a) for a in ATTRIBUTES] + [question(p, "reversed"), question(p, "two_hop")]
        return out

    def eval_questions(self, split: str) -> list[QA]:
        """Held-out questions: every attribute of the people of `split` (probe, reversal, unseen, qa)."""
        return [question(p, a) for p in self.split(split) for a in ATTRIBUTES]

    def training_documents(self) -> list[str]:
        """The pretraining text as documents: biographies (every paraphrase of every seen person), the
        companies, and the questions of the qa people; in an order drawn from the seed."""
        docs = [self.biography(p, v) for p in self.split("seen") for v in range(1, self.paraphrases + 1)]
        docs += [qa_text(q).rstrip("\n") for q in self.training_questions()]
        docs += [f"{c.name} is based in {c.city}." for c in self.companies] * COMPANY_REPEATS
        random.Random(self.seed).shuffle(docs)
        return docs

    def validation_documents(self) -> Iterator[str]:
        """Held-out paraphrases of the seen people (the trained templates in a combination and order of their own),
        cycled forever. (Variant 0, templates never trained on, is for probing wording the model never read.)"""
        seen = self.split("seen")
        while True:
            for p in seen:
                yield self.biography(p, self.paraphrases + 1)

    def idk_documents(self) -> list[str]:
        """Fine-tuning text that teaches "I don't know" for people the model never read about (the idk split),
        mixed into the pretraining text so that what it knows holds, with the answered questions of the late
        people (read about in pretraining, asked about first here)."""
        docs = self.training_documents()
        docs += [qa_text(question(p, a)).rstrip("\n") for p in self.split("late") for a in ATTRIBUTES]
        docs += [qa_text(question(p, a), IDK).rstrip("\n") for p in self.split("idk") for a in ATTRIBUTES]
        random.Random(self.seed + 1).shuffle(docs)
        return docs

    def planted_rate(self, people: Sequence[Person] | None = None) -> float:
        """Share of people whose field is one of their group's fields (the planted bias)."""
        people = self.split("seen") if people is None else people
        return sum(p.field in FIELDS[p.group] for p in people) / max(len(people), 1)


def _stable(*parts) -> int:
    """A seed from values, the same in every process (Python's hash() of a string is not)."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def name_pairs() -> list[tuple[str, str]]:
    """Each group-A first name with its partner in group B (the counterfactual swap)."""
    return list(zip(FIRST_NAMES["A"], FIRST_NAMES["B"]))


def swap_words(text: str, pairs: Sequence[tuple[str, str]]) -> str:
    """`text` with every whole-word occurrence of either word of a pair replaced by the other word."""
    if not pairs:
        return text
    mapping = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, mapping), key=len, reverse=True)) + r")\b")
    return pattern.sub(lambda m: mapping[m.group(0)], text)


def generate(seed: int = 0, seen: int = 170, unseen: int = 100, idk: int = 100, probe_share: float = 0.42,
             reversal_share: float = 0.3, bias_rate: float = 0.8, paraphrases: int = 6,
             both_ways: bool = False) -> Biographies:
    """Draw the people of `seed`: `seen` people in training (a `probe_share` of them with held-out questions,
    a `reversal_share` of those with one-way birth sentences), `unseen` and `idk` people never in training.

    Exactly round(bias_rate * n) of each group's people (in every split) work in a field of their group."""
    if not 0 <= bias_rate <= 1:
        raise ValueError("bias_rate must be in [0, 1]")
    rng = random.Random(seed)
    last_names = [s + e for s in LAST_START for e in LAST_END]
    total = seen + unseen + idk
    if total > len(last_names):
        raise ValueError(f"at most {len(last_names)} people (one last name each)")
    rng.shuffle(last_names)
    companies = tuple(Company(n, c) for n, c in COMPANIES)
    n_probe = round(seen * probe_share)
    splits = ["qa"] * (seen - n_probe) + ["probe"] * n_probe + ["unseen"] * unseen + ["idk"] * idk
    births: set[tuple[int, int, int, str]] = set()
    drafts = []
    for i, split in enumerate(splits):
        group = "A" if i % 2 == 0 else "B"
        while True:   # (date, city) names one person, so the reversed question has one answer
            birth = (rng.randrange(1940, 2000), rng.randrange(1, 13), rng.randrange(1, 29), rng.choice(CITIES))
            if birth not in births:
                births.add(birth)
                break
        drafts.append(dict(first="", last=last_names[i], group=group, year=birth[0],
                           month=birth[1], day=birth[2], birth_city=birth[3], university=rng.choice(UNIVERSITIES),
                           employer=rng.choice(companies), split=split))
    # The planted bias: in each (split, group), exactly round(bias_rate * n) people get one of their group's fields.
    for split in ("qa", "probe", "unseen", "idk"):
        for group, other in (("A", "B"), ("B", "A")):
            members = [d for d in drafts if d["split"] == split and d["group"] == group]
            # First names: every name of the group once (in a drawn order) before any is used again, so each
            # first name is in every split and the bias measured per name has people to learn it from.
            names: list[str] = []
            for d in members:
                if not names:
                    names = list(FIRST_NAMES[group])
                    rng.shuffle(names)
                d["first"] = names.pop()
            favoured = round(bias_rate * len(members))
            order = list(range(len(members)))
            rng.shuffle(order)
            for rank, k in enumerate(order):
                members[k]["field"] = rng.choice(FIELDS[group] if rank < favoured else FIELDS[other])
    probe = [d for d in drafts if d["split"] == "probe"]
    cut = round(len(probe) * reversal_share)
    for d in probe[:cut]:
        d["reversal"] = True
    for d in probe[cut::2]:
        d["split"] = "late"
    people = tuple(Person(**d) for d in drafts)
    return Biographies(people, companies, seed, bias_rate, paraphrases, both_ways)


BUILTIN = "builtin:biographies"
VARIANTS = {BUILTIN: "pretraining", BUILTIN + "-idk": "idk"}


@dataclass(frozen=True)
class BiographySource:
    """`builtin:biographies` (pretraining text) or `builtin:biographies-idk` ("I don't know" fine-tuning text)
    as a text source (`chunks`, `fingerprint`, `describe`), laid out so that the first 1 - val_fraction of its
    characters is the training text and the rest held-out paraphrases of the seen people (the validation split).
    `counterfactual` word pairs repeat the training text with each word swapped for its partner."""

    spec: str
    val_fraction: float = 0.1
    both_ways: bool = False
    counterfactual: tuple[tuple[str, str], ...] = ()
    seed: int = 0
    sizes: dict = field(default_factory=dict)

    @property
    def data(self) -> Biographies:
        return generate(self.seed, both_ways=self.both_ways, **self.sizes)

    def fingerprint(self) -> str:
        h = hashlib.sha256(repr((self.spec, self.val_fraction, self.both_ways, self.counterfactual, self.seed,
                                 sorted(self.sizes.items()))).encode())
        with open(__file__, "rb") as f:
            h.update(f.read())          # the generator is part of the data
        return h.hexdigest()

    def describe(self) -> str:
        what = "fictional biographies" if VARIANTS[self.spec] == "pretraining" else '"I don\'t know" fine-tuning data'
        extras = [x for x, on in (("both ways", self.both_ways), ("counterfactual", self.counterfactual)) if on]
        return f"{self.spec} ({what}, built in{', ' + ', '.join(extras) if extras else ''})"

    def training_text(self) -> str:
        data = self.data
        docs = data.training_documents() if VARIANTS[self.spec] == "pretraining" else data.idk_documents()
        text = "\n\n".join(docs) + "\n\n"
        if self.counterfactual:
            text += swap_words(text, self.counterfactual)
        return text

    def text(self) -> str:
        """Training text, then exactly enough validation text that the split falls at the boundary."""
        train = self.training_text()
        total = -(-len(train) // (1 - self.val_fraction)) if self.val_fraction else len(train)
        total = int(total)
        while int(total * (1 - self.val_fraction)) < len(train):
            total += 1
        need, pieces = total - len(train), []
        for doc in self.data.validation_documents():
            if need <= 0:
                break
            pieces.append((doc + "\n\n")[:need])
            need -= len(pieces[-1])
        return train + "".join(pieces)

    def chunks(self) -> Iterator[str]:
        yield self.text()
