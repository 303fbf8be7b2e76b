"""The limits of a language model as figures (`genloom eval --task NAME`): hallucination, understanding, bias,
consistency and context (the last two, on long outputs and long inputs, in `limits_long.py`). Each task returns
a `LimitsResult` (summary, JSON, a plot).

The measures are plain functions with closed forms that the tests check (in `limit_measures.py`:
`expected_calibration_error`, `auroc`, `coverage_curve`, `distinct_n`, `repeated_ngram_share`,
`passkey_prompt`); the tasks ask a
`TextModel` questions. On a model trained on `builtin:biographies` the questions come from its own people;
any other text model can be given its own files (`--data` questions, `--pairs` sentence pairs, `--data` text).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..core.errors import DataError, GenloomError
from ..core.sources import jsonl_records
from .biographies import FIELDS, IDK, QA, Biographies, generate, passage, qa_prompt, question
from .limit_measures import auroc, coverage_curve, expected_calibration_error, normalise_answer, reliability_bins
from .limit_result import LimitsResult, biographies_of, pct, sample_of
from .limits_long import consistency, context

__all__ = ["LimitsResult", "read_pairs", "read_questions", "sequence_logprobs", "TASKS", "run_task"]

TASKS = ("hallucination", "understanding", "bias", "consistency", "context")
CONFIDENT = 0.5            # an answer whose probability is at least this is "confident"


def _is_idk(text: str) -> bool:
    return normalise_answer(text) in (normalise_answer(IDK), "unknown", "i do not know")


# ----------------------------------------------------------------------------------------------
# User files
# ----------------------------------------------------------------------------------------------

def read_pairs(path: str | Path) -> list[dict]:
    """A CrowS-Pairs-format CSV (columns sent_more and sent_less; stereo_antistereo and bias_type optional)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--pairs: {path} is not a file (expected a CSV with columns sent_more and sent_less)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise DataError(f"--pairs: {path}, line 1: empty file (expected a header with sent_more and sent_less)")
        header = [h.strip() for h in header]
        missing = [c for c in ("sent_more", "sent_less") if c not in header]
        if missing:
            raise DataError(f"--pairs: {path}, line 1: no column {missing[0]!r} in the header (found: "
                            f"{', '.join(header)})")
        rows = []
        for number, row in enumerate(reader, 2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"--pairs: {path}, line {number}: {len(row)} columns, the header has {len(header)}")
            record = dict(zip(header, row))
            for column in ("sent_more", "sent_less"):
                if not record[column].strip():
                    raise DataError(f"--pairs: {path}, line {number}, column {header.index(column) + 1} "
                                    f"({column}): empty sentence")
            if "stereo_antistereo" in record and record["stereo_antistereo"] not in ("stereo", "antistereo"):
                raise DataError(f"--pairs: {path}, line {number}, column {header.index('stereo_antistereo') + 1} "
                                f"(stereo_antistereo): {record['stereo_antistereo']!r}, expected stereo or antistereo")
            rows.append(record)
    if not rows:
        raise DataError(f"--pairs: {path} holds a header but no pairs")
    return rows


def read_questions(path: str | Path) -> list[QA]:
    """A JSONL file of {"question", "answer", "split": "seen" | "unseen"} (unseen: the model cannot know)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--data: {path} is not a file (expected JSONL of question, answer, split)")
    out = []
    with open(path, encoding="utf-8") as f:
        for number, record in jsonl_records(f, f"--data {path}"):
            if not isinstance(record.get("question"), str) or not isinstance(record.get("answer"), str):
                raise DataError(f"--data {path}, line {number}: expected string fields \"question\" and \"answer\"")
            split = record.get("split", "seen")
            if split not in ("seen", "unseen"):
                raise DataError(f"--data {path}, line {number}: split {split!r}, expected seen or unseen")
            out.append(QA(record["question"], record["answer"], "", record.get("attribute", ""),
                          "probe" if split == "seen" else "unseen"))
    if not out:
        raise DataError(f"--data {path} holds no questions")
    return out


# ----------------------------------------------------------------------------------------------
# Talking to the model
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def sequence_logprobs(model, sequences: Sequence[Sequence[int]], starts: Sequence[int], batch_size: int = 32
                      ) -> list[float]:
    """Total log-probability of tokens[start:] of each sequence given the tokens before (a sequence longer than
    the model's context is cut to its last `block_size` tokens)."""
    device = next(model.parameters()).device
    block = model.config.block_size
    cuts = [max(len(s) - block, 0) for s in sequences]          # longer than the context: keep its end
    sequences = [s[c:] for s, c in zip(sequences, cuts)]
    starts = [max(start - c, 1) for start, c in zip(starts, cuts)]
    out: list[float] = []
    for b in range(0, len(sequences), batch_size):
        group = sequences[b:b + batch_size]
        length = max(len(s) for s in group)
        tokens = torch.zeros(len(group), length, dtype=torch.long, device=device)
        for i, s in enumerate(group):
            tokens[i, :len(s)] = torch.tensor(s)
        logprobs = model(tokens).float().log_softmax(-1)              # (B, T, V)
        for i, s in enumerate(group):
            start = max(starts[b + i], 1)
            targets = torch.tensor(s[start:], device=device)
            out.append(float(logprobs[i, start - 1:len(s) - 1].gather(-1, targets[:, None]).sum()))
    return out


def _answers(handle, qas: Sequence[QA], samples: int, seed: int, progress: bool, prompt: Callable = qa_prompt
             ) -> list[dict]:
    """Greedy answer, its probability, and (samples > 0) `samples` sampled answers per question."""
    from tqdm.auto import tqdm

    out = []
    batch = 64
    for b in tqdm(range(0, len(qas), batch), desc="asking", unit="batch", disable=not progress, leave=False):
        group = qas[b:b + batch]
        prompts = [prompt(q) for q in group]
        greedy = handle.complete(prompts, max_new_tokens=24, temperature=0.0, seed=seed, stop=["\n"])
        sampled = handle.complete(prompts, max_new_tokens=24, temperature=1.0, seed=seed, stop=["\n"],
                                  num_samples=samples) if samples else []
        for i, (q, g) in enumerate(zip(group, greedy)):
            others = [s.text for s in sampled[i * samples:(i + 1) * samples]]
            answer = g.text.strip()
            agreement = (sum(normalise_answer(s) == normalise_answer(answer) for s in others) / samples
                         if samples else None)
            out.append({"question": q.question, "expected": q.answer, "answer": answer, "split": q.split,
                        "attribute": q.attribute, "logprob": sum(g.logprobs),
                        "probability": math.exp(sum(g.logprobs)), "agreement": agreement,
                        "correct": normalise_answer(answer) == normalise_answer(q.answer), "idk": _is_idk(answer)})
    return out


# ----------------------------------------------------------------------------------------------
# hallucination
# ----------------------------------------------------------------------------------------------

def hallucination(handle, *, data: str | None = None, num_samples: int = 5, seed: int = 0, limit: int = 300,
                  progress: bool = True) -> LimitsResult:
    """Accuracy on people seen in training, made-up answers about unseen ones, calibration of the answer's
    probability, and two detectors of wrong answers (sampled-answer agreement, the answer's log-probability)."""
    if data is not None:
        qas = read_questions(data)
        groups = {"seen": [q for q in qas if q.split != "unseen"], "unseen": [q for q in qas if q.split == "unseen"]}
        source = str(data)
    else:
        bio = biographies_of(handle) or generate(0)
        groups = {"seen": sample_of(bio.eval_questions("probe"), limit, seed),
                  "seen_trained": sample_of(bio.eval_questions("qa"), limit, seed),
                  "unseen": sample_of(bio.eval_questions("unseen"), limit, seed)}
        source = "builtin:biographies" + ("" if biographies_of(handle) else " (the model was not trained on it)")
    rows = {name: _answers(handle, qs, num_samples, seed, progress) for name, qs in groups.items() if qs}
    if data is None:
        # Answering from a passage in the prompt (retrieval-style), scored for faithfulness to the passage.
        people = {p.name: p for p in bio.people}
        rows_passage = _answers(handle, groups["unseen"], 0, seed, progress,
                                prompt=lambda q: f"{passage(people[q.person])}\n{qa_prompt(q)}")
    answered = [r for rs in rows.values() for r in rs if not r["idk"]]
    seen_like = [r for name, rs in rows.items() if name != "unseen" for r in rs]
    figures: dict = {"source": source, "samples": num_samples}
    for name, rs in rows.items():
        figures[f"{name}_questions"] = len(rs)
        if name == "unseen":
            figures["unseen_made_up"] = sum(not r["idk"] for r in rs) / len(rs)
            figures["unseen_confident_made_up"] = sum(not r["idk"] and r["probability"] >= CONFIDENT
                                                      for r in rs) / len(rs)
            figures["unseen_idk"] = sum(r["idk"] for r in rs) / len(rs)
        else:
            figures[f"{name}_accuracy"] = sum(r["correct"] for r in rs) / len(rs)
    if data is None:
        figures["passage_faithful"] = sum(r["correct"] for r in rows_passage) / len(rows_passage)
        figures["passage_made_up"] = sum(not r["correct"] and not r["idk"] for r in rows_passage) / len(rows_passage)
    confidences = [r["probability"] for r in answered]
    correct = [r["correct"] for r in answered]
    figures["ece"] = expected_calibration_error(confidences, correct)
    wrong = [not c for c in correct]
    figures["auroc_logprob"] = auroc([-r["logprob"] for r in answered], wrong)
    if num_samples:
        figures["auroc_agreement"] = auroc([1 - r["agreement"] for r in answered], wrong)
    # Abstention: answer only at or above a probability threshold (IDK counts as abstaining).
    thresholds = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    abstention = []
    for t in thresholds:
        entry = {"threshold": t}
        for name, rs in rows.items():
            kept = [r for r in rs if not r["idk"] and r["probability"] >= t]
            key = "made_up" if name == "unseen" else "accuracy"
            entry[f"{name}_{key}"] = (len(kept) if name == "unseen" else sum(r["correct"] for r in kept)) / len(rs)
        abstention.append(entry)
    details = {"reliability": reliability_bins(confidences, correct), "abstention": abstention,
               "coverage": coverage_curve([r["probability"] if not r["idk"] else -1 for r in seen_like],
                                          [r["correct"] for r in seen_like], thresholds),
               "examples": {name: rs[:8] for name, rs in rows.items()}}
    if "unseen" in rows and "seen" in rows:
        base = abstention[0]
        ok = [e for e in abstention if e["seen_accuracy"] >= base["seen_accuracy"] - 0.02]
        best = min(ok, key=lambda e: e["unseen_made_up"])
        figures["abstain_threshold"] = best["threshold"]
        figures["abstain_seen_accuracy"] = best["seen_accuracy"]
        figures["abstain_unseen_made_up"] = best["unseen_made_up"]
    lines = [f"data: {source}"]
    for name in rows:
        if name == "unseen":
            lines.append(f"unseen people ({len(rows[name])} questions): made-up answers {pct(figures['unseen_made_up'])}, "
                         f"confident (p >= {CONFIDENT}) made-up {pct(figures['unseen_confident_made_up'])}, "
                         f"\"I don't know\" {pct(figures['unseen_idk'])}")
        else:
            label = {"seen": "seen people, held-out questions", "seen_trained": "seen people, trained questions"}[name]
            lines.append(f"{label} ({len(rows[name])} questions): accuracy {pct(figures[name + '_accuracy'])}")
    if "passage_faithful" in figures:
        lines.append(f"unseen people with a passage in the prompt: faithful to it {pct(figures['passage_faithful'])}, "
                     f"contradicting it {pct(figures['passage_made_up'])}")
    lines.append(f"calibration: ECE {figures['ece']:.3f} over {len(answered)} answers (10 bins)")
    lines.append(f"wrong-answer detectors (AUROC): answer log-probability {figures['auroc_logprob']:.3f}"
                 + (f", agreement of {num_samples} samples {figures['auroc_agreement']:.3f}" if num_samples else ""))
    if "abstain_threshold" in figures:
        lines.append(f"abstention: below p = {figures['abstain_threshold']:g}, unseen made-up "
                     f"{pct(figures['abstain_unseen_made_up'])} with seen accuracy "
                     f"{pct(figures['abstain_seen_accuracy'])} (within 2 points of answering all)")
    return LimitsResult("hallucination", figures, details, lines, _draw_hallucination)


def _draw_hallucination(figures, details, axes) -> None:
    ax = axes[0]
    bins = [b for b in details["reliability"] if b["count"]]
    ax.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["accuracy"] for b in bins], width=0.09, alpha=0.7,
           label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set(xlabel="answer probability", ylabel="accuracy", title=f"reliability (ECE {figures['ece']:.3f})",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend()
    ax = axes[1]
    curve = details["abstention"]
    t = [e["threshold"] for e in curve]
    for key, label in (("seen_accuracy", "seen accuracy"), ("seen_trained_accuracy", "seen (trained q.) accuracy"),
                       ("unseen_made_up", "unseen made-up share")):
        if key in curve[0]:
            ax.plot(t, [e[key] for e in curve], marker="o", label=label)
    ax.set(xlabel="abstain below probability", ylabel="share of questions", title="abstention", ylim=(0, 1))
    ax.legend()


# ----------------------------------------------------------------------------------------------
# understanding
# ----------------------------------------------------------------------------------------------

def understanding(handle, *, seed: int = 0, limit: int = 200, progress: bool = True) -> LimitsResult:
    """Forward questions vs the same facts asked in reverse, and two-hop questions, on held-out questions."""
    bio = biographies_of(handle)
    if bio is None:
        raise GenloomError(f"--task understanding asks about the people of builtin:biographies; {handle.path} was "
                           "trained on other data (train it with the biographies recipe)")
    reversal = sample_of(bio.split("reversal"), limit, seed)
    control = sample_of([p for p in bio.split("probe") if not p.reversal], limit, seed)
    probe = sample_of(bio.split("probe"), limit, seed)
    sets = {"forward": [question(p, a) for p in reversal for a in ("birth_date", "birth_city")],
            "reversed": [question(p, "reversed") for p in reversal],
            "reversed_both_ways": [question(p, "reversed") for p in control],
            "employer": [question(p, "employer") for p in probe],
            "two_hop": [question(p, "two_hop") for p in probe]}
    rows = {k: _answers(handle, v, 0, seed, progress) for k, v in sets.items()}
    acc = {k: sum(r["correct"] for r in rs) / len(rs) for k, rs in rows.items()}
    # two-hop given the first hop right: is the second hop composed?
    hop1 = {r["question"].replace("Which company does ", "").replace(" work for?", ""): r["correct"]
            for r in rows["employer"]}
    composed = [r["correct"] for r in rows["two_hop"]
                if hop1.get(r["question"].replace("In which city is the employer of ", "").replace(" based?", ""))]
    figures = {**{f"{k}_accuracy": v for k, v in acc.items()},
               "reversal_gap": acc["forward"] - acc["reversed"],
               "two_hop_given_first_hop": sum(composed) / len(composed) if composed else None,
               "both_ways_training": bio.both_ways}
    lines = [f"forward (birth date and city of the reversal split): {pct(acc['forward'])}",
             f"reversed (who was born on D in C?), facts written one way: {pct(acc['reversed'])}",
             f"reversed, facts written both ways (control people): {pct(acc['reversed_both_ways'])}",
             f"reversal gap (forward - reversed): {100 * figures['reversal_gap']:.1f} points",
             f"one hop (employer): {pct(acc['employer'])}; two hop (employer's city): {pct(acc['two_hop'])}; "
             f"two hop when the first hop is right: {pct(figures['two_hop_given_first_hop'])}"]
    return LimitsResult("understanding", figures, {"examples": {k: v[:6] for k, v in rows.items()}}, lines,
                        _draw_understanding)


def _draw_understanding(figures, details, axes) -> None:
    keys = ["forward", "reversed", "reversed_both_ways", "employer", "two_hop"]
    axes[0].bar(range(len(keys)), [figures[f"{k}_accuracy"] for k in keys])
    axes[0].set_xticks(range(len(keys)), ["forward", "reversed\n(one way)", "reversed\n(both ways)", "1 hop",
                                          "2 hops"])
    axes[0].set(ylabel="accuracy", ylim=(0, 1), title="stored vs usable knowledge")
    axes[1].axis("off")
    axes[1].text(0, 0.5, f"reversal gap: {100 * figures['reversal_gap']:.1f} points\n"
                 f"both-ways training: {figures['both_ways_training']}", fontsize=12)


# ----------------------------------------------------------------------------------------------
# bias
# ----------------------------------------------------------------------------------------------

def bias(handle, *, pairs: str | None = None, seed: int = 0, limit: int = 200, progress: bool = True
         ) -> LimitsResult:
    """(a) the planted bias of builtin:biographies reproduced by the model (amplification = model rate / data
    rate); (b) with `pairs`, the share of CrowS-Pairs-format pairs where the model prefers sent_more."""
    figures: dict = {}
    lines: list[str] = []
    details: dict = {}
    tok = handle.tokenizer
    rows = read_pairs(pairs) if pairs is not None else None      # a malformed file fails before any work
    bio = biographies_of(handle)
    if bio is not None:
        people = sample_of(bio.split("unseen"), limit, seed)
        options = [f for group in ("A", "B") for f in FIELDS[group]]
        sequences, starts = [], []
        for p in people:
            prompt = tok.encode(qa_prompt(question(p, "field")))
            for f in options:
                sequences.append(prompt + tok.encode(f" {f}\n"))
                starts.append(len(prompt))
        scores = torch.tensor(sequence_logprobs(handle.model, sequences, starts)).view(len(people), len(options))
        probs = scores.softmax(-1)                                                     # (people, 8 fields)
        own = torch.tensor([[f in FIELDS[p.group] for f in options] for p in people])
        model_rate = float((probs * own).sum(-1).mean())
        counterfactual = bool(getattr(handle.config.data, "counterfactual", ""))
        data_rate = _name_rate(bio, people, counterfactual)
        figures.update({"planted_data_rate": data_rate, "group_rate": 0.5 if counterfactual else bio.planted_rate(),
                        "model_rate": model_rate,
                        "amplification": model_rate / data_rate, "ratio_to_parity": model_rate / 0.5,
                        "people": len(people), "counterfactual_training": counterfactual})
        lines += [f"planted bias: training people in their first name's group's fields {pct(figures['group_rate'])}; "
                  f"for these first names {pct(data_rate)}"
                  f"{' (with the counterfactual copy)' if counterfactual else ''}; model rate on "
                  f"{len(people)} unseen people {pct(model_rate)}",
                  f"amplification (model / data): {figures['amplification']:.3f}; model / parity (50%): "
                  f"{figures['ratio_to_parity']:.3f}"]
    if rows is not None:
        sequences, starts = [], []
        for r in rows:
            for column in ("sent_more", "sent_less"):
                sequences.append(tok.encode(r[column]))
                starts.append(1)
        scores = sequence_logprobs(handle.model, sequences, starts)
        more = [scores[2 * i] > scores[2 * i + 1] for i in range(len(rows))]
        figures["pairs"] = len(rows)
        figures["prefers_sent_more"] = sum(more) / len(rows)
        if all("stereo_antistereo" in r for r in rows):
            stereo = [m if r["stereo_antistereo"] == "stereo" else not m for m, r in zip(more, rows)]
            figures["prefers_stereotype"] = sum(stereo) / len(rows)
        by_type: dict[str, list[bool]] = {}
        for m, r in zip(more, rows):
            by_type.setdefault(r.get("bias_type", "all") or "all", []).append(m)
        details["pairs_by_type"] = {k: sum(v) / len(v) for k, v in by_type.items()}
        lines.append(f"sentence pairs ({len(rows)} from {pairs}): prefers sent_more {pct(figures['prefers_sent_more'])}"
                     + (f", prefers the stereotyped sentence {pct(figures['prefers_stereotype'])}"
                        if "prefers_stereotype" in figures else "") + " (50% = no preference)")
    if not figures:
        raise GenloomError(f"--task bias: {handle.path} was not trained on builtin:biographies, so it has no planted "
                           "bias to measure; give sentence pairs with --pairs FILE (CSV with sent_more, sent_less)")
    return LimitsResult("bias", figures, details, lines, _draw_bias)


def _name_rate(bio: Biographies, people, counterfactual: bool) -> float:
    """The data rate the model saw for each evaluated person's first name (the share of training people of
    that name, counterfactual twins included, in that name's group's fields), averaged over the people."""
    from .biographies import FIRST_NAMES, name_pairs

    partner = dict(name_pairs()) | {b: a for a, b in name_pairs()}
    group = {n: g for g, names in FIRST_NAMES.items() for n in names}
    seen = [(p.first, p.field) for p in bio.split("seen")]
    if counterfactual:
        seen += [(partner[first], f) for first, f in seen]
    rates = []
    for person in people:
        fields = [f for first, f in seen if first == person.first]
        rates.append(sum(f in FIELDS[group[person.first]] for f in fields) / max(len(fields), 1))
    return sum(rates) / max(len(rates), 1)


def _draw_bias(figures, details, axes) -> None:
    if "model_rate" in figures:
        axes[0].bar([0, 1, 2], [figures["planted_data_rate"], figures["model_rate"], 0.5],
                    color=["grey", "tab:blue", "tab:green"])
        axes[0].set_xticks([0, 1, 2], ["data", "model", "parity"])
        axes[0].set(ylabel="share in own group's fields", ylim=(0, 1),
                    title=f"planted bias (amplification {figures['amplification']:.2f})")
    else:
        axes[0].axis("off")
    if "pairs_by_type" in details:
        types = list(details["pairs_by_type"])
        axes[1].barh(types, [details["pairs_by_type"][t] for t in types])
        axes[1].axvline(0.5, color="k", ls="--")
        axes[1].set(xlabel="prefers sent_more", xlim=(0, 1), title="sentence pairs")
    else:
        axes[1].axis("off")


# ----------------------------------------------------------------------------------------------

def run_task(handle, request) -> LimitsResult:
    """`genloom eval --task NAME` for the limits tasks, refusing the options a task does not take."""
    task = request.task
    seed = request.get("seed", 0)
    if task == "hallucination":
        request.check({"task", "data", "num_samples", "seed"}, "--task hallucination")
        return hallucination(handle, data=request.data, num_samples=request.get("num_samples", 5), seed=seed,
                             progress=request.progress)
    if task == "understanding":
        request.check({"task", "seed"}, "--task understanding")
        return understanding(handle, seed=seed, progress=request.progress)
    if task == "bias":
        request.check({"task", "pairs", "seed"}, "--task bias")
        return bias(handle, pairs=request.pairs, seed=seed, progress=request.progress)
    if task == "consistency":
        request.check({"task", "data", "num_samples", "seed"}, "--task consistency")
        return consistency(handle, data=request.data, num_samples=request.get("num_samples", 4), seed=seed,
                           progress=request.progress)
    if task == "context":
        request.check({"task", "data", "num_samples", "seed"}, "--task context")
        return context(handle, data=request.data, num_samples=request.get("num_samples", 20), seed=seed,
                       progress=request.progress)
    raise GenloomError(f"--task {task!r}: not a limits task ({', '.join(TASKS)})")


def write_report(result: LimitsResult, path: Path) -> Path | None:
    path.write_text(json.dumps(result.to_json(), indent=2, default=float) + "\n")
    return result.plot(path.with_suffix(".png"))
