"""Benchmark scoring as pure functions, following lmms-eval 0.7 (default) or VLMEvalKit.

Every ``score_*`` takes the benchmark's rows (fields named as in the lmms-lab datasets)
each with a ``prediction`` string, and ``rules`` ("lmms-eval" or "vlmevalkit"), and returns
a dict of metrics as fractions in [0, 1] (OCRBench's ``score`` is on its 0-1000 scale) plus
``num_items``. Nothing calls an LLM judge or draws a random answer; where a harness would,
the docstring says what we do instead. See docs/benchmarks.md for the table of rules.

Modules: ``yesno`` (POPE, HallusionBench), ``vqa`` (ChartQA, TextVQA, DocVQA/InfoVQA,
OCRBench, GQA), ``choice`` (MMVP, MMBench, SEED-Bench, AI2D, RealWorldQA), ``mmmu``.
"""

from ._text import RULES, check_rules, evalai_normalize, levenshtein, vlmevalkit_vqa_normalize
from .choice import (
    extract_letter_lmms,
    extract_letter_mmbench_lmms,
    extract_letter_mmvp_lmms,
    extract_letter_vlmevalkit,
    mmvp_cambrian_correct,
    score_ai2d,
    score_mmbench,
    score_mmvp,
    score_realworldqa,
    score_seedbench,
)
from .mmmu import mmmu_correct, parse_multi_choice, parse_open, score_mmmu
from .vqa import (
    anls,
    gqa_correct,
    ocrbench_hit,
    relaxed_correct,
    score_anls,
    score_chartqa,
    score_gqa,
    score_ocrbench,
    score_textvqa,
    vqa_accuracy,
)
from .yesno import hallusion_correct, score_hallusionbench, score_pope, yes_no_lmms, yes_no_vlmevalkit

__all__ = [
    "RULES",
    "anls",
    "check_rules",
    "evalai_normalize",
    "extract_letter_lmms",
    "extract_letter_mmbench_lmms",
    "extract_letter_mmvp_lmms",
    "extract_letter_vlmevalkit",
    "gqa_correct",
    "hallusion_correct",
    "levenshtein",
    "mmmu_correct",
    "mmvp_cambrian_correct",
    "ocrbench_hit",
    "parse_multi_choice",
    "parse_open",
    "relaxed_correct",
    "score_ai2d",
    "score_anls",
    "score_chartqa",
    "score_gqa",
    "score_hallusionbench",
    "score_mmbench",
    "score_mmmu",
    "score_mmvp",
    "score_ocrbench",
    "score_pope",
    "score_realworldqa",
    "score_seedbench",
    "score_textvqa",
    "vlmevalkit_vqa_normalize",
    "vqa_accuracy",
    "yes_no_lmms",
    "yes_no_vlmevalkit",
]
