"""What a task needs of the data, checked before anything heavy is imported (`fedsim validate`
stays free of torch): the diagnosis tasks need a cohort with a diagnosis label."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedsim.scenario import Scenario

NEEDS_LABEL = ("task.name: task '{task}' needs a diagnosis label: set data.neurodegeneration: true "
               "(dataset synthetic_brain) to simulate one")
DIAGNOSIS_TASKS = ("diagnosis", "diagnosis_slice")
LABEL_COLUMNS = {"brain_age": "age", "brain_age_slice": "age", "sex_classification": "sex", "diagnosis": "diagnosis",
                 "diagnosis_slice": "diagnosis"}  # the record column an imaging task's label is (task clinical: its
# task.target); attribute inference refuses it as the sensitive attribute, which the attacker knows


def check_task_data(scenario: Scenario) -> None:
    """Raise ValueError (one line) when the scenario's data lacks what its task learns."""
    from fedsim.data.datasets import DATASETS

    task, data = scenario.task.name, scenario.data
    dataset = DATASETS.get(data.dataset)
    if task == "clinical":
        check_clinical(scenario)
        return
    if not dataset.scans:
        raise ValueError(f"task.name: dataset '{data.dataset}' is a table of clinical records without scans; "
                         f"task '{task}' learns from scans (use task clinical)")
    if scenario.task.model.name == "mlp":
        raise ValueError(f"task.model.name: mlp reads clinical records (task clinical), not task '{task}''s scans")
    for key in ("target", "features"):
        if getattr(scenario.task, key) is not None:
            raise ValueError(f"task.{key}: only task clinical picks its target and features; '{task}' has its own")
    if task not in DIAGNOSIS_TASKS:
        return
    if data.dataset != "synthetic_brain":
        raise ValueError(f"task '{task}': dataset '{data.dataset}' has no diagnosis label "
                         "(only synthetic_brain with data.neurodegeneration: true)")
    if not data.neurodegeneration:
        raise ValueError(NEEDS_LABEL.format(task=task))


def check_clinical(scenario: Scenario) -> None:
    """Task clinical: the dataset has records, the target is a two-valued column, the features exist."""
    from fedsim.data.clinical import default_features, default_target
    from fedsim.data.datasets import DATASETS

    cfg, data = scenario.task, scenario.data
    schema = DATASETS.get(data.dataset).record_schema(data)
    if schema is None:
        raise ValueError(f"task clinical: dataset '{data.dataset}' has no clinical records (synthetic_brain and "
                         "diabetes have)")
    if cfg.model.name != "mlp":
        raise ValueError(f"task.model.name: task clinical trains model mlp on records, not '{cfg.model.name}'")
    target = cfg.target or default_target(schema)
    if target not in schema:
        raise ValueError(f"task.target: '{target}' is not a column of {data.dataset}'s records "
                         f"({', '.join(schema)})")
    if schema[target] != 2:
        two = [n for n, k in schema.items() if k == 2]
        raise ValueError(f"task.target: '{target}' is not a two-valued column (two-valued: {', '.join(two)})")
    features = cfg.features if cfg.features is not None else default_features(schema, target)
    unknown = [f for f in features if f not in schema]
    if unknown:
        raise ValueError(f"task.features: '{unknown[0]}' is not a column of {data.dataset}'s records "
                         f"({', '.join(schema)})")
    if target in features:
        raise ValueError(f"task.features: lists the target '{target}' itself")
    if not features:
        raise ValueError("task.features: is empty")
