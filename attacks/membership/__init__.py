"""Membership inference against regressors (brain age): was this subject in the training data?

Black-box attacks see predictions only (loss threshold, shadow models, LiRA); white-box attacks see
the parameters (per-sample gradient features) or a federated client's update (gradient alignment).
Every attack returns one score per candidate, higher = "member"; `metrics` turns scores into AUC,
TPR at low FPR, a log-scale ROC and an empirical lower bound on epsilon for DP auditing.
"""

from fedsim.attacks.membership.blackbox import lira_scores, loss_scores, shadow_attack, threshold_attack
from fedsim.attacks.membership.metrics import (
    best_empirical_epsilon,
    empirical_epsilon,
    membership_metrics,
    roc_figure,
    tpr_at_fpr,
)
from fedsim.attacks.membership.whitebox import (
    gradient_feature_names,
    gradient_features,
    reference_features,
    update_alignment_scores,
    update_loss_drop_scores,
    whitebox_attack,
)

__all__ = [
    "best_empirical_epsilon",
    "empirical_epsilon",
    "gradient_feature_names",
    "gradient_features",
    "lira_scores",
    "loss_scores",
    "membership_metrics",
    "reference_features",
    "roc_figure",
    "shadow_attack",
    "threshold_attack",
    "tpr_at_fpr",
    "update_alignment_scores",
    "update_loss_drop_scores",
    "whitebox_attack",
]
