"""The membership family: was this record in the training data? Owns the `membership:` section.

Each target model in `membership.targets` gets a balanced member / non-member evaluation set and
leaked samples disjoint from both (`evaluation`); every membership attack scores every target it
applies to, and the rows carry the target's overfitting gap and the null AUC beside the attack's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from fedsim.attacks.membership.config import MembershipConfig
from fedsim.families import FAMILIES, AttackFamily, Log
from fedsim.markdown import cell
from fedsim.run_folder import RunFolder
from fedsim.scenario import PluginSpec, Scenario
from fedsim.settings.base import FINAL_MODEL, WEIGHTS

if TYPE_CHECKING:
    from fedsim.experiment import Experiment

TARGET_KINDS = {"global_model": FINAL_MODEL, "client_update": WEIGHTS}  # what each target is observed as
SWEEP_METRICS = ("auc", "balanced_accuracy", "tpr_at_1pct_fpr", "empirical_epsilon")


@FAMILIES.register("membership")
class MembershipFamily(AttackFamily):
    """Was this scan trained on? Loss threshold, shadow models, LiRA, white box, client-update attacks."""

    name: ClassVar[str] = "membership"
    consumes: ClassVar[frozenset[str]] = frozenset({FINAL_MODEL, WEIGHTS})
    section: ClassVar[str | None] = "membership"
    Config = MembershipConfig
    config: MembershipConfig

    @classmethod
    def check_scenario(cls, config: MembershipConfig, scenario: Scenario,
                       attacks: list[tuple[int, PluginSpec, type]]) -> None:
        fed, t = scenario.federation, scenario.server.targets
        for i, spec, plugin in attacks:
            if plugin.threat.auxiliary and config.aux_samples < 2:
                raise ValueError(f"attacks.{i}: {spec.name} needs leaked samples, but membership.aux_samples "
                                 f"is {config.aux_samples}")
        if "client_update" not in config.targets:
            return
        if config.client >= fed.clients:
            raise ValueError(f"membership.client: client {config.client} does not exist "
                             f"(clients are 0..{fed.clients - 1})")
        if config.round > fed.rounds:
            raise ValueError(f"membership.round: round {config.round} is outside 1..{fed.rounds}")
        if (t.clients is not None and config.client not in t.clients) or (t.rounds is not None
                                                                           and config.round not in t.rounds):
            raise ValueError(f"membership.client: the server does not observe client {config.client} in round "
                             f"{config.round}; add them to server.targets")

    def check(self, experiment: Experiment, specs: list[PluginSpec]) -> None:
        """The evaluation and leaked sets can be drawn for every target (ScenarioError otherwise)."""
        from fedsim.attacks.membership.evaluation import member_pools, membership_sets, nonmember_pool

        cfg, pools = self.config, member_pools(self.config, experiment)
        for name in cfg.targets:  # counts only: no need to match
            membership_sets(pools[name], nonmember_pool(experiment), eval_size=cfg.eval_size,
                            aux_samples=cfg.aux_samples, seed=experiment.scenario.seed)

    def run(self, run: RunFolder, experiment: Experiment, specs: list[PluginSpec], *, log: Log) -> list[dict]:
        """Every membership attack on every target; results and ROC plots go to attacks/membership/."""
        from fedsim.attacks.membership.shadows import ShadowTrainer
        from fedsim.fanout import task_pool

        scenario = experiment.scenario
        with task_pool(scenario.resources) as pool:
            shadows = ShadowTrainer(experiment.task, scenario.federation, pool)
            rows = self._score_targets(run, experiment, specs, shadows, log=log)
            if shadows.trained:
                log(f"[membership] {shadows.trained} shadow models trained, up to {pool.slots or 1} at once")
        run.write_results(self.name, rows)
        return rows

    def _score_targets(self, run: RunFolder, experiment: Experiment, specs: list[PluginSpec], shadows: Any, *,
                       log: Log) -> list[dict]:
        from fedsim.attacks.membership import evaluation as ev
        from fedsim.attacks.membership.metrics import roc_figure
        from fedsim.scenario import ScenarioError

        cfg, seed, rows = self.config, experiment.scenario.seed, []
        nonmembers = ev.nonmember_pool(experiment)
        # the centralized and global model are trained on the same rows and scored on the same sets:
        # their shadows train on the same scans, once, to the longer of their budgets
        same_sets = {name: ev.target_budget(experiment.scenario, experiment, name, cfg) for name in cfg.targets
                     if name in ("centralized", "global_model")}
        for name in cfg.targets:
            hidden = experiment.withheld.get(TARGET_KINDS.get(name, ""))
            if hidden:
                rows += [{"attack": s.key, "target": name, "status": "skipped",
                          "reason": f"needs one client's update, but {hidden}"} for s in specs]
                continue
            try:
                target = ev.build_target(name, run, experiment, cfg, log=log)
                if target is None:
                    continue
                sets = ev.membership_sets(target.members, nonmembers, eval_size=cfg.eval_size, seed=seed,
                                          aux_samples=cfg.aux_samples, match=ev.match_values(cfg, experiment))
            except (ScenarioError, ValueError) as exc:  # e.g. an update that used fewer scans than eval_size needs
                rows += [{"attack": s.key, "target": name, "status": "error", "error": str(exc)} for s in specs]
                continue
            x, y = experiment.tensors(sets.eval_rows)
            fit = {**ev.target_fit(experiment, target), **ev.null_auc(experiment, target.members, y, sets.is_member)}
            budget = ev.target_budget(experiment.scenario, experiment, name, cfg, batch_size=target.batch_size)
            also = [b for t, b in same_sets.items() if t != name] if name in same_sets else []
            recipe = shadows.recipe(budget, also=also)
            curves = {}
            for spec in specs:
                row = ev.score_attack(spec, target, sets, x, y, experiment=experiment, shadows=recipe, seed=seed,
                                      delta=cfg.delta, log=log)
                rows.append({**row, **fit})
                if row["status"] == "ok":
                    curves[spec.key] = (row.pop("fpr"), row.pop("tpr"), row["auc"])
            if curves:
                roc_figure(curves, run.results_dir(self.name) / f"roc_{name}.png", title=f"membership · {name}")
        return rows

    @classmethod
    def report_section(cls, run: RunFolder, summary: dict[str, Any]) -> list[str]:
        """Membership inference per target model: ROC summary numbers beside the target's overfitting."""
        rows = summary.get(cls.summary_key()) or []
        if not rows:
            return []
        key = summary.get("primary_metric", "mae")
        eps = summary.get("dp_epsilon")
        lines = ["", "## Membership inference",
                 "Balanced evaluation sets (members = scans the target trained on, non-members = scans it never "
                 "saw); leaked samples given to the attacker are disjoint from both. The null AUC is the loss attack "
                 "on a model that predicts the members' mean target: no membership information, so it shows how "
                 "far the evaluation set's composition alone moves AUC from 0.5. Balanced accuracy is at the "
                 "best threshold; the empirical epsilon is a 95%-confidence lower bound from the ROC"
                 + (f" (the DP-SGD accountant's ε is {eps:.2f}; a correct accountant's ε is never below it)"
                    if eps is not None else "") + ".", "",
                 f"| target | attack | AUC | null AUC | balanced acc. | TPR@1%FPR | TPR@0.1%FPR | empirical ε ≥ "
                 f"| train {key.upper()} | test {key.upper()} | members / non-members | s |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r.get("status") != "ok":
                lines.append(f"| {r['target']} | {r['attack']} | {r.get('status')}: "
                             f"{r.get('error') or r.get('reason', '')} |||||||||")
                continue
            lines.append(f"| {r['target']} | {r['attack']} | {r['auc']:.3f} | {cell(r.get('null_auc'))} | "
                         f"{r['balanced_accuracy']:.3f} | "
                         f"{r['tpr_at_1pct_fpr']:.3f} | {r['tpr_at_0_1pct_fpr']:.3f} | {r['empirical_epsilon']:.2f} | "
                         f"{cell(r.get(f'train_{key}'))} | {cell(r.get(f'test_{key}'))} | "
                         f"{r['members']} / {r['nonmembers']} | {r['seconds']:.0f} |")
        for roc in sorted(run.results_dir(cls.name).glob("roc_*.png")):
            lines += ["", f"![{roc.stem}]({roc.relative_to(run.path)})"]
        return lines

    @classmethod
    def sweep_columns(cls, summary: dict[str, Any]) -> dict[str, Any]:
        """Per target its train / test error (the overfitting gap), per attack and target its leakage."""
        key, row = summary.get("primary_metric", "mae"), {}
        for r in summary.get(cls.summary_key(), []):
            if r.get("status") == "skipped" and "does not apply" in str(r.get("reason")):
                continue  # e.g. update alignment on a global model: not a column worth having
            for fit in (f"train_{key}", f"test_{key}"):
                if r.get(fit) is not None:
                    row[f"{r['target']}.{fit}"] = r[fit]
            for metric in SWEEP_METRICS:
                row[f"{r['attack']}@{r['target']}.{metric}"] = r.get(metric) if r.get("status") == "ok" else None
        return row

