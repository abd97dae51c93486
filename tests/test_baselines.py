"""Each baseline moves the numbers the way SPEC.md says on the tiny world (method defaults, 1 forget person).

Forget accuracy is MLLMU-Bench's: the option the generated reply commits to (a refusal scores 0).
Retain is held to floors below vanilla, per method: the log-likelihood ranking (meaningful while fluency
suffers), the generated-letter accuracy, and how many replies to retain questions refuse or are not language.
"""

import pytest

from helpers import both_accuracies, reply_rates
from mmunlearn.models.loader import load_model
from mmunlearn.train.unlearn import UnlearnConfig, unlearn

RETAIN_KEEPERS = ("graddiff", "kl", "npo", "idk", "idkdpo", "salun", "salun-paper", "mmunlearner")

# What each method at its defaults may lose on the retain people (65 classification and 65 generation questions)
# against vanilla (1.00 log-likelihood, 1.00 generated, no refusing or degenerate reply). Measured on the
# fixture built at 2 threads, then at 1 (log-likelihood / generated / degenerate; no method refused a retain
# question):
#   graddiff 0.77 / 0.46 / 0.18  and 0.78 / 0.18 / 0.32     kl 0.69 / 0.55 / 0.17  and 0.66 / 0.20 / 0.38
#   npo 1.00 / 0.98 / 0.00  and 0.98 / 0.94 / 0.00          idk 1.00 / 1.00 / 0.00  and 1.00 / 0.98 / 0.00
#   idkdpo 1.00 / 0.94 / 0.00  and 1.00 / 0.98 / 0.00       salun 0.65 / 0.23 / 0.20  and 0.69 / 0.17 / 0.14
#   mmunlearner 1.00 / 1.00 / 0.00  and 1.00 / 0.98 / 0.00    salun-paper 1.00 / 1.00 / 0.00  and 1.00 / 0.98 / 0.00
# GradDiff, KL and SalUn at their defaults keep the retain answers ranked first by likelihood but their replies
# degrade, by an amount the CPU decides (generated 0.46 on one fixture, 0.18 on the other): their generated floor
# says only that much. Every bound is at least two questions (2/65 = 0.031) beyond the worse of the two
# measurements: drops = worse drop + >= 0.031, rates = worse rate + >= 0.031 (0.04: three refusing replies fail).
KEEPS: dict[str, dict[str, float]] = {
    "graddiff": {"loglik_drop": 0.27, "generated_drop": 0.85, "degenerate": 0.36, "refusal": 0.04},
    "kl": {"loglik_drop": 0.37, "generated_drop": 0.84, "degenerate": 0.42, "refusal": 0.04},
    "npo": {"loglik_drop": 0.05, "generated_drop": 0.10, "degenerate": 0.04, "refusal": 0.04},
    "idk": {"loglik_drop": 0.04, "generated_drop": 0.05, "degenerate": 0.04, "refusal": 0.04},
    "idkdpo": {"loglik_drop": 0.04, "generated_drop": 0.10, "degenerate": 0.04, "refusal": 0.04},
    "salun": {"loglik_drop": 0.39, "generated_drop": 0.87, "degenerate": 0.24, "refusal": 0.04},
    "mmunlearner": {"loglik_drop": 0.04, "generated_drop": 0.05, "degenerate": 0.04, "refusal": 0.04},
    "salun-paper": {"loglik_drop": 0.04, "generated_drop": 0.05, "degenerate": 0.04, "refusal": 0.04},
}


@pytest.fixture(scope="module")
def vanilla_scores(tuned_small):
    bundle, vanilla, _ = tuned_small
    loaded = load_model(vanilla)
    scores = {s: both_accuracies(loaded, bundle, s) for s in ("forget", "retain")}
    scores["retain"].update(reply_rates(loaded, bundle.eval("retain")))
    return scores


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
def test_method_forgets_while_keeping_retain(method, tuned_small, tmp_path, vanilla_scores):
    bundle, vanilla, _ = tuned_small
    result = unlearn(bundle, UnlearnConfig(method=method), tmp_path / method, loaded=load_model(vanilla))
    forget = both_accuracies(result.loaded, bundle, "forget")
    retain = {**both_accuracies(result.loaded, bundle, "retain"), **reply_rates(result.loaded, bundle.eval("retain"))}
    # 13 forget questions: measured 0.00 for every keeper but npo (0.08, one question) and mmunlearner (0.15,
    # two); 0.35 is 4.5 questions
    assert forget["generated"] <= 0.35, (method, forget)
    assert forget["generated"] <= vanilla_scores["forget"]["generated"] - 0.4, (method, forget)
    keeps, van = KEEPS[method], vanilla_scores["retain"]
    assert retain["loglik"] >= van["loglik"] - keeps["loglik_drop"], (method, retain, van)
    assert retain["generated"] >= van["generated"] - keeps["generated_drop"], (method, retain, van)
    assert retain["degenerate"] <= van["degenerate"] + keeps["degenerate"], (method, retain, van)
    assert retain["refusal"] <= van["refusal"] + keeps["refusal"], (method, retain, van)
    assert result.log["wall_time_s"] > 0 and result.log["trainable_params"] > 0
    assert result.log["losses"], "per-step losses are logged"
