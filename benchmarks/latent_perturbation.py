"""Latent perturbation against gradient noise, pruning and Soteria, at matched utility: what inversion
attacks recover from a hospital's FedSGD gradients, and at what diagnostic accuracy. Prints
markdown tables and writes a privacy-utility PNG.

One client (a hospital holding `--client` scans of the three sites) trains the neurodegeneration
classifier on 2D central slices by FedSGD: each round it shares one batch-8 gradient through its
defense, and the server takes an Adam step with it. Utility = accuracy on `--test` real held-out
scans (also shown through the client's own defense, which only the latent perturbation changes).
Gradient noise (`model_noise` sigma0, relative), pruning (`prune` keep) and Soteria (`soteria`
prune) are each set by `calibration.match_utility` to the latent perturbation's accuracy (within
one point). Then, at the trained model, every defense's batch-1 gradients of `--victims` client
scans (half of them diagnosed, so guessing scores 50%) are attacked:

- learned: `learned_inversion`'s map fitted on the attacker's 600 clean scans (x 2 flips);
- adaptive: the map fitted by an attacker that knows the defense: on its own copy of the latent
  perturbation (its own autoencoder and perturbation, trained on its scans: not the client's
  weights), or on its scans' gradients passed through the same noise or pruning (then scaled to unit
  norm, not divided by the noised bias entry); Soteria's rows reuse the plain map's;
- trained-on image: the decoded perturbed scan itself, what the imprint attack recovers exactly;
- Inverting Gradients on the first 8 victims (labels known).

Scores against the real scans: MSE (z-scored voxels), PSNR, SSIM, re-identification top-1 among the
client's scans, and the accuracy of the attacker's classifiers (diagnosis, sex; trained on its
clean scans) on the reconstructions, beside their accuracy on the victims' real scans and on the
population-mean scan (what an attacker has without attacking). The curve
(first seed; noise and pruning matched at each further epsilon) is drawn from the learned rows.

    python benchmarks/latent_perturbation.py [--seeds 0,1,2 --epsilon 0.3 --curve 0.1,1
        --rounds 1500 --out docs/figures/latent_perturbation.png]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from calibration import match_utility
from torch import nn

from fedsim.attacks.base import DefenseCopy
from fedsim.attacks.gradient_inversion import learned
from fedsim.attacks.gradient_inversion.adaptive import through_updates
from fedsim.attacks.gradient_inversion.optimize import InversionConfig, invert_gradient
from fedsim.attacks.metrics import score_reconstruction
from fedsim.data.synthetic import CohortSpec, load_cohort
from fedsim.defense_copies import train_copy
from fedsim.defenses.base import ClientRound, Defense
from fedsim.defenses.latent_perturbation import LatentPerturbation
from fedsim.defenses.model_noise import ModelNoise
from fedsim.defenses.prune import Prune
from fedsim.defenses.soteria import Soteria
from fedsim.scenario import FederationConfig, TaskConfig
from fedsim.tasks.diagnosis import DiagnosisSliceTask
from fedsim.training import one_batch_gradient, predict, train_local

COHORT_SEED, BATCH, IG_VICTIMS = 2024, 8, 8
MODEL = TaskConfig(name="diagnosis_slice", model={"channels": [16, 32, 64]})


class SexSlice(DiagnosisSliceTask):
    """The attacker's sensitive-attribute classifier: sex from the slice (one logit)."""

    @staticmethod
    def targets(cohort) -> np.ndarray:
        return cohort.sex.astype(np.float64)


@dataclass
class Env:
    task: DiagnosisSliceTask
    x: torch.Tensor  # the client's scans
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_aux: torch.Tensor  # the attacker's
    y_aux: torch.Tensor
    victims: np.ndarray  # client rows attacked
    labels: dict[str, torch.Tensor]  # the victims' diagnosis and sex
    classifiers: dict[str, nn.Module]  # the attacker's, trained on its clean scans
    rounds: int
    seed: int


def environment(args: argparse.Namespace, seed: int) -> Env:
    n = args.client + args.test + args.aux
    cohort = load_cohort(CohortSpec(n_subjects=n, shape=32, n_sites=3, seed=COHORT_SEED, neurodegeneration=True))
    order = np.random.default_rng(seed).permutation(n)
    client, test, aux = np.split(order, [args.client, args.client + args.test])
    prevalence = float(cohort.diagnosis[client].mean())
    task = DiagnosisSliceTask(config=MODEL, target_mean=prevalence)
    (x, y), (xt, yt), (xa, ya) = (task.tensors(cohort, list(rows)) for rows in (client, test, aux))
    positive, negative = np.flatnonzero(y.numpy() == 1), np.flatnonzero(y.numpy() == 0)
    half = min(args.victims // 2, len(positive))  # half with the disease, interleaved: chance is 50%
    victims = np.stack([positive[:half], negative[:half]], axis=1).ravel()
    labels = {"diagnosis": y[victims], "sex": torch.from_numpy(cohort.sex[client[victims]].astype(np.int64))}
    classifiers = {}
    for name, cls in (("diagnosis", DiagnosisSliceTask), ("sex", SexSlice)):
        t = cls(config=MODEL, target_mean=float(cls.targets(cohort)[aux].mean()))
        torch.manual_seed(seed + 7)
        model = t.build_model()
        train_local(model, xa, t.tensors(cohort, list(aux))[1], task=t, rng=np.random.default_rng(seed),
                    config=FederationConfig(local_epochs=8, batch_size=8))
        classifiers[name] = model
    return Env(task, x, y, xt, yt, xa, ya, victims, labels, classifiers, args.rounds, seed)


def context(seed: int, round_: int, task: DiagnosisSliceTask, tensors: dict | None = None) -> ClientRound:
    return ClientRound(client=0, server_round=round_, task=task, config=FederationConfig(batch_size=BATCH),
                       rng=np.random.default_rng([seed, round_]), tensors=tensors if tensors is not None else {})


def shared_gradient(model: nn.Module, defense: Defense | None, ctx: ClientRound, task, x, y, batch: int,
                    rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """What the client sends for one batch: its gradient through the defense's hooks and transform."""
    start = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = [defense.training_hook(ctx)] if defense else []
    grads, _ = one_batch_gradient(model, x, y, task=task, batch_size=batch, rng=rng, hooks=hooks)
    model.load_state_dict(start)  # one_batch_gradient took its (lr 1) step
    return defense.transform_update(grads, kind="gradient", reference=start, ctx=ctx) if defense else grads


def train(env: Env, defense: Defense | None) -> tuple[nn.Module, dict, float, float]:
    """FedSGD for env.rounds rounds; the model, the client's private defense tensors, accuracy on
    the clean test scans and seconds per round."""
    torch.manual_seed(env.seed)
    model = env.task.build_model()
    server = torch.optim.Adam(model.parameters(), lr=1e-3)
    tensors: dict = {}
    rng, start = np.random.default_rng(env.seed + 1), time.perf_counter()
    for r in range(1, env.rounds + 1):
        ctx = context(env.seed, r, env.task, tensors)
        grads = shared_gradient(model, defense, ctx, env.task, env.x, env.y, BATCH, rng)
        for name, p in model.named_parameters():
            p.grad = grads[name].to(p.dtype)
        server.step()
        server.zero_grad(set_to_none=True)
        tensors = ctx.tensors
    seconds = (time.perf_counter() - start) / env.rounds
    accuracy = env.task.metrics(predict(model, env.x_test), env.y_test)["accuracy"]
    return model, tensors, accuracy, seconds


def attack_rows(env: Env, name: str, strength: str, model: nn.Module, defense: Defense | None, tensors: dict,
                utility: float, seconds: float) -> list[dict]:
    """Every attack on the victims' batch-1 gradients through `defense`, scored against the real scans."""
    names, bias = learned.trainable_names(model), learned.output_bias(model)
    xv = env.x[env.victims]
    recons = {}
    if isinstance(defense, LatentPerturbation):  # its modules as the client left them (before any victim's step)
        with torch.no_grad():
            recons["trained-on image"] = defense.defense.images(xv)
    grads, feats = [], []
    for i in env.victims:
        ctx = context(env.seed, 10_000 + int(i), env.task, dict(tensors))  # a copy: attacks never move the defense
        g = shared_gradient(model, defense, ctx, env.task, env.x[i:i + 1], env.y[i:i + 1], 1, np.random.default_rng(0))
        grads.append(g)
        try:
            feats.append(learned.observed_features(g, names, bias))
        except ValueError:  # pruned away the output bias's entry: nothing to divide by
            feats.append(None)
    if defense is None:  # references: the victims' real scans, and the population-mean scan (no attack)
        recons["real scan (reference)"] = xv
        recons["population prior"] = env.x_aux.mean(0, keepdim=True).expand_as(xv)
    recons["learned"] = _predict(learned.fit_inversion(model, env.x_aux, augment_copies=2, seed=env.seed), feats,
                                 env.x_aux.mean(0))
    if isinstance(defense, LatentPerturbation):
        recons["adaptive learned"] = _predict(_adaptive_map(env, model, defense), feats, env.x_aux.mean(0))
    elif isinstance(defense, ModelNoise | Prune):
        aware = learned.fit_inversion(model, env.x_aux, targets=env.y_aux, loss_fn=env.task.loss, augment_copies=2,
                                      seed=env.seed, sent=_through(defense, model, names, env))
        recons["adaptive learned"] = aware.predict(torch.cat([learned.observed_features(g, names, bias, unit_norm=True)
                                                              for g in grads]))
    else:
        recons["adaptive learned"] = recons["learned"]
    ig = InversionConfig(objective="cosine", lr=0.03, tv=1e-4, iterations=100)
    recons["inverting gradients"] = torch.cat([invert_gradient(
        model, env.task.loss, [grads[k][n] for n in names], input_shape=(1, *xv.shape[1:]),
        labels=env.y[i:i + 1].float(), auxiliary=env.x_aux[:256], config=ig).images.detach()
        for k, i in enumerate(env.victims[:IG_VICTIMS])])
    rows = []
    for attack, recon in recons.items():
        k = len(recon)
        s = score_reconstruction(recon, xv[:k], prior=env.x_aux.mean(0), candidates=env.x,
                                 true_index=env.victims[:k].tolist(), batch=False)
        guesses = {a: (predict(c, recon) > 0).long() for a, c in env.classifiers.items()}
        acc = {a: float((g == env.labels[a][:k]).double().mean()) for a, g in guesses.items()}
        rows.append({"defense": name, "strength": strength, "attack": attack, "seed": env.seed, "utility": utility,
                     "pipeline_utility": _pipeline_accuracy(env, model, defense),
                     "seconds": seconds, "victims": k, "mse": s["mse"], "psnr": s["psnr"], "ssim": s["ssim"],
                     "reid": s["reid_top1"], "acc_diagnosis": acc["diagnosis"],
                     "acc_sex": acc["sex"]})
    return rows


def _pipeline_accuracy(env: Env, model: nn.Module, defense: Defense | None) -> float:
    """Accuracy on the test scans passed through the client's own defense (a latent perturbation
    changes the images the model sees; the others do not)."""
    x = env.x_test
    if isinstance(defense, LatentPerturbation):
        with torch.no_grad():
            x = defense.defense.images(x)
    return env.task.metrics(predict(model, x), env.y_test)["accuracy"]


def _predict(inversion: learned.InversionMap, feats: list, prior: torch.Tensor) -> torch.Tensor:
    return torch.cat([inversion.predict(f) if f is not None else prior[None] for f in feats])


def _adaptive_map(env: Env, model: nn.Module, defense: LatentPerturbation) -> learned.InversionMap:
    """The attacker runs the defense (same parameters, its own weights) on its own scans, then maps
    gradients of its perturbed images to its real ones (as `adaptive_learned_inversion` does)."""
    shown = train_copy(LatentPerturbation(**defense.params.model_dump()), model, env.x_aux, env.y_aux, task=env.task,
                       config=FederationConfig(local_epochs=2, batch_size=BATCH), seed=env.seed + 99)
    return learned.fit_inversion(model, env.x_aux, augment_copies=2, seed=env.seed, shown=shown)


def _through(defense: Defense, model: nn.Module, names: list[str], env: Env) -> learned.Sent:
    """The attacker's copy of an update defense, applied to each of its own gradients (rows), with
    noise of its own (as `adaptive_learned_inversion` runs it in a scenario)."""
    rounds, sender = iter(range(20_000, 10**9)), defense.simulated_sender("gradient")
    own = DefenseCopy(name="copy", kinds=("gradient",),
                      send=lambda update: sender(update, context(env.seed + 99, next(rounds), env.task)))
    return through_updates([own], model, names)


def matched_rows(env: Env, epsilon: float,
                 baselines: tuple[str, ...] = ("model_noise", "prune", "soteria")) -> list[dict]:
    """None, the latent perturbation at `epsilon`, and the `baselines` matched to its accuracy."""
    rows = []
    model, tensors, acc, sec = train(env, None)
    rows += attack_rows(env, "none", "-", model, None, tensors, acc, sec)
    latent = LatentPerturbation(epsilon=epsilon)
    model, tensors, target, sec = train(env, latent)
    rows += attack_rows(env, "latent_perturbation", f"eps={epsilon:g}", model, latent, tensors, target, sec)
    for name, make, low, high, label in (  # each strength s grows with protection
            ("model_noise", lambda s: ModelNoise(sigma0=s), 1e-2, 1e2, lambda s: f"sigma0={s:.3g}"),
            ("prune", lambda s: Prune(keep=1.0 / s), 1.0, 1e4, lambda s: f"keep={1.0 / s:.2g}"),
            ("soteria", lambda s: Soteria(prune=1.0 - 1.0 / s), 1.05, 1e3, lambda s: f"prune={1.0 - 1.0 / s:.3g}")):
        if name not in baselines:
            continue

        def evaluate(strength: float, make=make) -> tuple[float, tuple]:
            defense = make(strength)
            model, tensors, acc, sec = train(env, defense)
            return acc, (defense, model, tensors, sec)

        m = match_utility(evaluate, target, low=low, high=high, iterations=3 if name == "soteria" else 7)
        defense, model, tensors, sec = m.result
        strength = label(m.strength)
        rows += attack_rows(env, name, strength, model, defense, tensors, m.utility, sec)
        print(f"  calibrated {name}: {strength}, accuracy {m.utility:.3f} (target {target:.3f}; tried "
              f"{', '.join(f'{s:.3g}->{u:.3f}' for s, u in m.tried)})", flush=True)
    return [{**r, "matched_to": epsilon} for r in rows]


def table(rows: list[dict], by: tuple[str, ...] = ("defense", "attack")) -> str:
    keys = ("utility", "pipeline_utility", "acc_diagnosis", "acc_sex", "mse", "psnr", "ssim", "reid", "seconds")
    out = ["| defense | strength | attack | accuracy (real scans) | accuracy (client's pipeline) | attacker dx acc "
           "| attacker sex acc | MSE | PSNR | SSIM | re-id top-1 | s / round | seeds |", "|" + "---|" * 13]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    for rs in groups.values():
        defense, attack = rs[0]["defense"], rs[0]["attack"]
        cells = []
        for k in keys:
            v = [r[k] for r in rs]
            spread = f" ± {statistics.stdev(v):.2f}" if len(v) > 1 and k in ("utility", "acc_diagnosis", "mse") else ""
            fmt = ".3f" if k in ("utility", "pipeline_utility", "acc_diagnosis", "acc_sex", "mse", "ssim") \
                else ".2f" if k == "seconds" \
                else ".0%" if k == "reid" else ".1f"
            cells.append(f"{statistics.fmean(v):{fmt}}{spread}")
        strengths = sorted({r["strength"] for r in rs})
        out.append(f"| {defense} | {', '.join(strengths)} | {attack} | " + " | ".join(cells) + f" | {len(rs)} |")
    return "\n".join(out)


def comparison(rows: list[dict]) -> str:
    """The latent perturbation's attacker accuracy and MSE against the better baseline, per attack."""
    lines = []
    for attack in ("learned", "adaptive learned", "inverting gradients"):
        mean = {d: {k: statistics.fmean(r[k] for r in rows if r["defense"] == d and r["attack"] == attack)
                    for k in ("acc_diagnosis", "acc_sex", "mse")}
                for d in ("latent_perturbation", "model_noise", "prune", "soteria")}
        lat, parts = mean["latent_perturbation"], []
        for key, label in (("acc_diagnosis", "diagnosis accuracy"), ("acc_sex", "sex accuracy")):
            best = min(mean[d][key] for d in ("model_noise", "prune", "soteria"))
            parts.append(f"attacker {label} {lat[key]:.3f} vs {best:.3f} ({lat[key] - best:+.3f}, "
                         f"{(lat[key] - best) / best:+.1%})")
        best_mse = max(mean[d]["mse"] for d in ("model_noise", "prune", "soteria"))
        parts.append(f"MSE {lat['mse']:.3f} vs {best_mse:.3f} ({(lat['mse'] - best_mse) / best_mse:+.1%})")
        lines.append(f"- {attack}, latent perturbation vs the better baseline: " + "; ".join(parts))
    return "\n".join(lines)


def curve(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for defense in ("model_noise", "prune", "soteria", "latent_perturbation", "none"):
        rs = sorted((r for r in rows if r["defense"] == defense and r["attack"] == "learned"),
                    key=lambda r: r["utility"])
        for ax, key in zip(axes, ("acc_diagnosis", "mse"), strict=True):
            ax.plot([r["utility"] for r in rs], [r[key] for r in rs], "o-" if defense != "none" else "k*",
                    label=defense, markersize=9 if defense == "none" else 5)
    for ax, label in zip(axes, ("attacker's diagnosis accuracy on reconstructions", "MSE to the real scan"),
                         strict=True):
        ax.set_xlabel("client accuracy (clean test scans)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Learned inversion of FedSGD gradients, defenses matched in utility (2D, seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    p.add_argument("--epsilon", type=float, default=0.3)
    p.add_argument("--curve", type=lambda s: [float(v) for v in s.split(",") if v], default=[0.1, 1.0],
                   help="further epsilons for the privacy-utility curve (first seed only)")
    p.add_argument("--rounds", type=int, default=1500)
    p.add_argument("--client", type=int, default=400)
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--aux", type=int, default=600)
    p.add_argument("--victims", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/figures/latent_perturbation.png")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        env = environment(args, seed)
        rows += matched_rows(env, args.epsilon)
        print(table([r for r in rows if r["seed"] == seed]) + "\n", flush=True)
    print(f"## {len(args.seeds)} seeds, epsilon {args.epsilon}, {args.rounds} FedSGD rounds of batch {BATCH}\n")
    print(table(rows) + "\n\n" + comparison(rows) + "\n", flush=True)
    if args.curve:
        env = environment(args, args.seeds[0])
        points = [r for r in rows if r["seed"] == args.seeds[0]]
        for eps in args.curve:
            points += [r for r in matched_rows(env, eps, ("model_noise", "prune")) if r["defense"] != "none"]
        print(table(points, by=("matched_to", "defense", "attack")), flush=True)
        curve(points, args.out)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
