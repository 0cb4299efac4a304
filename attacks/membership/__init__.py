"""Membership inference against regressors (brain age): was this subject in the training data?

Black-box attacks see predictions only (loss threshold, shadow models, LiRA: `blackbox`); white-box
attacks see the parameters (per-sample gradient features) or a federated client's update (gradient
alignment, loss drop: `whitebox`). Every attack returns one score per candidate, higher = "member";
`metrics` turns scores into AUC, TPR at low FPR, a log-scale ROC and an empirical lower bound on
epsilon for DP auditing. The plug-ins are in `plugins`, the family that runs them in `family`.
"""
