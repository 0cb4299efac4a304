"""The data-lake setting: hospitals' secured lakes hold scans; a model owner may not read them, and
may only submit training code (a recipe) that runs inside each lake and export the networks it
trains, through the lake's export gates (`defenses:` with `at_export`).

Each lake holds one partition of the data (`federation.clients` lakes, `data.partition` as for
clients) and trains with the federation's optimizer, learning rate and batch size for
`data_lake.epochs` epochs, from the agreed network's initial weights (the same in every lake).
What leaves a lake is recorded as an `exported_model` observation; the exported network's
utility is scored on the held-out test set (the lake's own check), and a failing lake never loses
the others' exports.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from fedsim.registry import PluginError
from fedsim.scenario import PluginSpec
from fedsim.settings.base import EXPORTED_MODEL, SETTINGS, Setting, SettingOutcome

if TYPE_CHECKING:
    import torch

    from fedsim.experiment import Experiment
    from fedsim.run_folder import RunFolder
    from fedsim.scenario import Scenario


class DataLakeConfig(BaseModel):
    """The `data_lake:` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recipe: PluginSpec = Field(default_factory=lambda: PluginSpec(name="train_agreed"),
                               description="the owner's training code: train_agreed (honest), compress_and_hide, "
                                           "or path/to/file.py:Class")
    epochs: int = Field(10, ge=1, le=10_000, description="epochs each lake trains the agreed network")


@SETTINGS.register("data_lake")
class DataLake(Setting):
    """Lakes run the owner's recipe on their scans and export the trained networks through their gates."""

    name: ClassVar[str] = "data_lake"
    produces: ClassVar[frozenset[str]] = frozenset({EXPORTED_MODEL})
    section: ClassVar[str | None] = "data_lake"
    Config = DataLakeConfig
    config: DataLakeConfig

    @classmethod
    def check_scenario(cls, config: DataLakeConfig, scenario: Scenario) -> None:
        from fedsim.defenses.base import defense_class
        from fedsim.settings.recipes import RECIPES

        try:
            recipe = RECIPES.get(config.recipe.name)
        except PluginError as exc:
            raise ValueError(f"data_lake.recipe: {exc}") from None
        try:
            recipe.parse(config.recipe.params)
        except ValueError as exc:
            raise ValueError(f"data_lake.recipe.{exc}") from None
        for i, spec in enumerate(scenario.defenses):
            if defense_class(spec.name, i).at_split:
                raise ValueError(f"defenses.{i}: {spec.name} defends split inference (setting: split_inference); "
                                 "a data lake exports networks, it sends no features")
            if not defense_class(spec.name, i).at_export:
                raise ValueError(f"defenses.{i}: {spec.name} is a client defense; a data lake runs the owner's "
                                 "training code, so only export gates apply (export_whitelist, export_bit_test, "
                                 "export_finetune, export_noise, export_precision)")

    @classmethod
    def outline(cls, scenario: Scenario) -> str:
        config = cls.parse_config(scenario)
        return f"{scenario.federation.clients} data lakes running recipe {config.recipe.key}"

    def check(self, experiment: Experiment) -> None:
        from fedsim.scenario import ScenarioError
        from fedsim.settings.recipes import RECIPES

        for lake, part in enumerate(experiment.split.clients):
            if not experiment.task.labelled(experiment.cohort, list(part.train)):
                raise ScenarioError(f"data: lake {lake} holds no labels for task '{self.scenario.task.name}' in its "
                                    f"{len(part.train)} training scans (e.g. all-background label maps): the agreed "
                                    "network cannot be trained there")
        spec = self.config.recipe
        try:
            RECIPES.get(spec.name)(**spec.params).check(experiment.task.build_model(),
                                                        tuple(experiment.x_test.shape[1:]))
        except ValueError as exc:
            raise ScenarioError(f"data_lake.recipe.{exc}") from None

    def run(self, experiment: Experiment, run: RunFolder, *, log: Callable[[str], None]) -> SettingOutcome:
        from fedsim.seeding import derive_seed
        from fedsim.settings.recipes import RECIPES

        spec = self.config.recipe
        exports, failures = [], []
        try:  # outside the lakes, on the owner's own scans
            owner_state = RECIPES.get(spec.name)(**spec.params).prepare(
                lambda n: experiment.population(n)[0], seed=derive_seed(self.scenario.seed, "owner"))
        except Exception as exc:  # the owner's own step: without it no lake can run the recipe
            error = f"the recipe's preparation outside the lakes failed: {type(exc).__name__}: {exc}"
            log(error)
            return SettingOutcome(final={}, initial=_utility(experiment, _initial(experiment)), rounds_completed=0,
                                  failures=[], error=error, summary={"recipe": spec.key, "exports": []})
        if owner_state:
            run.write_owner_state(owner_state)
            log(f"owner: prepared {len(owner_state)} entries outside the lakes "
                f"({_bytes(owner_state) / 1e6:.2f} MB, shipped in with the recipe and kept)")
        for lake, part in enumerate(experiment.split.clients):
            start = time.perf_counter()
            try:
                recipe = RECIPES.get(spec.name)(**spec.params)
                row = self._one_lake(lake, list(part.train), recipe, experiment, run, owner_state)
            except Exception as exc:  # one lake's failure must not lose the others' exports
                failures.append({"client": lake, "round": 1, "error": f"{type(exc).__name__}: {exc}"})
                log(f"[lake {lake}] failed: {type(exc).__name__}: {exc}")
                continue
            row["seconds"] = time.perf_counter() - start
            exports.append(row)
            key = experiment.task.primary_metric
            what = (f"refused: {row['refused']}" if row["refused"] else
                    f"exported {row['exported_entries']} entries ({row['exported_bytes'] / 1e6:.2f} MB), "
                    f"test {key} {row['utility'].get(key, float('nan')):.3f}")
            log(f"[lake {lake}] {spec.key}: {row['scans']} scans, asked to export {row['asked_entries']} entries; "
                f"{what}" + "".join(f"; {f}" for f in row["flags"]) + f" · {row['seconds']:.0f}s")
        scored = [e["utility"] for e in exports if e.get("utility")]
        final = {k: sum(u[k] for u in scored) / len(scored) for k in scored[0]} if scored else {}
        error = None if exports else "every lake failed: " + (failures[0]["error"] if failures else "no lakes")
        return SettingOutcome(final=final, initial=_utility(experiment, _initial(experiment)),
                              rounds_completed=1 if exports else 0, failures=failures, error=error,
                              summary={"recipe": spec.key, "lakes": len(experiment.split.clients), "exports": exports,
                                       "lake_failures": failures, "owner_kept_mb": _bytes(owner_state) / 1e6})

    def _one_lake(self, lake: int, rows: list[int], recipe: Any, experiment: Experiment, run: RunFolder,
                  owner_state: dict[str, torch.Tensor]) -> dict[str, Any]:
        import numpy as np

        from fedsim.defenses.base import DEFENSES, ExportRefused, ExportRound
        from fedsim.run_folder import observation_name
        from fedsim.seeding import derive_seed
        from fedsim.settings.recipes import LakeRun

        sc, task = self.scenario, experiment.task
        initial = _initial(experiment)
        model = task.build_model()
        model.load_state_dict(initial)
        x, y = experiment.tensors(rows)
        config = sc.federation.model_copy(update={"local_epochs": self.config.epochs, "local_steps": None})
        asked = recipe.train(model, x, y, run=LakeRun(lake=lake, task=task, config=config,
                                                      seed=derive_seed(sc.seed, "lake", lake), owner_state=owner_state))
        ctx = ExportRound(lake=lake, task=task, agreed={k: (tuple(v.shape), str(v.dtype)) for k, v in initial.items()},
                          rng=np.random.default_rng(derive_seed(sc.seed, "export gates", lake)), config=config,
                          data=(x, y))
        out, refused = dict(asked), None
        for spec in sc.defenses:
            try:
                out = DEFENSES.get(spec.name)(**spec.params).transform_export(out, ctx=ctx)
            except ExportRefused as exc:
                out, refused = {}, str(exc)
                break
        row: dict[str, Any] = {"lake": lake, "scans": len(x), "asked_entries": len(asked), "asked_bytes": _bytes(asked),
                               "refused": refused, "flags": list(ctx.flags), "exported_entries": len(out),
                               "exported_bytes": _bytes(out), "extra_entries": len(set(out) - set(initial)),
                               "utility": _utility(experiment, out) if out else {}}
        if out:
            name = observation_name(1, lake)
            run.write_observation(name, update=out, global_state=initial, meta={
                "kind": EXPORTED_MODEL, "round": 1, "client": lake, "num_examples": len(x),
                "recipe": {"name": self.config.recipe.name, "params": self.config.recipe.params}})
            run.write_truth(name, inputs=x, targets=y, rows=rows)
        return row

    @classmethod
    def result_rows(cls, summary: dict[str, Any]) -> tuple[str, str]:
        return "the agreed network's initial weights", "exported networks (mean over the lakes' exports)"

    @classmethod
    def report_setup(cls, run: RunFolder, summary: dict[str, Any]) -> list[str]:
        raw = run.scenario_raw()
        lake = DataLakeConfig.model_validate(raw.get("data_lake") or {})
        gates = ", ".join(d["name"] for d in raw.get("defenses", [])) or "none"
        lines = [f"- Data lakes: {raw['federation']['clients']}, each running the owner's recipe `{lake.recipe.key}` "
                 f"for {lake.epochs} epochs; export gates: {gates}"]
        if summary.get("owner_kept_mb"):
            lines.append(f"- Prepared by the owner outside the lakes, on scans of its own, shipped in with the recipe "
                         f"and kept ({summary['owner_kept_mb']:.2f} MB, `owner/state.safetensors`)")
        return lines

    @classmethod
    def report_section(cls, run: RunFolder, summary: dict[str, Any]) -> list[str]:
        exports, failed = summary.get("exports") or [], summary.get("lake_failures") or []
        if not exports and not failed:
            return []
        key = summary.get("primary_metric", "loss")
        lines = ["", "## Exports", "", "What each lake's recipe asked to export, what its gates let leave, and the "
                 f"exported network's test {key}.", "",
                 f"| lake | scans | asked: entries (MB) | exported: entries (MB) | beyond the agreed network | {key} | "
                 "gates noticed |", "|---|---|---|---|---|---|---|"]
        for e in exports:
            out = "refused" if e["refused"] else f"{e['exported_entries']} ({e['exported_bytes'] / 1e6:.2f})"
            value = e["utility"].get(key)
            lines.append(f"| {e['lake']} | {e['scans']} | {e['asked_entries']} ({e['asked_bytes'] / 1e6:.2f}) | "
                         f"{out} | "
                         f"{e['extra_entries']} | {'–' if value is None else f'{value:.3f}'} | "
                         f"{'; '.join([*e['flags'], *([e['refused']] if e['refused'] else [])]) or '–'} |")
        lines += [f"- lake {f['client']} failed: {f['error']}" for f in failed]
        return lines


def _initial(experiment: Experiment) -> dict[str, torch.Tensor]:
    """The agreed network's initial weights (the same in every lake: the owner submits them)."""
    import torch

    from fedsim.seeding import derive_seed

    torch.manual_seed(derive_seed(experiment.scenario.seed, "agreed network"))
    return {k: v.detach().clone() for k, v in experiment.task.build_model().state_dict().items()}


def _utility(experiment: Experiment, tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """Test metrics of the agreed network loaded from `tensors` (empty if its entries are not all there)."""
    from fedsim.training import predict

    model = experiment.task.build_model()
    state = model.state_dict()
    if any(k not in tensors or tuple(tensors[k].shape) != tuple(v.shape) for k, v in state.items()):
        return {}
    model.load_state_dict({k: tensors[k].to(v.dtype) for k, v in state.items()})
    return experiment.task.metrics(predict(model, experiment.x_test), experiment.y_test)


def _bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())
