"""Membership-inference checks of a trained model: what an attacker learns from its outputs.

TF Privacy 0.9.0's wheel has no membership-inference module, so the two classic attacks are
written here with scikit-learn, over NumPy arrays:

* loss threshold (Yeom et al. 2018): an example with a low loss is guessed to be a member;
* logistic regression on per-example features of the model's output (the loss, the log
  probability of the true class, the sorted log probabilities, the entropy), scored out of fold
  with stratified cross-validation so that the attacker is never judged on its training data.

Members are training examples, non-members held-out examples; the larger group is subsampled
so both are equally many. Each attack reports the ROC AUC, the attacker advantage
max(TPR - FPR), and an empirical lower bound on ε.

Empirical ε lower bound (Kairouz et al. 2015; Jagielski et al. 2020). An (ε, δ)-DP training
forces, for every decision rule, TPR <= e^ε FPR + δ and 1 - FPR <= e^ε (1 - TPR) + δ. So

    ε >= max( log((TPR - δ) / FPR), log((1 - FPR - δ) / (1 - TPR)) ).

TPR and FPR are estimated with two-sided Clopper-Pearson intervals at `confidence`, and the
bound uses the pessimistic ends (TPR low, FPR high). The threshold is chosen on a random half
of the examples and the bound is computed on the other half, so the choice does not inflate
it. It audits one trained model with many examples: a heuristic audit, not a proof.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats  # type: ignore[import-untyped]

from secure_maas.errors import SecureMaasError

FloatArray = NDArray[np.float64]


class AttackError(SecureMaasError):
    """The attack cannot run on these inputs (too few examples, mismatched shapes)."""


@dataclass(frozen=True)
class AttackResult:
    attack: str
    auc: float
    advantage: float
    epsilon_lower_bound: float
    tpr: float  # at the threshold of the bound, on the evaluation half
    fpr: float
    members: int
    non_members: int
    delta: float
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AttackReport:
    results: tuple[AttackResult, ...]

    @property
    def max_auc(self) -> float:
        return max(r.auc for r in self.results)

    @property
    def max_epsilon_lower_bound(self) -> float:
        return max(r.epsilon_lower_bound for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": [r.to_dict() for r in self.results],
            "max_auc": self.max_auc,
            "max_epsilon_lower_bound": self.max_epsilon_lower_bound,
        }


def model_outputs(model: Any, x: NDArray[Any], y: NDArray[Any]) -> tuple[FloatArray, FloatArray]:
    """Per-example cross-entropy losses and log probabilities of a model that outputs
    probabilities (any object with Keras' `predict`)."""
    probs = np.asarray(model.predict(x, batch_size=1024, verbose=0), dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(y):
        raise AttackError(f"model output of shape {probs.shape} is not one row per example")
    log_probs = np.log(np.clip(probs, 1e-30, 1.0))
    losses = -log_probs[np.arange(len(y)), np.asarray(y, dtype=np.int64)]
    return losses, log_probs


def attack_features(losses: FloatArray, log_probs: FloatArray) -> FloatArray:
    """Loss, sorted log probabilities (largest first) and entropy: label-free but the loss."""
    ordered = -np.sort(-log_probs, axis=1)
    entropy = -np.sum(np.exp(log_probs) * log_probs, axis=1, keepdims=True)
    return np.hstack([losses[:, None], ordered, entropy])


def run_attacks(
    model: Any,
    x_members: NDArray[Any],
    y_members: NDArray[Any],
    x_non_members: NDArray[Any],
    y_non_members: NDArray[Any],
    *,
    delta: float,
    seed: int = 0,
    confidence: float = 0.95,
) -> AttackReport:
    """Both attacks on a model, members = training examples, non-members = held out."""
    loss_in, logp_in = model_outputs(model, x_members, y_members)
    loss_out, logp_out = model_outputs(model, x_non_members, y_non_members)
    return AttackReport(
        (
            loss_threshold_attack(loss_in, loss_out, delta=delta, seed=seed, confidence=confidence),
            logistic_regression_attack(
                attack_features(loss_in, logp_in),
                attack_features(loss_out, logp_out),
                delta=delta,
                seed=seed,
                confidence=confidence,
            ),
        )
    )


def loss_threshold_attack(
    loss_members: FloatArray,
    loss_non_members: FloatArray,
    *,
    delta: float,
    seed: int = 0,
    confidence: float = 0.95,
) -> AttackResult:
    """Guess "member" when the loss is below a threshold (score = -loss)."""
    rng = np.random.default_rng(seed)
    s_in, s_out = _balance(-np.asarray(loss_members), -np.asarray(loss_non_members), rng)
    return _result("loss-threshold", s_in, s_out, delta, confidence, rng)


def logistic_regression_attack(
    features_members: FloatArray,
    features_non_members: FloatArray,
    *,
    delta: float,
    seed: int = 0,
    confidence: float = 0.95,
    folds: int = 5,
) -> AttackResult:
    """A logistic regression on output features, scored out of fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    f_in, f_out = _balance(np.asarray(features_members), np.asarray(features_non_members), rng)
    if f_in.ndim != 2 or f_in.shape[1] != f_out.shape[1]:
        raise AttackError("member and non-member features must be matrices of the same width")
    features = np.vstack([f_in, f_out])
    labels = np.concatenate([np.ones(len(f_in)), np.zeros(len(f_out))])
    folds = min(folds, len(f_in))
    if folds < 2:
        raise AttackError("the logistic-regression attack needs at least two examples per side")
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    scores = cross_val_predict(
        classifier,
        features,
        labels,
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        method="predict_proba",
    )[:, 1]
    return _result(
        "logistic-regression", scores[: len(f_in)], scores[len(f_in) :], delta, confidence, rng
    )


def empirical_epsilon(
    scores_members: FloatArray,
    scores_non_members: FloatArray,
    *,
    delta: float,
    confidence: float = 0.95,
    threshold: float | None = None,
) -> tuple[float, float, float, float]:
    """(ε lower bound, threshold, TPR, FPR): the best threshold, or the one given.

    Members are predicted for scores >= threshold. See the module docstring for the formula.
    """
    s_in, s_out = np.asarray(scores_members), np.asarray(scores_non_members)
    candidates = np.unique(np.concatenate([s_in, s_out])) if threshold is None else [threshold]
    best = (0.0, math.inf, 0.0, 0.0)
    for t in candidates:
        tp, fp = int(np.sum(s_in >= t)), int(np.sum(s_out >= t))
        eps = _epsilon_bound(tp, len(s_in), fp, len(s_out), delta, confidence)
        if eps > best[0] or threshold is not None:
            best = (eps, float(t), tp / len(s_in), fp / len(s_out))
    return best


def clopper_pearson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided exact binomial interval for k successes in n trials."""
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def _epsilon_bound(
    tp: int, n_in: int, fp: int, n_out: int, delta: float, confidence: float
) -> float:
    tpr_low, _ = clopper_pearson(tp, n_in, confidence)
    _, fpr_high = clopper_pearson(fp, n_out, confidence)
    bounds = [0.0]
    if tpr_low - delta > 0 and fpr_high > 0:
        bounds.append(math.log((tpr_low - delta) / fpr_high))
    if 1 - fpr_high - delta > 0 and 1 - tpr_low > 0:
        bounds.append(math.log((1 - fpr_high - delta) / (1 - tpr_low)))
    return max(bounds)


def _balance(
    members: NDArray[Any], non_members: NDArray[Any], rng: np.random.Generator
) -> tuple[NDArray[Any], NDArray[Any]]:
    count = min(len(members), len(non_members))
    if count < 2:
        raise AttackError("a membership-inference check needs at least two examples per side")
    pick_in = np.sort(rng.choice(len(members), count, replace=False))
    pick_out = np.sort(rng.choice(len(non_members), count, replace=False))
    return members[pick_in], non_members[pick_out]


def _result(
    name: str,
    s_in: FloatArray,
    s_out: FloatArray,
    delta: float,
    confidence: float,
    rng: np.random.Generator,
) -> AttackResult:
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))])
    scores = np.concatenate([s_in, s_out])
    auc = float(roc_auc_score(labels, scores))
    fpr, tpr, _ = roc_curve(labels, scores)
    select_in = rng.permutation(len(s_in)) < len(s_in) // 2
    select_out = rng.permutation(len(s_out)) < len(s_out) // 2
    _, threshold, _, _ = empirical_epsilon(
        s_in[select_in], s_out[select_out], delta=delta, confidence=confidence
    )
    eps, _, hold_tpr, hold_fpr = empirical_epsilon(
        s_in[~select_in],
        s_out[~select_out],
        delta=delta,
        confidence=confidence,
        threshold=threshold,
    )
    return AttackResult(
        attack=name,
        auc=auc,
        advantage=float(np.max(tpr - fpr)),
        epsilon_lower_bound=eps,
        tpr=hold_tpr,
        fpr=hold_fpr,
        members=len(s_in),
        non_members=len(s_out),
        delta=delta,
        confidence=confidence,
    )
