"""Clinical records: one row of tabular data per person, for tabular tasks and attribute inference.

Two tables: the real diabetes table that scikit-learn ships inside its package (Efron et al. 2004:
442 patients, no download) and a synthetic clinical table joined row by row to the synthetic brain
cohort (its age, sex, site and diagnosis, brain volumes measured on its label maps, and vital signs
drawn with the correlations the literature reports). A record column is numeric; a categorical
one holds codes 0..k-1 and names its categories.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedsim.seeding import derive_seed

FOV_MM = 192.0  # the synthetic cohort's field of view (the MNI template: 64 voxels of 3 mm)

DIABETES_COLUMNS = ("age", "sex", "bmi", "bp", "tc", "ldl", "hdl", "tch", "ltg", "glu", "progression",
                    "progression_high")
SYNTHETIC_COLUMNS = ("age", "sex", "site", "icv_ml", "gm_fraction", "wm_fraction", "csf_fraction", "systolic_bp",
                     "bmi", "hypertension", "mmse")
DERIVED = {"progression_high": ("progression",), "progression": ("progression_high",),
           "hypertension": ("systolic_bp",), "systolic_bp": ("hypertension",)}  # a column restated by another


@dataclass
class Records:
    """A clinical table: named columns of one value per person (row i is cohort row i)."""

    columns: dict[str, np.ndarray]  # float64 (N,) each
    categories: dict[str, list[str]] = field(default_factory=dict)  # categorical column -> names of codes 0..k-1
    scale: dict[str, tuple[float, float]] = field(default_factory=dict)  # numeric column -> (centre, spread)
    # fixed per table, so that the cohort and the attacker's own records are standardised alike

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def binary(self, name: str) -> bool:
        return len(self.categories.get(name, ())) == 2

    def encode(self, names: list[str], rows: list[int] | np.ndarray) -> np.ndarray:
        """(len(rows), F) float32 model inputs: numeric columns standardised, categorical ones one-hot."""
        parts = []
        for name in names:
            values = self.columns[name][rows]
            if name in self.categories:
                parts.append(np.eye(len(self.categories[name]))[values.astype(np.int64)])
            else:
                centre, spread = self.scale[name]
                parts.append(((values - centre) / spread)[:, None])
        return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((len(rows), 0), np.float32)

    def width(self, names: list[str]) -> int:
        return sum(len(self.categories[n]) if n in self.categories else 1 for n in names)


def diabetes() -> Records:
    """scikit-learn's diabetes table in its original units (age in years, BMI, mean blood pressure,
    six serum measures) with the one-year disease progression and its binary form (above the
    table's median). The table codes sex 1 / 2 without saying which is which; so do we."""
    from sklearn.datasets import load_diabetes

    table = load_diabetes(scaled=False)
    data, progression = np.asarray(table.data, np.float64), np.asarray(table.target, np.float64)
    columns = {name: data[:, i] for i, name in enumerate(DIABETES_COLUMNS[:10])}
    columns["sex"] = columns["sex"] - 1.0  # 1 / 2 -> codes 0 / 1
    columns["progression"] = progression
    columns["progression_high"] = (progression > np.median(progression)).astype(np.float64)
    scale = {n: (float(v.mean()), float(v.std() or 1.0)) for n, v in columns.items()}
    return Records(columns=columns, categories={"sex": ["sex 1", "sex 2"], "progression_high": ["no", "yes"]},
                   scale={n: s for n, s in scale.items() if n not in ("sex", "progression_high")})


def synthetic_clinical(*, age: np.ndarray, sex: np.ndarray, site: np.ndarray, site_names: list[str],
                       labels: np.ndarray, diagnosis: np.ndarray | None, seed: int) -> Records:
    """The clinical record of each synthetic subject: what the cohort already says (age, sex, site,
    diagnosis), brain volumes measured on its tissue labels, and vital signs with the correlations
    the literature reports (systolic pressure rises ~0.5 mmHg a year and is higher in men; BMI
    peaks in mid-life; the MMSE falls with age and with neurodegeneration)."""
    from fedsim.data.synthetic import tissue_fractions

    rng = np.random.default_rng(derive_seed(seed, "clinical records"))
    n, side = len(age), labels.shape[-1]
    age, sex = age.astype(np.float64), sex.astype(np.float64)
    dx = np.zeros(n) if diagnosis is None else diagnosis.astype(np.float64)
    fractions = tissue_fractions(labels)
    icv = (labels.reshape(n, -1) > 0).sum(axis=1) * (FOV_MM / side) ** 3 / 1000.0
    systolic = 112 + 0.5 * (age - 40) + 6 * sex + 4 * dx + rng.normal(0, 12, n)
    bmi = 25 + 1.2 * sex + 2.0 * np.exp(-(((age - 55) / 20) ** 2)) + rng.normal(0, 4, n)
    mmse = np.clip(np.round(29.5 - 0.04 * np.maximum(age - 60, 0) - 5 * dx + rng.normal(0, 1.2, n)), 0, 30)
    columns = {"age": age, "sex": sex, "site": site.astype(np.float64), "icv_ml": icv,
               "gm_fraction": fractions[:, 1], "wm_fraction": fractions[:, 2], "csf_fraction": fractions[:, 0],
               "systolic_bp": systolic, "bmi": bmi, "hypertension": (systolic >= 140).astype(np.float64),
               "mmse": mmse}
    categories = {"sex": ["female", "male"], "site": list(site_names), "hypertension": ["no", "yes"]}
    if diagnosis is not None:
        columns["diagnosis"] = dx
        categories["diagnosis"] = ["healthy", "neurodegeneration"]
    scale = {"age": (50.0, 20.0), "icv_ml": (1400.0, 150.0), "gm_fraction": (0.45, 0.05),
             "wm_fraction": (0.35, 0.05), "csf_fraction": (0.2, 0.05), "systolic_bp": (130.0, 18.0),
             "bmi": (26.0, 4.0), "mmse": (28.0, 3.0)}
    return Records(columns=columns, categories=categories, scale=scale)


def diabetes_schema() -> dict[str, int]:
    """Column -> number of categories (0: numeric), known without loading the table."""
    return {n: 2 if n in ("sex", "progression_high") else 0 for n in DIABETES_COLUMNS}


def synthetic_schema(*, sites: int, neurodegeneration: bool) -> dict[str, int]:
    """The synthetic table's columns -> categories (0: numeric), known without generating anything."""
    out = {n: 0 for n in SYNTHETIC_COLUMNS} | {"sex": 2, "site": sites, "hypertension": 2}
    return out | ({"diagnosis": 2} if neurodegeneration else {})


def default_target(schema: dict[str, int]) -> str:
    """The column a tabular task predicts unless told: the table's outcome."""
    return next(n for n in ("progression_high", "diagnosis", "hypertension") if n in schema)


def default_features(schema: dict[str, int], target: str) -> list[str]:
    """Every column but the target and the columns that restate it."""
    return [n for n in schema if n != target and n not in DERIVED.get(target, ())]
