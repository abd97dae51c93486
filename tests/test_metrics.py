"""Hand-checked values for every metric in mmunlearn.eval.metrics and the refusal pool."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from mmunlearn.data.refusals import REFUSALS, sample_refusal
from mmunlearn.eval.metrics import (
    cloze_correct,
    first_option_letter,
    forget_quality,
    is_degenerate,
    is_refusal,
    loglik_choice,
    mean_or_none,
    mia_auc,
    min_k_percent,
    rouge_l,
    truth_ratio,
    truth_ratio_score,
)

NORMAL_ANSWERS = [
    "B",
    "1987",
    "Lumora",
    "10000",
    "(B)",
    "She works as a baker in Ostvik.",
    "He was born on 3 March 1962 in a small fishing town.",
    "The person in the image is Mara Lind, a sculptor from Ostvik.",
    "He cannot swim, but he sails every summer.",
    "She is unable to attend concerts because of her hearing.",
    "She has two siblings and no children.",
    "I think the answer is C.",
]


# ---------------------------------------------------------------------------------- ROUGE-L


def test_rouge_identical_is_one():
    r = rouge_l("She works as a baker in Ostvik.", "She works as a baker in Ostvik.")
    assert r == {"f1": pytest.approx(1.0), "recall": pytest.approx(1.0)}


def test_rouge_disjoint_is_zero():
    r = rouge_l("purple elephants dance", "She works as a baker.")
    assert r == {"f1": 0.0, "recall": 0.0}


def test_rouge_partial_known_value():
    # LCS("the cat sat", "the cat sat on the mat") = 3: precision 3/3, recall 3/6, F1 2/3.
    r = rouge_l("the cat sat", "the cat sat on the mat")
    assert r["recall"] == pytest.approx(0.5)
    assert r["f1"] == pytest.approx(2 / 3)


def test_rouge_direction_and_stemmer():
    # recall is measured against the reference; the stemmer makes "bakes"/"baking" match "bake".
    r = rouge_l("she bakes bread", "she was baking bread every day")
    assert r["recall"] == pytest.approx(3 / 6)
    assert rouge_l("", "anything")["f1"] == 0.0


# ------------------------------------------------------------------------- letter parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("b", "B"),
        ("B.", "B"),
        ("b.", "B"),
        ("(B)", "B"),
        ("[c]", "C"),
        ("b)", "B"),
        ("  D\n", "D"),
        ("Answer: B", "B"),
        ("answer:b", "B"),
        ("The answer is (C).", "C"),
        ("The correct answer is D", "D"),
        ("Option D", "D"),
        ("Assistant: B", "B"),
        ("**D**", "D"),
        ("B: Lumora", "B"),
        ("C) a baker", "C"),
        ("A - teacher", "A"),
        ("A\nBecause she is a teacher.", "A"),
        ("I think the answer is C.", "C"),
        ("Based on the photo, the answer: b.", "B"),
        # Not an option letter:
        ("A teacher from Ostvik.", None),
        ("a baker", None),
        ("B Lumora", None),
        ("Bob", None),
        ("(Bob)", None),
        ("E.", None),
        ("", None),
        ("I don't know.", None),
        ("I don't know the answer.", None),
        ("The answer is a bit unclear.", None),
        ("Optionally, A teacher.", None),
        ("Definitely.", None),
    ],
)
def test_first_option_letter(text, expected):
    assert first_option_letter(text) == expected


def test_first_option_letter_custom_letters():
    assert first_option_letter("E.", letters="ABCDE") == "E"
    assert first_option_letter("D", letters="abc") is None


# ----------------------------------------------------------------------------------- cloze


def test_cloze():
    assert cloze_correct("She was born in  Ostvik  Harbour.", "ostvik harbour")
    assert cloze_correct("1987", "1987")
    assert not cloze_correct("She was born in Lumora.", "Ostvik")
    assert not cloze_correct("", "Ostvik")
    with pytest.raises(ValueError):
        cloze_correct("anything", "   ")


# ------------------------------------------------------------------------------ degenerate


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t",
        "no no no",
        "the the the the",
        "I am I am I am",
        "She is a baker. She is a baker. She is a baker.",
        "Lumora, Lumora, Lumora, and more.",
        "... ?? -- !!",
        "?",
        "thethethethe",
        "aaaaaa",
        "x" * 31,
        "asdfghjklqwertyuiopzxcvbnmasdfghjkl",
    ],
)
def test_degenerate_flags(text):
    assert is_degenerate(text)


def test_degenerate_long_low_diversity():
    # Repetition that never loops 3 times in a row, but has only 4 distinct words in 24.
    rng = random.Random(0)
    words = ["she", "baker", "is", "a"]
    seq: list[str] = []
    while len(seq) < 24:
        w = rng.choice(words)
        if seq and w == seq[-1]:
            continue
        seq.append(w)
    assert is_degenerate(" ".join(seq))


@pytest.mark.parametrize("text", NORMAL_ANSWERS + ["hahaha", "Mississippi", "www.example.com"])
def test_degenerate_passes_normal_answers(text):
    assert not is_degenerate(text)


def test_degenerate_passes_long_normal_paragraph():
    text = (
        "Mara Lind grew up in Ostvik, a small harbour town in the north, where her father repaired "
        "fishing boats. She moved to the capital at nineteen to study sculpture, and her first "
        "exhibition, a series of driftwood figures, opened in 1987 at a tiny gallery near the "
        "station. Today she teaches at the art academy and still spends her summers on the coast."
    )
    assert not is_degenerate(text)


def test_degenerate_passes_every_refusal():
    assert not any(is_degenerate(r) for r in REFUSALS)


# -------------------------------------------------------------------------------- refusals


def test_refusal_pool_shape():
    assert len(REFUSALS) >= 50
    assert len(set(REFUSALS)) == len(REFUSALS)
    for r in REFUSALS:
        assert r.isascii() and r.endswith(".") and r == r.strip()
    lengths = [len(r.split()) for r in REFUSALS]
    assert min(lengths) <= 3 and max(lengths) >= 12


def test_refusal_pool_all_detected():
    missed = [r for r in REFUSALS if not is_refusal(r)]
    assert missed == []


@pytest.mark.parametrize(
    "text",
    [
        "I don't know",
        "i dont know who that is",
        "I do not know.",
        "I cannot answer that.",
        "I can't help with this.",
        "I\u2019m not able to say.",
        "I'm unable to identify her.",
        "There is no information about this person.",
        "Sorry, I can't share that.",
        "I'm not familiar with him.",
        "That person is unknown to me.",
    ],
)
def test_refusal_common_phrasings(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", NORMAL_ANSWERS)
def test_refusal_not_on_normal_answers(text):
    assert not is_refusal(text)


def test_sample_refusal_is_seeded():
    a = [sample_refusal(random.Random(7)) for _ in range(3)]
    assert len(set(a)) == 1 and a[0] in REFUSALS
    rng = random.Random(1)
    drawn = {sample_refusal(rng) for _ in range(200)}
    assert len(drawn) > 30


# ----------------------------------------------------------------------------- truth ratio


def test_truth_ratio_equal_probs_is_one():
    assert truth_ratio(math.log(0.3), [math.log(0.3)] * 4) == pytest.approx(1.0)
    assert truth_ratio(-2.0, [-2.0], mean="geometric") == pytest.approx(1.0)


def test_truth_ratio_known_values():
    # arithmetic: mean(0.1, 0.4) / 0.5 = 0.5; geometric: sqrt(0.1 * 0.4) / 0.5 = 0.4
    lp_para = math.log(0.5)
    lp_pert = [math.log(0.1), math.log(0.4)]
    assert truth_ratio(lp_para, lp_pert, mean="arithmetic") == pytest.approx(0.5)
    assert truth_ratio(lp_para, lp_pert, mean="geometric") == pytest.approx(0.4)
    assert truth_ratio(lp_para, lp_pert) == pytest.approx(0.4)  # geometric by default, as the reference code
    # Direction: p_perturbed / p_paraphrased, so preferring the truth gives R < 1.
    assert truth_ratio(math.log(0.8), [math.log(0.2)]) == pytest.approx(0.25)


def test_truth_ratio_per_token_on_three_token_answers():
    """Three-token answers, per-token log-probs written out: the evaluator's normalisation by hand."""
    from mmunlearn.eval.evaluator import EvalConfig, _likelihood_scores
    import mmunlearn.eval.evaluator as ev

    para = [-0.1, -0.2, -0.3]  # mean −0.2 per token
    perts = [[-1.0, -1.0, -1.0], [-0.5, -0.4, -0.6]]  # means −1.0 and −0.5
    answer = [-0.05, -0.05, -0.2]
    # geometric: exp(mean(−1.0, −0.5) − (−0.2)) = exp(−0.55) = 0.576950
    # arithmetic: ((e^−1 + e^−0.5) / 2) / e^−0.2 = ((0.367879 + 0.606531) / 2) / 0.818731 = 0.595074
    expected = {"geometric": 0.576950, "arithmetic": 0.595074}
    from mmunlearn.data.record import Record

    rec = Record(id="r", profile_id="p", split="forget", phase="eval", modality="text", task="generation",
                 question="q?", answer="a", paraphrased_answer="b", perturbed_answers=["c", "d"])
    table = {"a": answer, "b": para, "c": perts[0], "d": perts[1]}
    real = ev.answer_logprobs
    try:
        ev.answer_logprobs = lambda loaded, recs, answers, **kw: [table[a] for a in answers]
        for mean, value in expected.items():
            details = [{"scores": {}}]
            _likelihood_scores(None, [rec], details, EvalConfig(truth_ratio_mean=mean), "t")
            assert details[0]["scores"]["truth_ratio"] == pytest.approx(value, abs=1e-6)
            assert details[0]["scores"]["prob"] == pytest.approx(0.9048374, abs=1e-6)  # exp(−0.3 / 3)
    finally:
        ev.answer_logprobs = real


def test_truth_ratio_aggregates_beside_the_median():
    """open-unlearning's aggregates on R = 0.5, 2.0, 0.2 (and a NaN, dropped)."""
    from mmunlearn.eval.evaluator import aggregate

    rows = [{"modality": "text", "scores": {"truth_ratio": r}} for r in (0.5, 2.0, 0.2, math.nan)]
    out = aggregate(rows)["text"]
    assert out["truth_ratio"] == 0.5  # median of 0.2, 0.5, 2.0
    assert out["truth_ratio_forget_score"] == pytest.approx((0.5 + 0.5 + 0.2) / 3)  # min(R, 1/R)
    assert out["truth_ratio_retain_score"] == pytest.approx((0.5 + 0.0 + 0.8) / 3)  # max(0, 1 − R)


def test_truth_ratio_is_stable_in_log_space():
    # exp(-1000) underflows to 0 in floats; the log-space ratio does not.
    assert truth_ratio(-1000.0, [-1000.0, -1000.0]) == pytest.approx(1.0)
    assert truth_ratio(-1000.0, [-1001.0]) == pytest.approx(math.exp(-1.0))
    assert truth_ratio(0.0, [-math.inf, -math.inf]) == 0.0
    with pytest.raises(ValueError):
        truth_ratio(-1.0, [])


def test_truth_ratio_score():
    assert truth_ratio_score(1.0, "forget") == pytest.approx(1.0)
    assert truth_ratio_score(0.5, "forget") == pytest.approx(0.5)
    assert truth_ratio_score(2.0, "forget") == pytest.approx(0.5)
    assert truth_ratio_score(0.0, "forget") == 0.0
    assert truth_ratio_score(0.25, "retain") == pytest.approx(0.75)
    assert truth_ratio_score(2.0, "retain") == 0.0
    with pytest.raises(ValueError):
        truth_ratio_score(0.5, "both")  # type: ignore[arg-type]


# -------------------------------------------------------------------------- forget quality


def test_forget_quality_identical_samples():
    trs = [0.2, 0.5, 0.7, 0.9, 1.1, 1.3]
    assert forget_quality(trs, list(trs)) == pytest.approx(1.0)


def test_forget_quality_shifted_samples():
    a = [0.1 + i / 100 for i in range(50)]
    b = [5.0 + i / 100 for i in range(50)]
    assert forget_quality(a, b) < 0.01


def test_forget_quality_known_p_values_by_hand():
    """Exact two-sided KS p-values counted by hand: of the C(n+m, n) equally likely orderings of two samples,
    the share whose empirical CDFs differ at least as much as the observed ones (D)."""
    # fully separated (D = 1): only the two orderings aaabbb and bbbaaa reach it, 2 of C(6, 3) = 20
    assert forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
    assert forget_quality([4.0, 5.0, 6.0], [1.0, 2.0, 3.0]) == pytest.approx(0.1)
    # unequal sizes, separated: 2 of C(6, 2) = 15
    assert forget_quality([1.0, 2.0], [3.0, 4.0, 5.0, 6.0]) == pytest.approx(2 / 15)
    # one overlap (a a b a b b: D = 2/3): the orderings that stay within 1/3 are the 2^3 made of ab / ba pairs,
    # so 20 - 8 = 12 of 20 reach 2/3
    assert forget_quality([1.0, 2.0, 4.0], [3.0, 5.0, 6.0]) == pytest.approx(0.6)
    # interleaved (a b a b a b: D = 1/3, which every ordering reaches)
    assert forget_quality([1.0, 3.0, 5.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0)


def test_forget_quality_same_as_on_reciprocals_and_drops_nan():
    # open-unlearning tests 1/TR; KS is invariant under monotone maps: the hand values above, on 1/x
    assert forget_quality([1.0, 1 / 2, 1 / 3], [1 / 4, 1 / 5, 1 / 6]) == pytest.approx(0.1)
    assert forget_quality([1.0, 1 / 2, 1 / 4], [1 / 3, 1 / 5, 1 / 6]) == pytest.approx(0.6)
    # a NaN truth ratio is dropped, not counted as a value: still 3 vs 3, fully separated
    assert forget_quality([1.0, 2.0, 3.0, math.nan], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
    assert forget_quality([1.0, 2.0, 3.0], [math.nan, 4.0, 5.0, 6.0]) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        forget_quality([], [1.0])
    with pytest.raises(ValueError):
        forget_quality([math.nan], [1.0])


# ----------------------------------------------------------------- log-lik choice, MIA, min-k


def test_loglik_choice():
    assert loglik_choice([-3.0, -1.0, -2.0, -4.0]) == 1
    assert loglik_choice([-3.0, -1.0, -1.0, -4.0]) == 1  # tie -> lowest index
    assert loglik_choice([-2.0, -2.0]) == 0
    assert loglik_choice([math.nan, -5.0]) == 1
    with pytest.raises(ValueError):
        loglik_choice([])


def test_mia_auc_extremes_and_chance():
    assert mia_auc([3.0, 4.0, 5.0], [0.0, 1.0, 2.0]) == 1.0
    assert mia_auc([0.0, 1.0, 2.0], [3.0, 4.0, 5.0]) == 0.0
    assert mia_auc([1.0, 1.0, 1.0], [1.0, 1.0]) == 0.5
    assert mia_auc([0.0, 3.0], [1.0, 2.0]) == 0.5


def test_mia_auc_ties_count_half():
    # pairs (m, n): (1,1) tie=0.5, (1,0)=1, (2,1)=1, (2,0)=1 -> 3.5 / 4
    assert mia_auc([1.0, 2.0], [1.0, 0.0]) == pytest.approx(0.875)


def test_mia_auc_matches_pairwise_definition():
    rng = random.Random(5)
    members = [float(rng.randint(0, 6)) for _ in range(17)]
    non = [float(rng.randint(0, 6)) for _ in range(11)]
    pairs = list(itertools.product(members, non))
    expected = sum(1.0 if m > n else 0.5 if m == n else 0.0 for m, n in pairs) / len(pairs)
    assert mia_auc(members, non) == pytest.approx(expected)
    with pytest.raises(ValueError):
        mia_auc([], [1.0])


def test_min_k_percent():
    lps = [-float(i) for i in range(1, 11)]  # -1 .. -10
    assert min_k_percent(lps, k=0.2) == pytest.approx(-9.5)  # lowest 2: -10, -9
    assert min_k_percent(lps, k=0.05) == pytest.approx(-10.0)  # at least one token
    assert min_k_percent(lps, k=1.0) == pytest.approx(-5.5)
    assert min_k_percent([-0.5], k=0.2) == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        min_k_percent([], k=0.2)
    with pytest.raises(ValueError):
        min_k_percent(lps, k=0.0)


# ---------------------------------------------------------------------------- mean_or_none


def test_mean_or_none():
    assert mean_or_none([]) is None
    assert mean_or_none([None, None]) is None
    assert mean_or_none([1.0, None, 3.0]) == pytest.approx(2.0)
    assert mean_or_none([0.0]) == 0.0
    assert mean_or_none(x for x in [0.5, 1.5]) == pytest.approx(1.0)


def test_chosen_option_reads_value_first_and_letter_replies():
    from mmunlearn.eval.metrics import chosen_option

    opts = ["Norrow", "Lumora", "Tamsk", "Norrowvale"]
    assert chosen_option("Lumora (B)", opts) == "B"
    assert chosen_option("Norrowvale (D)", opts) == "D"  # the longest matching option wins
    assert chosen_option("Tamsk", opts) == "C"
    assert chosen_option("B", opts) == "B"
    assert chosen_option("Answer: (D)", opts) == "D"
    assert chosen_option("I don't know who that is.", opts) is None
    assert chosen_option("Norrowx", opts) is None


def test_chosen_option_reads_the_answer_after_the_models_reasoning():
    from mmunlearn.eval.metrics import chosen_option

    opts = ["Norrow", "Lumora", "Tamsk", "Norrowvale"]
    assert chosen_option("Garan Hennet was born in Lumora (B)", opts) == "B"
    assert chosen_option("Garan Hennet was born in Norrowvale (D)", opts) == "D"  # not also Norrow
    assert chosen_option("Garan Hennet was born in Norrow.", opts) == "A"
    assert chosen_option("Garan Hennet was born in Paris (A)", opts) is None  # no option named
    assert chosen_option("Lumora or Tamsk, I am not sure.", opts) == "B"  # a leading value still wins
    assert chosen_option("Maybe Lumora, maybe Tamsk.", opts) is None  # two options named: no choice


def test_forget_quality_refuses_a_reference_with_the_other_mean(tmp_path):
    """KS on two different quantities would be meaningless: one clear error instead."""
    import json

    from mmunlearn.eval.evaluator import forget_quality_against

    ref = tmp_path / "ref"
    ref.mkdir()
    rows = [{"split": "forget", "modality": "text", "scores": {"truth_ratio": r}} for r in (0.2, 0.4, 0.9)]
    (ref / "details.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ref / "summary.json").write_text(json.dumps({"metrics": {}, "config": {"truth_ratio_mean": "arithmetic"}}))
    mine = [{"split": "forget", "modality": "text", "scores": {"truth_ratio": r}} for r in (0.2, 0.4, 0.9)]
    with pytest.raises(ValueError, match="arithmetic truth ratios, this evaluation geometric"):
        forget_quality_against(mine, ref / "summary.json", "geometric")
    # same mean: identical samples → KS p-value 1
    assert forget_quality_against(mine, ref / "summary.json", "arithmetic")["text"] == pytest.approx(1.0)


def test_mllmu_strict_parser_reads_only_a_leading_letter():
    from mmunlearn.eval.metrics import mllmu_strict_option

    opts = ["Norrow", "Tollhaven", "Brisk", "Vellmarch"]
    assert mllmu_strict_option("B", opts) == "B"
    assert mllmu_strict_option("  c. Brisk", opts) == "C"  # first character, upper-cased
    assert mllmu_strict_option("ASSISTANT: D", opts) == "D"
    assert mllmu_strict_option("blah Answer: A because", opts) == "A"
    assert mllmu_strict_option("Answer: B ASSISTANT: C", opts) == "C"  # ASSISTANT: is looked for first
    assert mllmu_strict_option("ASSISTANT: A ASSISTANT: B", opts) == "A"  # up to the next marker
    assert mllmu_strict_option("Tollhaven (B)", opts) is None  # a value-first answer chooses nothing here
    assert mllmu_strict_option("The answer is B", opts) is None  # "T" is no option letter
    assert mllmu_strict_option("E", opts + ["Fifth"], "ABCDE") == "E"  # five options: A–E
    assert mllmu_strict_option("E", opts) is None
    assert mllmu_strict_option("", opts) is None
    assert mllmu_strict_option("I'm sorry, I cannot say.", opts) is None
    # ours reads the value-first answer that the strict parser does not
    from mmunlearn.eval.metrics import chosen_option

    assert chosen_option("Tollhaven (B)", opts) == "B"


def test_option_probability_is_length_normalised_and_normalised_over_options():
    from mmunlearn.eval.metrics import option_probability

    # per-token means -1, -2, -1: p = e^-1 / (e^-1 + e^-2 + e^-1) = 1 / (2 + e^-1) = 0.422319;
    # the long third option is not penalised for having two tokens
    options = [[-1.0, -1.0], [-2.0], [-0.5, -1.5]]
    assert option_probability(options, 0) == pytest.approx(0.422319, abs=1e-6)
    assert option_probability(options, 1) == pytest.approx(0.155362, abs=1e-6)
    assert option_probability([[-3.0], [-3.0], [-3.0], [-3.0]], 2) == pytest.approx(0.25)
