"""The gradient-inversion attacks as scenario plug-ins: `dlg`, `inverting_gradients`,
`fedavg_update_inversion`. Each declares its threat model; the search itself lives in optimize.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedsim.attacks.base import ATTACKS, Observation, Reconstruction, ReconstructionAttack, ThreatModel
from fedsim.data.datasets import Dataset
from fedsim.plugin import NoParams
from fedsim.settings.base import GRADIENT, WEIGHTS

if TYPE_CHECKING:
    import torch

    from fedsim.attacks.gradient_inversion.optimize import InversionConfig
    from fedsim.experiment import Experiment


class InversionParams(BaseModel):
    """The search settings a scenario may set (see InversionConfig for their meaning)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    objective: Literal["l2", "cosine", "abs_cosine"] = "cosine"
    iterations: int = Field(500, ge=1)
    lr: float = Field(0.1, gt=0)
    signed: bool = True
    lr_schedule: bool = True
    tv: float = Field(1e-4, ge=0)
    restarts: int = Field(1, ge=1)
    prior_pull: float = Field(0.0, ge=0)
    parameterization: Literal["pixel", "pca"] = "pixel"
    n_components: int = Field(20, ge=1)
    label: Literal["known", "joint", "idlg"] = "known"  # idlg: read classes from the gradient (classification)
    seed: int = 0
    verbose: bool = False


class DLGParams(InversionParams):
    objective: Literal["l2", "cosine", "abs_cosine"] = "l2"
    signed: bool = False
    tv: float = Field(0.0, ge=0)
    lr_schedule: bool = False
    label: Literal["known", "joint"] = "joint"


class GradientInversion(ReconstructionAttack):
    """Shared body: search inputs whose gradient (or local update) matches the observed one."""

    threat: ClassVar[ThreatModel] = ThreatModel(hyperparameters=True, labels=True, auxiliary=True)
    Params = InversionParams

    @classmethod
    def check_experiment(cls, params: InversionParams, experiment: Experiment) -> None:
        """A PCA prior on N centred scans has at most N - 1 components: refuse before training."""
        n_auxiliary = len(experiment.x_test)
        if params.parameterization == "pca" and n_auxiliary <= params.n_components:
            raise ValueError(f"params.n_components: a {params.n_components}-component PCA prior needs at least "
                             f"{params.n_components + 1} auxiliary scans, but the server holds {n_auxiliary} (its "
                             "test set: raise data.n_subjects or data.test_fraction, or lower n_components)")

    def config(self) -> InversionConfig:
        from fedsim.attacks.gradient_inversion.optimize import InversionConfig

        fields = self.params.model_dump(exclude={"verbose"})
        if fields["label"] == "idlg":
            fields["label"] = "known"  # the recovered classes are then used as known labels
        return InversionConfig(**fields)

    def reconstruct(self, observation: Observation) -> Reconstruction:
        from fedsim.attacks.gradient_inversion.optimize import invert_gradient, invert_weight_update

        obs = observation
        if obs.loss_fn is None or obs.input_shape is None:
            raise PermissionError("gradient inversion needs the architecture and the task's loss")
        model = obs.model()
        labels = obs.labels if self.params.label == "known" else None
        n = len(labels) if labels is not None else obs.images_in_update()
        if self.params.label == "idlg":
            labels = idlg_labels(model, obs, n)
        shape = (n, *obs.input_shape)
        common = dict(input_shape=shape, labels=labels, auxiliary=obs.auxiliary, config=self.config(),
                      verbose=self.params.verbose)
        if obs.kind == "gradient":
            names = [name for name, p in model.named_parameters() if p.requires_grad]
            result = invert_gradient(model, obs.loss_fn, [obs.update[k] for k in names], **common)
        else:
            if not (obs.local_steps and obs.lr and obs.batch_size):
                raise PermissionError("inverting a weight update needs the client's steps, lr and batch size")
            result = invert_weight_update(model, obs.loss_fn, obs.global_state, obs.update,
                                          local_steps=obs.local_steps, lr=obs.lr,
                                          batch_size=min(obs.batch_size, n), **common)
        return Reconstruction(images=result.images.detach(), labels=_detached(result.labels),
                              extra={"objective": result.objective, "iterations": result.iterations,
                                     "search_seconds": result.seconds})


def idlg_labels(model: torch.nn.Module, obs: Observation, n: int) -> torch.Tensor:
    """iDLG: the batch's classes from the gradient of the last layer's weight (cross-entropy heads)."""
    from fedsim.attacks.gradient_inversion.optimize import recover_labels_idlg

    if obs.kind != "gradient":
        raise ValueError("label 'idlg' needs a one-batch gradient (kind 'gradient')")
    last = [name for name, p in model.named_parameters() if p.requires_grad and name.endswith("weight")][-1]
    grad = obs.update[last]
    if grad.shape[0] < 2:
        raise ValueError("label 'idlg' needs a classification head (several output classes)")
    return recover_labels_idlg(grad.flatten(1), batch_size=n)


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


@ATTACKS.register("dlg")
class DLG(GradientInversion):
    """DLG: L2 gradient matching, plain Adam, the unknown target optimised jointly (Zhu et al. 2019)."""

    threat: ClassVar[ThreatModel] = ThreatModel(hyperparameters=True)
    Params = DLGParams


class IDLGParams(DLGParams):
    label: Literal["known", "joint", "idlg"] = "idlg"


@ATTACKS.register("idlg")
class IDLG(GradientInversion):
    """iDLG: DLG on a classification head, with the class read exactly from the gradient (Zhao et al. 2020)."""

    threat: ClassVar[ThreatModel] = ThreatModel(hyperparameters=True)
    Params = IDLGParams


@ATTACKS.register("inverting_gradients")
class InvertingGradients(GradientInversion):
    """Inverting Gradients: cosine + total variation, signed Adam, restarts; optional PCA population prior."""


@ATTACKS.register("fedavg_update_inversion")
class FedAvgUpdateInversion(GradientInversion):
    """Invert a weight update by unrolling the client's known local SGD steps (multi-step FedAvg)."""

    def reconstruct(self, observation: Observation) -> Reconstruction:
        if observation.kind != "weights":
            raise ValueError("fedavg_update_inversion needs a weight update (kind 'weights')")
        return super().reconstruct(observation)


class LearnedParams(NoParams):
    aux_subjects: int = Field(600, ge=20, description="the attacker's own scans of the population it fits on")
    augment: int = Field(2, ge=1, le=4, description="pairs per scan: itself, its left-right flip, then 1-voxel "
                         "shifts of each")
    slices: int = Field(0, ge=0, le=8, description="2D slice tasks: the attacker also fits on this many axial slices "
                        "either side of each of its scans' central one (other anatomy of the same people)")
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="auxiliary subjects held out to choose the ridge")
    ridge: float | None = Field(None, gt=0, description="ridge strength relative to the Gram matrix's mean "
                                "diagonal; default: the best of a grid on the held-out subjects")
    max_images: int = Field(16, ge=1, description="most scans a replayed weight update may mix (each pseudo-client "
                            "costs that many scans' training steps)")
    chunk: int = Field(16, ge=1, description="scans per vectorised per-scan gradient")
    seed: int = 0


def images_per_weight_update(experiment: Experiment) -> int:
    """The most distinct scans a targeted client mixes into a weight update (0: all send FedSGD
    gradients), from the federation's budget and the server's batch-size requests."""
    from fedsim.training_plan import local_budget

    sc = experiment.scenario
    targeted = sc.server.targets.clients
    most = 0
    for client, split in enumerate(experiment.split.clients):
        if targeted is not None and client not in targeted:
            continue
        applies = [b for b in sc.server.behaviours
                   if b.params.get("clients") is None or client in b.params["clients"]]
        if any(b.name == "request_gradient" for b in applies):
            continue
        sizes = [int(b.params.get("batch_size", 1)) for b in applies if b.name == "request_batch_size"]
        budget = local_budget(sc.federation, len(split.train), batch_size=sizes[-1] if sizes else None)
        most = max(most, min(budget.examples, budget.steps * budget.batch_size))
    return most


@ATTACKS.register("learned_inversion")
class LearnedInversion(ReconstructionAttack):
    """Learned inversion: a ridge map from the error-normalised update to the scan, fitted on the
    attacker's own scans simulated through the global model the server sent. For a FedSGD gradient
    the simulation is each scan's output gradient (no label needed); for a FedAvg weight update,
    pseudo-clients of its own labelled scans replay the client's optimizer steps (client_steps.py).

    Where an update mixes B > 1 scans the map gives a mixture of their reconstructions; the attack
    returns its deviation from the mean image with both signs (see learned.InversionMap.batch_images)."""

    threat: ClassVar[ThreatModel] = ThreatModel(hyperparameters=True, auxiliary=True)
    consumes: ClassVar[frozenset[str]] = frozenset({GRADIENT, WEIGHTS})
    Params = LearnedParams

    @classmethod
    def check_experiment(cls, params: LearnedParams, experiment: Experiment) -> None:
        """The attacker's scans exist, the head is a regression, and every weight update it must
        replay mixes few enough scans."""
        from fedsim.data.datasets import DATASETS

        sc = experiment.scenario
        has_population = DATASETS.get(sc.data.dataset).population is not Dataset.population
        if not has_population and params.aux_subjects > len(experiment.x_test):
            raise ValueError(f"params.aux_subjects: dataset '{sc.data.dataset}' gives the attacker only the server's "
                             f"{len(experiment.x_test)} held-out scans, fewer than {params.aux_subjects}")
        from fedsim.attacks.gradient_inversion.learned import output_bias

        try:  # a regression head, or a one-logit classifier: either way the error is one number
            output_bias(experiment.task.build_model())
        except ValueError:
            raise ValueError(f"task '{sc.task.name}': learned_inversion needs a network with one output "
                             "(a regression head or a one-logit classifier such as task diagnosis)") from None
        if params.slices and not experiment.task.slices_of_volumes:
            raise ValueError(f"params.slices: task '{sc.task.name}' trains on whole volumes; neighbouring slices "
                             "apply to 2D slice tasks (e.g. brain_age_slice)")
        if params.slices >= sc.data.shape // 2:
            raise ValueError(f"params.slices: {params.slices} slices either side of the centre do not fit in a "
                             f"volume of depth {sc.data.shape}")
        mixed = images_per_weight_update(experiment)
        if mixed > params.max_images:
            raise ValueError(f"params.max_images: a targeted client's weight update mixes {mixed} scans "
                             f"(federation.local_steps x batch_size); replaying it is limited to {params.max_images} "
                             "(set federation.local_steps, request_batch_size or request_gradient)")

    def adapted(self, obs: Observation, model: torch.nn.Module) -> dict[str, Any]:
        """What the fit knows of the clients' defenses: nothing here (adaptive.py knows them)."""
        return {}

    def reconstruct(self, observation: Observation) -> Reconstruction:
        from fedsim.attacks.gradient_inversion import learned
        from fedsim.attacks.gradient_inversion.client_steps import ClientSteps

        obs, p = observation, self.params
        if obs.population is None or obs.loss_fn is None:
            raise PermissionError("learned inversion needs the architecture and the attacker's own scans")
        n = obs.images_in_update()
        if obs.kind == WEIGHTS and n > p.max_images:
            raise ValueError(f"this weight update mixes {n} scans, more than params.max_images={p.max_images}")
        plan = ClientSteps.of(obs.kind, images=n, batch_size=obs.batch_size, local_steps=obs.local_steps,
                              lr=obs.lr, optimizer=obs.optimizer)
        model = obs.model()
        adapt = self.adapted(obs, model)
        inversion = learned.fit_cached(model, obs.global_state,
                                       lambda: obs.population(p.aux_subjects, slices=p.slices),
                                       loss_fn=obs.loss_fn, plan=plan, augment_copies=p.augment,
                                       val_fraction=p.val_fraction, ridge=p.ridge, chunk=p.chunk, seed=p.seed,
                                       subjects=p.aux_subjects if p.slices else None, tag=adapt.get("tag", ""),
                                       **{k: adapt[k] for k in ("shown", "sent") if k in adapt})
        names = learned.trainable_names(model)
        raw = learned.observed_features(obs.update, names, learned.output_bias(model),
                                        global_state=obs.global_state if obs.kind == WEIGHTS else None,
                                        unit_norm="sent" in adapt)
        images = inversion.batch_images(raw, n)
        known = {k: ", ".join(adapt[k]) or "-" for k in ("copied", "not_copied") if k in adapt}
        return Reconstruction(images=images, extra={**known,
            "aux_pairs": len(inversion.features), "ridge": inversion.ridge, "val_mse": inversion.val_mse,
            "fit_seconds": inversion.seconds, "features": int(inversion.keep.sum()),
            "replayed": "gradient" if plan.gradient else f"{plan.optimizer} x {plan.steps} steps, batch "
                        f"{plan.batch_size}, {plan.images} scans"})
