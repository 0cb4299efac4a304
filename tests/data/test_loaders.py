"""On-disk layouts read through the real loaders: tiny NIfTI folders written into tmp_path.

Each folder holds the awkward cases a real one has: missing and conflicting ages, a truncated
.nii.gz, a label of the wrong shape, a macOS '._' file, a BIDS 'n/a' age, a CSV age that is not a number.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from fedsim.data.loaders import DiskCohort, load_disk
from fedsim.data.partition import split_federation
from fedsim.data.preprocess import Preprocessing, preprocess
from fedsim.loading import load_scenario, validate_scenario
from fedsim.scenario import DataConfig, ScenarioError
from tests.conftest import REPO

SIDE = 16


# --------------------------------------------------------------------------- writing tiny datasets


def write_nifti(path: Path, data: np.ndarray, zooms=(1.5, 1.5, 1.5), affine: np.ndarray | None = None) -> Path:
    """A NIfTI file with the given voxel size (RAS affine unless one is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(data, np.diag([*zooms, 1.0]) if affine is None else affine).to_filename(path)
    return path


def head(rng: np.random.Generator, shape=(14, 16, 12), value: float = 100.0) -> np.ndarray:
    """A bright ellipsoid in a dark box, with noise: enough structure for normalisation to matter."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid**2).sum(0) < 0.6
    return (value * inside + rng.normal(0, 5, shape)).astype(np.float32)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_ixi(root: Path, *, per_site: int = 4, xls: bool = True, seed: int = 0) -> Path:
    """IXI-T1 files for Guys / HH / IOP, plus IXI.xls (or .csv); subject 900 lacks an age, 901 has two,
    902 is truncated on disk."""
    rng = np.random.default_rng(seed)
    rows = []
    n = 0
    for hospital in ("Guys", "HH", "IOP"):
        for _ in range(per_site):
            n += 1
            name = f"IXI{n:03d}-{hospital}-{1000 + n}-T1.nii.gz"
            write_nifti(root / "IXI-T1" / name, head(rng), zooms=(1.2, 1.2, 1.8))
            rows.append((n, 1 + n % 2, 20.0 + 3.5 * n))
    write_nifti(root / "IXI-T1" / "IXI900-HH-1900-T1.nii.gz", head(rng))
    rows.append((900, 1, ""))
    write_nifti(root / "IXI-T1" / "IXI901-IOP-1901-T1.nii.gz", head(rng))
    rows += [(901, 2, 40.0), (901, 2, 44.0)]
    truncate(write_nifti(root / "IXI-T1" / "IXI902-Guys-1902-T1.nii.gz", head(rng)))
    rows.append((902, 1, 50.0))
    write_nifti(root / "IXI-T2" / "IXI001-Guys-1001-T2.nii.gz", head(rng))  # another modality: ignored
    header = ("IXI_ID", "SEX_ID", "HEIGHT", "AGE")
    if xls:
        xlwt = pytest.importorskip("xlwt")
        book = xlwt.Workbook()
        sheet = book.add_sheet("Table")
        for c, name in enumerate(header):
            sheet.write(0, c, name)
        for r, (ixi_id, sex, age) in enumerate(rows, start=1):
            for c, value in enumerate((ixi_id, sex, 170, age)):
                sheet.write(r, c, value)
        book.save(str(root / "IXI.xls"))
    else:
        lines = [",".join(header)] + [f"{i},{s},170,{a}" for i, s, a in rows]
        (root / "IXI.csv").write_text("\n".join(lines) + "\n")
    return root


def write_ixi_tiny(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(1)
    meta = ["Patient ID,Manufacturer,Split"]
    for i in range(1, n + 1):
        hospital = ("Guys", "HH", "IOP")[i % 3]
        name = f"IXI{i:03d}-{hospital}-{2000 + i}"
        image = head(rng, (12, 14, 12))
        write_nifti(root / "IXI_sample" / name / "T1" / f"{name}_image.nii.gz", image, zooms=(1.5, 1.5, 1.5))
        label = (image > 50).astype(np.uint8) if i != n else np.zeros((10, 10, 10), np.uint8)  # last: wrong shape
        write_nifti(root / "IXI_sample" / name / "label" / f"{name}_label.nii.gz", label, zooms=(1.5, 1.5, 1.5))
        meta.append(f"{i},{i % 3},{'test' if i % 2 else 'train'}")
    (root / "metadata_tiny.csv").write_text("\n".join(meta) + "\n")
    return root


def write_msd(root: Path, n: int = 4, *, modality: str = "CT", channels: int = 1) -> Path:
    rng = np.random.default_rng(2)
    task = root / "Task09_Spleen"
    training = []
    for i in range(n):
        image = head(rng, (14, 14, 10), value=300.0) - 100.0
        organ = (image > 100).astype(np.uint8) * (1 + i % 2)
        if channels > 1:
            image = np.stack([image] + [np.zeros_like(image)] * (channels - 1), axis=-1)
        write_nifti(task / "imagesTr" / f"spleen_{i}.nii.gz", image, zooms=(0.8, 0.8, 2.5))
        write_nifti(task / "labelsTr" / f"spleen_{i}.nii.gz", organ, zooms=(0.8, 0.8, 2.5))
        training.append({"image": f"./imagesTr/spleen_{i}.nii.gz", "label": f"./labelsTr/spleen_{i}.nii.gz"})
    (task / "imagesTr" / "._spleen_0.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (task / "dataset.json").write_text(json.dumps({
        "name": "Spleen", "modality": {"0": modality}, "labels": {"0": "background", "1": "spleen", "2": "tumour"},
        "numTraining": n, "training": training, "test": []}))
    return task


def write_bids(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(3)
    rows = ["participant_id\tage\tsex\tscanner"]
    for i in range(1, n + 1):
        sub = f"sub-{i:02d}"
        anat = root / sub / ("ses-1" if i % 2 else "") / "anat"
        write_nifti(anat / f"{sub}_T1w.nii.gz", head(rng))
        age = "n/a" if i == n else f"{30 + i}"
        rows.append(f"{sub}\t{age}\t{'F' if i % 2 else 'M'}\t{'prisma' if i % 3 else 'skyra'}")
    write_nifti(root / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_T1w.nii.gz", head(rng))
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


def write_nifti_csv(root: Path, n: int = 6, *, bad_age: bool = True) -> Path:
    rng = np.random.default_rng(4)
    rows = ["path,age,sex,site"]
    for i in range(n):
        write_nifti(root / "scans" / f"s{i}.nii.gz", head(rng))
        age = "old" if bad_age and i == 0 else f"{40 + i}"
        rows.append(f"scans/s{i}.nii.gz,{age},{'M' if i % 2 else 'F'},{'a' if i % 2 else 'b'}")
    (root / "subjects.csv").write_text("\n".join(rows) + "\n")
    return root


def load(dataset: str, path: Path, cache: Path, **data) -> tuple[DiskCohort, str]:
    out: list[str] = []
    config = DataConfig(dataset=dataset, path=path, shape=SIDE, **data)
    cohort = load_disk(dataset, config, cache_dir=cache, workers=1, log=out.append)
    return cohort, "\n".join(out)


# --------------------------------------------------------------------------- layouts


def test_ixi_xls_ages_sites_skips_and_cache(tmp_path: Path):
    root = write_ixi(tmp_path / "IXI")
    cohort, summary = load("ixi", root, tmp_path / "cache")
    assert cohort.images.shape == (12, SIDE, SIDE, SIDE) and cohort.images.dtype == np.float32
    assert cohort.labels.shape == cohort.images.shape and not cohort.labels.any()
    assert cohort.site_names == ["Guys", "HH", "IOP"] and np.bincount(cohort.site).tolist() == [4, 4, 4]
    assert cohort.subjects[0] == "IXI001" and cohort.age[0] == pytest.approx(23.5)
    assert set(cohort.sex.tolist()) == {0, 1}  # SEX_ID 1 male -> 1, 2 female -> 0
    assert set(cohort.columns["manufacturer"]) == {"Philips", "GE"}
    assert abs(float(cohort.images[0].mean())) < 1e-3  # z-scored per volume
    assert "Guys 4, HH 4, IOP 4" in summary and "preprocessed" in summary
    for text in ("no AGE in IXI.xls", "different ages", "unreadable NIfTI", "IXI902-Guys-1902-T1.nii.gz"):
        assert text in summary, text
    again, summary2 = load("ixi", root, tmp_path / "cache")
    assert "from the cache" in summary2 and "no AGE" in summary2
    np.testing.assert_array_equal(again.images, cohort.images)
    touched = root / "IXI-T1" / "IXI001-Guys-1001-T1.nii.gz"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert "preprocessed" in load("ixi", root, tmp_path / "cache")[1]  # a changed source invalidates the cache


def test_ixi_csv_and_strict_mode(tmp_path: Path):
    root = write_ixi(tmp_path / "IXI", per_site=2, xls=False)
    assert len(load("ixi", root, tmp_path / "c")[0]) == 6
    with pytest.raises(ScenarioError, match=r"IXI902-Guys-1902-T1.nii.gz: unreadable NIfTI: .*data.strict"):
        load("ixi", root, tmp_path / "c2", strict=True)


def test_ixi_tiny_labels_split_and_wrong_shape(tmp_path: Path):
    root = write_ixi_tiny(tmp_path / "tiny")
    cohort, summary = load("ixi_tiny", root, tmp_path / "cache")
    assert len(cohort) == 5 and "1 x label shape differs from image shape (" in summary
    assert "IXI006-Guys-2006_image.nii.gz: (10, 10, 10) vs (12, 14, 12)" in summary
    assert set(np.unique(cohort.labels)) == {0, 1} and cohort.labels.dtype == np.uint8
    assert np.isnan(cohort.age).all() and (cohort.sex == -1).all()
    assert cohort.site_names == ["Guys", "HH", "IOP"] and set(cohort.columns["split"]) == {"train", "test"}
    split = split_federation(site=cohort.site, age=cohort.age, config=DataConfig(
        partition={"by": "iid", "test_column": "split", "min_size": 1}, val_fraction=0), n_clients=2, seed=0,
        subjects=cohort.subjects, columns=cohort.columns)
    assert [cohort.columns["split"][i] for i in split.test] == ["test"] * len(split.test)


@pytest.mark.parametrize("channels", [1, 2])
def test_msd_ct_window_resource_forks_and_channels(tmp_path: Path, channels: int):
    task = write_msd(tmp_path / "msd", modality="CT" if channels == 1 else "MRI", channels=channels)
    cohort, summary = load("msd", tmp_path / "msd", tmp_path / "cache")  # the parent of the task folder works
    assert len(cohort) == 4 and cohort.site_names == ["Task09_Spleen"]
    assert "macOS resource fork" in summary and "1 spleen, 2 tumour" in summary
    assert set(np.unique(cohort.labels)) == {0, 1, 2} and cohort.label_names[1] == "spleen"
    if channels == 1:  # CT: HU window scaled to 0..1
        assert cohort.images.min() >= 0 and cohort.images.max() <= 1 and "window -175..250" in summary
    else:
        assert "zscore" in summary
    assert np.isnan(cohort.age).all()
    assert load("msd", task, tmp_path / "cache")[0].subjects == cohort.subjects


def test_bids_na_age_sessions_and_site_column(tmp_path: Path):
    root = write_bids(tmp_path / "bids")
    cohort, summary = load("bids", root, tmp_path / "cache", site_column="scanner")
    assert cohort.subjects == [f"sub-{i:02d}" for i in range(1, 6)]
    assert "age is n/a" in summary and "another session" in summary
    assert cohort.site_names == ["prisma", "skyra"] and cohort.sex.tolist() == [0, 1, 0, 1, 0]
    assert load("bids", root, tmp_path / "cache")[0].site_names == ["all"]  # no site column: one site
    with pytest.raises(ScenarioError, match="no 'years' column"):
        load("bids", root, tmp_path / "cache", age_column="years")


def test_nifti_csv_bad_age_missing_column_and_empty_folders(tmp_path: Path):
    root = write_nifti_csv(tmp_path / "nc")
    cohort, summary = load("nifti_csv", root, tmp_path / "cache")
    assert len(cohort) == 5 and "1 x age is not a number (subjects.csv line 2 (scans/s0.nii.gz): 'old')" in summary
    assert cohort.site_names == ["a", "b"]
    with pytest.raises(ScenarioError, match=r"subjects.csv line 2 .*: age is not a number: 'old'"):
        load("nifti_csv", root, tmp_path / "cache", strict=True)
    with pytest.raises(ScenarioError, match=r"subjects.csv: no 'brain_age' column for data.target_column"):
        load("nifti_csv", root, tmp_path / "cache", target_column="brain_age")
    broken = write_nifti_csv(tmp_path / "broken", n=2, bad_age=False)
    for scan in (broken / "scans").iterdir():
        truncate(scan)
    with pytest.raises(ScenarioError, match=r"^data.path: no readable subjects in .*\(2 left out: 2 x unreadable"):
        load("nifti_csv", broken, tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    for dataset, message in (("ixi", "no IXI T1 images"), ("ixi_tiny", "no Fed-IXITiny images"),
                             ("msd", "expected one MSD task folder"), ("bids", "no participants.tsv"),
                             ("nifti_csv", "no subjects.csv")):
        with pytest.raises(ScenarioError, match=message) as err:
            load(dataset, tmp_path / "empty", tmp_path / "cache")
        assert str(tmp_path / "empty") in str(err.value) and "\n" not in str(err.value)


def test_preprocessing_reorients_resamples_and_keeps_labels_aligned(tmp_path: Path):
    rng = np.random.default_rng(5)
    image = head(rng, (20, 10, 8))
    image[:4] += 500  # a bright slab at the low-x (left) end
    slab = np.zeros(image.shape, np.uint8)
    slab[:4] = 1
    ras = write_nifti(tmp_path / "ras.nii.gz", image, zooms=(1.0, 2.0, 2.0))
    ras_label = write_nifti(tmp_path / "ras_label.nii.gz", slab, zooms=(1.0, 2.0, 2.0))
    flipped = np.diag([-1.0, 2.0, 2.0, 1.0])
    flipped[0, 3] = 19.0  # x stored right-to-left: same anatomy, other voxel order
    las = write_nifti(tmp_path / "las.nii.gz", image[::-1].copy(), affine=flipped)
    las_label = write_nifti(tmp_path / "las_label.nii.gz", slab[::-1].copy(), affine=flipped)
    prep = Preprocessing(shape=SIDE)
    a, b = preprocess(ras, ras_label, prep), preprocess(las, las_label, prep)
    np.testing.assert_allclose(a.image, b.image, atol=1e-4)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.source_zooms == (1.0, 2.0, 2.0) and a.spacing == pytest.approx(20 / SIDE)  # fits the 20 mm FOV
    assert a.image[:3].mean() > a.image[-3:].mean()  # the slab stays on the left (RAS)
    assert a.label[:3, :, 2:13].all() and not a.label[4:].any()  # z: 13 voxels padded to 16, 1 before
    fixed = preprocess(ras, None, Preprocessing(shape=SIDE, spacing=2.0, normalize="percentile"))
    assert fixed.image.shape == (SIDE,) * 3 and 0 <= fixed.image.min() and fixed.image.max() <= 1


# --------------------------------------------------------------------------- partitioning and validation


def test_partition_by_column_and_by_file(tmp_path: Path):
    n = 30
    subjects = [f"s{i}" for i in range(n)]
    columns = {"site": ["x"] * n, "scanner": ["ge" if i % 3 else "siemens" for i in range(n)]}
    site, age = np.zeros(n, int), np.linspace(20, 80, n)
    cfg = DataConfig(partition={"by": "column", "column": "scanner", "min_size": 2})
    split = split_federation(site=site, age=age, config=cfg, n_clients=2, seed=0, subjects=subjects, columns=columns)
    for c, value in zip(split.clients, ["ge", "siemens"], strict=True):
        assert {columns["scanner"][i] for i in c.train + c.val} == {value}
    with pytest.raises(ValueError, match=r"federation.clients: is 3, but .*'scanner' has 2 values \(ge, siemens\)"):
        split_federation(site=site, age=age, config=cfg, n_clients=3, seed=0, subjects=subjects, columns=columns)
    mapping = {s: ("test" if i < 6 else f"hospital_{i % 2}") for i, s in enumerate(subjects[:-2])}
    for path in (tmp_path / "clients.json", tmp_path / "clients.csv"):
        if path.suffix == ".json":
            path.write_text(json.dumps(mapping))
        else:
            path.write_text("subject,client\n" + "".join(f"{s},{c}\n" for s, c in mapping.items()))
        cfg = DataConfig(partition={"by": "file", "file": str(path), "min_size": 2})
        split = split_federation(site=site, age=age, config=cfg, n_clients=2, seed=0, subjects=subjects,
                                 columns=columns)
        assert split.test == list(range(6))
        assert all(mapping[subjects[i]] == f"hospital_{k}" for k, c in enumerate(split.clients) for i in c.train)
        assert n - 1 not in [i for c in split.clients for i in c.train + c.val]  # unlisted: left out


def test_templates_need_a_path_then_validate(tmp_path: Path, capsys: pytest.CaptureFixture):
    from fedsim.cli import main

    templates = {"ixi_brain_age": write_ixi(tmp_path / "IXI", per_site=2),
                 "ixitiny_seg": write_ixi_tiny(tmp_path / "tiny"),
                 "msd_seg": write_msd(tmp_path / "msd"),
                 "bids_brain_age": write_bids(tmp_path / "bids"),
                 "nifti_csv_brain_age": write_nifti_csv(tmp_path / "nc")}
    for name, folder in templates.items():
        path = REPO / "scenarios" / "templates" / f"{name}.yaml"
        assert yaml.safe_load(path.read_text())["name"] == name
        with pytest.raises(ScenarioError, match=r"^data.path: required for dataset .*--set data.path="):
            load_scenario(path)
        if name.endswith("_seg") and "seg" not in _tasks():
            continue  # the segmentation task is not registered in this checkout
        sc = load_scenario(path, [f"data.path={folder}"])
        assert sc.data.path == folder
    with pytest.raises(SystemExit) as code:
        main(["validate", str(REPO / "scenarios/templates/ixi_brain_age.yaml"), "--set",
              f"data.path={tmp_path / 'IXI'}", "--set", "federation.clients=2"])
    assert code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "federation.clients: is 2, but" in err and "has 3 sites (Guys, HH, IOP)" in err and "\n" not in err


def _tasks() -> str:
    from fedsim.plugins import load_builtins

    return " ".join(load_builtins()["task"].names())


def test_validate_checks_task_targets_and_columns(tmp_path: Path):
    for part, message in (({"by": "column"}, "data.partition.column: required when by is 'column'"),
                          ({"by": "file"}, "data.partition.file: required when by is 'file'"),
                          ({"by": "file", "file": "/no/such.csv"}, "data.partition.file: partition file not found")):
        with pytest.raises(ScenarioError, match=message):
            validate_scenario({"name": "x", "data": {"partition": part}})
    root = write_msd(tmp_path / "msd")
    raw = {"name": "x", "data": {"dataset": "msd", "path": str(root), "partition": {"by": "iid"}},
           "federation": {"clients": 2}}
    with pytest.raises(ScenarioError, match="task.name: brain_age needs ages, but dataset 'msd'"):
        validate_scenario(raw)
    ixi = write_ixi(tmp_path / "IXI", per_site=2)
    raw = {"name": "x", "data": {"dataset": "ixi", "path": str(ixi), "partition": {"by": "column", "column": "coil"}},
           "federation": {"clients": 2}}
    with pytest.raises(ScenarioError, match=r"data.partition.column: no metadata column 'coil' .*manufacturer"):
        validate_scenario(raw)
    raw["data"]["partition"]["column"] = "manufacturer"
    assert validate_scenario(raw).data.partition.column == "manufacturer"
