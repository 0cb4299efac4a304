"""The federated setting: hospitals train a shared model on their own scans, a server aggregates.

Flower's simulation engine on Ray runs one ClientApp per hospital and the ServerApp; the server's
observation layer records what the threat model lets an adversary see: a targeted client's
`gradient` or `weights`, a round's `aggregate` under secure aggregation, and the `final_model`.
The setting composes the two apps (which meet only through Flower messages) and the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from fedsim.settings.base import AGGREGATE, FINAL_MODEL, GRADIENT, SETTINGS, WEIGHTS, Setting, SettingOutcome

if TYPE_CHECKING:
    from fedsim.experiment import Experiment
    from fedsim.run_folder import RunFolder
    from fedsim.scenario import Scenario

SECURE_AGGREGATION = "secure aggregation leaves the server only each round's aggregate"


@SETTINGS.register("federated")
class Federated(Setting):
    """Hospitals train one model on their own data; a server aggregates (Flower on Ray)."""

    name: ClassVar[str] = "federated"
    produces: ClassVar[frozenset[str]] = frozenset({GRADIENT, WEIGHTS, AGGREGATE, FINAL_MODEL})

    @classmethod
    def check_scenario(cls, config: Any, scenario: Scenario) -> None:
        from fedsim.defenses.base import defense_class
        from fedsim.server.strategies import check_strategy_args

        check_strategy_args(scenario.federation)
        for i, spec in enumerate(scenario.defenses):
            if defense_class(spec.name, i).at_export:
                raise ValueError(f"defenses.{i}: {spec.name} is an export gate of a data lake (setting: data_lake); "
                                 "a federation exports nothing")
            if defense_class(spec.name, i).at_split:
                raise ValueError(f"defenses.{i}: {spec.name} defends split inference (setting: split_inference); "
                                 "a federation has no cut")

    @classmethod
    def outline(cls, scenario: Scenario) -> str:
        return f"{scenario.federation.clients} clients x {scenario.federation.rounds} rounds"

    def withheld(self) -> dict[str, str]:
        from fedsim.defenses.base import hides_client_updates

        hidden = hides_client_updates(self.scenario)
        return {GRADIENT: SECURE_AGGREGATION, WEIGHTS: SECURE_AGGREGATION} if hidden else {}

    def run(self, experiment: Experiment, run: RunFolder, *, log: Callable[[str], None]) -> SettingOutcome:
        import torch

        from fedsim.clients.app import ClientPlan, make_client_app
        from fedsim.engine import EngineError, cluster_address, run_federation
        from fedsim.server.app import ServerPlan, make_server_app
        from fedsim.server.checkpoint import Checkpoint

        sc, task = self.scenario, experiment.task
        if sc.resources.num_gpus > 0 and not cluster_address(sc.resources) and not torch.cuda.is_available():
            log("resources.num_gpus: no GPU on this machine; clients train on CPU")
        baseline = task.baseline(task.target_mean, experiment.y_test)
        rounds, key = sc.federation.rounds, task.primary_metric

        def on_round(r: int, scores: dict[str, float]) -> None:
            label = "initial" if r == 0 else f"round {r}/{rounds}"
            log(f"[{label}] test {key.upper()} {scores[key]:.2f} ({task.baseline_name} {baseline[key]:.2f}) "
                f"· {run.elapsed():.0f}s")

        resume = Checkpoint.read(run.checkpoint_file) if run.checkpoint_file.is_file() else None
        if resume is not None:  # a resumed run: forget the round that was in flight when it stopped
            run.rewind(resume.round if resume.round > 0 else -1)
            resume = resume if resume.round > 0 else None
            log(f"resuming from round {resume.round}/{rounds}" if resume else "resuming from the start")
        server_plan = ServerPlan(scenario=sc, task=task, x_test=experiment.x_test, y_test=experiment.y_test, run=run,
                                 updates_hidden=bool(self.withheld()), on_round=on_round, resume=resume)
        client_plan = ClientPlan(run_id=str(run.path.resolve()), scenario=sc, splits=tuple(experiment.split.clients),
                                 target_mean=task.target_mean, target_std=task.target_std)
        error, engine = None, {}

        def on_start(joined: dict) -> None:
            engine.update(joined)
            if joined["cluster"] != "local":
                log(f"joined the Ray cluster at {joined['cluster']}: {joined['nodes']} node(s), {joined['cpus']:g} "
                    f"CPU, {joined['gpus']:g} GPU; {joined['actors']} client actor(s)")

        try:
            if resume is None or resume.round < rounds:
                run_federation(server_app=make_server_app(server_plan), client_app=make_client_app(client_plan),
                               num_clients=sc.federation.clients, resources=sc.resources, log_file=run.engine_log,
                               on_start=on_start, server_done=server_plan.done)
        except EngineError as exc:
            error = str(exc)
        # everything below comes from the run folder, so a resumed run reports its rounds from before the stop too
        records = run.metrics()
        trained = [r for r in records if r.get("kind") == "train"]
        if any(r.get("ray_gpu", -1) >= 0 and not r.get("cuda") for r in trained):
            log("resources.num_gpus: Ray gave the clients GPUs but CUDA is absent where they ran; they trained on CPU")
        failures = [{k: r[k] for k in ("round", "client", "phase", "error")}
                    for r in records if r.get("kind") == "client_error"]
        server = {r["round"]: {k.removeprefix("test_"): v for k, v in r.items() if k.startswith("test_")}
                  for r in records if r.get("kind") == "server"}
        last = max(server) if server else None
        final_state = Checkpoint.read(run.checkpoint_file).global_state if run.checkpoint_file.is_file() else None
        return SettingOutcome(
            final=server[last] if last is not None else {}, initial=server.get(0, {}),
            rounds_completed=last or 0, failures=failures, error=error, final_state=final_state,
            summary={"rounds": rounds, "client_failures": len(failures), "engine": engine,
                     "device": "cuda" if any(r.get("cuda") for r in trained) else "cpu"})

    @classmethod
    def report_setup(cls, run: RunFolder, summary: dict[str, Any]) -> list[str]:
        fed = run.scenario_raw()["federation"]
        local = f"steps {fed['local_steps']}" if fed["local_steps"] else f"epochs {fed['local_epochs']}"
        return [f"- Federation: {fed['clients']} clients, {fed['rounds']} rounds of `{fed['strategy']}`, "
                f"local {local}, batch {fed['batch_size']}, {fed['optimizer']} lr {fed['lr']}"]
