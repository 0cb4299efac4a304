"""Task plug-ins (`task.name`): model, loss, metrics and preprocessing for one learning problem.

Built-in tasks are declared here by name and imported on first use (their modules need torch)."""

from fedsim.tasks.base import TASKS, Task

TASKS.lazy("brain_age", "fedsim.tasks.brain_age:BrainAgeTask",
           "Age regression, MSE loss, MAE in years as the headline metric.")
TASKS.lazy("brain_age_slice", "fedsim.tasks.brain_age:BrainAgeSliceTask",
           "Age from the central axial slice (2D): the same task at the scale of the 2D attack literature.")
TASKS.lazy("sex_classification", "fedsim.tasks.sex:SexClassificationTask",
           "Female / male from the volume (head size and shape differ a little); cross-entropy, error rate.")
TASKS.lazy("diagnosis", "fedsim.tasks.diagnosis:DiagnosisTask",
           "Neurodegeneration diagnosis (needs data.neurodegeneration): one logit, error rate, balanced accuracy.")
TASKS.lazy("diagnosis_slice", "fedsim.tasks.diagnosis:DiagnosisSliceTask",
           "The same diagnosis from the central axial slice (2D).")
TASKS.lazy("segmentation", "fedsim.tasks.segmentation:SegmentationTask",
           "Voxel-wise segmentation of a 3D volume (synthetic: CSF / GM / WM) with a MONAI UNet or SegResNet.")
TASKS.lazy("segmentation_slice", "fedsim.tasks.segmentation:SegmentationSliceTask",
           "The same tissues on the central axial slice (2D UNet).")
TASKS.lazy("clinical", "fedsim.tasks.clinical:ClinicalTask",
           "A two-valued column of the clinical records (task.target) from the others, by an MLP (model mlp).")

__all__ = ["TASKS", "Task"]
