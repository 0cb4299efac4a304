"""Attribute-inference attacks: the enumeration of Fredrikson et al. (CCS 2015) and a learned attack
(a classifier on what the model returns, trained on the attacker's own records), in a black-box
(outputs) and a white-box (embeddings) form."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedsim.attacks.base import ATTACKS, Attack, ThreatModel
from fedsim.settings.base import FINAL_MODEL

if TYPE_CHECKING:
    from fedsim.attacks.attribute_inference.query import AttributeQuery, People


class AttributeAttack(Attack, ABC):
    """Base of attribute-inference attacks: score each candidate value of the sensitive attribute for
    every attacked person."""

    family: ClassVar[str] = "attribute_inference"
    consumes: ClassVar[frozenset[str]] = frozenset({FINAL_MODEL})
    needs_input: ClassVar[bool] = False  # True: only works where the attribute is one of the model's inputs

    @abstractmethod
    def infer(self, query: AttributeQuery) -> np.ndarray:
        """(targets, candidates) scores, each row summing to 1; the guess is the row's best."""


class FredriksonParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prior: Literal["marginal", "conditional", "none"] = Field(
        "marginal", description="weigh each candidate by its frequency in the attacker's records (Fredrikson et "
        "al.), by its probability given the person's other known columns (a classifier on the attacker's records: "
        "the Bayesian posterior with the model's likelihood), or not at all")
    label_only: bool = Field(False, description="use only whether the model predicts the known label (a model "
                             "that releases labels, not confidences)")


@ATTACKS.register("fredrikson")
class Fredrikson(AttributeAttack):
    """Fill each candidate value in, score it by the model's probability of the person's known label
    times the candidate's prior, take the best (Fredrikson et al.; for a network, f(x_v)[y] x p(v))."""

    threat: ClassVar[ThreatModel] = ThreatModel(per_client_updates=False, architecture=False, labels=True,
                                                auxiliary=True)
    needs_input: ClassVar[bool] = True
    Params = FredriksonParams

    def infer(self, query: AttributeQuery) -> np.ndarray:
        if query.likelihood is None:
            raise ValueError("fredrikson scores a classifier's probability of the known label; this model regresses")
        t, log_scores = query.targets, []
        for c in range(len(query.candidates)):
            out = t.outputs(c)
            if self.params.label_only:
                guess = (out[:, 0] > 0).astype(np.float64) if out.shape[1] == 1 else out.argmax(1)
                found = (guess == t.labels).astype(np.float64)
            else:
                found = query.likelihood(out, t.labels)
            log_scores.append(np.log(np.maximum(found, 1e-300)))
        log_s = np.stack(log_scores, axis=1)
        prior = np.maximum(query.prior, 1e-12)
        if self.params.prior == "marginal":
            log_s = log_s + np.log(prior)
        elif self.params.prior == "conditional":
            aux = query.auxiliary
            given = fit_scores(aux.covariates, aux.truth, t.covariates, len(query.candidates), ClassifierParams(),
                               query.seed)
            log_s = log_s + np.log(np.maximum(given, 1e-6))
        else:  # ties (a label-only model agreeing under every candidate) still go to the likelier value
            log_s = log_s + 1e-9 * np.log(prior)
        s = np.exp(log_s - log_s.max(axis=1, keepdims=True))
        return s / s.sum(axis=1, keepdims=True)


class ClassifierParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    with_known: bool = Field(True, description="also read the known columns and label (else the model's "
                             "outputs alone)")
    learner: Literal["logistic", "boosting"] = Field("logistic", description="logistic regression or "
                                                     "gradient-boosted trees (scikit-learn)")
    C: float = Field(1.0, gt=0, description="inverse regularisation of the logistic regression")


def learner(params: ClassifierParams, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if params.learner == "boosting":
        return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=seed)
    return make_pipeline(StandardScaler(), LogisticRegression(C=params.C, max_iter=5000))


def fit_scores(features_aux: np.ndarray, truth: np.ndarray, features_targets: np.ndarray, n: int,
               params: ClassifierParams, seed: int) -> np.ndarray:
    """Train on the attacker's records, return (targets, n) class probabilities (classes it never saw: 0)."""
    classes = np.unique(truth)
    out = np.zeros((len(features_targets), n))
    if len(classes) == 1:
        out[:, classes[0]] = 1.0
        return out
    model = learner(params, seed).fit(features_aux, truth)
    out[:, classes] = model.predict_proba(features_targets)
    return out


@ATTACKS.register("attribute_classifier")
class AttributeClassifier(AttributeAttack):
    """Black box: a classifier from the model's outputs (per candidate filled in, where the attribute
    is an input: the log-probability of the known label under each), the known columns and the label
    to the attribute, trained on the attacker's own records."""

    threat: ClassVar[ThreatModel] = ThreatModel(per_client_updates=False, architecture=False, labels=True,
                                                auxiliary=True)
    Params = ClassifierParams

    def read(self, query: AttributeQuery, group: People) -> np.ndarray:
        """What the model gives away about one group, as classifier features."""
        if not query.in_input:
            return group.outputs(None)
        parts = [group.outputs(c) for c in range(len(query.candidates))]
        if query.likelihood is not None:
            parts += [np.log(np.clip(query.likelihood(p, group.labels), 1e-12, 1))[:, None] for p in parts]
        return np.concatenate(parts, axis=1)

    def infer(self, query: AttributeQuery) -> np.ndarray:
        def features(group: People) -> np.ndarray:
            parts = [self.read(query, group)]
            if self.params.with_known:
                parts += [group.known, group.labels[:, None]]
            return np.concatenate(parts, axis=1)

        aux = query.auxiliary
        return fit_scores(features(aux), aux.truth, features(query.targets), len(query.candidates), self.params,
                          query.seed)


@ATTACKS.register("attribute_classifier_whitebox")
class AttributeClassifierWhiteBox(AttributeClassifier):
    """White box: the same classifier on the model's last features before its head (the penultimate
    layer), beside its outputs."""

    threat: ClassVar[ThreatModel] = ThreatModel(per_client_updates=False, architecture=True, labels=True,
                                                auxiliary=True)

    def read(self, query: AttributeQuery, group: People) -> np.ndarray:
        if group.embeddings is None:
            raise PermissionError("this model exposes no embedding (a network with `embed`)")
        if not query.in_input:
            return np.concatenate([group.outputs(None), group.embeddings(None)], axis=1)
        parts = [group.embeddings(c) for c in range(len(query.candidates))]
        return np.concatenate([super().read(query, group), *parts], axis=1)
