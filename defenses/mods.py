"""The update defenses as Flower client mods, for any Flower (>= 1.21 Message API) ClientApp.

Flower 1.41 types a mod as `Mod = Callable[[Message, Context, ClientAppCallable], Message]` with
`ClientAppCallable = Callable[[Message, Context], Message]` (`flwr/clientapp/typing.py`), and wraps
a ClientApp's handlers in them with `flwr.clientapp.utils.make_ffn`; attach them app-wide with
`ClientApp(mods=[...])` or per handler with `@app.train(mods=[...])` (`flwr/clientapp/client_app.py`).
Like Flower's own `fixedclipping_mod` (`flwr/clientapp/mod/centraldp_mods.py`), each mod here reads
the incoming global arrays, lets the app train (`call_next`), then replaces the reply's ArrayRecord
with the defended weights; the change is computed against the incoming arrays. Non-train messages,
replies with an error and replies without arrays pass through untouched.

    app = ClientApp(mods=[prune_mod(0.1), clip_update_mod(1.0, noise_multiplier=0.5, seed=7)])

The transforms themselves live in `defenses.update_ops`, shared with the scenario defenses.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedsim.defenses.clip_update import clip_and_noise
from fedsim.defenses.update_ops import (
    Tensors,
    add_noise,
    apply_delta,
    delta,
    fraction_nonzero,
    prune_smallest,
    torch_generator,
)
from fedsim.seeding import derive_seed

# (change, message, context) -> (defended change, metrics to add to the reply's MetricRecord)
ChangeTransform = Callable[[Tensors, Message, Context], tuple[Tensors, dict[str, float]]]


def _arrays_key(content: RecordDict) -> str | None:
    """The record holding the model: "arrays", else the only ArrayRecord there is."""
    records = content.array_records
    if "arrays" in records:
        return "arrays"
    return next(iter(records)) if len(records) == 1 else None


def _message_seed(seed: int | None, msg: Message, context: Context) -> int | None:
    """A seed per (seed, node, round): a fixed seed must not replay the same noise every round."""
    if seed is None:
        return None
    configs = msg.content.config_records
    config = configs.get("config") or next(iter(configs.values()), None)
    server_round = config.get("server-round", msg.metadata.group_id) if config is not None else msg.metadata.group_id
    return derive_seed(seed, "mod", context.node_id, server_round)


def update_mod(transform: ChangeTransform) -> Mod:
    """A train mod that applies `transform` to the client's change (reply arrays - incoming arrays)."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        is_train = msg.metadata.message_type.split(".")[0] == MessageType.TRAIN
        key = _arrays_key(msg.content) if is_train and msg.has_content() else None
        if key is None:
            return call_next(msg, context)
        reference = msg.content.array_records[key].to_torch_state_dict()
        reply = call_next(msg, context)
        out_key = _arrays_key(reply.content) if not reply.has_error() and reply.has_content() else None
        if out_key is None:
            return reply
        update = reply.content.array_records[out_key].to_torch_state_dict()
        if update.keys() != reference.keys():  # never let an update through undefended
            raise ValueError("update mod: the reply's arrays do not match the ones the client received")
        change, metrics = transform(delta(update, reference), msg, context)
        reply.content[out_key] = ArrayRecord(apply_delta(reference, change))
        metric_records = reply.content.metric_records
        if metrics and metric_records:
            record: MetricRecord = metric_records.get("metrics") or next(iter(metric_records.values()))
            for name, value in metrics.items():
                record[name] = value
        return reply

    return mod


def clip_update_mod(max_norm: float, noise_multiplier: float = 0.0, seed: int | None = None) -> Mod:
    """Clip the change to L2 `max_norm`, add N(0, (noise_multiplier * max_norm)^2) (DP-FedAvg style)."""
    if max_norm <= 0 or noise_multiplier < 0:
        raise ValueError("clip_update_mod: max_norm must be > 0 and noise_multiplier >= 0")

    def transform(change: Tensors, msg: Message, context: Context) -> tuple[Tensors, dict[str, float]]:
        out, norm = clip_and_noise(change, max_norm, noise_multiplier, _message_seed(seed, msg, context))
        return out, {"update_norm": norm, "update_clipped": float(norm > max_norm)}

    return update_mod(transform)


def model_noise_mod(sigma: float, seed: int | None = None) -> Mod:
    """Add N(0, sigma^2) to every sent float entry (model perturbation)."""
    if sigma <= 0:
        raise ValueError("model_noise_mod: sigma must be > 0")

    def transform(change: Tensors, msg: Message, context: Context) -> tuple[Tensors, dict[str, float]]:
        generator = torch_generator(_message_seed(seed, msg, context))
        return add_noise(change, sigma, generator), {"model_noise_std": sigma}

    return update_mod(transform)


def prune_mod(keep: float) -> Mod:
    """Keep the largest `keep` fraction of the change's entries (global top-k), zero the rest."""
    if not 0 < keep <= 1:
        raise ValueError("prune_mod: keep must be in (0, 1]")

    def transform(change: Tensors, msg: Message, context: Context) -> tuple[Tensors, dict[str, float]]:
        pruned = prune_smallest(change, keep)
        return pruned, {"prune_kept": fraction_nonzero(pruned)}

    return update_mod(transform)
