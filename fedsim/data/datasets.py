"""Dataset plug-ins: turn the scenario's `data` section into a cohort of volumes with targets."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from fedsim.registry import registry
from fedsim.seeding import derive_seed

if TYPE_CHECKING:  # the generators load where a cohort is loaded (the CT one needs MONAI)
    from fedsim.data.synthetic import Cohort
    from fedsim.scenario import DataConfig


class Dataset(ABC):
    """Base of dataset plug-ins. `load` must be deterministic: every client process calls it."""

    scans: ClassVar[bool] = True  # False: a table of clinical records without images

    @classmethod
    def record_schema(cls, config: DataConfig) -> dict[str, int] | None:
        """The columns of its clinical records (`Cohort.records`) -> number of categories (0: numeric),
        known without loading anything; None: the dataset has no records."""
        return None

    @abstractmethod
    def load(self, config: DataConfig, *, seed: int) -> Cohort:
        """Return the whole cohort; partitioning happens elsewhere."""

    def population(self, config: DataConfig, *, seed: int, n_subjects: int) -> Cohort | None:
        """Other people of the same population, none of them in the cohort: what an attacker may hold
        beside the federation (public scans from the same sites and scanners). None: the dataset
        has no such sample, and an attacker has only the server's own held-out scans."""
        return None


DATASETS = registry("dataset", base=Dataset)


@DATASETS.register("synthetic_brain")
class SyntheticBrain(Dataset):
    """Embedded synthetic T1 brain cohort (MNI152-based, sites differ in contrast/noise/age)."""

    def load(self, config: DataConfig, *, seed: int) -> Cohort:
        from fedsim.data.clinical import synthetic_clinical
        from fedsim.data.synthetic import CohortSpec, load_cohort

        spec = CohortSpec(n_subjects=config.n_subjects, shape=config.shape, n_sites=config.sites, seed=seed,
                          neurodegeneration=config.neurodegeneration)
        cohort = load_cohort(spec)  # cached under $FEDSIM_CACHE (or ~/.cache/fedsim)
        cohort.records = synthetic_clinical(age=cohort.age, sex=cohort.sex, site=cohort.site, labels=cohort.labels,
                                            site_names=cohort.site_names, diagnosis=cohort.diagnosis, seed=seed)
        return cohort

    @classmethod
    def record_schema(cls, config: DataConfig) -> dict[str, int]:
        from fedsim.data.clinical import synthetic_schema

        return synthetic_schema(sites=config.sites, neurodegeneration=config.neurodegeneration)

    def population(self, config: DataConfig, *, seed: int, n_subjects: int) -> Cohort:
        """The same generator and sites with a seed of its own: new subjects."""
        return self.load(config.model_copy(update={"n_subjects": n_subjects}), seed=derive_seed(seed, "population"))


@DATASETS.register("synthetic_head_ct")
class SyntheticHeadCT(Dataset):
    """Embedded synthetic head CT of the same subjects (skull, HU tissues, brain window, per-site noise)."""

    def load(self, config: DataConfig, *, seed: int) -> Cohort:
        from fedsim.data.synthetic_ct import CTSpec, load_ct_cohort

        spec = CTSpec(n_subjects=config.n_subjects, shape=config.shape, n_sites=config.sites, seed=seed)
        return load_ct_cohort(spec)  # cached beside the MRI cohort it is made from

    def population(self, config: DataConfig, *, seed: int, n_subjects: int) -> Cohort:
        return self.load(config.model_copy(update={"n_subjects": n_subjects}), seed=derive_seed(seed, "population"))


@DATASETS.register("diabetes")
class Diabetes(Dataset):
    """scikit-learn's diabetes table (442 real patients' clinical records; no images): for tabular
    tasks and attribute inference. No sites (partition it `iid` or `dirichlet`) and no population
    sample beyond the table."""

    scans: ClassVar[bool] = False  # listed in fedsim.scenario.TABLE_DATASETS

    def load(self, config: DataConfig, *, seed: int) -> Cohort:
        import numpy as np

        from fedsim.data.clinical import diabetes
        from fedsim.data.synthetic import Cohort

        records = diabetes()
        n, empty = len(records), np.zeros((len(records), 0, 0, 0), np.float32)
        age = records.columns["age"].astype(np.float32)
        return Cohort(images=empty, labels=empty.astype(np.uint8), age=age, bio_age=age,
                      sex=records.columns["sex"].astype(np.int8), site=np.zeros(n, np.int16), site_names=["all"],
                      records=records)

    @classmethod
    def record_schema(cls, config: DataConfig) -> dict[str, int]:
        from fedsim.data.clinical import diabetes_schema

        return diabetes_schema()


def load_dataset(config: DataConfig, *, seed: int) -> Cohort:
    """Load the cohort named by ``config.dataset``."""
    return DATASETS.get(config.dataset)().load(config, seed=seed)


def load_population(config: DataConfig, *, seed: int, n_subjects: int) -> Cohort | None:
    """`n_subjects` people of the cohort's population outside it, if the dataset has them."""
    return DATASETS.get(config.dataset)().population(config, seed=seed, n_subjects=n_subjects)
