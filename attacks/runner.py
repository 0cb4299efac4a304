"""Run attack plug-ins on the observations a federation recorded, and score them.

The runner hands each attack an Observation filtered by its threat model, then scores the
reconstruction against the client's true batch (the run folder's private area, which attacks never
see): PSNR / SSIM beside the population-mean image, re-identification among the client's data plus
a population pool, and target error. A crashing attack is recorded and the others go on.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from fedsim.attacks.base import ATTACKS, Attack, MembershipAttack, Observation, Reconstruction
from fedsim.attacks.figures import reconstruction_figure
from fedsim.attacks.metrics import match_batch, score_reconstruction
from fedsim.defenses.base import hides_client_updates
from fedsim.record import atomic_write_text, safe_name, save_tensors
from fedsim.scenario import PluginSpec, Scenario, ScenarioError, parse_params

SECURE_AGGREGATION_SKIP = ("needs one client's update, but secure aggregation leaves the server only "
                           "each round's aggregate")


def check_attacks(scenario: Scenario, prep: Any) -> None:
    """Fail before training when an attack cannot work with the auxiliary scans this run gives it."""
    for i, spec in enumerate(scenario.attacks):
        plugin = ATTACKS.get(spec.name)
        check = getattr(plugin, "check_auxiliary", None)
        if check is not None and plugin.threat.auxiliary:
            try:
                check(parse_params(plugin.Params, spec.params), len(prep.x_test))
            except ValueError as exc:
                raise ScenarioError(f"attacks.{i}: {spec.name}: {exc}") from None


def load_observations(run_dir: Path) -> list[tuple[dict[str, Any], Path]]:
    """(metadata, folder) of every recorded observation, in round/client order."""
    folders = sorted((Path(run_dir) / "observations").glob("round*_client*"))
    return [(json.loads((f / "update.json").read_text()), f) for f in folders if (f / "update.json").exists()]


def build_observation(attack: Attack, meta: dict[str, Any], folder: Path, *, prep: Any) -> Observation:
    """What this attack's threat model grants of one recorded observation, and nothing more."""
    threat = type(attack).threat
    truth = _truth(folder)
    task = prep.task
    return Observation(
        round=meta["round"], client=meta["client"], kind=meta["kind"],
        update=load_file(folder / "update.safetensors"), global_state=load_file(folder / "global.safetensors"),
        num_examples=int(meta["num_examples"]),
        input_shape=tuple(prep.x_test.shape[1:]) if threat.architecture else None,
        model_factory=task.build_model if threat.architecture else None,
        loss_fn=task.loss if threat.architecture else None,
        batch_size=meta.get("batch_size") if threat.hyperparameters else None,
        local_steps=meta.get("local_steps") if threat.hyperparameters else None,
        lr=meta.get("lr") if threat.hyperparameters else None,
        labels=truth["targets"] if threat.labels else None,
        auxiliary=prep.x_test if threat.auxiliary else None,
        behaviours=tuple(meta.get("behaviours", [])),
    )


def _truth(folder: Path) -> dict[str, Any]:
    private = folder.parent.parent / "private" / f"{folder.name}.safetensors"
    tensors = load_file(private)
    tensors["rows"] = json.loads(private.with_suffix(".json").read_text())["rows"]
    return tensors


def score(recon: Reconstruction, truth: dict[str, Any], *, prep: Any, client: int) -> dict[str, float]:
    """Leakage scores of one reconstruction; the population pool is the server's test set."""
    x_true, y_true = truth["inputs"], truth["targets"]
    n = min(len(x_true), len(recon.images))  # an attacker that guessed the batch size wrong is scored on n
    images, x_true, y_true = recon.images[:n], x_true[:n], y_true[:n]
    own_rows = prep.split.clients[client].train
    own, _ = prep.task.tensors(prep.cohort, own_rows)
    candidates = torch.cat([own, prep.x_test])
    true_index = [own_rows.index(r) for r in truth["rows"]][:n]
    prior = prep.x_test.mean(dim=0)
    out = score_reconstruction(images, x_true, prior=prior, candidates=candidates, true_index=true_index)
    out["candidates"] = len(candidates)
    if recon.labels is not None and len(recon.labels) >= n:
        if y_true.dtype.is_floating_point:  # regression: how far off the recovered age is
            perm = match_batch(images, x_true)
            out["target_error"] = float((recon.labels[perm].float() - y_true.float()).abs().mean())
        else:  # classes: compared as multisets, since iDLG recovers them without their order
            recovered, true = sorted(recon.labels[:n].tolist()), sorted(y_true.tolist())
            out["label_accuracy"] = sum(a == b for a, b in zip(recovered, true)) / max(n, 1)
    return out


def run_attacks(run_dir: Path, scenario: Scenario, specs: list[PluginSpec], *, prep: Any,
                log: Any = print) -> list[dict[str, Any]]:
    """Run every attack on every observation; results go to attacks/<name>/ in the run folder."""
    run_dir = Path(run_dir)
    observations = load_observations(run_dir)
    rows: list[dict[str, Any]] = []
    for spec in specs:
        if issubclass(ATTACKS.get(spec.name), MembershipAttack):
            continue  # scored on member / non-member sets by attacks.membership.evaluation
        out_dir = run_dir / "attacks" / safe_name(spec.key)
        lines = []
        if hides_client_updates(scenario) and ATTACKS.get(spec.name).threat.per_client_updates:
            rows.append({"attack": spec.key, "status": "skipped", "reason": SECURE_AGGREGATION_SKIP})
            log(f"[attack {spec.key}] skipped: {SECURE_AGGREGATION_SKIP}")
            atomic_write_text(out_dir / "results.jsonl", json.dumps(rows[-1]) + "\n")
            continue
        for meta, folder in observations:
            row = _attack_one(spec, meta, folder, prep=prep, out_dir=out_dir, log=log)
            lines.append(json.dumps(row))
            rows.append(row)
        if not observations:
            rows.append({"attack": spec.key, "status": "skipped",
                         "reason": "no client updates were recorded (check server.targets)"})
            lines.append(json.dumps(rows[-1]))
        atomic_write_text(out_dir / "results.jsonl", "\n".join(lines) + "\n")
    return rows


def _attack_one(spec: PluginSpec, meta: dict[str, Any], folder: Path, *, prep: Any, out_dir: Path,
                log: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"attack": spec.key, "round": meta["round"], "client": meta["client"],
                           "kind": meta["kind"], "batch_size": meta.get("batch_size"),
                           "local_steps": meta.get("local_steps"), "behaviours": meta.get("behaviours", [])}
    start = time.perf_counter()
    try:
        attack = ATTACKS.get(spec.name)(**spec.params)
        row["threat"] = type(attack).threat.describe()
        log(f"[attack {spec.key}] round {meta['round']} client {meta['client']} ({meta['kind']}, "
            f"batch {meta.get('batch_size')}) ...")
        recon = attack.reconstruct(build_observation(attack, meta, folder, prep=prep))
        truth = _truth(folder)
        row.update(score(recon, truth, prep=prep, client=meta["client"]), status="ok", **recon.extra)
        name = folder.name
        save_tensors(out_dir / f"{name}.safetensors", {"images": recon.images})
        reconstruction_figure(truth["inputs"], recon.images, prep.x_test.mean(dim=0), row,
                              out_dir / f"{name}.png")
    except Exception as exc:  # one attacker's crash must not lose the run's results
        row.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        log(f"[attack {spec.key}] failed: {type(exc).__name__}: {exc}")
    row["seconds"] = time.perf_counter() - start
    if row["status"] == "ok":
        log(f"[attack {spec.key}] PSNR {row['psnr']:.1f} dB (prior {row['prior_psnr']:.1f}, gain "
            f"{row['psnr_gain']:+.1f}) SSIM {row['ssim']:.3f} re-id top-1 {row['reid_top1']:.0%} "
            f"· {row['seconds']:.0f}s")
    return row

