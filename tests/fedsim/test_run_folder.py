"""RunFolder.is_finished: the one test of "did this run end" that resume and sweep share."""

from __future__ import annotations

from fedsim.run_folder import RunFolder


def test_a_run_is_finished_only_with_a_whole_summary_that_did_not_fail(tmp_path):
    run = RunFolder(tmp_path)
    assert not run.is_finished()  # not a run folder
    run.scenario_file.write_text("name: x\n")
    assert run.is_started() and not run.is_finished()  # started, no summary yet
    run.write_summary({"status": "failed"})
    assert not run.is_finished()  # ended in failure: there is something to resume
    run.write_summary({"status": "completed"})
    assert run.is_finished()
    (tmp_path / "summary.json").write_text('{"status": "compl')  # cut short while being written
    assert not run.is_finished()
