"""Multiple-choice benchmarks: MMVP, MMBench (circular), SEED-Bench, AI2D, RealWorldQA.

Letter extractors first (one per harness rule), then one ``score_*`` per benchmark. Every
extractor returns an upper-case letter, or ``""`` when it cannot decide; no judge, no
random fallback.
"""

from __future__ import annotations

import math
import re
import string
from collections import defaultdict

from ._text import as_text, check_rules, exact_match_lmms

LETTERS = string.ascii_uppercase


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def is_missing(value) -> bool:
    """An absent option: None, NaN, "" or the string "nan" (pandas' rendering in TSVs)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "nan")


# ---------------------------------------------------------------------------------------
# Extractors
# ---------------------------------------------------------------------------------------

_MMVP_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^\s*\(?([AB])\)?\.?\s*$",  # the letter alone: "A", "(b)", "B."
        r"^\s*\(?([AB])\)?[.\s]",  # the letter first: "A. left", "b dog"
        r"answer\s+is\s+\(?([AB])\)?",
        r"option\s+\(?([AB])\)?",
        r"\(?([AB])\)?(?:\s|$)",  # any A/B before a space or the end (no word boundary)
    )
]


def extract_letter_mmvp_lmms(prediction: str) -> str:
    """lmms-eval's MMVP ``_extract_answer_letter`` (A or B).

    Tries, in order and case-insensitively: the letter alone; the letter first; "answer is
    X"; "option X"; any "a"/"b" followed by a space or the end; finally the first character.
    Quirks kept: the fourth rule has no word boundary, so "a lab coat" gives "A" (rule 2)
    and "The crab" gives "B"; the last rule makes "Bananas" a "B".
    """
    text = as_text(prediction).strip()
    for pattern in _MMVP_PATTERNS:
        found = pattern.search(text)
        if found:
            return found.group(1).upper()
    return text[0].upper() if text and text[0].upper() in "AB" else ""


_ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is",
    "the best answer is", "best answer is", "the correct option is", "correct option is",
    "the best option is", "best option is", "the choice is", "choice is",
    "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは",
)  # fmt: skip
# Priority of each format in lmms-eval's extract_mcq_answer (higher wins, then later position).
_FORMATS = (("({})", 6), ("{}.", 5), ("{}:", 4), ("{})", 3), ("{} ", 2))


def extract_letter_lmms(prediction: str, choices: str | list[str] = "ABCDEFGH") -> str:
    """lmms-eval's shared ``extract_mcq_answer`` (``_task_utils/mcq_extract.py``).

    Candidates, by priority: a standalone letter at the start (10) or end (9); a letter
    after an answer phrase such as "the answer is" (7); "(X)" (6), "X." (5), "X:" (4),
    "X)" (3), "X " (2); only if none, any occurrence (0). Highest priority wins, ties go to
    the later position. Quirks kept: letters are case-sensitive ("(b)" is not found by the
    letter rules, but its "b" is not upper-case either, so it gives ""); after an answer
    phrase the first upper-case choice letter anywhere counts ("answer is Blue" -> "B").
    """
    text = as_text(prediction).strip()
    if not text:
        return ""
    for char in ",.!?;:'\"":
        text = text.strip(char)
    text = f" {text} "
    candidates: list[tuple[int, int, str]] = []
    for letter in choices:
        for fmt, priority in _FORMATS:
            at = text.rfind(fmt.format(letter))
            if at >= 0:
                candidates.append((priority, at, letter))
    lower = text.lower()
    for phrase in _ANSWER_PHRASES:
        at = lower.find(phrase)
        if at >= 0:
            for letter in choices:
                pos = text.find(letter, at + len(phrase))
                if pos >= 0:
                    candidates.append((7, pos, letter))
    core = text.strip()
    for letter in choices:
        if core.startswith(letter) and (len(core) == 1 or not core[1].isalpha()):
            candidates.append((10, 0, letter))
        if core.endswith(letter) and (len(core) == 1 or not core[-2].isalpha()):
            candidates.append((9, len(text) - 1, letter))
    if not candidates:
        candidates = [(0, text.rfind(c), c) for c in choices if c in text]
    if not candidates:
        return ""
    return max(candidates, key=lambda c: (c[0], c[1]))[2]


_MMBENCH_AFFIXES = (
    ("", ""), ("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."),
    (":", ""), (":", ","), (":", "."), (":", ")"), (":", ")."),
)  # fmt: skip


def _option_by_text(prediction: str, options: dict[str, str]) -> str:
    """The one option whose text (lower-cased) occurs in the prediction, else ""."""
    pred = prediction.lower()
    found = [k for k, v in options.items() if str(v).lower() in pred]
    return found[0] if len(found) == 1 else ""


def extract_letter_mmbench_lmms(prediction: str, options: dict[str, str]) -> str:
    """lmms-eval's MMBench heuristics (``mmbench_evals.py``: ``can_infer``), then ``extract_mcq_answer``.

    1. Split on whitespace. If exactly one of A-E is a bare token, take it, unless "A" is a
       token and there are more than 3 tokens ("A" may be an article): then step 2.
    2. For the affixes "X." "X," "X:" "X)" "X)." "(X)" "(X)." ":X" ":X," ":X." ":X)"
       ":X).", in order: if exactly one letter appears with it as a token, take it.
    3. Else the unique option whose text is a substring of the lower-cased output.
    4. Else (``mmbench_en_dev_static`` only) :func:`extract_letter_lmms` over the options.
    lmms-eval's default MMBench task instead asks a GPT model at step 4 and, after three
    failed calls, draws a seeded random letter; we never do either.
    """
    text = as_text(prediction).strip()
    tokens = [t.strip() for t in text.split()]
    if "Failed to obtain answer via API" not in text:
        for i, (prefix, suffix) in enumerate(_MMBENCH_AFFIXES):
            found = [c for c in "ABCDE" if prefix + c + suffix in tokens]
            if len(found) != 1:
                continue
            if i == 0 and "A" in tokens and len(tokens) > 3:
                continue
            return found[0]
    return _option_by_text(text, options) or extract_letter_lmms(text, sorted(options))


def extract_letter_vlmevalkit(prediction: str, options: dict[str, str]) -> str:
    """VLMEvalKit's ``can_infer`` (``vlmeval/utils/matching_util.py``, exact matching).

    1. Replace ``.()[],:;!*#{}`` by spaces and split. If exactly one option letter is a
       token and its first occurrence is among the last four tokens, take it ("A", "(b)"
       no: the letters are case-sensitive; "The answer is A" yes; "A is the one that we
       can see" no).
    2. A refusal ("Cannot determine the answer", ...) or a lone "Z" gives "Z" (wrong).
    3. Else, unless the output is more than twice as long as all option texts together,
       the unique option whose text occurs in the lower-cased output.
    VLMEvalKit then asks an LLM (default gpt-4o-mini) if a key is set; we never do.
    """
    text = as_text(prediction)
    if "Failed to obtain answer via API" in text:
        return ""
    refusals = (
        "Sorry, I can't help with images of people yet.",
        "I can't process this file.",
        "I'm sorry, but without the image provided",
        "Cannot determine the answer",
    )
    if any(r in text for r in refusals):
        return "Z"
    spaced = text
    for char in ".()[],:;!*#{}":
        spaced = spaced.replace(char, " ")
    tokens = spaced.split()
    found = [c for c in options if c in tokens]
    if len(found) == 1:
        if tokens.index(found[0]) > len(tokens) - 5:
            return found[0]
    elif not found and "Z" in tokens:
        return "Z"
    if len(text) > 2 * sum(len(str(v)) for v in options.values()):
        return ""
    return _option_by_text(text, options)


# ---------------------------------------------------------------------------------------
# MMVP
# ---------------------------------------------------------------------------------------


def mmvp_options(options: str) -> list[str]:
    """Split MMVP's "(a) Open (b) Closed" into ["Open", "Closed"]."""
    return [m.strip() for m in re.findall(r"\([a-z]\)\s*([^(]+?)(?=\s*\([a-z]\)|$)", options, re.IGNORECASE)]


def mmvp_gold_letter(correct_answer: str) -> str:
    """"(a)" / "a" -> "A", "(b)" / "b" -> "B" (lmms-eval's ``_normalize_answer``)."""
    answer = as_text(correct_answer).strip().lower()
    if "(a)" in answer or answer == "a":
        return "A"
    if "(b)" in answer or answer == "b":
        return "B"
    return answer.upper()


def mmvp_cambrian_correct(prediction: str, gold_letter: str, gold_text: str) -> bool:
    """Cambrian's MMVP matcher (``eval/eval/mmvp/mmvp_test.py``).

    Lower-case; keep the text after "answer is" or else after "answer:"; strip punctuation
    and spaces; correct if what is left equals the gold letter or the gold option text
    (also lower-cased, punctuation-free).
    """
    pred = as_text(prediction).lower()
    for marker in ("answer is", "answer:"):
        if marker in pred:
            pred = pred.split(marker, 1)[1]
            break
    table = str.maketrans("", "", string.punctuation)
    pred = pred.translate(table).strip()
    return pred in (gold_letter.lower(), as_text(gold_text).lower().translate(table).strip())


def score_mmvp(rows: list[dict], rules: str = "lmms-eval", cambrian: bool = False) -> dict:
    """MMVP per-question ``accuracy`` and ``pair_accuracy`` (both items of a pair right).

    Rows need ``Index`` (1-based), ``Options`` ("(a) x (b) y"), ``Correct Answer`` and
    ``prediction``. Pairs are ``(Index - 1) // 2``; incomplete pairs are left out of the
    pair accuracy (as lmms-eval does; VLMEvalKit pairs consecutive rows and asserts the
    count is even).

    * ``lmms-eval``: :func:`extract_letter_mmvp_lmms`.
    * ``vlmevalkit``: :func:`extract_letter_vlmevalkit` over the two options.
    * ``cambrian=True`` (either rules): :func:`mmvp_cambrian_correct`, Cambrian's
      letter-or-option-text matcher; use with :func:`ross.eval.benchmarks.mmvp_cambrian_prompt`.
    The original MMVP grades free-form answers with GPT-4; not reproduced.
    """
    check_rules(rules)
    hits, pairs = [], defaultdict(list)
    for row in rows:
        gold = mmvp_gold_letter(row["Correct Answer"])
        options = mmvp_options(as_text(row["Options"]))
        if cambrian:
            gold_text = options[ord(gold) - 65] if gold in ("A", "B") and len(options) > ord(gold) - 65 else ""
            ok = mmvp_cambrian_correct(row.get("prediction"), gold, gold_text)
        elif rules == "lmms-eval":
            ok = extract_letter_mmvp_lmms(row.get("prediction")) == gold
        else:
            ok = extract_letter_vlmevalkit(row.get("prediction"), dict(zip("AB", options))) == gold
        hits.append(ok)
        pairs[(int(float(row["Index"])) - 1) // 2].append(ok)
    complete = [v for v in pairs.values() if len(v) == 2]
    return {
        "accuracy": _mean(hits),
        "pair_accuracy": _mean(all(v) for v in complete),
        "num_pairs": len(complete),
        "num_items": len(rows),
    }


# ---------------------------------------------------------------------------------------
# MMBench
# ---------------------------------------------------------------------------------------


def mmbench_options(row: dict) -> dict[str, str]:
    """The row's options A-E that are present (see :func:`is_missing`)."""
    return {c: as_text(row[c]) for c in "ABCDE" if c in row and not is_missing(row[c])}


def score_mmbench(rows: list[dict], rules: str = "lmms-eval") -> dict:
    """MMBench CircularEval: a question counts only if all its option rotations are right.

    Rows need ``index``, ``answer``, the options ``A``.. and ``prediction``; ``category``
    is optional. A row with ``index >= 1e6`` is a rotated copy of question
    ``index % 1e6``; questions whose base row (index < 1e6) is absent are not scored.

    * ``lmms-eval``: the rules of ``mmbench_en_dev_static`` (:func:`extract_letter_mmbench_lmms`).
      The GPT-matched default ``mmbench_en_dev`` is not reproducible offline.
    * ``vlmevalkit``: ``mcq_circular_eval`` under exact matching (:func:`extract_letter_vlmevalkit`);
      an unresolved rotation makes the question a miss.
    Deviation: options stored as the string "nan" count as absent here; lmms-eval keeps
    them as an option text "nan" for its substring rule.
    """
    check_rules(rules)
    base_rows: dict[int, dict] = {}
    groups: dict[int, list[bool]] = defaultdict(list)
    for row in rows:
        index = int(float(row["index"]))
        options = mmbench_options(row)
        if rules == "lmms-eval":  # lmms-eval's build_choices looks at A-D only
            options = {k: v for k, v in options.items() if k in "ABCD"}
            letter = extract_letter_mmbench_lmms(row.get("prediction"), options)
        else:
            letter = extract_letter_vlmevalkit(row.get("prediction"), options)
        groups[index % 1_000_000].append(letter == as_text(row["answer"]).strip())
        if index < 1_000_000:
            base_rows[index] = row
    hits = {i: all(groups[i]) for i in base_rows}
    result = {
        "circular_accuracy": _mean(hits.values()),
        "vanilla_accuracy": _mean(v[0] for i, v in groups.items() if i in base_rows),
        "num_questions": len(hits),
        "num_items": len(rows),
    }
    by_cat = defaultdict(list)
    for i, ok in hits.items():
        if base_rows[i].get("category"):
            by_cat[str(base_rows[i]["category"])].append(ok)
    if by_cat:
        result["categories"] = {k: _mean(v) for k, v in sorted(by_cat.items())}
    return result


# ---------------------------------------------------------------------------------------
# SEED-Bench, AI2D, RealWorldQA
# ---------------------------------------------------------------------------------------


def score_seedbench(rows: list[dict], rules: str = "lmms-eval") -> dict:
    """SEED-Bench image accuracy (items with ``data_type == "image"``, or all without it).

    * ``lmms-eval`` (``seedbench/utils.py``): the *first character* of the stripped output
      must equal the answer letter (case-insensitive): "B. dog" and "b" are right,
      "(B)" and "The answer is B" are wrong.
    * ``vlmevalkit``: :func:`extract_letter_vlmevalkit` over ``choice_a``..``choice_d``.
    """
    check_rules(rules)
    hits = []
    for row in rows:
        if row.get("data_type", "image") != "image":
            continue
        pred = as_text(row.get("prediction")).strip()
        gold = as_text(row["answer"]).strip()
        if rules == "lmms-eval":
            ok = pred[:1].lower() == gold.lower()
        else:
            options = {c: as_text(row[f"choice_{c.lower()}"]) for c in "ABCD" if f"choice_{c.lower()}" in row}
            ok = extract_letter_vlmevalkit(pred, options) == gold.upper()
        hits.append(ok)
    return {"accuracy": _mean(hits), "num_image_items": len(hits), "num_items": len(rows)}


def ai2d_gold_letter(row: dict) -> str:
    """AI2D's ``answer`` is the option index ("2" -> "C")."""
    return LETTERS[int(float(row["answer"]))]


def score_ai2d(rows: list[dict], rules: str = "lmms-eval") -> dict:
    """AI2D (test) exact match on the option letter.

    * ``lmms-eval``: ``MultiChoiceRegexFilter`` keeps "X" from an output starting with
      "X." (upper-case only), otherwise the whole output; then exact match ignoring case and
      ASCII punctuation. "B", "b.", "(b)" and "B. dog" are right; "The answer is B" and
      "B dog" are wrong.
    * ``vlmevalkit``: :func:`extract_letter_vlmevalkit` over the options.
    """
    check_rules(rules)
    hits = []
    for row in rows:
        gold = ai2d_gold_letter(row)
        pred = as_text(row.get("prediction"))
        if rules == "lmms-eval":
            found = re.match(r"^\s*([A-Z])\.", pred)
            ok = exact_match_lmms((found.group(1) if found else pred).strip(), gold)
        else:
            ok = extract_letter_vlmevalkit(pred, dict(zip(LETTERS, map(as_text, row["options"])))) == gold
        hits.append(ok)
    return {"exact_match": _mean(hits), "num_items": len(rows)}


def realworldqa_options(question: str) -> dict[str, str]:
    """The "A. text" lines embedded in a RealWorldQA question."""
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^([A-Z])\.\s*(.+)$", question, re.MULTILINE)}


def score_realworldqa(rows: list[dict], rules: str = "lmms-eval") -> dict:
    """RealWorldQA exact match.

    Letter answers (A-D): ``lmms-eval`` uses :func:`extract_letter_lmms` over A-D;
    ``vlmevalkit`` uses :func:`extract_letter_vlmevalkit` over the options parsed from the
    question. Other answers (numbers, words): lmms-eval compares the lower-cased output
    without a trailing "." to the lower-cased answer; for vlmevalkit we use strip+lower
    equality (its TSV path treats every item as multiple choice; unverified for these).
    """
    check_rules(rules)
    hits = []
    for row in rows:
        gold = as_text(row["answer"]).strip()
        pred = as_text(row.get("prediction")).strip()
        if gold.upper() in ("A", "B", "C", "D"):
            if rules == "lmms-eval":
                letter = extract_letter_lmms(pred, "ABCD")
            else:
                letter = extract_letter_vlmevalkit(pred, realworldqa_options(as_text(row.get("question"))))
            ok = letter == gold.upper()
        elif rules == "lmms-eval":
            ok = pred.lower().strip().rstrip(".") == gold.lower()
        else:
            ok = pred.lower() == gold.lower()
        hits.append(ok)
    return {"exact_match": _mean(hits), "num_items": len(rows)}
