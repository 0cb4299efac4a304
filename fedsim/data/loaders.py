"""Dataset plug-ins for data a user already has on disk: ixi, ixi_tiny, msd, bids, nifti_csv.

Nothing here downloads. A layout (fedsim/data/layouts.py) lists the subjects of ``data.path``;
every volume is preprocessed (fedsim/data/preprocess.py) once, and the cohort is cached under
``$FEDSIM_CACHE/cohorts`` keyed by the source files (names, sizes, mtimes) and the parameters, with
the same lock and atomic write as the synthetic cohort, so parallel clients read, never rebuild.
Damaged files are skipped and counted in the summary printed at load (errors with ``data.strict``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fedsim.data.datasets import DATASETS, Dataset
from fedsim.data.layouts import LAYOUTS
from fedsim.data.partition import TEST, client_names, read_assignment
from fedsim.data.preprocess import Preprocessing, Volume, preprocess_many
from fedsim.data.synthetic import Cohort, _cache_dir, _exclusive
from fedsim.data.tables import Scan, Subject
from fedsim.scenario import DISK_DATASETS, DataConfig, Scenario, ScenarioError

LOADER_VERSION = "1"  # bump when preprocessing changes: it invalidates every cached disk cohort
_ARRAYS = ("images", "age", "bio_age", "sex", "site")


@dataclass
class DiskCohort(Cohort):
    """A cohort read from disk: also the subject ids and metadata columns (for partitioning)."""

    subjects: list[str] = field(default_factory=list)
    columns: dict[str, list[str]] = field(default_factory=dict)
    label_names: dict[int, str] = field(default_factory=dict)  # class id -> name, where the dataset says
    summary: str = ""


class DiskDataset(Dataset):
    """Base of the on-disk layouts; `layout` names the scanner in fedsim.data.layouts."""

    layout: ClassVar[str]

    def load(self, config: DataConfig, *, seed: int) -> DiskCohort:
        return load_disk(self.layout, config)

    @classmethod
    def check_scenario(cls, scenario: Scenario) -> None:
        """Cheap checks for `fedsim validate`: files exist, the task's targets too, clients match groups."""
        check_disk(cls.layout, scenario)


def _register(name: str, doc: str) -> None:
    cls = type(f"{name.title().replace('_', '')}Dataset", (DiskDataset,), {"layout": name, "__doc__": doc})
    DATASETS.register(name)(cls)


_register("ixi", "IXI T1 brains from data.path (IXI###-Guys|HH|IOP-####-T1.nii.gz + IXI.xls); age, 3 sites")
_register("ixi_tiny", "FLamby Fed-IXITiny from data.path (T1 + brain mask per subject, metadata_tiny.csv)")
_register("msd", "Medical Segmentation Decathlon task folder from data.path (dataset.json, imagesTr, labelsTr)")
_register("bids", "BIDS dataset from data.path (participants.tsv age, sub-*/[ses-*/]anat/*_T1w.nii.gz)")
_register("nifti_csv", "A folder of NIfTI files + a CSV (path, age, optional sex / site / label) at data.path")
assert set(LAYOUTS) == set(DISK_DATASETS), "fedsim.scenario.DISK_DATASETS must list every layout"


# --------------------------------------------------------------------------- scanning


def scan_subjects(layout: str, config: DataConfig) -> tuple[Scan, list[Subject]]:
    """The layout's scan and the subjects to read (capped by data.max_subjects, balanced over sites)."""
    scan = LAYOUTS[layout](config)
    errors = [s for s in scan.skipped if s[2]]
    if config.strict and errors:
        what, reason, _ = errors[0]
        raise ScenarioError(f"{what}: {reason} (data.strict is on; {len(errors)} such problem(s))")
    subjects = _cap(sorted(scan.subjects, key=lambda s: s.id), config.max_subjects)
    if not subjects:
        raise ScenarioError(f"data.path: no usable subjects in {config.path} ({_skip_line(scan.skipped)})")
    return scan, subjects


def _cap(subjects: list[Subject], limit: int | None) -> list[Subject]:
    """Round-robin over sites in id order, so a cap keeps every site represented."""
    if limit is None or limit >= len(subjects):
        return subjects
    by_site: dict[str, list[Subject]] = {}
    for s in subjects:
        by_site.setdefault(s.site, []).append(s)
    queues, chosen = [by_site[k] for k in sorted(by_site)], []
    while len(chosen) < limit:
        for q in queues:
            if q and len(chosen) < limit:
                chosen.append(q.pop(0))
    return sorted(chosen, key=lambda s: s.id)


def check_disk(layout: str, scenario: Scenario) -> None:
    """Validate an on-disk scenario without preprocessing: a one-line ScenarioError on any mismatch."""
    config, clients = scenario.data, scenario.federation.clients
    _, subjects = scan_subjects(layout, config)
    need = task_needs(scenario.task.name)
    if need == "age" and all(math.isnan(s.age) for s in subjects):
        raise ScenarioError(f"task.name: {scenario.task.name} needs ages, but dataset '{layout}' in "
                            f"{config.path} has none")
    if need == "sex" and all(s.sex < 0 for s in subjects):
        raise ScenarioError(f"task.name: {scenario.task.name} needs sex, but dataset '{layout}' has none")
    if need == "label" and all(s.label is None for s in subjects):
        raise ScenarioError(f"task.name: {scenario.task.name} needs label maps, but dataset '{layout}' "
                            f"in {config.path} has none")
    part, columns = config.partition, _columns(subjects)
    if part.by == "dirichlet" and all(math.isnan(s.age) for s in subjects):
        raise ScenarioError(f"data.partition.by: dirichlet skews ages, but dataset '{layout}' has none; "
                            "use iid, site or column")
    for key, name in (("column", part.column), ("test_column", part.test_column)):
        if name is not None and name not in columns:
            raise ScenarioError(f"data.partition.{key}: no metadata column '{name}' in dataset '{layout}' "
                                f"(available: {', '.join(sorted(columns))})")
    groups = None
    if part.by == "site":
        groups, what = sorted(set(columns["site"])), "sites"
    elif part.by == "column":
        groups, what = sorted(set(columns[part.column])), f"values of '{part.column}'"
    elif part.by == "file":
        try:
            assignment = read_assignment(part.file)
        except ValueError as exc:
            raise ScenarioError(str(exc)) from None
        groups, what = client_names(assignment), "clients in data.partition.file"
        if not any(s.id in assignment for s in subjects):
            raise ScenarioError(f"data.partition.file: none of its subjects is in {config.path} "
                                f"(ids here look like {', '.join(s.id for s in subjects[:3])})")
    if groups is not None and len(groups) != clients:
        shown = ", ".join(groups[:8]) + (", ..." if len(groups) > 8 else "")
        raise ScenarioError(f"federation.clients: is {clients}, but {config.path} has {len(groups)} {what} "
                            f"({shown}); set federation.clients: {len(groups)} or another data.partition.by")
    if part.test_column is not None and not any(v.lower() == TEST for v in columns[part.test_column]):
        raise ScenarioError(f"data.partition.test_column: no subject has '{TEST}' in column '{part.test_column}'")


def task_needs(task: str) -> str | None:
    """The cohort field a built-in task learns from (by its name): 'age', 'sex', 'label' or None."""
    if task.startswith("brain_age"):
        return "age"
    if task.startswith("sex"):
        return "sex"
    return "label" if "seg" in task else None


def _columns(subjects: list[Subject]) -> dict[str, list[str]]:
    """Metadata columns over all subjects ('' where a subject lacks one); `site` always present."""
    keys = sorted({k for s in subjects for k in s.columns} - {"site"})
    out = {k: [str(s.columns.get(k, "")) for s in subjects] for k in keys}
    out["site"] = [s.site for s in subjects]
    return out


# --------------------------------------------------------------------------- loading and the cache


def load_disk(layout: str, config: DataConfig, *, cache_dir: str | os.PathLike | None = None,
              workers: int | None = None, log: Callable[[str], None] = print) -> DiskCohort:
    """The preprocessed cohort of ``config.path``, from the cache when its sources and parameters match."""
    scan, subjects = scan_subjects(layout, config)
    prep = Preprocessing.for_data(shape=config.shape, spacing=config.spacing, normalize=config.normalize,
                                  window=config.window, modality=scan.modality)
    path = _cache_dir(cache_dir) / f"{layout}-{fingerprint(layout, config, scan, subjects, prep)}.npz"
    cohort, how = _read(path), "from the cache"
    if cohort is None:
        with _exclusive(path.with_suffix(".lock")):
            cohort = _read(path)  # another process may have built it while we waited
            if cohort is None:
                t0 = time.perf_counter()
                cohort = _build(layout, config, scan, subjects, prep, workers)
                _write(path, cohort)
                how = f"preprocessed in {time.perf_counter() - t0:.1f} s, cached"
    log(f"data {layout}: {config.path} ({len(cohort)} subjects, {how})\n{cohort.summary}")
    return cohort


def fingerprint(layout: str, config: DataConfig, scan: Scan, subjects: list[Subject], prep: Preprocessing) -> str:
    """Hash of every source file's name, size and mtime, and of every parameter that changes the arrays."""
    files = [p for s in subjects for p in (s.image, s.label) if p is not None] + list(scan.metadata)
    stats = []
    for p in files:
        st = p.stat()
        stats.append((str(p), st.st_size, st.st_mtime_ns))
    params = {k: getattr(config, k) for k in ("max_subjects", "strict", "csv", "target_column", "age_column",
                                               "site_column")}
    payload = json.dumps({"layout": layout, "version": LOADER_VERSION, "root": str(config.path.expanduser().resolve()),
                          "files": stats, "params": params, "prep": asdict(prep)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _build(layout: str, config: DataConfig, scan: Scan, subjects: list[Subject], prep: Preprocessing,
           workers: int | None) -> DiskCohort:
    results = preprocess_many([(s.image, s.label) for s in subjects], prep, workers=workers)
    skipped = list(scan.skipped)
    kept: list[tuple[Subject, Volume]] = []
    for subject, result in zip(subjects, results, strict=True):
        if isinstance(result, str):
            skipped.append((str(subject.image.relative_to(config.path.expanduser())), result, True))
        else:
            kept.append((subject, result))
    bad = [s for s in skipped if s[2]]
    if config.strict and bad:
        raise ScenarioError(f"{bad[0][0]}: {bad[0][1]} (data.strict is on)")
    if not kept:
        raise ScenarioError(f"data.path: no readable subjects in {config.path} ({_skip_line(skipped)})")
    site_names = sorted({s.site for s, _ in kept})
    has_labels = any(v.label is not None for _, v in kept)
    side = prep.shape
    age = np.array([s.age for s, _ in kept], dtype=np.float32)
    cohort = DiskCohort(
        images=np.stack([v.image for _, v in kept]),
        labels=np.stack([v.label if v.label is not None else np.zeros((side,) * 3, np.uint8) for _, v in kept])
        if has_labels else np.zeros((len(kept),) + (side,) * 3, np.uint8),
        age=age, bio_age=age.copy(),  # no biological age is known for real subjects
        sex=np.array([s.sex for s, _ in kept], dtype=np.int8),
        site=np.array([site_names.index(s.site) for s, _ in kept], dtype=np.int16),
        site_names=site_names,
        subjects=[s.id for s, _ in kept],
        columns=_columns([s for s, _ in kept]),
        label_names=dict(scan.label_names or {}),
    )
    cohort.summary = summarize(cohort, [v for _, v in kept], skipped, prep, scan)
    return cohort


def summarize(cohort: DiskCohort, volumes: list[Volume], skipped: list[tuple[str, str, bool]],
              prep: Preprocessing, scan: Scan) -> str:
    """What was read and what was left out: printed (and cached) whenever the cohort is loaded."""
    counts = Counter(cohort.site_names[i] for i in cohort.site)
    spacings = [v.spacing for v in volumes]
    zooms = np.array([v.source_zooms for v in volumes])
    fit = "data.spacing" if prep.spacing else "fit to the field of view"
    norm = f"window {prep.window[0]:g}..{prep.window[1]:g}" if prep.normalize == "window" else prep.normalize
    lines = [
        f"  subjects: {len(cohort)} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})",
        f"  volumes: {prep.shape}^3 at {_span(spacings)} mm ({fit}); source voxels {_span(zooms.ravel())} mm; "
        f"{scan.modality}, intensity {norm}",
    ]
    finite = cohort.age[np.isfinite(cohort.age)]
    if len(finite):
        lines.append(f"  target age: {finite.min():.1f}-{finite.max():.1f} y (mean {finite.mean():.1f}, "
                     f"{len(finite)} of {len(cohort)} known)")
    if cohort.labels.any():
        names = scan.label_names or {}
        classes = np.unique(cohort.labels)
        lines.append("  label classes: " + ", ".join(f"{c} {names.get(int(c), '')}".strip() for c in classes))
    if skipped:
        lines.append(f"  {_skip_line(skipped, detail=True)}")
    return "\n".join(lines)


def _span(values) -> str:
    lo, hi = float(np.min(values)), float(np.max(values))
    return f"{lo:.2f}" if abs(hi - lo) < 0.005 else f"{lo:.2f}-{hi:.2f}"


def _skip_line(skipped: list[tuple[str, str, bool]], *, detail: bool = False) -> str:
    """Counts by reason (the text before ': '), with examples; one line, or one line per reason."""
    if not skipped:
        return "nothing matched"
    by_reason: dict[str, list[str]] = {}
    for what, reason, _ in skipped:
        key, _, specifics = reason.partition(": ")
        by_reason.setdefault(key, []).append(f"{what}: {specifics}" if specifics else what)
    ranked = sorted(by_reason.items(), key=lambda kv: -len(kv[1]))
    if not detail:
        return f"{len(skipped)} left out: " + "; ".join(f"{len(v)} x {k} (e.g. {v[0]})" for k, v in ranked[:4])
    lines = [f"{len(skipped)} left out:"]
    for reason, items in ranked:
        more = f", and {len(items) - 2} more" if len(items) > 2 else ""
        lines.append(f"    {len(items)} x {reason} ({'; '.join(items[:2])}{more})")
    return "\n".join(lines)


def _read(path: Path) -> DiskCohort | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in _ARRAYS}
            labels = npz["labels"] if "labels" in npz.files else np.zeros(arrays["images"].shape, np.uint8)
            meta: dict[str, Any] = json.loads(str(npz["meta"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return DiskCohort(**arrays, labels=labels, site_names=meta["site_names"], subjects=meta["subjects"],
                      columns=meta["columns"], summary=meta["summary"],
                      label_names={int(k): v for k, v in meta.get("label_names", {}).items()})


def _write(path: Path, cohort: DiskCohort) -> None:
    """Temporary file + rename, as for synthetic cohorts: readers never see half a file."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"site_names": cohort.site_names, "subjects": cohort.subjects, "columns": cohort.columns,
            "label_names": cohort.label_names, "summary": cohort.summary}
    arrays = {k: getattr(cohort, k) for k in _ARRAYS}
    if cohort.labels.any():
        arrays["labels"] = cohort.labels  # brain-age sets have no labels: zeros are rebuilt on read
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays, meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
