"""How fast the synthetic cohort is generated, and whether its age signal is right.

Prints one row per configuration: generation time (cold, no cache), the correlation of the
grey-matter fraction of intracranial volume with age, and the test MAE of a ridge model on the
three tissue fractions against the MAE of predicting the training mean.

    python benchmarks/cohort.py [--subjects 200] [--shapes 32 64] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fedsim.data.synthetic import Cohort, CohortSpec, generate_cohort, tissue_fractions


def ridge_mae(
    features: np.ndarray, target: np.ndarray, *, seed: int = 0, alpha: float = 1e-3
) -> tuple[float, float]:
    """Test MAE of ridge regression on a 70/30 split, and of the training-mean predictor."""
    order = np.random.default_rng(seed).permutation(len(target))
    cut = int(0.7 * len(target))
    train, test = order[:cut], order[cut:]
    mu, sd = features[train].mean(0), features[train].std(0) + 1e-12
    x = np.column_stack([np.ones(len(target)), (features - mu) / sd])
    reg = alpha * np.eye(x.shape[1])
    reg[0, 0] = 0.0
    w = np.linalg.solve(x[train].T @ x[train] + reg, x[train].T @ target[train])
    model = float(np.abs(x[test] @ w - target[test]).mean())
    mean = float(np.abs(target[train].mean() - target[test]).mean())
    return model, mean


def age_signal(cohort: Cohort) -> tuple[float, float, float]:
    """r(GM fraction, age), ridge MAE, mean-predictor MAE."""
    fractions = tissue_fractions(cohort.labels)
    r = float(np.corrcoef(fractions[:, 1], cohort.age)[0, 1])
    return (r, *ridge_mae(fractions, cohort.age.astype(np.float64)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=200)
    parser.add_argument("--shapes", type=int, nargs="+", default=[32])
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--sites", type=int, default=3)
    args = parser.parse_args()
    columns = ("subjects", "shape", "workers", "seconds", "ms/subj", "r(GM,age)", "MAE fit", "MAE mean")
    header = " ".join(f"{c:>9}" for c in columns)
    print(header)
    print("-" * len(header))
    for shape in args.shapes:
        for workers in args.workers:
            spec = CohortSpec(n_subjects=args.subjects, shape=shape, n_sites=args.sites)
            start = time.perf_counter()
            cohort = generate_cohort(spec, workers=workers)
            seconds = time.perf_counter() - start
            r, mae_fit, mae_mean = age_signal(cohort)
            row = (args.subjects, shape, workers, f"{seconds:.1f}", f"{1000 * seconds / args.subjects:.0f}")
            row += (f"{r:.3f}", f"{mae_fit:.1f}", f"{mae_mean:.1f}")
            print(" ".join(f"{c:>9}" for c in row))


if __name__ == "__main__":
    main()
