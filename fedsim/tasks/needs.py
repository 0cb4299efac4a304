"""What a task needs of the data, checked before anything heavy is imported (`fedsim validate`
stays free of torch): the diagnosis tasks need a cohort with a diagnosis label."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedsim.scenario import Scenario

NEEDS_LABEL = ("task '{task}' needs a diagnosis label: set data.neurodegeneration: true "
               "(dataset synthetic_brain) to simulate one")
DIAGNOSIS_TASKS = ("diagnosis", "diagnosis_slice")


def check_task_data(scenario: Scenario) -> None:
    """Raise ValueError (one line) when the scenario's data lacks what its task learns."""
    task, data = scenario.task.name, scenario.data
    if task not in DIAGNOSIS_TASKS:
        return
    if data.dataset != "synthetic_brain":
        raise ValueError(f"task '{task}': dataset '{data.dataset}' has no diagnosis label "
                         "(only synthetic_brain with data.neurodegeneration: true)")
    if not data.neurodegeneration:
        raise ValueError(NEEDS_LABEL.format(task=task))
