"""Shadow models: each trained once, to the longest budget of the run, side by side in a task pool."""

from __future__ import annotations

import torch

from fedsim.attacks.membership.shadows import Budget, ShadowTrainer, train_snapshots
from fedsim.experiment import prepare
from fedsim.fanout import TaskPool, task_pool
from fedsim.loading import validate_scenario
from fedsim.training import predict
from tests.conftest import tiny_scenario


def _experiment():
    return prepare(validate_scenario(tiny_scenario()), log=lambda _: None)


def _jobs(experiment):
    rows = experiment.train_rows
    return [(*experiment.tensors(rows[:8]), 11), (*experiment.tensors(rows[4:12]), 12)]


def test_a_shorter_budget_reads_off_the_longer_training():
    experiment = _experiment()
    task, fed = experiment.task, experiment.scenario.federation
    long, short = Budget(steps=9, passes=100.0), Budget(steps=4, passes=100.0)
    trainer = ShadowTrainer(task, fed, TaskPool(cpus=1))
    jobs, query = _jobs(experiment), experiment.x_test
    read_off = [f(query) for f in trainer.train_many(jobs, short, also=[long])]  # trains to 9, keeps step 4
    trained_long = [f(query) for f in trainer.train_many(jobs, long, also=[short])]
    assert trainer.trained == 2  # the long budget trained nothing more
    trainer.train_many(jobs[:1], Budget(steps=3, passes=100.0))
    assert trainer.trained == 3  # a budget no one announced: trained anew
    for (x, y, seed), got_long, got_short in zip(jobs, trained_long, read_off, strict=True):
        for steps, got in ((9, got_long), (4, got_short)):  # exactly what training anew for that budget gives
            model = task.build_model()
            model.load_state_dict(train_snapshots(task, fed, x, y, seed, [steps])[0])
            assert torch.equal(got, predict(model, query))
    assert not torch.equal(trained_long[0], read_off[0])
    # passes cap a shadow's steps: 2 passes over 8 scans in batches of 4 are 4 steps, not 9
    assert Budget(steps=9, passes=2.0).shadow_steps(8, fed.batch_size) == 4


def test_shadows_trained_side_by_side_match_one_after_another():
    experiment = _experiment()
    task, fed = experiment.task, experiment.scenario.federation
    budget, jobs = Budget(steps=6, passes=100.0), _jobs(experiment)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each task does, so that both sides compute alike
    try:
        alone = [f(experiment.x_test) for f in ShadowTrainer(task, fed, TaskPool(cpus=1)).train_many(jobs, budget)]
    finally:
        torch.set_num_threads(threads)
    with task_pool(cpus=4) as pool:
        trainer = ShadowTrainer(task, fed, pool)
        side_by_side = [f(experiment.x_test) for f in trainer.train_many(jobs, budget)]
        assert pool.slots == 4
    for a, b in zip(alone, side_by_side, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
