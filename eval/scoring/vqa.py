"""Open-answer benchmarks: ChartQA, TextVQA, DocVQA/InfoVQA, OCRBench, GQA.

No metric here comes from HF ``evaluate``: it has no ANLS, VQA-accuracy or relaxed-accuracy
metric, and its ``exact_match`` is a three-line rule that would need a Hub download of the
metric script at run time (see docs/benchmarks.md).
"""

from __future__ import annotations

import ast
from collections import defaultdict

from ._text import (
    as_text,
    check_rules,
    evalai_normalize,
    exact_match_lmms,
    levenshtein,
    vlmevalkit_vqa_normalize,
)


def answer_list(value) -> list[str]:
    """Ground truths as a list: a list, a stringified list (VLMEvalKit TSVs) or one string."""
    if isinstance(value, (list, tuple)):
        return [as_text(v) for v in value]
    text = as_text(value)
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return [text]
        if isinstance(parsed, list):
            return [as_text(v) for v in parsed]
    return [text]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


# ---------------------------------------------------------------------------------------
# ChartQA
# ---------------------------------------------------------------------------------------


def _to_float(text: str):
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, target: str, max_relative_change: float = 0.05) -> bool:
    """Relaxed correctness (Methani et al.; pix2struct's and Qwen-VL's function).

    If both strings parse as floats (a trailing "%" divides by 100) and the target is not
    0, correct when ``|p - t| / |t| <= 5%``; otherwise case-insensitive exact match.
    Quirks (both harnesses): "1,000" does not parse (thousands separators defeat the
    numeric path, so "1,000" vs "1000" is wrong); "45%" vs "45" compares 0.45 with 45;
    a zero target falls back to string equality ("0.0" vs "0" is wrong); Python's
    ``float`` accepts "1_000", " 12 ", "nan" and "inf".
    """
    p, t = _to_float(prediction), _to_float(target)
    if p is not None and t:
        return abs(p - t) / abs(t) <= max_relative_change
    return prediction.lower() == target.lower()


def score_chartqa(rows: list[dict], rules: str = "lmms-eval") -> dict:
    """ChartQA relaxed accuracy, overall and per ``type`` (human_test / augmented_test).

    lmms-eval compares the stripped prediction with the one ``answer``; VLMEvalKit takes
    the best over a list of answers (a single answer in practice), also stripped.
    """
    check_rules(rules)
    hits, by_type = [], defaultdict(list)
    for row in rows:
        pred = as_text(row.get("prediction")).strip()
        golds = answer_list(row["answer"]) if rules == "vlmevalkit" else [as_text(row["answer"])]
        ok = any(relaxed_correct(pred, g) for g in golds)
        hits.append(ok)
        if row.get("type"):
            by_type[str(row["type"])].append(ok)
    result = {"relaxed_accuracy": _mean(hits), "num_items": len(rows)}
    if by_type:
        result["types"] = {k: _mean(v) for k, v in sorted(by_type.items())}
    return result


# ---------------------------------------------------------------------------------------
# TextVQA
# ---------------------------------------------------------------------------------------


def vqa_accuracy(prediction: str, answers: list[str], rules: str = "lmms-eval") -> float:
    """VQA accuracy: mean over the leave-one-out subsets of ``min(1, #matches / 3)``.

    Prediction and answers are normalised with the EvalAI processor
    (:func:`~eval.scoring._text.evalai_normalize`, lmms-eval) or VLMEvalKit's
    ``process_answer`` (:func:`~eval.scoring._text.vlmevalkit_vqa_normalize`).
    """
    check_rules(rules)
    norm = evalai_normalize if rules == "lmms-eval" else vlmevalkit_vqa_normalize
    pred = norm(as_text(prediction).strip())
    golds = [norm(a) for a in answers]
    if not golds:
        return 0.0
    return _mean(min(1.0, sum(g == pred for j, g in enumerate(golds) if j != i) / 3) for i in range(len(golds)))


def score_textvqa(rows: list[dict], rules: str = "lmms-eval") -> dict:
    """TextVQA (val) VQA accuracy over the 10 human ``answers`` (lmms-eval calls it exact_match)."""
    check_rules(rules)
    scores = [vqa_accuracy(row.get("prediction"), answer_list(row["answers"]), rules) for row in rows]
    return {"vqa_accuracy": _mean(scores), "num_items": len(rows)}


# ---------------------------------------------------------------------------------------
# DocVQA / InfoVQA
# ---------------------------------------------------------------------------------------


def anls(prediction: str, answers: list[str], rules: str = "lmms-eval", threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity of one prediction (best over ``answers``).

    ``s = 1 - min_g Lev(g, p) / max(|g|, |p|)``, set to 0 below ``threshold``. Strings are
    stripped, lower-cased and whitespace-collapsed before the distance.
    Quirk of lmms-eval (``api/metrics.py``, kept): the length denominator uses the *raw*
    strings' ``len(s.upper())``, so inner double spaces or characters that upper-case to
    two ("ß" -> "SS") lengthen it. VLMEvalKit (``anls_compute``) uses the normalised
    strings' lengths.
    """
    check_rules(rules)
    pred_raw = as_text(prediction).strip()  # lmms-eval strips every generation first
    pred = " ".join(pred_raw.lower().split())
    distances = []
    for answer in answers:
        gold = " ".join(answer.strip().lower().split())
        if rules == "lmms-eval":
            length = max(len(answer.upper()), len(pred_raw.upper()))
        else:
            length = max(len(gold), len(pred))
        distances.append(0.0 if length == 0 else levenshtein(gold, pred) / length)
    if not distances:
        return 0.0
    score = 1.0 - min(distances)
    return score if score >= threshold else 0.0


def score_anls(rows: list[dict], rules: str = "lmms-eval") -> dict:
    """DocVQA / InfoVQA (val) mean ANLS over the ``answers`` lists."""
    check_rules(rules)
    scores = [anls(row.get("prediction"), answer_list(row["answers"]), rules) for row in rows]
    return {"anls": _mean(scores), "num_items": len(rows)}


# ---------------------------------------------------------------------------------------
# OCRBench
# ---------------------------------------------------------------------------------------

_HME = "Handwritten Mathematical Expression Recognition"


def _fold_fullwidth(text: str) -> str:
    """Full-width ASCII (U+FF01..U+FF5E) to ASCII and the ideographic space to a space."""
    return "".join(
        chr(ord(c) - 0xFEE0) if 0xFF01 <= ord(c) <= 0xFF5E else (" " if c == "\u3000" else c) for c in text
    )


def ocrbench_hit(prediction: str, answers: list[str], is_hme: bool, rules: str = "lmms-eval") -> bool:
    """OCRBench: 1 if any ground truth is a *substring* of the prediction.

    Handwritten-math items (HME100k) drop all spaces and newlines and stay case-sensitive;
    others are lower-cased with newlines as spaces. lmms-eval also folds full-width ASCII
    on both sides; VLMEvalKit does not. A substring rule means a long, rambling answer that
    happens to contain the string counts, and an empty ground truth matches everything.
    """
    check_rules(rules)
    pred = as_text(prediction).strip()
    for answer in answers:
        if is_hme:
            gold, cand = answer.strip().replace("\n", "").replace(" ", ""), pred.replace("\n", "").replace(" ", "")
        elif rules == "lmms-eval":
            gold = _fold_fullwidth(answer).lower().strip().replace("\n", " ")
            cand = _fold_fullwidth(pred).lower().strip().replace("\n", " ")
        else:
            gold, cand = answer.lower().strip().replace("\n", " "), pred.lower().strip().replace("\n", " ")
        if gold in cand:
            return True
    return False


def score_ocrbench(rows: list[dict], rules: str = "lmms-eval") -> dict:
    """OCRBench ``score`` on the published 0-1000 scale, plus ``accuracy`` in [0, 1].

    ``score = 1000 * hits / N``: on the full 1,000-item set this is the number of hits, the
    published "Final Score". (lmms-eval always divides the hits by 1000, so a subset reads
    low there; it also keeps the per-type counts in a module-level dict that grows on every
    call.) HME items are those with ``dataset == "HME100k"`` (lmms-eval) or
    ``question_type`` = handwritten math (VLMEvalKit).
    """
    check_rules(rules)
    hits, by_type = [], defaultdict(int)
    for row in rows:
        if rules == "lmms-eval":
            is_hme = row.get("dataset") == "HME100k"
        else:
            is_hme = row.get("question_type") == _HME
        ok = ocrbench_hit(row.get("prediction"), answer_list(row["answer"]), is_hme, rules)
        hits.append(ok)
        by_type[str(row.get("question_type"))] += ok
    n = len(rows)
    return {
        "score": 1000.0 * sum(hits) / n if n else 0.0,
        "accuracy": _mean(hits),
        "hits_per_type": dict(sorted(by_type.items())),
        "num_items": n,
    }


# ---------------------------------------------------------------------------------------
# GQA
# ---------------------------------------------------------------------------------------


def gqa_correct(prediction: str, answer: str, rules: str = "lmms-eval") -> bool:
    """GQA exact match.

    lmms-eval: ``exact_match`` ignoring case and ASCII punctuation ("Yes." == "yes").
    VLMEvalKit (``accuracy``): equality after strip + lower, punctuation kept ("Yes." is wrong).
    """
    check_rules(rules)
    pred = as_text(prediction).strip()
    if rules == "lmms-eval":
        return exact_match_lmms(pred, as_text(answer))
    return pred.lower() == as_text(answer).strip().lower()


def score_gqa(rows: list[dict], rules: str = "lmms-eval") -> dict:
    """GQA (testdev balanced) exact-match accuracy."""
    check_rules(rules)
    hits = [gqa_correct(row.get("prediction"), row["answer"], rules) for row in rows]
    return {"exact_match": _mean(hits), "num_items": len(rows)}
