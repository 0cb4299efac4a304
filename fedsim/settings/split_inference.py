"""The split (collaborative) inference setting: a service provider trains the task's network on data
of its own, then deploys it split in two; each hospital runs the first `split` convolution blocks
on its scans and sends the features at the cut to the provider's server, which runs the rest and
returns the prediction. An untrusted server holds every weight and sees the features: the
`activations` observations, which split-inference inversion attacks consume (He, Zhang and Lee,
ACSAC 2019).

Each hospital (`federation.clients`, one data partition each) queries with the first
`split_inference.scans` of its training scans, through its defenses (`defenses:` with `at_split`:
noise on its private copy of the first layers, noise on the features); the network's utility is its test score on the
held-out test set, trained on `split_inference.train_scans` scans of the population (the provider's
own data; where a dataset has none, the server's held-out scans).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from fedsim.settings.base import ACTIVATIONS, SETTINGS, Setting, SettingOutcome

if TYPE_CHECKING:
    from fedsim.experiment import Experiment
    from fedsim.run_folder import RunFolder
    from fedsim.scenario import Scenario

SPLITTABLE = ("brain_age_cnn",)  # models that expose `blocks`, `first(split)` and `rest(v, after=...)`


class SplitInferenceConfig(BaseModel):
    """The `split_inference:` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: int = Field(2, ge=1, le=32, description="convolution blocks the hospital runs before sending the "
                       "features (1 = after the first block's activation)")
    scans: int = Field(8, ge=1, le=10_000, description="scans each hospital sends for inference")
    train_scans: int = Field(400, ge=8, le=100_000, description="the provider's own scans it trains on")
    epochs: int = Field(10, ge=1, le=1000, description="epochs of the provider's training")


@SETTINGS.register("split_inference")
class SplitInference(Setting):
    """Hospitals run the network's first blocks and send the features; the server runs the rest."""

    name: ClassVar[str] = "split_inference"
    produces: ClassVar[frozenset[str]] = frozenset({ACTIVATIONS})
    section: ClassVar[str | None] = "split_inference"
    Config = SplitInferenceConfig
    config: SplitInferenceConfig

    @classmethod
    def check_scenario(cls, config: SplitInferenceConfig, scenario: Scenario) -> None:
        model = scenario.task.model
        if model.name not in SPLITTABLE:
            raise ValueError(f"task.model.name: split inference cuts {', '.join(SPLITTABLE)} between convolution "
                             f"blocks; '{model.name}' has no cut points")
        if config.split > len(model.channels):
            raise ValueError(f"split_inference.split: {config.split} is beyond the network's "
                             f"{len(model.channels)} convolution blocks (task.model.channels)")
        from fedsim.data.datasets import DATASETS, Dataset
        from fedsim.defenses.base import defense_class

        if DATASETS.get(scenario.data.dataset).population is Dataset.population:
            raise ValueError(f"split_inference.train_scans: dataset '{scenario.data.dataset}' has no population "
                             "sample for the provider to train on (its fallback, the server's held-out scans, is the "
                             "test set)")
        for i, spec in enumerate(scenario.defenses):
            if not defense_class(spec.name, i).at_split:
                raise ValueError(f"defenses.{i}: {spec.name} is not a split-inference defense (split_model_noise, "
                                 "split_feature_noise, split_feature_dropout)")

    def check(self, experiment: Experiment) -> None:
        from fedsim.scenario import ScenarioError

        for client, part in enumerate(experiment.split.clients):
            if not part.train:
                raise ScenarioError(f"data.partition: hospital {client} holds no scans to send")

    @classmethod
    def outline(cls, scenario: Scenario) -> str:
        config = cls.parse_config(scenario)
        return (f"{scenario.federation.clients} hospitals sending {scenario.task.model.name}'s features after "
                f"block {config.split} to a server")

    def run(self, experiment: Experiment, run: RunFolder, *, log: Callable[[str], None]) -> SettingOutcome:
        import copy

        import numpy as np
        import torch

        from fedsim.defenses.base import DEFENSES
        from fedsim.run_folder import observation_name
        from fedsim.seeding import derive_seed
        from fedsim.training import predict, train_local

        sc, task, cfg = self.scenario, experiment.task, self.config
        torch.manual_seed(derive_seed(sc.seed, "split network"))
        model = task.build_model()
        initial = task.metrics(predict(model, experiment.x_test), experiment.y_test)
        x, y = experiment.population(cfg.train_scans)
        train = sc.federation.model_copy(update={"local_epochs": cfg.epochs, "local_steps": None})
        train_local(model, x, y, task=task, config=train, rng=np.random.default_rng(derive_seed(sc.seed, "provider")))
        model.eval()
        final = task.metrics(predict(model, experiment.x_test), experiment.y_test)
        log(f"provider: trained on {len(x)} scans of its own for {cfg.epochs} epochs; test "
            f"{task.primary_metric} {final[task.primary_metric]:.3f}")
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        defenses = [DEFENSES.get(d.name)(**d.params) for d in sc.defenses]
        sent, defended = [], []
        for client, part in enumerate(experiment.split.clients):
            rows = list(part.train)[: cfg.scans]
            scans, targets = experiment.tensors(rows)
            rng = np.random.default_rng(derive_seed(sc.seed, "hospital defenses", client))
            first = copy.deepcopy(model.first(cfg.split))  # the hospital's own copy: its defenses may change it
            for d in defenses:
                first = d.transform_first(first, rng=rng)

            def send(x: torch.Tensor, first=first, rng=rng) -> torch.Tensor:
                with torch.no_grad():
                    v = first(x)
                for d in defenses:
                    v = d.transform_features(v, rng=rng)
                return v

            features = send(scans)
            if defenses:  # what the hospital's defenses cost the deployed network, on the test scans
                with torch.no_grad():
                    pred = torch.cat([model.rest(send(chunk), after=len(first))
                                      for chunk in experiment.x_test.split(16)])
                defended.append(task.metrics(pred, experiment.y_test))
            name = observation_name(1, client)
            run.write_observation(name, update={"features": features}, global_state=state, meta={
                "kind": ACTIVATIONS, "round": 1, "client": client, "num_examples": len(rows), "split": cfg.split,
                "batch_size": len(rows), "provider_scans": cfg.train_scans})
            run.write_truth(name, inputs=scans, targets=targets, rows=rows)
            sent.append({"client": client, "scans": len(rows), "features": list(features.shape[1:]),
                         "values_per_scan": int(features[0].numel()), "voxels_per_scan": int(scans[0].numel())})
            log(f"[hospital {client}] sent the features of {len(rows)} scans after block {cfg.split}: "
                f"{features[0].numel()} values per scan of {scans[0].numel()} voxels")
        summary: dict[str, Any] = {"split": cfg.split, "sent": sent}
        if defended:  # the network as the hospitals use it: through their defended layers (mean over them)
            summary["undefended"] = final
            final = {k: sum(m[k] for m in defended) / len(defended) for k in defended[0]}
            log(f"through the hospitals' defenses: test {task.primary_metric} {final[task.primary_metric]:.3f}")
        return SettingOutcome(final=final, initial=initial, rounds_completed=1, final_state=state, summary=summary)

    @classmethod
    def result_rows(cls, summary: dict[str, Any]) -> tuple[str, str]:
        if "undefended" in summary:
            return "the untrained network", "the deployed network, through the hospitals' defenses (mean)"
        return "the untrained network", "the deployed network (trained by the provider)"

    @classmethod
    def report_setup(cls, run: RunFolder, summary: dict[str, Any]) -> list[str]:
        sent = summary.get("sent") or []
        if not sent:
            return []
        s = sent[0]
        return [f"- Split inference: {len(sent)} hospitals each run the first {summary['split']} convolution "
                f"block(s) on {s['scans']} scans and send {s['values_per_scan']} values per scan "
                f"({'x'.join(map(str, s['features']))}; the scan has {s['voxels_per_scan']} voxels) to the server"]
