"""A tabular task: a two-valued column of the clinical records (diabetes progression above the
median, a diagnosis, hypertension) predicted from the record's other columns by an MLP, trainable
centrally and across sites like the imaging tasks; the target model of tabular attribute inference."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fedsim.data.synthetic import Cohort
from fedsim.scenario import DataConfig, TaskConfig
from fedsim.tasks.base import Task
from fedsim.tasks.diagnosis import DiagnosisTask


def record_schema(data: DataConfig) -> dict[str, int]:
    """The scenario's table: column -> categories (0: numeric); ValueError where there is none."""
    from fedsim.data.datasets import DATASETS

    schema = DATASETS.get(data.dataset).record_schema(data)
    if schema is None:
        raise ValueError(f"data.dataset: '{data.dataset}' has no clinical records (synthetic_brain and diabetes have)")
    return schema


def columns_of(config: TaskConfig, schema: dict[str, int]) -> tuple[list[str], str]:
    """(feature columns, target column) of a clinical task configuration."""
    from fedsim.data.clinical import default_features, default_target

    target = config.target or default_target(schema)
    return list(config.features) if config.features is not None else default_features(schema, target), target


class ClinicalTask(Task):
    """One logit (binary cross-entropy), like the diagnosis task: error rate, balanced accuracy."""

    primary_metric = "error_rate"
    baseline_name = "majority class"
    n_classes = 2
    loss = DiagnosisTask.loss
    metrics = DiagnosisTask.metrics
    baseline = DiagnosisTask.baseline

    def __init__(self, *, config: TaskConfig, target_mean: float, target_std: float = 1.0,
                 data: DataConfig | None = None) -> None:
        super().__init__(config=config, target_mean=target_mean, target_std=target_std, data=data)
        if data is None:
            raise ValueError("task clinical needs the scenario's data section (its table's columns)")
        self.schema = record_schema(data)
        self.features, self.target = columns_of(config, self.schema)

    def build_model(self) -> nn.Module:
        from fedsim.models.mlp import RecordMLP

        cfg = self.config.model
        width = sum(self.schema[n] or 1 for n in self.features)
        prevalence = min(max(self.target_mean, 1e-3), 1 - 1e-3)
        return RecordMLP(in_features=width, channels=cfg.channels, dropout=cfg.dropout,
                         out_bias=math.log(prevalence / (1 - prevalence)))

    def tensors(self, cohort: Cohort, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        records = _records(cohort)
        x = torch.from_numpy(records.encode(self.features, list(indices)))
        return x, torch.from_numpy(records.columns[self.target][list(indices)].astype(np.int64))

    @staticmethod
    def targets(cohort: Cohort) -> np.ndarray:
        raise TypeError("task clinical's target is a column of the records: use target_values(cohort, config)")

    @classmethod
    def target_values(cls, cohort: Cohort, config: TaskConfig) -> np.ndarray:
        records = _records(cohort)
        _, target = columns_of(config, {n: len(records.categories.get(n, ())) for n in records.columns})
        return records.columns[target].astype(np.float64)


def _records(cohort: Cohort):
    if cohort.records is None:
        raise ValueError("task clinical: this cohort has no clinical records")
    return cohort.records
