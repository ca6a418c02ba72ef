"""MMMU (validation): the official MMMU answer parsers, made deterministic."""

from __future__ import annotations

import ast
import re
from collections import defaultdict

from ._text import as_text, check_rules
from .choice import LETTERS, extract_letter_vlmevalkit


def mmmu_options(options) -> list[str]:
    """MMMU's ``options``: a list, or (as on the Hub) a stringified Python list."""
    if isinstance(options, (list, tuple)):
        return [as_text(o) for o in options]
    text = as_text(options).strip()
    if not text:
        return []
    parsed = ast.literal_eval(text)
    if not isinstance(parsed, (list, tuple)):
        raise ValueError(f"MMMU options {text[:60]!r} is not a list")
    return [as_text(o) for o in parsed]


def parse_multi_choice(response: str, options: list[str]) -> str:
    """The official MMMU multiple-choice parser, with "" instead of a random letter.

    Strip ``,.!?;:'`` from the ends and pad with spaces; candidates are the letters found as
    "(X)"; else as "X " (a letter followed by a space); else as "X."; else, for outputs of
    more than five words, the options whose text occurs (case-insensitively). Several
    candidates: the one found last (by the position of "(X)", " X " or the option text).
    None: the official code and lmms-eval pick ``random.choice``; we return "" (wrong),
    which keeps the score deterministic and a lower bound of theirs.
    Quirk kept: when the candidates came from "X." the last-position rule looks for " X ",
    finds nothing (-1 for all) and so picks the first candidate in letter order.
    """
    letters = list(LETTERS[: len(options)])
    text = as_text(response)
    for char in ",.!?;:'":
        text = text.strip(char)
    text = f" {text} "
    by_text, bracketed = False, False
    candidates = [c for c in letters if f"({c})" in text]
    if candidates:
        bracketed = True
    else:
        candidates = [c for c in letters if f"{c} " in text]
    if not candidates:
        candidates = [c for c in letters if f"{c}." in text]
    if not candidates and len(text.split()) > 5:
        candidates = [c for c, o in zip(letters, options) if o.lower() in text.lower()]
        by_text = bool(candidates)
    if not candidates:
        return ""
    if len(candidates) == 1:
        return candidates[0]
    if by_text:
        positions = [text.lower().rfind(options[letters.index(c)].lower()) for c in candidates]
    elif bracketed:
        positions = [text.rfind(f"({c})") for c in candidates]
    else:
        positions = [text.rfind(f" {c} ") for c in candidates]
    return candidates[positions.index(max(positions))]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_open(text: str) -> list:
    """Official ``normalize_str``: a number becomes ``[round(float, 2)]``; other text is
    lower-cased, and a single character ``c`` becomes ``[" c", "c "]`` to avoid trivial
    substring matches."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


_NUMBER_PATTERNS = (
    re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),  # with thousands separators
    re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),  # scientific notation
    re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"),  # plain
)
_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")


def parse_open(response: str) -> list:
    """Official ``parse_open_response``: candidate answers of an open question.

    Split the lower-cased output into sentences; in each, keep the shortest tail after an
    indicator ("is ", "so ", "answer ", ... and "=" in the last sentence); add every number
    found in those tails; normalise all with :func:`normalize_open`; de-duplicate.
    """
    text = as_text(response).strip().strip(".").lower()
    # The official split looks for ". " before an upper-case letter in lower-cased text,
    # which never happens, so in effect it splits on newlines only.
    sentences = re.split(r"\.\s(?=[A-Z])|\n", text)
    tails = []
    for i, sentence in enumerate(sentences):
        indicators = _KEY_INDICATORS + (("=",) if i == len(sentences) - 1 else ())
        shortest = None
        for indicator in indicators:
            if indicator in sentence:
                tail = sentence.split(indicator)[-1].strip()
                if shortest is None or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in (":", ",", ".", "!", "?", ";", "'"):
            tails.append(shortest)
    if not tails:
        tails = [text]
    found = list(tails)
    for tail in tails:
        for pattern in _NUMBER_PATTERNS:
            found.extend(pattern.findall(tail))
    normalized = []
    for item in found:
        normalized.extend(normalize_open(item))
    return list(dict.fromkeys(normalized))


def open_correct(gold, candidates: list) -> bool:
    """Official ``eval_open``: a string candidate is right if it *contains* a normalised gold
    string; a numeric candidate if it equals a normalised gold number."""
    golds = []
    for answer in gold if isinstance(gold, list) else [gold]:
        golds.extend(normalize_open(as_text(answer)))
    for cand in candidates:
        if isinstance(cand, str):
            if any(isinstance(g, str) and g in cand for g in golds):
                return True
        elif cand in golds:
            return True
    return False


def _subject(item_id: str) -> str:
    """"validation_Art_Theory_12" -> "Art_Theory"."""
    parts = as_text(item_id).split("_")
    return "_".join(parts[1:-1]) if len(parts) > 2 else ""


def mmmu_correct(row: dict, rules: str = "lmms-eval") -> bool:
    """Whether one MMMU answer is right.

    * ``lmms-eval``: :func:`parse_multi_choice` / :func:`parse_open` + :func:`open_correct`.
    * ``vlmevalkit`` (``MMMU_preproc`` + exact matching): an open question becomes a
      two-option question (A = the gold answer, B = "Other Answers", gold "A"); every item
      is then scored with :func:`~eval.scoring.choice.extract_letter_vlmevalkit`. No LLM
      fallback, so unresolved outputs are wrong.
    """
    check_rules(rules)
    prediction = as_text(row.get("prediction")).strip()
    multiple_choice = row.get("question_type") == "multiple-choice"
    options = mmmu_options(row.get("options")) if multiple_choice else []
    gold = row["answer"]
    if rules == "vlmevalkit":
        if multiple_choice:
            return extract_letter_vlmevalkit(prediction, dict(zip(LETTERS, options))) == as_text(gold).strip()
        return extract_letter_vlmevalkit(prediction, {"A": as_text(gold), "B": "Other Answers"}) == "A"
    if multiple_choice:
        return parse_multi_choice(prediction, options) == as_text(gold)
    return open_correct(gold, parse_open(prediction))


def score_mmmu(rows: list[dict], rules: str = "lmms-eval") -> dict:
    """MMMU micro-averaged ``accuracy``, plus ``subjects`` (accuracy per subject from ``id``)."""
    check_rules(rules)
    hits, by_subject = [], defaultdict(list)
    for row in rows:
        ok = mmmu_correct(row, rules)
        hits.append(ok)
        by_subject[_subject(row.get("id", ""))].append(ok)
    return {
        "accuracy": sum(hits) / len(hits) if hits else 0.0,
        "subjects": {k: sum(v) / len(v) for k, v in sorted(by_subject.items()) if k},
        "num_items": len(rows),
    }
