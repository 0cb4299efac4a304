"""One federated run on a real on-disk layout: IXI files + IXI.xls, Flower + Ray, 2 clients x 1 round.

The clients are the two scanner manufacturers (Philips at Guys and HH, GE at IOP), so this also
checks that Ray workers resolve the `ixi` dataset and read the cohort the driver cached.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsim.loading import validate_scenario
from fedsim.runner import run_scenario
from tests.conftest import tiny_scenario
from tests.data.test_loaders import write_ixi

pytestmark = pytest.mark.e2e


def test_brain_age_federation_on_an_ixi_folder(tmp_path: Path, capsys: pytest.CaptureFixture):
    root = write_ixi(tmp_path / "IXI", per_site=5)
    raw = tiny_scenario(
        data={"dataset": "ixi", "path": str(root), "shape": 16,
              "partition": {"by": "column", "column": "manufacturer", "min_size": 2}},
        federation={"clients": 2, "rounds": 1, "local_steps": 1, "batch_size": 4},
    )
    logs: list[str] = []
    result = run_scenario(validate_scenario(raw), out_dir=tmp_path / "runs", log=logs.append)

    assert result.error is None and result.failures == [], result.error or result.failures
    printed = capsys.readouterr().out
    assert "data ixi:" in printed and "Guys 5, HH 5, IOP 5" in printed and "no AGE in IXI.xls" in printed
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 1
    assert summary["final"]["mae"] > 0
    clients = json.loads((result.run_dir / "partitions.json").read_text())["clients"]
    assert [c["sites"] for c in clients] == [["IOP"], ["Guys", "HH"]]  # GE, then Philips
