"""The attribute-inference family: does the model let an attacker who knows a person's other
attributes infer a sensitive one? Owns the `attribute_inference:` section.

The attacker holds the final model (query access; white-box attacks also its weights), its own
records of people of the same population with the attribute (the server's held-out records where
the dataset has no population sample) and, of each person it attacks, the known columns and the
task label. Every attack's accuracy (and AUC) on the people the model trained on sits beside the
**no-model baseline**, the same learner on the known columns and label alone: the leakage is the
difference. The same is measured on people the model never saw (what it reveals about the
population rather than about its members).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from fedsim.attacks.attribute_inference.config import AttributeConfig
from fedsim.families import FAMILIES, AttackFamily, Log
from fedsim.markdown import cell
from fedsim.run_folder import RunFolder
from fedsim.scenario import PluginSpec, Scenario
from fedsim.settings.base import FINAL_MODEL

if TYPE_CHECKING:
    import numpy as np

    from fedsim.experiment import Experiment

SWEEP_METRICS = ("accuracy", "auc", "leakage", "baseline_accuracy")


@FAMILIES.register("attribute_inference")
class AttributeInferenceFamily(AttackFamily):
    """Infer a sensitive attribute from the model's outputs and the other attributes, vs without the model."""

    name: ClassVar[str] = "attribute_inference"
    consumes: ClassVar[frozenset[str]] = frozenset({FINAL_MODEL})
    section: ClassVar[str | None] = "attribute_inference"
    Config = AttributeConfig
    config: AttributeConfig

    @classmethod
    def check_scenario(cls, config: AttributeConfig, scenario: Scenario,
                       attacks: list[tuple[int, PluginSpec, type]]) -> None:
        from fedsim.attacks.attribute_inference.query import default_known
        from fedsim.data.clinical import DERIVED, default_features, default_target
        from fedsim.data.datasets import DATASETS
        from fedsim.tasks.needs import LABEL_COLUMNS

        data, task = scenario.data, scenario.task
        schema = DATASETS.get(data.dataset).record_schema(data)
        if schema is None:
            raise ValueError(f"attribute_inference.attribute: dataset '{data.dataset}' has no clinical records to "
                             "hold the attribute (synthetic_brain and diabetes have)")
        name = config.attribute
        if name not in schema:
            raise ValueError(f"attribute_inference.attribute: '{name}' is not in {data.dataset}'s records "
                             f"({', '.join(schema)})")
        known = config.known if config.known is not None else default_known(schema, name)
        for column in known:
            if column not in schema:
                raise ValueError(f"attribute_inference.known: '{column}' is not in {data.dataset}'s records")
            if column == name or column in DERIVED.get(name, ()):
                raise ValueError(f"attribute_inference.known: '{column}' is (or restates) the sensitive attribute")
        features, target = None, LABEL_COLUMNS.get(task.name)
        if task.name == "clinical":
            target = task.target or default_target(schema)
            features = task.features if task.features is not None else default_features(schema, target)
        if target is not None and (name == target or target in DERIVED.get(name, ())):
            raise ValueError(f"attribute_inference.attribute: '{name}' is (or is restated by) the task's label "
                             f"'{target}', which the attacker knows of every person it attacks")
        if features is not None:
            hidden = [f for f in features if f != name and f not in known]
            if hidden:
                raise ValueError(f"attribute_inference.known: the attacker must know the model's other inputs to "
                                 f"query it; add '{hidden[0]}' (task.features)")
            restating = [f for f in features if f in DERIVED.get(name, ())]
            if restating:
                raise ValueError(f"task.features: '{restating[0]}' restates the sensitive attribute '{name}'")
        for i, spec, plugin in attacks:
            if getattr(plugin, "needs_input", False) and (features is None or name not in features):
                where = "task.features" if features is not None else f"task '{task.name}' (it reads scans)"
                raise ValueError(f"attacks.{i}: {spec.name} fills candidate values of '{name}' into the model's "
                                 f"input, but {where} does not take it; use attribute_classifier")

    def check(self, experiment: Experiment, specs: list[PluginSpec]) -> None:
        from fedsim.scenario import ScenarioError

        if experiment.cohort.records is None:
            raise ScenarioError(f"attribute_inference: dataset '{experiment.scenario.data.dataset}' loaded no records")
        if len(experiment.train_rows) < 4:
            raise ScenarioError("attribute_inference.records: fewer than 4 people trained the model")

    def run(self, run: RunFolder, experiment: Experiment, specs: list[PluginSpec], *, log: Log) -> list[dict]:
        from fedsim.attacks.base import ATTACKS

        cfg, rows = self.config, []
        try:
            state = run.load_model()
            if state is None:
                raise ValueError("the run left no final model")
            model = experiment.task.build_model()
            model.load_state_dict(state)
            groups = attack_groups(experiment, cfg)
            baseline = no_model_baseline(experiment, cfg, groups)
        except Exception as exc:  # no attack can run; the rest of the run's results stand
            rows = [{"attack": s.key, "attribute": cfg.attribute, "status": "error",
                     "error": f"{type(exc).__name__}: {exc}"} for s in specs]
            run.write_results(self.name, rows)
            return rows
        log(f"[attribute_inference] '{cfg.attribute}' of {len(groups['members'][1])} members"
            + (f" and {len(groups['nonmembers'][1])} non-members" if groups.get("nonmembers") else "")
            + f"; the attacker holds {len(groups['auxiliary'][1])} records of its own")
        for spec in specs:
            row: dict[str, Any] = {"attack": spec.key, "attribute": cfg.attribute}
            started = time.perf_counter()
            try:
                attack = ATTACKS.get(spec.name)(**spec.params)
                threat = type(attack).threat
                row["threat"] = threat.describe()
                for group in [g for g in ("members", "nonmembers") if g in groups]:
                    query = build_query(experiment, model, cfg, groups, group, white_box=threat.architecture)
                    scores = attack.infer(query)
                    found = score(scores, groups["truth"][group], len(query.candidates))
                    prefix = "" if group == "members" else "nonmember_"
                    row.update({f"{prefix}{k}": v for k, v in found.items()})
                    row.update({f"{prefix}{k}": v for k, v in baseline[group].items()})
                    row[f"{prefix}leakage"] = found["accuracy"] - baseline[group]["baseline_accuracy"]
                    row[group] = len(scores)
                row.update(status="ok", auxiliary=len(groups["auxiliary"][1]), candidates=len(query.candidates))
            except Exception as exc:  # one attacker's failure never loses the others' results
                row.update(status="error", error=f"{type(exc).__name__}: {exc}")
            row["seconds"] = time.perf_counter() - started
            rows.append(row)
            if row["status"] == "ok":
                log(f"[attribute_inference] {spec.key}: accuracy {row['accuracy']:.3f} (no-model baseline "
                    f"{row['baseline_accuracy']:.3f}, majority {row['majority_accuracy']:.3f})")
            else:
                log(f"[attribute_inference] {spec.key}: {row['error']}")
        run.write_results(self.name, rows)
        return rows

    @classmethod
    def report_section(cls, run: RunFolder, summary: dict[str, Any]) -> list[str]:
        rows = summary.get(cls.summary_key()) or []
        if not rows:
            return []
        lines = ["", "## Attribute inference",
                 f"The attacker knows each person's record but `{rows[0].get('attribute')}` (and the task label), "
                 "holds the final model and records of its own; it guesses the attribute. The no-model baseline "
                 "is the same guess learned from the known columns and label alone; leakage = accuracy - "
                 "baseline (what the model adds). Members: people the model trained on; non-members: people "
                 "it never saw.", "",
                 "| attack | accuracy | AUC | no-model baseline (AUC) | majority | leakage | non-members: accuracy "
                 "/ baseline | members / non-members | threat | s |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r.get("status") != "ok":
                lines.append(f"| {r['attack']} | {r.get('status')}: {r.get('error', '')} |||||||||")
                continue
            lines.append(
                f"| {r['attack']} | {r['accuracy']:.3f} | {cell(r.get('auc'))} | {r['baseline_accuracy']:.3f} "
                f"({cell(r.get('baseline_auc'))}) | {r['majority_accuracy']:.3f} | {r['leakage']:+.3f} | "
                f"{cell(r.get('nonmember_accuracy'))} / {cell(r.get('nonmember_baseline_accuracy'))} | "
                f"{r.get('members')} / {r.get('nonmembers', 0)} | {r.get('threat', '')} | {r['seconds']:.0f} |")
        return lines

    @classmethod
    def sweep_columns(cls, summary: dict[str, Any]) -> dict[str, Any]:
        row = {}
        for r in summary.get(cls.summary_key(), []):
            for metric in SWEEP_METRICS:
                row[f"{r['attack']}.{metric}"] = r.get(metric) if r.get("status") == "ok" else None
        return row


def attack_groups(experiment: Experiment, cfg: AttributeConfig) -> dict[str, Any]:
    """(cohort, rows) of the members attacked, the non-members and the attacker's own records, and
    each group's true candidate index. The attacker's records are a population sample where the
    dataset has one (non-members: the server's held-out people), else the server's held-out records
    (non-members: the clients' validation records, which no one trained on)."""
    import numpy as np

    from fedsim.attacks.attribute_inference.query import attribute_of
    from fedsim.data.datasets import load_population
    from fedsim.seeding import derive_seed

    sc, cohort = experiment.scenario, experiment.cohort
    rng = np.random.default_rng(derive_seed(sc.seed, "attribute inference"))

    def sample(pool: list[int], n: int) -> list[int]:
        return sorted(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist()) if pool else []

    members = sample(experiment.train_rows, cfg.records)
    population = load_population(sc.data, seed=sc.seed, n_subjects=cfg.auxiliary)
    if population is not None and population.records is not None:
        auxiliary, outside = (population, list(range(len(population)))), list(experiment.split.test)
    else:
        auxiliary, outside = (cohort, sample(list(experiment.split.test), cfg.auxiliary)), \
            [i for c in experiment.split.clients for i in c.val]
    groups: dict[str, Any] = {"members": (cohort, members), "auxiliary": auxiliary}
    if outside:
        groups["nonmembers"] = (cohort, sample(outside, cfg.records))
    aux_cohort, aux_rows = auxiliary
    attribute = attribute_of(aux_cohort.records, cfg.attribute, aux_rows, cfg.bins)
    groups["truth"] = {g: attribute.index(c.records.columns[cfg.attribute][r]) for g, (c, r) in groups.items()}
    groups["attribute"] = attribute
    return groups


def known_columns(experiment: Experiment, cfg: AttributeConfig) -> list[str]:
    from fedsim.attacks.attribute_inference.query import default_known

    return list(cfg.known) if cfg.known is not None else default_known(list(experiment.cohort.records.columns),
                                                                        cfg.attribute)


def build_query(experiment: Experiment, model: Any, cfg: AttributeConfig, groups: dict[str, Any], group: str, *,
                white_box: bool):
    """What the attacker is handed to attack `group` (its own records come with their attribute)."""
    import numpy as np

    from fedsim.attacks.attribute_inference.query import AttributeQuery, binary_logit_likelihood, people

    task, attribute, known = experiment.task, groups["attribute"], known_columns(experiment, cfg)
    aux = groups["truth"]["auxiliary"]
    prior = np.bincount(aux, minlength=len(attribute.names)) / len(aux)
    features = getattr(task, "features", None)
    target_cohort, target_rows = groups[group]
    aux_cohort, aux_rows = groups["auxiliary"]
    kwargs = {"known": known, "attribute": attribute, "white_box": white_box}
    return AttributeQuery(
        attribute=cfg.attribute, candidates=attribute.names, prior=prior,
        in_input=features is not None and cfg.attribute in features,
        likelihood=binary_logit_likelihood if features is not None else None,  # task clinical: one logit
        targets=people(model, task, target_cohort, target_rows, truth=False, **kwargs),
        auxiliary=people(model, task, aux_cohort, aux_rows, truth=True, **kwargs),
        seed=experiment.scenario.seed)


def no_model_baseline(experiment: Experiment, cfg: AttributeConfig, groups: dict[str, Any]) -> dict[str, dict]:
    """The same learner on the known columns and label alone (no model), and always guessing the
    attacker's most frequent value, for each attacked group."""
    import numpy as np

    from fedsim.attacks.attribute_inference.plugins import ClassifierParams, fit_scores

    task, known, n = experiment.task, known_columns(experiment, cfg), len(groups["attribute"].names)

    def features(cohort: Any, rows: list[int]) -> np.ndarray:
        labels = task.target_values(cohort, task.config)[rows][:, None]
        return np.concatenate([cohort.records.encode(known, rows), labels], axis=1)

    aux = groups["truth"]["auxiliary"]
    majority = int(np.bincount(aux, minlength=n).argmax())
    out = {}
    for group in [g for g in ("members", "nonmembers") if g in groups]:
        truth = groups["truth"][group]
        scores = fit_scores(features(*groups["auxiliary"]), aux, features(*groups[group]), n, ClassifierParams(),
                            experiment.scenario.seed)
        found = score(scores, truth, n)
        out[group] = {"baseline_accuracy": found["accuracy"], "baseline_auc": found["auc"],
                      "majority_accuracy": float((truth == majority).mean())}
    return out


def score(scores: np.ndarray, truth: np.ndarray, n: int) -> dict[str, float | None]:
    """Accuracy of the best-scored candidate, and the AUC (one-vs-rest macro for more than two values;
    None where the group holds one value only)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    accuracy = float((scores.argmax(1) == truth).mean())
    present = np.unique(truth)
    auc = None
    if len(present) == 2 and n == 2:
        auc = float(roc_auc_score(truth, scores[:, 1]))
    elif len(present) == n and n > 2:
        auc = float(roc_auc_score(truth, scores, multi_class="ovr", labels=list(range(n))))
    return {"accuracy": accuracy, "auc": auc}
