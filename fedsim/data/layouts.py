"""Find the subjects of a dataset folder the user already has, without opening any image.

Each layout (IXI, Fed-IXITiny, Medical Segmentation Decathlon, BIDS, a NIfTI folder + CSV) lists its
subjects with their image, optional label map, targets and metadata, plus what it left out and why.
Scanning is cheap, so `fedsim validate` can run it; a folder with nothing usable is a ScenarioError.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

from fedsim.data.tables import Scan, Subject, age_rows, find_one, is_nifti, need_files, parse_age, parse_sex, read_table
from fedsim.scenario import DataConfig, ScenarioError

IXI_T1 = re.compile(r"^IXI(\d{3})-(Guys|HH|IOP)-(\d{4})-T1\.nii(\.gz)?$")
IXI_NAME = re.compile(r"^IXI(\d{3})-(Guys|HH|IOP)-(\d{4})")
IXI_SCANNER = {"Guys": ("Philips", "1.5T"), "HH": ("Philips", "3T"), "IOP": ("GE", "1.5T")}
FLAMBY_CENTERS = ("Guys", "HH", "IOP")  # Fed-IXITiny's Manufacturer code -> hospital (FLamby's CENTER_LABELS)


# --------------------------------------------------------------------------- IXI


def _ixi_key(value: str) -> str:
    """IXI_ID as three digits: 2, 2.0, 002 and IXI002 all name IXI002."""
    digits = value.upper().removeprefix("IXI").split(".")[0].strip()
    return digits.zfill(3) if digits.isdigit() else ""


def scan_ixi(config: DataConfig) -> Scan:
    """IXI: ``IXI{nnn}-{Guys|HH|IOP}-{nnnn}-T1.nii.gz`` anywhere below the folder, ages from IXI.xls."""
    root = config.path.expanduser()
    files = sorted(p for p in root.rglob("IXI*-T1.nii*") if IXI_T1.match(p.name))
    need_files(files, root, "IXI T1 images (IXI###-Guys|HH|IOP-####-T1.nii.gz)")
    table = find_one(root, ("IXI.xls", "IXI.csv", "IXI.tsv"))
    if table is None:
        raise ScenarioError(f"data.path: no IXI.xls (demographics with AGE and SEX_ID) in {root}")
    scan = Scan(subjects=[], metadata=[table])
    rows = read_table(table)
    if rows and not {"IXI_ID", "AGE"} <= set(rows[0]):
        raise ScenarioError(f"{table}: needs the columns IXI_ID and AGE (found: {', '.join(rows[0])})")
    by_id, problems = age_rows(table, rows, "IXI_ID", "AGE", key=_ixi_key)
    seen: set[str] = set()
    for path in files:
        nnn, hospital, _, _ = IXI_T1.match(path.name).groups()
        sid = f"IXI{nnn}"
        if sid in seen:
            scan.skip(path.name, "second T1 image of the same IXI_ID: first one used")
            continue
        seen.add(sid)
        found = _demographics(scan, path.name, nnn, by_id, problems, missing=f"no row in {table.name}: IXI_ID "
                              f"{int(nnn)}", no_age=f"no AGE in {table.name}")
        if found is None:
            continue
        age, row = found
        maker, field_strength = IXI_SCANNER[hospital]
        sex = {"1": 1, "2": 0}.get(row.get("SEX_ID", ""), -1)
        scan.subjects.append(Subject(id=sid, image=path, age=age, sex=sex, site=hospital, columns={
            "manufacturer": maker, "field_strength": field_strength, "scanner": f"{maker} {field_strength}"}))
    return scan


def scan_ixi_tiny(config: DataConfig) -> Scan:
    """Fed-IXITiny (FLamby): ``<subject>/T1/*_image.nii.gz`` + ``<subject>/label/*_label.nii.gz``.

    ``metadata_tiny.csv`` (Patient ID, Manufacturer 0/1/2 = Guys/HH/IOP, Split train/test) is used
    when present anywhere below the folder; otherwise the hospital comes from the subject's folder name
    and there is no predefined split. Ages and sex are joined from an IXI.xls when one is there."""
    root = config.path.expanduser()
    images = sorted(p for p in root.rglob("*_image.nii*") if p.parent.name == "T1" and is_nifti(p))
    need_files(images, root, "Fed-IXITiny images (<subject>/T1/*_image.nii.gz)")
    scan = Scan(subjects=[], label_names={0: "background", 1: "brain"})
    meta: dict[int, dict[str, str]] = {}
    meta_file = find_one(root, ("metadata_tiny.csv",))
    if meta_file is not None:
        scan.metadata.append(meta_file)
        meta = {int(r["Patient ID"]): r for r in read_table(meta_file) if r.get("Patient ID", "").isdigit()}
    demo: dict[str, tuple[float, dict[str, str]]] = {}
    xls = find_one(root, ("IXI.xls", "IXI.csv"))
    if xls is not None:
        scan.metadata.append(xls)
        demo = age_rows(xls, read_table(xls), "IXI_ID", "AGE", key=_ixi_key)[0]
    for image in images:
        subject_dir = image.parent.parent
        labels = sorted(p for p in (subject_dir / "label").glob("*_label.nii*") if is_nifti(p))
        if not labels:
            scan.skip(image.name, "no label: label/*_label.nii.gz missing", error=True)
            continue
        m = IXI_NAME.match(subject_dir.name) or IXI_NAME.match(image.name)
        if m is None:
            scan.skip(image.name, f"folder name is not IXI###-<hospital>-####: {subject_dir.name}")
            continue
        nnn, hospital = m.group(1), m.group(2)
        row = meta.get(int(nnn), {})
        code = row.get("Manufacturer", "")
        site = FLAMBY_CENTERS[int(code)] if code.isdigit() and int(code) < len(FLAMBY_CENTERS) else hospital
        age, demo_row = demo.get(nnn, (math.nan, {}))
        sex = {"1": 1, "2": 0}.get(demo_row.get("SEX_ID", ""), -1)
        scan.subjects.append(Subject(id=f"IXI{nnn}", image=image, label=labels[0], age=age, sex=sex, site=site,
                                     columns={"manufacturer": code or site, "split": row.get("Split", "").lower()}))
    return scan


# --------------------------------------------------------------------------- Medical Segmentation Decathlon


def scan_msd(config: DataConfig) -> Scan:
    """MSD: ``TaskNN_Name/dataset.json`` lists training {image, label} pairs in imagesTr / labelsTr."""
    root = config.path.expanduser()
    task_dir = root if (root / "dataset.json").is_file() else None
    if task_dir is None:
        tasks = sorted(p.parent for p in root.glob("*/dataset.json"))
        if len(tasks) != 1:
            found = ", ".join(p.name for p in tasks) or "none"
            raise ScenarioError(f"data.path: expected one MSD task folder with dataset.json in {root} "
                                f"(found: {found}); point data.path at the TaskNN_Name folder")
        task_dir = tasks[0]
    meta_path = task_dir / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
        training = meta["training"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ScenarioError(f"{meta_path}: not a valid MSD dataset.json ({exc})") from None
    modality = str((meta.get("modality") or {}).get("0", "MR"))
    labels = {int(k): str(v) for k, v in (meta.get("labels") or {}).items() if str(k).isdigit()}
    scan = Scan(subjects=[], metadata=[meta_path], modality="CT" if modality.upper() == "CT" else "MR",
                label_names=labels or None)
    for folder in ("imagesTr", "labelsTr"):
        forks = sorted((task_dir / folder).glob("._*"))
        for fork in forks:
            scan.skip(f"{folder}/{fork.name}", "macOS resource fork ('._' file): not an image")
    for entry in training:
        image, label = (task_dir / entry.get("image", ""), task_dir / entry.get("label", ""))
        if image.name.startswith("._"):
            continue
        if not image.is_file():
            scan.skip(entry.get("image", "?"), "missing: listed in dataset.json", error=True)
            continue
        if not label.is_file():
            scan.skip(image.name, f"missing label: {entry.get('label')}", error=True)
            continue
        sid = image.name.split(".nii")[0]
        scan.subjects.append(Subject(id=sid, image=image, label=label, site=task_dir.name,
                                     columns={"task": task_dir.name, "modality": modality}))
    need_files(scan.subjects, task_dir, "training images listed in dataset.json")
    return scan


# --------------------------------------------------------------------------- BIDS


def scan_bids(config: DataConfig) -> Scan:
    """BIDS: ``participants.tsv`` (age in ``data.age_column``) and ``sub-*/[ses-*/]anat/*_T1w.nii.gz``."""
    root = config.path.expanduser()
    table = root / "participants.tsv"
    if not table.is_file():
        raise ScenarioError(f"data.path: no participants.tsv in {root} (not a BIDS dataset folder)")
    rows = read_table(table)
    columns = list(rows[0]) if rows else []
    if "participant_id" not in columns:
        raise ScenarioError(f"{table}: no participant_id column (found: {', '.join(columns) or 'none'})")
    if config.age_column not in columns:
        raise ScenarioError(f"{table}: no '{config.age_column}' column (found: {', '.join(columns)}); "
                            "set data.age_column")
    site_col = _site_column(config, columns, table)
    images = sorted(p for p in root.glob("sub-*/anat/*_T1w.nii*") if is_nifti(p)) + sorted(
        p for p in root.glob("sub-*/ses-*/anat/*_T1w.nii*") if is_nifti(p))
    need_files(images, root, "T1w images (sub-*/[ses-*/]anat/*_T1w.nii.gz)")
    scan = Scan(subjects=[], metadata=[table])
    by_id, problems = age_rows(table, rows, "participant_id", config.age_column)
    first: dict[str, Path] = {}
    for image in sorted(images, key=lambda p: (p.relative_to(root).parts[0], str(p))):
        sid = image.relative_to(root).parts[0]
        if sid in first:
            scan.skip(image.name, "another session / run of a subject: first T1w used")
        first.setdefault(sid, image)
    for sid, image in sorted(first.items()):
        found = _demographics(scan, image.name, sid, by_id, problems, missing=f"no row in participants.tsv: {sid}",
                              no_age=f"{config.age_column} is n/a in participants.tsv")
        if found is None:
            continue
        age, row = found
        scan.subjects.append(Subject(id=sid, image=image, age=age, sex=parse_sex(row.get("sex", "")),
                                     site=(row.get(site_col) or "unknown") if site_col else "all",
                                     columns=dict(row)))
    return scan


def _site_column(config: DataConfig, columns: list[str], table: Path) -> str | None:
    if config.site_column is not None and config.site_column not in columns:
        raise ScenarioError(f"{table}: no '{config.site_column}' column for data.site_column "
                            f"(found: {', '.join(columns)})")
    return config.site_column or ("site" if "site" in columns else None)


# --------------------------------------------------------------------------- a folder of NIfTI + a CSV


def scan_nifti_csv(config: DataConfig) -> Scan:
    """A folder of NIfTI files and ``data.csv`` with ``path`` (relative), the target and optional
    ``sex``, ``site``, ``label`` (a label map's path) and ``subject`` columns."""
    root = config.path.expanduser()
    table = root / config.csv
    if not table.is_file():
        raise ScenarioError(f"data.path: no {config.csv} in {root} (set data.csv to the table's file name)")
    rows = read_table(table)
    columns = list(rows[0]) if rows else []
    if "path" not in columns:
        raise ScenarioError(f"{table}: no 'path' column (found: {', '.join(columns) or 'no rows'})")
    target = config.target_column
    if target is not None and target not in columns:
        raise ScenarioError(f"{table}: no '{target}' column for data.target_column "
                            f"(found: {', '.join(columns)})")
    site_col = _site_column(config, columns, table)
    scan = Scan(subjects=[], metadata=[table])
    ids: Counter[str] = Counter()
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        image = root / row["path"]
        where = f"{config.csv} line {n} ({row['path'] or 'no path'})"
        if not row["path"] or not is_nifti(image) or not image.is_file():
            scan.skip(where, "missing file or not .nii / .nii.gz", error=True)
            continue
        age = math.nan
        if target is not None:
            parsed = parse_age(row[target])
            if parsed is None:
                scan.skip(where, f"{target} is not a number: '{row[target]}'", error=True)
                continue
            if math.isnan(parsed):
                scan.skip(where, f"{target} is missing")
                continue
            age = parsed
        label = root / row["label"] if row.get("label") else None
        if label is not None and not label.is_file():
            scan.skip(where, f"missing label: {row['label']}", error=True)
            continue
        sid = row.get("subject") or image.name.split(".nii")[0]
        ids[sid] += 1
        if ids[sid] > 1:
            scan.skip(where, f"subject listed twice: '{sid}', first row used")
            continue
        scan.subjects.append(Subject(id=sid, image=image, label=label, age=age, sex=parse_sex(row.get("sex", "")),
                                     site=(row.get(site_col) or "unknown") if site_col else "all", columns=dict(row)))
    if not scan.subjects and not scan.skipped:
        raise ScenarioError(f"{table}: no rows")
    return scan


LAYOUTS = {"ixi": scan_ixi, "ixi_tiny": scan_ixi_tiny, "msd": scan_msd, "bids": scan_bids, "nifti_csv": scan_nifti_csv}


def _demographics(scan: Scan, name: str, key: str, by_id: dict, problems: dict, *, missing: str,
                  no_age: str) -> tuple[float, dict] | None:
    """The (age, row) joined to one image, or None after recording why the image is skipped."""
    if key in problems:
        scan.skip(name, problems[key][0], error=problems[key][1])
        return None
    if key not in by_id:
        scan.skip(name, missing)
        return None
    age, row = by_id[key]
    if math.isnan(age):
        scan.skip(name, no_age)
        return None
    return age, row
