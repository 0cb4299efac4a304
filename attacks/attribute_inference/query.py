"""What an attribute-inference attacker is handed: for the people it attacks and for its own records,
their known columns and task labels, and the model's outputs (and, white box, its embeddings) on
their inputs. Where the sensitive attribute is one of the model's inputs (a tabular model), the
outputs are given for each candidate value filled in — never for the true one, which the attacker
does not know; where it is not (an imaging model, or a column the MLP does not read), the outputs on
the person's own input. Also the attribute's candidate values and the attacker's prior over them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedsim.data.clinical import DERIVED

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fedsim.data.clinical import Records
    from fedsim.data.synthetic import Cohort
    from fedsim.tasks import Task

Outputs = Callable[[int | None], np.ndarray]  # candidate index (None: the input as recorded) -> (N, D)


@dataclass(frozen=True)
class People:
    """One group as the attacker sees it. `truth` (candidate index of each person's attribute) is
    set for the attacker's own records only."""

    known: np.ndarray  # (N, K) the known record columns, encoded (numeric standardised, categories one-hot)
    labels: np.ndarray  # (N,) each person's task target, which the attacker knows (Fredrikson et al.)
    outputs: Outputs  # the model's outputs (logits, or the regression value) for these people
    embeddings: Outputs | None = None  # white box: the model's last features before its head
    truth: np.ndarray | None = None
    covariates: np.ndarray | None = None  # the known columns but the task label and what restates it (N, K')

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class AttributeQuery:
    attribute: str
    candidates: list[str]  # the values the attribute can take (category names, or numeric bins)
    prior: np.ndarray  # (C,) the attribute's frequencies in the attacker's own records
    in_input: bool  # the attribute is a model input: `outputs(c)` fills candidate c in, `outputs(None)` is refused
    likelihood: Callable[[np.ndarray, np.ndarray], np.ndarray] | None  # (outputs (N, D), labels (N,)) -> (N,)
    # the probability the model gives each person's known label (a classifier's); None for regression
    targets: People
    auxiliary: People
    seed: int = 0


@dataclass(frozen=True)
class Attribute:
    """The sensitive attribute's candidates: a categorical column's codes, or a numeric column's
    quantile bins (of the attacker's records), each with the value filled in for it."""

    name: str
    names: list[str]
    fill: np.ndarray  # (C,) the column value standing for each candidate
    edges: np.ndarray | None = None  # numeric: the inner bin edges

    def index(self, values: np.ndarray) -> np.ndarray:
        """Each value's candidate index."""
        if self.edges is None:
            return values.astype(np.int64)
        return np.searchsorted(self.edges, values, side="right").astype(np.int64)


def attribute_of(records: Records, name: str, aux_rows: list[int], bins: int) -> Attribute:
    values = records.columns[name]
    if name in records.categories:
        k = len(records.categories[name])
        return Attribute(name, list(records.categories[name]), np.arange(k, dtype=np.float64))
    own = values[aux_rows]
    edges = np.unique(np.quantile(own, np.linspace(0, 1, bins + 1)[1:-1]))
    index = np.searchsorted(edges, own, side="right")
    while len(edges) and (empty := np.flatnonzero(np.bincount(index, minlength=len(edges) + 1) == 0)).size:
        edges = np.delete(edges, min(empty[0], len(edges) - 1))  # few records, many bins: merge the empty one
        index = np.searchsorted(edges, own, side="right")
    fill = np.array([np.median(own[index == b]) for b in range(len(edges) + 1)])
    bounds = [-np.inf, *edges, np.inf]
    names = [f"{name} in [{bounds[b]:.4g}, {bounds[b + 1]:.4g})" for b in range(len(edges) + 1)]
    return Attribute(name, names, fill, edges)


def default_known(schema: dict[str, int] | list[str], attribute: str) -> list[str]:
    """Every column but the attribute and those that restate it."""
    return [n for n in schema if n != attribute and n not in DERIVED.get(attribute, ())]


def binary_logit_likelihood(outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """P(label | x) under a one-logit classifier."""
    p = 1.0 / (1.0 + np.exp(-outputs[:, 0]))
    return np.where(labels > 0.5, p, 1.0 - p)


def people(model: nn.Module, task: Task, cohort: Cohort, rows: list[int], *, known: list[str],
           attribute: Attribute, white_box: bool, truth: bool) -> People:
    """The group of cohort `rows` as the attacker sees it (`truth`: its own records)."""
    import torch

    from fedsim.training import predict

    records = cohort.records
    assert records is not None
    features = getattr(task, "features", None)  # a tabular task's input columns; None: the model reads scans
    in_input = features is not None and attribute.name in features

    def inputs(candidate: int | None) -> torch.Tensor:
        if features is None:
            return task.tensors(cohort, rows)[0]
        if in_input and candidate is None:
            raise PermissionError(f"the model's input holds '{attribute.name}', which the attacker does not know: "
                                  "ask for a candidate value")
        filled = records
        if in_input:
            filled = _with_value(records, attribute.name, float(attribute.fill[candidate]))
        return torch.from_numpy(filled.encode(features, rows))

    def outputs(candidate: int | None) -> np.ndarray:
        out = predict(model, inputs(candidate)).double().numpy()
        return out.reshape(len(rows), -1)

    def embeddings(candidate: int | None) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            x = inputs(candidate)
            return torch.cat([model.embed(x[i:i + 32]) for i in range(0, len(x), 32)]).double().numpy()

    values = records.columns[attribute.name][rows]
    label = getattr(task, "target", None)  # a tabular task's label column
    covariates = [k for k in known if k != label and k not in DERIVED.get(label or "", ())]
    return People(known=records.encode(known, rows).astype(np.float64),
                  covariates=records.encode(covariates, rows).astype(np.float64),
                  labels=task.target_values(cohort, task.config)[rows].astype(np.float64),
                  outputs=_cached(outputs), embeddings=_cached(embeddings) if white_box else None,
                  truth=attribute.index(values) if truth else None)


def _with_value(records: Records, name: str, value: float) -> Records:
    from dataclasses import replace

    return replace(records, columns={**records.columns, name: np.full(len(records), value)})


def _cached(fn: Outputs) -> Outputs:
    seen: dict[int | None, np.ndarray] = {}

    def get(candidate: int | None) -> np.ndarray:
        if candidate not in seen:
            seen[candidate] = fn(candidate)
        return seen[candidate]

    return get
