"""Yes/no benchmarks: POPE and HallusionBench."""

from __future__ import annotations

from collections import defaultdict

from ._text import as_text, check_rules, vqa_punctuation


def yes_no_vlmevalkit(prediction: str) -> str:
    """VLMEvalKit's ``YOrN_Extraction``: "yes", "no" or "unknown".

    Lower-case, apply the VQA punctuation rule, split into words; "yes" if the word "yes"
    occurs and "no" does not, "no" in the reverse case, else "unknown" (VLMEvalKit would
    then ask an LLM judge if one is configured; we never do).
    """
    words = vqa_punctuation(as_text(prediction).lower()).split()
    if "yes" in words and "no" not in words:
        return "yes"
    if "no" in words and "yes" not in words:
        return "no"
    return "unknown"


def yes_no_lmms(prediction: str) -> str:
    """lmms-eval's POPE rule: the stripped, lower-cased output itself.

    Only an output that is exactly "yes" or "no" counts; "Yes." or "Yes, there is" is
    neither (lmms-eval issue #673: intended).
    """
    return as_text(prediction).strip().lower()


def _gold_yes_no(value, where: str) -> str:
    gold = as_text(value).strip().lower()
    if gold in ("yes", "1", "true"):
        return "yes"
    if gold in ("no", "0", "false"):
        return "no"
    raise ValueError(f"{where}: ground truth {value!r} is not yes/no")


def _binary_metrics(golds: list[str], preds: list[str], rules: str) -> dict:
    n = len(golds)
    tp = sum(g == "yes" and p == "yes" for g, p in zip(golds, preds))
    fp = sum(g == "no" and p == "yes" for g, p in zip(golds, preds))
    if rules == "lmms-eval":
        # lmms-eval counts a false negative only when the output is exactly "no": an
        # unparseable answer to a "yes" question leaves the recall denominator.
        fn = sum(g == "yes" and p == "no" for g, p in zip(golds, preds))
    else:
        fn = sum(g == "yes" and p != "yes" for g, p in zip(golds, preds))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": sum(g == p for g, p in zip(golds, preds)) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": sum(p == "yes" for p in preds) / n if n else 0.0,
        "gt_yes_ratio": sum(g == "yes" for g in golds) / n if n else 0.0,
        "num_items": n,
    }


def score_pope(rows: list[dict], rules: str = "lmms-eval") -> dict:
    """POPE: accuracy, precision, recall, F1 ("yes" is the positive class) and yes-ratio.

    Rows need ``answer`` ("yes"/"no") and ``prediction``; ``category`` (adversarial /
    popular / random) is optional and adds ``categories`` (the metrics per category) and
    ``category_mean`` (their unweighted mean, the way the LLaVA paper averages F1).

    * ``rules="lmms-eval"`` (``pope/utils.py``): the prediction must equal "yes"/"no" after
      strip+lower. Quirks kept: an output that is neither is wrong and counts as neither a
      false positive nor a false negative, so it drops out of the recall denominator.
      Quirk *not* kept: lmms-eval's ``pope_yes_ratio`` is the share of "yes" in the ground
      truth (always 0.5 on POPE); our ``yes_ratio`` is the share of predicted "yes", the
      number the POPE paper reports. The ground-truth share is ``gt_yes_ratio``.
    * ``rules="vlmevalkit"`` (``POPE_rating``, ``YOrN_Extraction``): "yes"/"no" extracted
      by words (:func:`yes_no_vlmevalkit`); "unknown" counts as a "no" prediction, so it is
      a false negative on "yes" items. VLMEvalKit's headline "Overall" is the F1.
    """
    check_rules(rules)
    extract = yes_no_lmms if rules == "lmms-eval" else yes_no_vlmevalkit
    golds, preds, cats = [], [], []
    for i, row in enumerate(rows):
        golds.append(_gold_yes_no(row["answer"], f"item {i} (question_id {row.get('question_id')})"))
        preds.append(extract(row.get("prediction")))
        cats.append(row.get("category"))
    result = _binary_metrics(golds, preds, rules)
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, cat in enumerate(cats):
        if cat not in (None, ""):
            by_cat[str(cat)].append(i)
    if by_cat:
        result["categories"] = {
            cat: _binary_metrics([golds[i] for i in idx], [preds[i] for i in idx], rules)
            for cat, idx in sorted(by_cat.items())
        }
        keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
        result["category_mean"] = {
            k: sum(m[k] for m in result["categories"].values()) / len(by_cat) for k in keys
        }
    return result


def hallusion_correct(prediction: str, gt_answer, rules: str = "lmms-eval") -> bool:
    """Whether one HallusionBench answer is right, without an LLM judge.

    * ``lmms-eval``: the API-free rule of ``evaluate_hb.py``'s ``*_intern`` aggregations:
      the answer is "yes" iff "yes" occurs anywhere in the lower-cased output (so "yesterday"
      is a yes and "Yes and no" is a yes). lmms-eval's *default* HallusionBench metric asks
      GPT-4 to judge every output against ``gt_answer_details``; that is not reproducible
      offline and not implemented here.
    * ``vlmevalkit``: :func:`yes_no_vlmevalkit`; "unknown" is wrong.
    """
    check_rules(rules)
    gold = _gold_yes_no(gt_answer, "HallusionBench gt_answer")
    if rules == "lmms-eval":
        pred = "yes" if "yes" in as_text(prediction).lower() else "no"
    else:
        pred = yes_no_vlmevalkit(prediction)
    return pred == gold


def score_hallusionbench(rows: list[dict], rules: str = "lmms-eval") -> dict:
    """HallusionBench aAcc, fAcc, qAcc (fractions).

    Rows need ``category`` (VD/VS), ``subcategory``, ``set_id``, ``figure_id``,
    ``question_id``, ``gt_answer`` ("1"/"0" as in lmms-lab, or "Yes"/"No") and ``prediction``.

    * aAcc: per-question accuracy.
    * fAcc: share of figures (category, subcategory, set_id, figure_id) whose questions are
      all right.
    * qAcc: share of questions (category, subcategory, set_id, question_id) answered right on
      every figure they are asked about.

    Both harnesses group this way (VLMEvalKit keys on subcategory, which is unique per
    category). Quirks: lmms-eval's judge path skips VS items with figure_id 0 in fAcc and
    counts a judge's "unclear" on them as correct; its rule-based path (ours) does neither,
    nor does VLMEvalKit. Text-only items (the ``non_image`` split) are not part of the
    951-item image split both harnesses score.
    """
    check_rules(rules)
    if not rows:
        return {"aAcc": 0.0, "fAcc": 0.0, "qAcc": 0.0, "num_items": 0}
    figures: dict[tuple, list[bool]] = defaultdict(list)
    questions: dict[tuple, list[bool]] = defaultdict(list)
    correct = []
    for row in rows:
        ok = hallusion_correct(row.get("prediction"), row["gt_answer"], rules)
        correct.append(ok)
        base = (str(row["category"]), str(row["subcategory"]), str(row["set_id"]))
        figures[base + (str(row["figure_id"]),)].append(ok)
        questions[base + (str(row["question_id"]),)].append(ok)
    return {
        "aAcc": sum(correct) / len(correct),
        "fAcc": sum(all(v) for v in figures.values()) / len(figures),
        "qAcc": sum(all(v) for v in questions.values()) / len(questions),
        "num_figures": len(figures),
        "num_questions": len(questions),
        "num_items": len(rows),
    }
