"""The learning-curve figure stays readable for a large federation."""

from __future__ import annotations

from pathlib import Path

import fedsim.figures as figures


def _legend(records, tmp_path: Path, monkeypatch) -> list[str]:
    shown = []
    monkeypatch.setattr(figures.plt, "close", shown.append)
    assert figures.learning_curves(records, {"scenario": "x"}, tmp_path / "curves.png").is_file()
    return [t.get_text() for t in shown[0].axes[0].get_legend().get_texts()]


def test_many_clients_are_drawn_as_one_band_and_few_as_lines(tmp_path: Path, monkeypatch):
    server = [{"kind": "server", "round": r, "test_mae": 10.0 - r} for r in range(3)]
    def clients(n):
        return [{"kind": "evaluate", "round": r, "client": c, "val_mae": 9.0 - r + c / n}
                for r in (1, 2) for c in range(n)]
    many = _legend(server + clients(200), tmp_path, monkeypatch)
    assert many == ["global model, server test MAE", "clients' validation (median of 200)", "clients' quartiles"]
    few = _legend(server + clients(3), tmp_path, monkeypatch)
    assert few[1:] == [f"client {c} validation" for c in range(3)]
