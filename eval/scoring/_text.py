"""String helpers shared by the scorers.

Everything here is a re-implementation of a rule the reference harnesses apply; the
docstrings name the rule and the quirks kept on purpose so that our numbers match theirs.
"""

from __future__ import annotations

import re
import string

RULES = ("lmms-eval", "vlmevalkit")


def check_rules(rules: str) -> str:
    """Return ``rules`` if it names a supported harness, else raise ``ValueError``."""
    if rules not in RULES:
        raise ValueError(f"unknown rules {rules!r}; expected one of {', '.join(RULES)}")
    return rules


def as_text(value) -> str:
    """A prediction or field as a string: ``None`` becomes ``""`` (lmms-eval does the same)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


# ---------------------------------------------------------------------------------------
# VQA answer normalisation (the official VQA / EvalAI processor)
# ---------------------------------------------------------------------------------------

# The official VQA contraction table, one "written:canonical" pair per token. Keys with
# capitals (Id've, Im, Ive) can never match because the text is lower-cased first; the
# reference implementations have the same dead entries.
_CONTRACTIONS = dict(
    pair.split(":", 1)
    for pair in """
    aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't
    couldn'tve:couldn't've couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't
    hadnt:hadn't hadnt've:hadn't've hadn'tve:hadn't've hasnt:hasn't havent:haven't
    hed:he'd hed've:he'd've he'dve:he'd've hes:he's howd:how'd howll:how'll hows:how's
    Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd itd've:it'd've
    it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't
    mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't
    mustve:must've neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't
    ow's'at:'ow's'at 'ows'at:'ow's'at 'ow'sat:'ow's'at shant:shan't shed've:she'd've
    she'dve:she'd've she's:she's shouldve:should've shouldnt:shouldn't
    shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd
    somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll
    somebodys:somebody's someoned:someone'd someoned've:someone'd've
    someone'dve:someone'd've someonell:someone'll someones:someone's
    somethingd:something'd somethingd've:something'd've something'dve:something'd've
    somethingll:something'll thats:that's thered:there'd thered've:there'd've
    there'dve:there'd've therere:there're theres:there's theyd:they'd
    theyd've:they'd've they'dve:they'd've theyll:they'll theyre:they're theyve:they've
    twas:'twas wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've werent:weren't
    whatll:what'll whatre:what're whats:what's whatve:what've whens:when's
    whered:where'd wheres:where's whereve:where've whod:who'd whod've:who'd've
    who'dve:who'd've wholl:who'll whos:who's whove:who've whyll:why'll whyre:why're
    whys:why's wont:won't wouldve:would've wouldnt:wouldn't wouldnt've:wouldn't've
    wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll
    yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd
    youd've:you'd've you'dve:you'd've youll:you'll youre:you're youve:you've
    """.split()
)
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
_VQA_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": a typo for a look-behind that makes the
# first group always true, so a period is removed unless a digit follows it.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# ... and it is applied as `sub("", text, re.UNICODE)`, i.e. with count=32.
_PERIOD_SUB_COUNT = int(re.UNICODE)


def vqa_punctuation(text: str) -> str:
    """The VQA punctuation rule.

    Each listed mark is deleted if it touches a space anywhere in the input (or if the
    input has a digit-comma-digit), else replaced by a space; then periods not followed by
    a digit are deleted (at most 32 of them: the reference passes ``re.UNICODE`` as count).
    """
    strip_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _VQA_PUNCTUATION:
        if strip_all or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_PERIOD_SUB_COUNT)


def vqa_digits_articles(text: str) -> str:
    """Lower-case, map number words to digits, drop articles, canonicalise contractions."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def evalai_normalize(text: str) -> str:
    """lmms-eval's ``EvalAIAnswerProcessor`` (mmf's port of the EvalAI script).

    Lower-case; delete every "," and "?"; split "'s" off as " 's"; whitespace to spaces;
    then :func:`vqa_punctuation` and :func:`vqa_digits_articles`.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return vqa_digits_articles(vqa_punctuation(text))


def vlmevalkit_vqa_normalize(text: str) -> str:
    """VLMEvalKit's ``process_answer``: whitespace, punctuation, digits/articles.

    Unlike :func:`evalai_normalize` it keeps "'s" attached and removes commas only through
    the punctuation rule.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return vqa_digits_articles(vqa_punctuation(text))


# ---------------------------------------------------------------------------------------
# Exact match, Levenshtein
# ---------------------------------------------------------------------------------------

_ASCII_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)


def exact_match_lmms(prediction: str, reference: str) -> bool:
    """lmms-eval's ``exact_match`` with ``ignore_case`` and ``ignore_punctuation``.

    (A port of HF ``evaluate``'s exact_match.) Both strings are lower-cased and stripped of
    ASCII punctuation (``string.punctuation``) but *not* of whitespace: lmms-eval strips the
    prediction before the metric, so only inner/trailing spaces of the reference matter.
    """
    return prediction.lower().translate(_ASCII_PUNCTUATION_TABLE) == reference.lower().translate(
        _ASCII_PUNCTUATION_TABLE
    )


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]
