"""Scoring rules on hand-made predictions, the registry's loaders and prompts, and a
cross-check against lmms-eval's own functions (skipped when lmms-eval is not installed)."""

from __future__ import annotations

import base64
import io

import pytest

from ross.eval import scoring
from ross.eval.benchmarks import BENCHMARKS, mmvp_cambrian_prompt
from ross.eval.scoring import choice, mmmu, vqa, yesno

BOTH = ("lmms-eval", "vlmevalkit")


def _rows(golds, preds, **fields):
    return [{"prediction": p, **{k: v[i] for k, v in fields.items()}, **g} for i, (g, p) in enumerate(zip(golds, preds))]


# --------------------------------------------------------------------------- POPE


def test_pope_lmms_exact_yes_no_and_predicted_yes_ratio():
    golds = [{"answer": a, "category": c} for a, c in
             [("yes", "random"), ("yes", "random"), ("no", "random"), ("no", "popular"), ("yes", "popular"), ("no", "popular")]]
    preds = ["Yes", "Yes.", "no", "yes", " NO ", ""]
    out = scoring.score_pope(_rows(golds, preds), "lmms-eval")
    # correct: "Yes"(yes), "no"(no), ""(no)? -> "" is not "no": wrong. So 2/6.
    assert out["accuracy"] == pytest.approx(2 / 6)
    # TP=1 ("Yes"), FP=1 ("yes" on a no), FN=1 (" NO " on a yes); "Yes." drops out of recall.
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(0.5)
    assert out["f1"] == pytest.approx(0.5)
    assert out["yes_ratio"] == pytest.approx(2 / 6)  # predicted "yes" share
    assert out["gt_yes_ratio"] == pytest.approx(0.5)  # lmms-eval's pope_yes_ratio
    assert set(out["categories"]) == {"popular", "random"}
    assert out["categories"]["random"]["accuracy"] == pytest.approx(2 / 3)
    assert out["category_mean"]["accuracy"] == pytest.approx((2 / 3 + 0) / 2)


def test_pope_vlmevalkit_word_extraction():
    assert yesno.yes_no_vlmevalkit("Yes.") == "yes"
    assert yesno.yes_no_vlmevalkit("No, there is no dog.") == "no"
    assert yesno.yes_no_vlmevalkit("Yes and no") == "unknown"
    assert yesno.yes_no_vlmevalkit("yesterday") == "unknown"
    assert yesno.yes_no_vlmevalkit("") == "unknown"
    golds = [{"answer": "yes"}, {"answer": "yes"}, {"answer": "no"}]
    out = scoring.score_pope(_rows(golds, ["Yes, there is.", "Maybe", "No."]), "vlmevalkit")
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(0.5)  # "unknown" on a yes item is a false negative
    assert out["precision"] == 1.0
    assert "categories" not in out


def test_pope_rejects_bad_gold_and_rules():
    with pytest.raises(ValueError, match="not yes/no"):
        scoring.score_pope([{"answer": "maybe", "prediction": "yes"}])
    with pytest.raises(ValueError, match="unknown rules"):
        scoring.score_pope([], "lmms")


# --------------------------------------------------------------------------- HallusionBench


def _hb(cat, sub, s, fig, q, gt, pred):
    return {"category": cat, "subcategory": sub, "set_id": s, "figure_id": fig, "question_id": q,
            "question": "?", "gt_answer": gt, "prediction": pred}


def test_hallusionbench_groups():
    rows = [
        _hb("VD", "chart", 0, 0, 0, "1", "Yes."),
        _hb("VD", "chart", 0, 0, 1, "0", "No"),
        _hb("VD", "chart", 0, 1, 0, "0", "No, it is not."),
        _hb("VD", "chart", 0, 1, 1, "1", "yesterday"),  # lmms rule: contains "yes" -> yes
        _hb("VS", "map", 2, 0, 0, "0", "Yes and no"),
    ]
    lmms = scoring.score_hallusionbench(rows, "lmms-eval")
    assert lmms["aAcc"] == pytest.approx(4 / 5)
    assert lmms["fAcc"] == pytest.approx(2 / 3)  # figures: VD/0 ok, VD/1 ok, VS/0 wrong
    assert lmms["qAcc"] == pytest.approx(2 / 3)  # questions: VD q0 ok, VD q1 ok, VS q0 wrong
    v = scoring.score_hallusionbench(rows, "vlmevalkit")
    assert v["aAcc"] == pytest.approx(3 / 5)  # "yesterday" and "Yes and no" are unknown
    assert v["fAcc"] == pytest.approx(1 / 3)
    assert v["qAcc"] == pytest.approx(1 / 3)
    assert scoring.hallusion_correct("YES", "Yes", "vlmevalkit")


# --------------------------------------------------------------------------- MMVP


def _mmvp(index, answer, pred):
    return {"Index": index, "Question": "Is the door open or closed?", "Options": "(a) Open (b) Closed",
            "Correct Answer": answer, "prediction": pred}


@pytest.mark.parametrize(
    "pred, letter",
    [("A", "A"), ("(b)", "B"), ("b.", "B"), ("The answer is A", "A"), ("Option (b)", "B"),
     ("a lab coat", "A"), ("The crab", "B"), ("Bananas", "B"), ("", ""), ("Closed", ""), ("çà", "")],
)
def test_mmvp_lmms_letter_extraction(pred, letter):
    assert choice.extract_letter_mmvp_lmms(pred) == letter


def test_mmvp_accuracy_and_pairs():
    rows = [_mmvp(1, "(a)", "A"), _mmvp(2, "(b)", "(b)"), _mmvp(3, "(a)", "B"), _mmvp(4, "(b)", "B"), _mmvp(5, "(a)", "A")]
    out = scoring.score_mmvp(rows, "lmms-eval")
    assert out["accuracy"] == pytest.approx(4 / 5)
    assert out["num_pairs"] == 2  # Index 5 has no partner and is left out of pairs
    assert out["pair_accuracy"] == pytest.approx(1 / 2)
    v = scoring.score_mmvp([_mmvp(1, "(a)", "Open"), _mmvp(2, "(b)", "(B)")], "vlmevalkit")  # "(b)": no
    assert v["accuracy"] == 1.0 and v["pair_accuracy"] == 1.0


def test_mmvp_cambrian_matching_and_prompt():
    assert choice.mmvp_cambrian_correct("The answer is (b).", "B", "Closed")
    assert choice.mmvp_cambrian_correct("closed", "B", "Closed")
    assert not choice.mmvp_cambrian_correct("B. Closed", "B", "Closed")  # neither letter nor text alone
    out = scoring.score_mmvp([_mmvp(1, "(a)", "Answer: open"), _mmvp(2, "(b)", "A")], cambrian=True)
    assert out["accuracy"] == 0.5 and out["pair_accuracy"] == 0.0
    assert mmvp_cambrian_prompt(_mmvp(1, "(a)", "")) == (
        "Is the door open or closed? Options:\nA. Open\nB. Closed\n"
        "Answer with the option's letter from the given choices directly."
    )


# --------------------------------------------------------------------------- ChartQA


@pytest.mark.parametrize(
    "pred, target, ok",
    [("12", "12", True), ("12.7", "12", False), ("12.4", "12", True), ("45%", "0.45", True), ("45%", "45", False),
     ("1,000", "1000", False), ("1000", "1000", True), ("Yes", "yes", True), ("0.0", "0", False), ("", "0", False),
     ("Ünïcode", "ünïcode", True)],
)
def test_relaxed_correct(pred, target, ok):
    assert vqa.relaxed_correct(pred, target) is ok


def test_chartqa_split_and_strip():
    rows = [{"question": "?", "answer": "5", "type": "human_test", "prediction": " 5.1 \n"},
            {"question": "?", "answer": "Paris", "type": "augmented_test", "prediction": "paris."}]
    for rules in BOTH:
        out = scoring.score_chartqa(rows, rules)
        assert out["relaxed_accuracy"] == 0.5
        assert out["types"] == {"augmented_test": 0.0, "human_test": 1.0}
    assert scoring.score_chartqa([{"answer": "['7', '8']", "prediction": "8"}], "vlmevalkit")["relaxed_accuracy"] == 1.0


# --------------------------------------------------------------------------- MMBench


@pytest.mark.parametrize(
    "pred, letter",
    [("A", "A"), ("B.", "B"), ("(C)", "C"), ("The answer is A", "A"), ("The answer is B", "B"),
     ("a dog", "B"), ("Cat", "A"), ("", ""), ("I cannot tell", "")],
)
def test_mmbench_lmms_extraction(pred, letter):
    options = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
    assert choice.extract_letter_mmbench_lmms(pred, options) == letter


@pytest.mark.parametrize(
    "pred, letter",
    [("A", "A"), ("(b)", ""), ("(B)", "B"), ("The answer is A", "A"), ("A is the one that we can see", ""),
     ("dog", "B"), ("Cannot determine the answer", "Z"), ("Z", "Z"), ("", "")],
)
def test_vlmevalkit_extraction(pred, letter):
    assert choice.extract_letter_vlmevalkit(pred, {"A": "cat", "B": "dog"}) == letter


def test_mmbench_circular():
    def row(index, answer, pred, cat="ocr"):
        return {"index": index, "question": "?", "hint": None, "A": "cat", "B": "dog", "C": "bird", "D": "nan",
                "answer": answer, "category": cat, "prediction": pred}

    rows = [row(0, "A", "A"), row(1_000_000, "B", "B."), row(2_000_000, "C", "bird"),
            row(1, "B", "B"), row(1_000_001, "C", "C", "count"), row(2_000_001, "A", "The answer is B"),
            row(2_000_002, "A", "A")]  # a rotation whose base question is absent: ignored
    for rules in BOTH:
        out = scoring.score_mmbench(rows, rules)
        assert out["num_questions"] == 2
        assert out["circular_accuracy"] == 0.5
        assert out["vanilla_accuracy"] == 1.0
        assert out["categories"] == {"ocr": 0.5}


# --------------------------------------------------------------------------- SEED, AI2D, RealWorldQA


def _seed(answer, pred, data_type="image"):
    return {"question_id": "1", "question": "?", "choice_a": "cat", "choice_b": "dog", "choice_c": "cow",
            "choice_d": "pig", "answer": answer, "data_type": data_type, "prediction": pred}


def test_seedbench_first_character_rule():
    rows = [_seed("B", "B. dog"), _seed("B", "b"), _seed("B", "(B)"), _seed("B", "The answer is B"), _seed("A", ""),
            _seed("A", "A", "video")]
    out = scoring.score_seedbench(rows, "lmms-eval")
    assert out["num_image_items"] == 5 and out["accuracy"] == pytest.approx(2 / 5)
    v = scoring.score_seedbench(rows, "vlmevalkit")
    assert v["accuracy"] == pytest.approx(3 / 5)  # "B. dog", "(B)", "The answer is B"


def test_ai2d_filter_and_exact_match():
    def row(pred):
        return {"question": "?", "options": ["sun", "moon", "earth"], "answer": "1", "prediction": pred}

    preds = ["B", "b.", "(b)", "B. moon", "The answer is B", "B moon", "moon", ""]
    lmms = [scoring.score_ai2d([row(p)], "lmms-eval")["exact_match"] for p in preds]
    assert lmms == [1, 1, 1, 1, 0, 0, 0, 0]
    v = [scoring.score_ai2d([row(p)], "vlmevalkit")["exact_match"] for p in preds]
    assert v == [1, 0, 0, 1, 1, 1, 1, 0]


def test_realworldqa_letters_and_open_answers():
    q = "Which way?\nA. left\nB. right\nPlease answer directly with only the letter of the correct option and nothing else."
    rows = [{"question": q, "answer": "B", "prediction": "The answer is B."},
            {"question": q, "answer": "A", "prediction": "(A)"},
            {"question": "How many?", "answer": "3", "prediction": "3."},
            {"question": "Where?", "answer": "Downhill", "prediction": "downhill"}]
    assert scoring.score_realworldqa(rows, "lmms-eval")["exact_match"] == 1.0
    assert scoring.score_realworldqa(rows, "vlmevalkit")["exact_match"] == 0.75  # "3." != "3"


# --------------------------------------------------------------------------- MMMU


def test_mmmu_multiple_choice_parser_is_deterministic():
    opts = ["red apple", "green pear", "blue berry", "yellow banana"]
    assert mmmu.parse_multi_choice("(B)", opts) == "B"
    assert mmmu.parse_multi_choice("The answer is C.", opts) == "C"
    assert mmmu.parse_multi_choice("B.", opts) == "B"
    assert mmmu.parse_multi_choice("I think (A) no wait (D)", opts) == "D"
    assert mmmu.parse_multi_choice("it looks like a yellow banana to me", opts) == "D"
    assert mmmu.parse_multi_choice("", opts) == ""  # official: random letter
    assert mmmu.parse_multi_choice("no idea", opts) == ""


def test_mmmu_open_questions():
    assert 1000.0 in mmmu.parse_open("The answer is 1,000.")
    assert mmmu.open_correct("1000", mmmu.parse_open("The total is 1,000 dollars"))
    assert mmmu.open_correct("3.14", mmmu.parse_open("x = 3.14159"))  # numbers rounded to 2 places
    assert not mmmu.open_correct("a", mmmu.parse_open("banana"))  # single letters need spaces around
    assert mmmu.open_correct("Paris", mmmu.parse_open("It is paris"))


def test_mmmu_score_both_rules():
    rows = [
        {"id": "validation_Art_1", "question": "?", "options": "['x', 'y']", "question_type": "multiple-choice",
         "answer": "B", "prediction": "B"},
        {"id": "validation_Math_2", "question": "?", "options": "[]", "question_type": "open", "answer": "42",
         "prediction": "42"},
        {"id": "validation_Math_3", "question": "?", "options": "[]", "question_type": "open", "answer": "7",
         "prediction": "The value is 8"},
    ]
    out = scoring.score_mmmu(rows, "lmms-eval")
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["subjects"] == {"Art": 1.0, "Math": 0.5}
    v = scoring.score_mmmu(rows, "vlmevalkit")
    assert v["accuracy"] == pytest.approx(2 / 3)  # open "42" matches option A = gold text


# --------------------------------------------------------------------------- GQA, OCRBench, TextVQA, ANLS


def test_gqa_rules_differ_on_punctuation():
    rows = [{"question": "?", "answer": "yes", "prediction": "Yes."}, {"question": "?", "answer": "left", "prediction": " Left "}]
    assert scoring.score_gqa(rows, "lmms-eval")["exact_match"] == 1.0
    assert scoring.score_gqa(rows, "vlmevalkit")["exact_match"] == 0.5


def test_ocrbench_substring_and_hme():
    rows = [
        {"question": "?", "answer": ["Hello"], "dataset": "IIIT5K", "question_type": "Regular Text Recognition",
         "prediction": "The word is HELLO."},
        {"question": "?", "answer": ["x^{2}+1"], "dataset": "HME100k",
         "question_type": "Handwritten Mathematical Expression Recognition", "prediction": "x ^ { 2 } + 1"},
        {"question": "?", "answer": ["ABC"], "dataset": "IIIT5K", "question_type": "Regular Text Recognition",
         "prediction": "ＡＢＣ"},  # full-width: folded by lmms-eval only
        {"question": "?", "answer": ["café"], "dataset": "X", "question_type": "Scene Text-centric VQA", "prediction": ""},
    ]
    out = scoring.score_ocrbench(rows, "lmms-eval")
    assert out["score"] == pytest.approx(750.0) and out["accuracy"] == 0.75
    assert out["hits_per_type"]["Regular Text Recognition"] == 2
    assert scoring.score_ocrbench(rows, "vlmevalkit")["score"] == pytest.approx(500.0)


def test_vqa_accuracy_normalisation():
    answers = ["2"] * 4 + ["two dogs"] * 6
    assert vqa.vqa_accuracy("Two.", answers) == 1.0
    assert vqa.vqa_accuracy("2", ["2"] * 3 + ["x"] * 7) == pytest.approx(0.9)  # 3 of 10: 0.9, not 1
    assert vqa.vqa_accuracy("two", ["2", "2"] + ["x"] * 8) == pytest.approx(0.6)
    assert scoring.evalai_normalize("The dog's 1,000 bones!") == "dog 's 1000 bones"
    assert scoring.evalai_normalize("isnt it") == "isn't it"
    assert scoring.evalai_normalize("3.5 m.") == "3.5 m"
    assert scoring.vlmevalkit_vqa_normalize("1,000") == "1000"
    assert vqa.vqa_accuracy("", ["yes"] * 10) == 0.0
    out = scoring.score_textvqa([{"question_id": 1, "question": "?", "answers": ["nike"] * 10, "prediction": "Nike"}])
    assert out["vqa_accuracy"] == 1.0


def test_anls_threshold_and_length_quirk():
    assert vqa.anls("hello", ["hello"]) == 1.0
    assert vqa.anls("hellp", ["hello"]) == pytest.approx(0.8)
    assert vqa.anls("abc", ["xyz"]) == 0.0  # below 0.5
    assert vqa.anls("  Hello   World ", ["hello world"]) == 1.0
    # lmms-eval's denominator uses the raw strings upper-cased: "ßß" -> "SSSS" (4 chars).
    assert vqa.anls("ss", ["ßß"], "lmms-eval") == pytest.approx(0.5)
    assert vqa.anls("ss", ["ßß"], "vlmevalkit") == 0.0
    assert vqa.anls("a  b", ["a c"], "lmms-eval") == pytest.approx(1 - 1 / 4)  # inner double space counts
    assert vqa.anls("a  b", ["a c"], "vlmevalkit") == pytest.approx(1 - 1 / 3)
    assert vqa.anls("x", []) == 0.0
    out = scoring.score_anls([{"questionId": 1, "question": "?", "answers": ["5", "five"], "prediction": "Five"}])
    assert out["anls"] == 1.0


# --------------------------------------------------------------------------- registry: prompts, loaders


def test_registry_names_and_fields():
    assert list(BENCHMARKS) == ["pope", "hallusionbench", "mmvp", "chartqa", "mmbench", "seedbench", "mmmu", "gqa",
                                "ai2d", "ocrbench", "textvqa", "docvqa", "infovqa", "realworldqa"]
    for bench in BENCHMARKS.values():
        assert bench.max_new_tokens > 0 and bench.split and bench.dataset
        assert "question" in bench.fields or "Question" in bench.fields


PROMPT_CASES = {
    "pope": ({"question": " Is there a dog? "}, "Is there a dog?\nAnswer the question using a single word or phrase.",
             " Is there a dog? "),
    "chartqa": ({"question": "Max?"}, "Max?\nAnswer the question with a single word.",
                "Max?\nAnswer the question using a single word or phrase."),
    "textvqa": ({"question": "what does NASA say?"}, "What does nasa say?\nAnswer the question using a single word or phrase.",
                "what does NASA say?\nAnswer the question using a single word or phrase."),
    "ai2d": ({"question": "Q?", "options": ["x", "y"]}, "Q?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly.",
             "Question: Q?\nOptions:\nA. x\nB. y\nPlease select the correct answer from the options above. \n"),
    "mmvp": ({"Question": "Open?", "Options": "(a) Open (b) Closed"},
             "Open?\nA. Open\nB. Closed\nAnswer with the option's letter from the given choices directly.",
             "Question: Open?\nOptions:\nA. Open\nB. Closed\nPlease select the correct answer from the options above. \n"),
    "mmbench": ({"question": "Q?", "hint": "H", "A": "x", "B": "y", "C": "nan", "D": None},
                "H Q? There are several options:\nA. x\nB. y\n\nAnswer with the option's letter from the given choices directly.",
                "Hint: H\nQuestion: Q?\nOptions:\nA. x\nB. y\nPlease select the correct answer from the options above. \n"),
    "mmmu": ({"question": "Q <image 1>", "options": "[]", "question_type": "open"},
             "Q <image 1>\n\nAnswer the question using a single word or phrase.", "Question: Q <image 1>\n"),
    "ocrbench": ({"question": " Read it. "}, "Read it.", "Read it."),
    "hallusionbench": ({"question": "Is it?"}, "Is it?", "Is it?"),
}


@pytest.mark.parametrize("name", sorted(PROMPT_CASES))
def test_prompts(name):
    row, lmms, vlm = PROMPT_CASES[name]
    assert BENCHMARKS[name].prompt(row, "lmms-eval") == lmms
    assert BENCHMARKS[name].prompt(row, "vlmevalkit") == vlm


def test_seed_prompt_lists_choices():
    text = BENCHMARKS["seedbench"].prompt(_seed("A", ""))
    assert text == "?\nA. cat\nB. dog\nC. cow\nD. pig\nAnswer with the option's letter from the given choices directly."


def _png_bytes(color="red"):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buf, format="PNG")
    return buf.getvalue()


def test_load_parquet_folder_by_config_and_split(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    def write(path, n, answer):
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table({
            "index": list(range(n)), "question": ["Q"] * n, "hint": [None] * n, "A": ["x"] * n, "B": ["y"] * n,
            "answer": [answer] * n, "category": ["c"] * n,
            "image": [{"bytes": _png_bytes(), "path": None}] * n,
        })
        pq.write_table(table, path)

    write(tmp_path / "en" / "dev-00000-of-00001.parquet", 2, "A")
    write(tmp_path / "en" / "test-00000-of-00001.parquet", 3, "B")
    write(tmp_path / "cn" / "dev-00000-of-00001.parquet", 5, "B")
    rows = BENCHMARKS["mmbench"].load(tmp_path)
    assert len(rows) == 2 and rows[0]["answer"] == "A"
    assert rows[0]["images"][0].size == (4, 3) and "image" not in rows[0]


def test_load_save_to_disk_and_missing_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    img = Image.new("RGB", (5, 5), "blue")
    ds = datasets.Dataset.from_dict(
        {"question_id": ["1"], "question": ["Is it blue?"], "answer": ["yes"], "category": ["random"], "image": [img]},
        features=datasets.Features({"question_id": datasets.Value("string"), "question": datasets.Value("string"),
                                    "answer": datasets.Value("string"), "category": datasets.Value("string"),
                                    "image": datasets.Image()}),
    )
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "pope"))
    rows = BENCHMARKS["pope"].load(tmp_path / "pope")
    assert rows[0]["question"] == "Is it blue?" and rows[0]["images"][0].size == (5, 5)
    ds.remove_columns("answer").save_to_disk(str(tmp_path / "broken"))
    with pytest.raises(ValueError, match=r"broken.*missing column 'answer'"):
        BENCHMARKS["pope"].load(tmp_path / "broken")


def test_load_vlmevalkit_tsv(tmp_path):
    b64 = base64.b64encode(_png_bytes()).decode()
    lines = ["index\timage\tquestion\tA\tB\tanswer", f"0\t{b64}\tOpen?\tOpen\tClosed\tA", f"1\t{b64}\tOpen?\tOpen\tClosed\tB"]
    (tmp_path / "MMVP.tsv").write_text("\n".join(lines) + "\n")
    rows = BENCHMARKS["mmvp"].load(tmp_path / "MMVP.tsv")
    assert [r["Correct Answer"] for r in rows] == ["(a)", "(b)"]
    assert rows[1]["Index"] == 2 and rows[0]["Options"] == "(a) Open (b) Closed"
    assert rows[0]["images"][0].size == (4, 3)
    (tmp_path / "bad.tsv").write_text("index\tquestion\n0\tQ\n")
    with pytest.raises(ValueError, match=r"bad.tsv: missing column 'image'"):
        BENCHMARKS["mmvp"].load(tmp_path / "bad.tsv")
    (tmp_path / "bad2.tsv").write_text(f"index\timage\tquestion\n0\t{b64}\tQ\n")
    with pytest.raises(ValueError, match=r"bad2.tsv: missing column 'A'"):
        BENCHMARKS["mmvp"].load(tmp_path / "bad2.tsv")


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        BENCHMARKS["pope"].load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .parquet files"):
        BENCHMARKS["pope"].load(tmp_path / "empty")


# --------------------------------------------------------------------------- cross-check with lmms-eval

PREDICTIONS = ["A", "B", "(b)", "b.", "B. dog", "The answer is A", "The answer is B.", "Answer: C", "a dog", "Yes",
               "Yes.", "yes", "no", "No, it is not.", "", "  ", "dog", "cat", "I think (A) no wait (D)", "C)", "D",
               "1,000", "1000", "45%", "0.45", "12.4", "Ünïcode", "Straße", "x ^ 2", "the dog's bone", "Two", "2",
               "isnt", "hello world", "helo world", "E", "answer is A", "The correct option is B because", "Bananas",
               "The crab", "lab", "A is the one", "It is (C).", "Z"]


def test_cross_check_with_lmms_eval():
    pytest.importorskip("lmms_eval")
    pope = pytest.importorskip("lmms_eval.tasks.pope.utils")
    mmvp_utils = pytest.importorskip("lmms_eval.tasks.mmvp.utils")
    chartqa = pytest.importorskip("lmms_eval.tasks.chartqa.utils")
    mcq = pytest.importorskip("lmms_eval.tasks._task_utils.mcq_extract")
    vqa_metric = pytest.importorskip("lmms_eval.tasks._task_utils.vqa_eval_metric")
    metrics = pytest.importorskip("lmms_eval.api.metrics")
    mmmu_utils = pytest.importorskip("lmms_eval.tasks.mmmu.utils")
    mmbench_evals = pytest.importorskip("lmms_eval.tasks.mmbench.mmbench_evals")
    seed = pytest.importorskip("lmms_eval.tasks.seedbench.utils")
    hb = pytest.importorskip("lmms_eval.tasks.hallusion_bench.evaluate_hb")
    ocr = pytest.importorskip("lmms_eval.tasks.ocrbench.utils")

    processor = vqa_metric.EvalAIAnswerProcessor()
    evaluator = mmbench_evals.MMBench_Evaluator()
    options = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
    mmmu_opts = ["cat", "dog", "bird", "fish"]
    index2ans, all_choices = mmmu_utils.get_multi_choice_info(mmmu_opts)
    answers10 = ["2", "two", "1000", "yes", "hello world", "dog 's bone", "a dog", "yes", "2", "isn't"]

    docs = [{"question_id": i, "answer": "yes" if i % 2 else "no"} for i in range(len(PREDICTIONS))]
    lmms_results = [pope.pope_process_results(d, [p.strip()])["pope_f1_score"] for d, p in zip(docs, PREDICTIONS)]
    ours = scoring.score_pope([{**d, "prediction": p} for d, p in zip(docs, PREDICTIONS)])
    assert ours["accuracy"] == pytest.approx(pope.pope_aggregate_accuracy(lmms_results))
    assert ours["precision"] == pytest.approx(pope.pope_aggregate_precision(lmms_results))
    assert ours["recall"] == pytest.approx(pope.pope_aggregate_recall(lmms_results))
    assert ours["f1"] == pytest.approx(pope.pope_aggregate_f1_score(lmms_results))
    assert ours["gt_yes_ratio"] == pytest.approx(pope.pope_aggregate_yes_ratio(lmms_results))

    for raw in PREDICTIONS:
        p = raw.strip()  # lmms-eval strips every generation before process_results
        assert choice.extract_letter_mmvp_lmms(p) == mmvp_utils._extract_answer_letter(p), p
        assert choice.extract_letter_lmms(p, "ABCD") == mcq.extract_mcq_answer(p, ["A", "B", "C", "D"]), p
        for target in ("1000", "0.45", "45", "12", "0", "dog", "Ünïcode"):
            assert vqa.relaxed_correct(p, target) == chartqa.relaxed_correctness(p, target), (p, target)
        assert scoring.evalai_normalize(p) == processor(p), p
        lmms_anls = metrics.anls(["hello world", "Straße"], [p])["anls"]
        assert vqa.anls(p, ["hello world", "Straße"]) == pytest.approx(lmms_anls), p
        lmms_em = metrics.exact_match_hf_evaluate([p], ["yes"], ignore_case=True, ignore_punctuation=True)["exact_match"]
        assert scoring.gqa_correct(p, "yes") == bool(lmms_em), p
        parsed = mmmu_utils.parse_open_response(p)
        assert sorted(map(str, mmmu.parse_open(p))) == sorted(map(str, parsed)), p
        for gold in ("1000", "dog", "2"):
            assert mmmu.open_correct(gold, mmmu.parse_open(p)) == mmmu_utils.eval_open(gold, parsed), (p, gold)
        ours_mc = mmmu.parse_multi_choice(p, mmmu_opts)
        if ours_mc:  # lmms-eval draws a random letter where we return ""
            assert ours_mc == mmmu_utils.parse_multi_choice_response(p, all_choices, index2ans), p
        lmms_letter = evaluator.can_infer(p, dict(options)) or mcq.extract_mcq_answer(p, sorted(options))
        assert choice.extract_letter_mmbench_lmms(p, options) == lmms_letter, p
        for gold in ("A", "B"):
            lmms_seed = seed.seed_process_result({"answer": gold, "data_type": "image", "question_id": 0}, [p])
            expect = seed.seed_aggregation_result([lmms_seed["seed_image"]])
            assert scoring.score_seedbench([{**_seed(gold, p)}])["accuracy"] == expect, (p, gold)
        assert vqa.vqa_accuracy(p, answers10) == pytest.approx(
            _lmms_textvqa(processor, p, answers10)), p
        doc = {"answer": ["Hello", "1000"], "dataset": "IIIT5K", "question_type": "Regular Text Recognition"}
        lmms_ocr = ocr.ocrbench_process_results(doc, [p])["ocrbench_accuracy"]["score"]
        assert vqa.ocrbench_hit(p, ["Hello", "1000"], False) == bool(lmms_ocr), p

    # HallusionBench's rule-based ("intern") aggregation.
    hb_rows = [_hb("VD", "chart", i // 4, (i // 2) % 2, i % 2, str(i % 2), p) for i, p in enumerate(PREDICTIONS)]
    lmms_rows = [{**r, "model_prediction": r["prediction"].strip()} for r in hb_rows]
    ours_hb = scoring.score_hallusionbench(hb_rows)
    for metric in ("aAcc", "fAcc", "qAcc"):
        assert ours_hb[metric] == pytest.approx(hb.hb_aggregation_result_intern([dict(r) for r in lmms_rows], metric))

    # MMBench circular evaluation (mmbench_en_dev_static): 8 questions x 3 rotations, 8 mixes.
    for shift in range(8):
        rows = []
        for q in range(8):
            for r in range(3):
                pred = PREDICTIONS[(q * 3 + r * 5 + shift) % len(PREDICTIONS)] if (q + r + shift) % 3 == 0 else "ABC"[r]
                rows.append({"index": q + r * 1_000_000, "question": "?", "hint": "nan", **options, "answer": "ABC"[r],
                             "category": "c", "l2-category": "l", "split": "dev", "source": "s",
                             "prediction": pred.strip()})
        lmms_overall, _, _ = evaluator.eval_result([dict(r) for r in rows], eval_method="static")
        assert scoring.score_mmbench(rows)["circular_accuracy"] == pytest.approx(lmms_overall), shift

    # RealWorldQA (letter and open answers).
    rwq = pytest.importorskip("lmms_eval.tasks.realworldqa.utils")
    for raw in PREDICTIONS:
        for gold in ("A", "C", "3", "Downhill"):
            expect = rwq.realworldqa_process_results({"answer": gold}, [raw.strip()])["exact_match"]
            got = scoring.score_realworldqa([{"question": "?", "answer": gold, "prediction": raw}])["exact_match"]
            assert got == expect, (raw, gold)

    # The EvalAI contraction table is the same.
    assert scoring._text._CONTRACTIONS == processor.CONTRACTIONS


def _lmms_textvqa(processor, prediction, answers):
    from lmms_eval.tasks.textvqa.utils import textvqa_process_results

    return textvqa_process_results({"question_id": 0, "answers": list(answers)}, [prediction.strip()])["exact_match"]
