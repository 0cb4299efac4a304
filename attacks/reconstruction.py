"""The reconstruction family: rebuild a client's inputs from what it sent, and score how close it came.

For every recorded observation an attack consumes, the family hands the attack an Observation
filtered by its threat model, then scores the reconstruction against the true batch (the run
folder's private area, which attacks never see): PSNR / SSIM beside the population-mean image,
re-identification among the client's data plus a population pool, and target error. A crashing
attack is recorded and the others go on.
"""

from __future__ import annotations

import time
import traceback
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedsim.attacks.base import ATTACKS, Observation, Reconstruction, ReconstructionAttack
from fedsim.families import FAMILIES, AttackFamily, Log, attack_index
from fedsim.run_folder import RecordedObservation, RunFolder, observation_name, save_tensors
from fedsim.scenario import PluginSpec, ScenarioError
from fedsim.settings.base import GRADIENT, WEIGHTS

if TYPE_CHECKING:
    from fedsim.experiment import Experiment

SCORE_COLUMNS = ("psnr_gain", "reid_top1")  # what a sweep averages per attack


class ReconstructionConfig(BaseModel):
    """The `reconstruction:` section: what every reconstruction is scored on beyond PSNR and identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    probes: list[Literal["sex", "diagnosis"]] = Field(
        default_factory=list, description="attributes the attacker's classifiers (trained on its own clean scans) "
        "read from each reconstruction; diagnosis needs data.neurodegeneration")
    probe_scans: int = Field(400, ge=20, le=100_000, description="the attacker's scans each probe is trained on")
    probe_epochs: int = Field(8, ge=1, le=200)


def build_observation(attack: ReconstructionAttack, obs: RecordedObservation, truth: dict[str, Any], *,
                      experiment: Experiment) -> Observation:
    """What this attack's threat model grants of one recorded observation, and nothing more."""
    threat, meta, task = type(attack).threat, obs.meta, experiment.task
    return Observation(
        round=meta["round"], client=meta["client"], kind=meta["kind"],
        update=obs.update(), global_state=obs.global_state(),
        num_examples=int(meta["num_examples"]),
        input_shape=tuple(experiment.x_test.shape[1:]) if threat.architecture else None,
        model_factory=task.build_model if threat.architecture else None,
        loss_fn=task.loss if threat.architecture else None,
        metrics_fn=task.metrics if threat.architecture else None,
        batch_size=meta.get("batch_size") if threat.hyperparameters else None,
        local_steps=meta.get("local_steps") if threat.hyperparameters else None,
        lr=meta.get("lr") if threat.hyperparameters else None,
        optimizer=optimizer_of(experiment) if threat.hyperparameters else None,
        labels=truth["targets"] if threat.labels else None,
        auxiliary=experiment.x_test if threat.auxiliary else None,
        population=experiment.population if threat.auxiliary else None,
        behaviours=tuple(meta.get("behaviours", [])),
        defenses=tuple(experiment.defense_copies()) if threat.defenses and experiment.defense_copies else (),
        recipe=meta.get("recipe"),  # the owner's own code: it knows it
        owner_state=obs.owner_state() if meta.get("recipe") else None,  # and what it prepared outside the lakes
        split=meta.get("split"),  # split inference: where the network was cut (the server runs the rest)
        provider_scans=meta.get("provider_scans"),  # ... and what the provider (the server) trained it on
    )


def optimizer_of(experiment: Experiment) -> dict[str, Any]:
    """The optimizer the server agreed with its clients (the scenario's federation section)."""
    fed = experiment.scenario.federation
    return {"name": fed.optimizer, "momentum": fed.momentum if fed.optimizer == "sgd" else 0.0,
            "weight_decay": fed.weight_decay}


def score(recon: Reconstruction, truth: dict[str, Any], *, experiment: Experiment, client: int,
          probes: dict[str, Any] | None = None) -> dict[str, float]:
    """Leakage scores of one reconstruction; the population pool is the server's test set; with
    `probes`, what the attacker's classifiers read from it (attribute_probes.py)."""
    import torch

    from fedsim.attacks.metrics import match_batch, score_reconstruction

    x_true, y_true = truth["inputs"], truth["targets"]
    n = min(len(x_true), len(recon.images))  # an attacker that guessed the batch size wrong is scored on n
    images, x_true, y_true = recon.images[:n], x_true[:n], y_true[:n]
    own_rows = experiment.split.clients[client].train
    own, _ = experiment.tensors(own_rows)
    candidates = torch.cat([own, experiment.x_test])
    true_index = [own_rows.index(r) for r in truth["rows"]][:n]
    out = score_reconstruction(images, x_true, prior=experiment.prior(), candidates=candidates,
                               true_index=true_index)
    out["candidates"] = len(candidates)
    if probes:
        from fedsim.attacks.attribute_probes import probe_scores

        out.update(probe_scores(probes, images, experiment.cohort, list(truth["rows"])[:n]))
    if recon.labels is not None and len(recon.labels) >= n:
        if y_true.dtype.is_floating_point:  # regression: how far off the recovered age is
            perm = match_batch(images, x_true)
            out["target_error"] = float((recon.labels[perm].float() - y_true.float()).abs().mean())
        else:  # classes: compared as multisets, since iDLG recovers them without their order
            recovered, true = sorted(recon.labels[:n].tolist()), sorted(y_true.tolist())
            out["label_accuracy"] = sum(a == b for a, b in zip(recovered, true, strict=True)) / max(n, 1)
    return out


@FAMILIES.register("reconstruction")
class ReconstructionFamily(AttackFamily):
    """Rebuild the inputs from one client's gradient or update (gradient inversion, imprint)."""

    name: ClassVar[str] = "reconstruction"
    consumes: ClassVar[frozenset[str]] = frozenset({GRADIENT, WEIGHTS})
    section: ClassVar[str | None] = "reconstruction"
    Config = ReconstructionConfig
    config: ReconstructionConfig

    @classmethod
    def summary_key(cls) -> str:
        return "attacks"  # the key summary.json has always used for these rows

    @classmethod
    def check_scenario(cls, config: ReconstructionConfig, scenario: Any, attacks: list) -> None:
        if "diagnosis" in config.probes and not scenario.data.neurodegeneration:
            raise ValueError("reconstruction.probes: 'diagnosis' needs a diagnosis label (data.neurodegeneration: "
                             "true, dataset synthetic_brain)")

    def check(self, experiment: Experiment, specs: list[PluginSpec]) -> None:
        """An attack that needs auxiliary scans (a population prior, a learned map) gets enough."""
        for spec in specs:
            plugin = ATTACKS.get(spec.name)
            check = getattr(plugin, "check_experiment", None)
            if check is not None:
                try:
                    check(plugin.parse(spec.params), experiment)
                except ValueError as exc:
                    raise ScenarioError(f"attacks.{attack_index(self.scenario, spec)}: {spec.name}: {exc}") from None

    def run(self, run: RunFolder, experiment: Experiment, specs: list[PluginSpec], *, log: Log) -> list[dict]:
        rows: list[dict[str, Any]] = []
        probes = None
        if self.config.probes:
            from fedsim.attacks.attribute_probes import train_probes

            start = time.perf_counter()
            probes = train_probes(experiment, list(self.config.probes), scans=self.config.probe_scans,
                                  epochs=self.config.probe_epochs, seed=self.scenario.seed)
            read = ", ".join(f"{k}: {p.clean:.0%} on real scans (majority {p.majority:.0%})" for k, p in probes.items())
            log(f"[probes] {read} · {time.perf_counter() - start:.0f}s")
        for spec in specs:
            kinds = ATTACKS.get(spec.name).consumes or self.consumes
            visible = kinds - set(experiment.withheld)
            own: list[dict[str, Any]] = []
            if not visible:
                reason = f"needs one client's update, but {experiment.withheld[min(kinds)]}"
                own.append({"attack": spec.key, "status": "skipped", "reason": reason})
                log(f"[attack {spec.key}] skipped: {reason}")
            elif not (observations := run.observations(visible)):
                own.append({"attack": spec.key, "status": "skipped",
                            "reason": "no client updates were recorded (check server.targets)"})
            else:
                own += [_attack_one(spec, obs, run=run, experiment=experiment, log=log, probes=probes)
                        for obs in observations]
            run.write_results(spec.key, own)
            rows += own
        return rows

    @classmethod
    def report_section(cls, run: RunFolder, summary: dict[str, Any]) -> list[str]:
        """What the server did beyond honest aggregation, and what each attack recovered."""
        rows = summary.get(cls.summary_key()) or []
        server = run.scenario_raw().get("server", {})
        behaviours = [b["name"] for b in server.get("behaviours", [])]
        if not rows and not behaviours:
            return []
        targets = server.get("targets", {})
        who = "malicious: " + ", ".join(behaviours) if behaviours else "honest-but-curious (only watches)"
        watched = behaviours or any(r.get("kind") in (GRADIENT, WEIGHTS) for r in rows)  # a server's observations
        lines = ["", "## Server behaviour and attacks" if watched else "## Attacks"]
        if watched:
            lines.append(f"- Server: {who}; observed clients {targets.get('clients') or 'all'} in rounds "
                         f"{targets.get('rounds') or 'all'}.")
        lines += ["- Scores compare each reconstruction with the true scan and with the population-mean image (the "
                  "prior an attacker has without attacking); re-identification ranks the true scan among the "
                  "client's data plus the server's population pool.", ""]
        from fedsim.attacks.metrics import psnr_summary

        lines += ["| attack | round | client | update | batch | PSNR dB | prior PSNR | gain | SSIM (MS-SSIM) "
                  "| prior SSIM | re-id top-1 (chance) | target error / label acc. | s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r.get("status") != "ok":
                lines.append(f"| {r.get('attack')} | {r.get('round', '–')} | {r.get('client', '–')} | "
                             f"{r.get('status')}: {r.get('error') or r.get('reason', '')} |||||||||")
                continue
            psnr, gain = psnr_summary(r)
            lines.append(
                f"| {r['attack']} | {r['round']} | {r['client']} | {r['kind']} | "
                f"{r['batch_size'] or r.get('stolen') or '–'} | {psnr} | {r['prior_psnr']:.1f} | "
                f"{gain} | {_with_ms(r, '')} | {_with_ms(r, 'prior_')} | "
                f"{r['reid_top1']:.0%} ({r['chance_top1']:.1%}) | {_target_column(r)} | {r['seconds']:.0f} |")
        lines += _probe_table(rows) + _worth_table(rows)
        for r in rows:
            if r.get("status") == "ok":
                name = observation_name(r["round"], r["client"])
                figure = run.results_dir(str(r["attack"])) / f"{name}.png"
                if figure.exists():
                    lines += ["", f"![{r['attack']} round {r['round']} client {r['client']}]"
                                  f"({figure.relative_to(run.path)})"]
        threats = sorted({f"{r['attack']}: {r['threat']}" for r in rows if r.get("threat")})
        if threats:
            lines += ["", "Threat models (what each attack was given): " + "; ".join(threats) + "."]
        return lines

    @classmethod
    def sweep_columns(cls, summary: dict[str, Any]) -> dict[str, Any]:
        by_attack: dict[str, list[dict[str, Any]]] = {}
        for r in summary.get(cls.summary_key(), []):
            by_attack.setdefault(r["attack"], []).append(r)
        row: dict[str, Any] = {}
        for name, rows in by_attack.items():
            ok = [r for r in rows if r.get("status") == "ok"]
            probes = sorted(k for k in (ok[0] if ok else {}) if k.startswith("probe_") and k.count("_") == 1)
            for metric in (*SCORE_COLUMNS, *probes):
                row[f"{name}.{metric}"] = sum(r[metric] for r in ok) / len(ok) if ok else None
            if not ok:
                row[f"{name}.status"] = rows[0].get("reason") or rows[0].get("error") or rows[0].get("status")
        return row


def _probe_table(rows: list[dict[str, Any]]) -> list[str]:
    """What the attacker's attribute probes read from each reconstruction, beside guessing the
    majority class and beside reading the real scan."""
    ok = [r for r in rows if r.get("status") == "ok"]
    names = sorted({k[len("probe_"):] for r in ok for k in r if k.startswith("probe_") and k.count("_") == 1})
    if not names:
        return []
    lines = ["", "Attribute probes (the attacker's classifiers, trained on its own clean scans) on the "
             "reconstructions: accuracy, then guessing the majority class / reading the real scans.", "",
             "| attack | round | client | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for r in ok:
        cells = [f"{r[f'probe_{n}']:.0%} ({r[f'probe_{n}_majority']:.0%} / {r[f'probe_{n}_clean']:.0%})" for n in names]
        lines.append(f"| {r['attack']} | {r['round']} | {r['client']} | " + " | ".join(cells) + " |")
    return lines


def _worth_table(rows: list[dict[str, Any]]) -> list[str]:
    """What stolen scans are worth (data_stealing's `train_on_stolen`): the agreed network trained on
    them alone, beside the network they were stolen with, both on the attacker's own labelled scans."""
    ok = [r for r in rows if r.get("status") == "ok" and "stolen_trained_dice" in r]
    if not ok:
        return []
    lines = ["", "What the stolen scans are worth: the agreed network trained on them alone (labelled by the "
             "exported network), and the exported network itself, on the attacker's own labelled scans.", "",
             "| attack | lake | scans stolen | trained on them: Dice | exported network: Dice |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['attack']} | {r['client']} | {r.get('stolen', '–')} | {r['stolen_trained_dice']:.3f} | "
              f"{r['exported_dice']:.3f} |" for r in ok]
    return lines


def _with_ms(row: dict[str, Any], prefix: str) -> str:
    """SSIM, and the multi-scale SSIM in brackets where the images were large enough for it."""
    multi = row.get(f"{prefix}ms_ssim")
    return f"{row[f'{prefix}ssim']:.3f}" + (f" ({multi:.3f})" if multi is not None else "")


def _target_column(row: dict[str, Any]) -> str:
    if "target_error" in row:
        return f"{row['target_error']:.1f}"
    if "label_accuracy" in row:
        return f"{row['label_accuracy']:.0%} of labels"
    return "–"


def _attack_one(spec: PluginSpec, obs: RecordedObservation, *, run: RunFolder, experiment: Experiment,
                log: Log, probes: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = obs.meta
    row: dict[str, Any] = {"attack": spec.key, "round": meta["round"], "client": meta["client"],
                           "kind": meta["kind"], "batch_size": meta.get("batch_size"),
                           "local_steps": meta.get("local_steps"), "behaviours": meta.get("behaviours", [])}
    start = time.perf_counter()
    try:
        attack = ATTACKS.get(spec.name)(**spec.params)
        row["threat"] = type(attack).threat.describe()
        log(f"[attack {spec.key}] round {meta['round']} client {meta['client']} ({meta['kind']}, "
            f"batch {meta.get('batch_size')}) ...")
        truth = run.read_truth(obs.name)
        recon = attack.reconstruct(build_observation(attack, obs, truth, experiment=experiment))
        row.update(score(recon, truth, experiment=experiment, client=meta["client"], probes=probes), status="ok",
                   **recon.extra)
        out_dir = run.results_dir(spec.key)
        save_tensors(out_dir / f"{obs.name}.safetensors", {"images": recon.images})
        from fedsim.attacks.figures import reconstruction_figure  # matplotlib: only once there is a figure

        reconstruction_figure(truth["inputs"], recon.images, experiment.prior(), row, out_dir / f"{obs.name}.png")
    except Exception as exc:  # one attacker's crash must not lose the run's results
        row.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        log(f"[attack {spec.key}] failed: {type(exc).__name__}: {exc}")
    row["seconds"] = time.perf_counter() - start
    if row["status"] == "ok":
        log(f"[attack {spec.key}] PSNR {row['psnr']:.1f} dB (prior {row['prior_psnr']:.1f}, gain "
            f"{row['psnr_gain']:+.1f}) SSIM {row['ssim']:.3f} re-id top-1 {row['reid_top1']:.0%} "
            f"· {row['seconds']:.0f}s")
    return row

