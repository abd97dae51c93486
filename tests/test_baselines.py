"""Each baseline moves the numbers the way SPEC.md says on the tiny world (method defaults, 1 forget person).

Forget accuracy is MLLMU-Bench's: the option the generated reply commits to (a refusal scores 0).
Retain accuracy is the log-likelihood ranking, which stays meaningful while fluency suffers.
"""

import pytest

from helpers import both_accuracies
from mmunlearn.models.loader import load_model
from mmunlearn.train.unlearn import UnlearnConfig, unlearn

RETAIN_KEEPERS = ("graddiff", "kl", "npo", "idk", "idkdpo", "salun", "mmunlearner")


@pytest.fixture(scope="module")
def vanilla_scores(tuned_small):
    bundle, vanilla, _ = tuned_small
    loaded = load_model(vanilla)
    return {s: both_accuracies(loaded, bundle, s) for s in ("forget", "retain")}


@pytest.fixture(scope="module")
def ga_scores(tuned_small, tmp_path_factory):
    bundle, vanilla, _ = tuned_small
    result = unlearn(bundle, UnlearnConfig(method="ga"), tmp_path_factory.mktemp("ga") / "u", loaded=load_model(vanilla))
    return {s: both_accuracies(result.loaded, bundle, s) for s in ("forget", "retain")}


def test_vanilla_knows_the_people(vanilla_scores):
    # 13 forget questions (one person): 0.75 leaves room for three misses, far above chance (0.25)
    assert vanilla_scores["forget"]["generated"] >= 0.75
    assert vanilla_scores["retain"]["loglik"] >= 0.9


def test_ga_forgets_and_collapses(ga_scores, vanilla_scores):
    assert ga_scores["forget"]["generated"] <= 0.1
    assert ga_scores["retain"]["loglik"] < vanilla_scores["retain"]["loglik"] - 0.3


@pytest.mark.parametrize("method", RETAIN_KEEPERS)
def test_method_forgets_while_keeping_retain(method, tuned_small, tmp_path, ga_scores, vanilla_scores):
    bundle, vanilla, _ = tuned_small
    result = unlearn(bundle, UnlearnConfig(method=method), tmp_path / method, loaded=load_model(vanilla))
    forget = both_accuracies(result.loaded, bundle, "forget")
    retain = both_accuracies(result.loaded, bundle, "retain")
    assert forget["generated"] <= 0.35, (method, forget)
    assert forget["generated"] <= vanilla_scores["forget"]["generated"] - 0.4, (method, forget)
    # GA's retain log-likelihood accuracy is near chance (measured 0.31 of 65 questions); the keepers stay
    # above it by at least 6.5 questions (measured 0.40 KL, 0.42 SalUn with its saliency over the whole
    # forget set and an exact top-k mask — 0.43 with 4 batches and a threshold mask — 0.9+ for the others)
    assert retain["loglik"] >= ga_scores["retain"]["loglik"] + 0.10, (method, retain, ga_scores)
    assert result.log["wall_time_s"] > 0 and result.log["trainable_params"] > 0
    assert result.log["losses"], "per-step losses are logged"
