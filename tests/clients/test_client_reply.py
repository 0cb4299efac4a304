"""The ClientApp's reply carries an observed client's true batch: a client never writes to the
driver's run folder, which on a Ray cluster lies on another machine. That the observation layer
takes it out again before the strategy aggregates (Flower's FedAvg refuses a reply with two array
records) and the driver keeps it is checked by the captured FedSGD run in tests/attacks/test_attack_runs.py."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict

from fedsim.clients.app import ClientPlan, make_client_app
from fedsim.experiment import prepare
from fedsim.loading import validate_scenario
from fedsim.protocol import BATCH_KEY, CAPTURE_KEY, TRUTH_KEY, UPDATE_KEY
from tests.conftest import tiny_scenario


def _train(app, experiment, *, capture: bool) -> Message:
    config = ConfigRecord({"server-round": 1, UPDATE_KEY: "gradient", BATCH_KEY: 2, CAPTURE_KEY: capture})
    model = experiment.task.build_model()
    meta = Metadata(run_id=1, message_id="m1", src_node_id=1, dst_node_id=7, reply_to_message_id="", group_id="1",
                    created_at=time.time(), ttl=600.0, message_type=MessageType.TRAIN)
    msg = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config}), metadata=meta)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    return app(msg, context)


def test_an_observed_client_sends_its_true_batch_in_the_reply_and_writes_nothing(tmp_path: Path, monkeypatch):
    scenario = validate_scenario(tiny_scenario())
    experiment = prepare(scenario, log=lambda _: None)
    worker_dir = tmp_path / "worker"  # the worker's own directory: not the driver's
    worker_dir.mkdir()
    monkeypatch.chdir(worker_dir)
    driver_run = tmp_path / "driver/runs/tiny"  # does not exist where the client runs
    plan = ClientPlan(run_id=str(driver_run), scenario=scenario, splits=tuple(experiment.split.clients),
                      target_mean=experiment.task.target_mean, target_std=experiment.task.target_std)
    app = make_client_app(plan)

    reply = _train(app, experiment, capture=True)
    assert not reply.has_error()
    truth = reply.content[TRUTH_KEY].to_torch_state_dict()
    rows = truth["rows"].tolist()
    assert len(rows) == 2 and set(rows) <= set(experiment.split.clients[0].train)
    x, y = experiment.task.tensors(experiment.cohort, rows)
    assert torch.equal(truth["inputs"], x) and torch.allclose(truth["targets"], y)
    assert not driver_run.exists() and not any(worker_dir.iterdir())

    plain = _train(app, experiment, capture=False)  # an unobserved client sends its update and metrics only
    assert set(plain.content.keys()) == {"arrays", "metrics"}

