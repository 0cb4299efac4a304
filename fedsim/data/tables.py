"""What every on-disk layout shares: the Subject / Scan records and reading metadata tables.

Tables are CSV / TSV (by extension) or legacy Excel .xls (IXI's demographics, read with xlrd).
Ages and sex are parsed leniently ('n/a' is missing, 'F'/'M' is sex) but an age that is not a
number is reported as a damaged row, never guessed.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedsim.scenario import ScenarioError

NIFTI = (".nii.gz", ".nii")
MISSING = {"", "n/a", "na", "nan", "none", "null", "-"}


@dataclass
class Subject:
    """One subject as listed by a layout: files, targets (NaN / -1 when unknown) and metadata columns."""

    id: str
    image: Path
    label: Path | None = None
    age: float = math.nan
    sex: int = -1  # 0 female, 1 male, -1 unknown
    site: str = "all"
    columns: dict[str, str] = field(default_factory=dict)


@dataclass
class Scan:
    """What a layout found: usable subjects, what it skipped (file, reason, is_error), the files read."""

    subjects: list[Subject]
    skipped: list[tuple[str, str, bool]] = field(default_factory=list)  # is_error: a damaged file in strict mode
    metadata: list[Path] = field(default_factory=list)  # tables whose change must invalidate the cache
    modality: str = "MR"
    label_names: dict[int, str] | None = None

    def skip(self, what: str, reason: str, *, error: bool = False) -> None:
        self.skipped.append((what, reason, error))


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV / TSV (by extension) or a legacy Excel .xls, as header -> text."""
    if path.suffix.lower() == ".xls":
        return _read_xls(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read ({exc})") from None
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]


def _read_xls(path: Path) -> list[dict[str, str]]:
    try:
        import xlrd
    except ImportError:
        raise ScenarioError(f"{path}: reading .xls needs the xlrd package (pip install xlrd), "
                            "or save the sheet as IXI.csv beside it") from None
    try:
        book = xlrd.open_workbook(str(path))
        sheet = book.sheet_by_name("Table") if "Table" in book.sheet_names() else book.sheet_by_index(0)
    except Exception as exc:
        raise ScenarioError(f"{path}: not a readable .xls sheet ({exc})") from None
    header = [str(c.value).strip() for c in sheet.row(0)] if sheet.nrows else []
    rows = []
    for r in range(1, sheet.nrows):
        rows.append({h: _cell_text(c.value) for h, c in zip(header, sheet.row(r), strict=False)})
    return rows


def _cell_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def parse_age(text: str) -> float | None:
    """The age in years, NaN when missing, None when it is not a number."""
    if text.strip().lower() in MISSING:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def parse_sex(text: str) -> int:
    """0 female, 1 male, -1 unknown (BIDS and CSV spellings: F/M, female/male, 0/1)."""
    t = text.strip().lower()
    return {"f": 0, "female": 0, "w": 0, "0": 0, "m": 1, "male": 1, "1": 1}.get(t, -1)


def is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI) and not path.name.startswith("._")


def need_files(found: list, folder: Path, what: str) -> None:
    if not found:
        raise ScenarioError(f"data.path: no {what} in {folder}")


def find_one(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first file called one of ``names`` in the folder, else anywhere below it."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    for name in names:
        hits = sorted(p for p in folder.rglob(name) if p.is_file())
        if hits:
            return hits[0]
    return None


AgeTable = dict[str, tuple[float, dict[str, str]]]  # id -> (age, its first row)


def age_rows(table: Path, rows: list[dict[str, str]], id_col: str, age_col: str,
             key: Callable[[str], str] = str.strip) -> tuple[AgeTable, dict[str, tuple[str, bool]]]:
    """id -> (age, first row), and id -> (reason, is_error) for ids whose age is unusable.

    Duplicate rows with the same age are one subject; different ages, or an age that is not a
    number, make the id unusable. The caller reports problems only for ids that have an image."""
    ages: dict[str, set[float]] = {}
    first: dict[str, dict[str, str]] = {}
    problems: dict[str, tuple[str, bool]] = {}
    for row in rows:
        ident = key(row.get(id_col, ""))
        if not ident:
            continue
        age = parse_age(row.get(age_col, ""))
        if age is None:
            problems[ident] = (f"{age_col} is not a number: '{row.get(age_col)}' in {table.name}", True)
            continue
        ages.setdefault(ident, set()).add(round(age, 2) if math.isfinite(age) else age)
        first.setdefault(ident, row)
    out = {}
    for ident, values in ages.items():
        finite = sorted(v for v in values if not math.isnan(v))
        if ident in problems:
            continue
        if len(finite) > 1:
            problems[ident] = (f"duplicate rows with different ages: {finite} in {table.name}", False)
            continue
        out[ident] = (finite[0] if finite else math.nan, first[ident])
    return out, problems
