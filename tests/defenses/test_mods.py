"""The update defenses as Flower client mods, called the way Flower's ClientApp calls them."""

from __future__ import annotations

import math
import time

import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.app.metadata import Metadata
from flwr.clientapp import ClientApp

from fedsim.defenses.mods import clip_update_mod, model_noise_mod, prune_mod
from fedsim.defenses.update_ops import delta, global_norm

GLOBAL = {"w": torch.full((200, 100), 0.5), "b": torch.zeros(10), "steps": torch.tensor(3)}


def _incoming(message_type: str = MessageType.TRAIN, server_round: int = 1) -> Message:
    """A message as a ClientApp receives it (built from metadata: outside a run there is no TaskIdentity)."""
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=5, reply_to_message_id="",
                    group_id=str(server_round), created_at=time.time(), ttl=60.0, message_type=message_type)
    content = RecordDict({"arrays": ArrayRecord(GLOBAL), "config": ConfigRecord({"server-round": server_round})})
    return Message(content=content, metadata=meta)


def _context() -> Context:
    return Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})


def _trainer(change: dict[str, torch.Tensor]):
    """A fake `call_next`: the client's reply holds GLOBAL + change."""
    def call_next(msg: Message, context: Context) -> Message:
        start = msg.content["arrays"].to_torch_state_dict()
        trained = {k: v + change[k] if v.is_floating_point() else v + 1 for k, v in start.items()}
        return Message(RecordDict({"arrays": ArrayRecord(trained), "metrics": MetricRecord({"num-examples": 8})}),
                       reply_to=msg)
    return call_next


def _change(reply: Message) -> dict[str, torch.Tensor]:
    return delta(reply.content["arrays"].to_torch_state_dict(), GLOBAL)


def _big_change() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(200, 100, generator=g), "b": torch.randn(10, generator=g), "steps": torch.tensor(0)}


def test_clip_mod_bounds_the_change_and_reports_the_norm():
    change = _big_change()
    reply = clip_update_mod(max_norm=1.0)(_incoming(), _context(), _trainer(change))
    assert math.isclose(global_norm(_change(reply)), 1.0, rel_tol=1e-4)
    assert int(reply.content["arrays"].to_torch_state_dict()["steps"]) == 4  # integer arrays untouched
    metrics = reply.content["metrics"]
    assert metrics["update_clipped"] == 1.0 and math.isclose(metrics["update_norm"], global_norm(change), rel_tol=1e-6)
    small = {k: v * 1e-4 for k, v in change.items()}
    reply = clip_update_mod(max_norm=1.0)(_incoming(), _context(), _trainer(small))
    assert torch.allclose(_change(reply)["w"], small["w"], atol=1e-7)


def test_clip_mod_noise_and_model_noise_mod_have_the_configured_std():
    zero = {k: torch.zeros_like(v) for k, v in GLOBAL.items()}
    reply = clip_update_mod(max_norm=2.0, noise_multiplier=0.1, seed=1)(_incoming(), _context(), _trainer(zero))
    assert abs(float(_change(reply)["w"].std()) / 0.2 - 1) < 0.05
    mod = model_noise_mod(sigma=0.05, seed=1)
    first = _change(mod(_incoming(), _context(), _trainer(zero)))["w"]
    assert abs(float(first.std()) / 0.05 - 1) < 0.05
    again = _change(mod(_incoming(), _context(), _trainer(zero)))["w"]
    later = _change(mod(_incoming(server_round=2), _context(), _trainer(zero)))["w"]
    assert torch.equal(first, again) and not torch.allclose(first, later)  # seeded per round, not replayed


def test_prune_mod_keeps_the_largest_changes():
    change = _big_change()
    reply = prune_mod(keep=0.1)(_incoming(), _context(), _trainer(change))
    out = _change(reply)
    flat = torch.cat([change["w"].reshape(-1), change["b"]])
    kept = torch.cat([out["w"].reshape(-1), out["b"]]) != 0
    assert int(kept.sum()) == round(0.1 * flat.numel())
    assert flat[kept].abs().min() >= flat[~kept].abs().max()
    assert reply.content["metrics"]["prune_kept"] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize("message_type", [MessageType.EVALUATE, MessageType.QUERY])
def test_non_train_messages_pass_untouched(message_type):
    msg = _incoming(message_type)
    reply = Message(RecordDict({"arrays": ArrayRecord({"w": torch.ones(3)})}), reply_to=msg)
    out = prune_mod(keep=0.1)(msg, _context(), lambda m, c: reply)
    assert out is reply and torch.equal(out.content["arrays"].to_torch_state_dict()["w"], torch.ones(3))


def test_error_replies_pass_untouched():
    msg = _incoming()
    failed = Message(Error(code=0, reason="training crashed"), reply_to=msg)
    assert clip_update_mod(max_norm=1.0)(msg, _context(), lambda m, c: failed) is failed


def test_a_reply_with_other_arrays_is_refused_not_sent_undefended():
    msg = _incoming()
    odd = Message(RecordDict({"arrays": ArrayRecord({"other": torch.ones(3)})}), reply_to=msg)
    with pytest.raises(ValueError, match="do not match"):
        prune_mod(keep=0.5)(msg, _context(), lambda m, c: odd)


def test_mods_attach_to_a_client_app():
    """Flower runs them where it takes mods (app-wide, outermost, and per handler)."""
    app = ClientApp(mods=[clip_update_mod(1.0)])

    @app.train(mods=[prune_mod(0.5)])
    def train(msg: Message, context: Context) -> Message:
        return _trainer(_big_change())(msg, context)

    change = _change(app(_incoming(), _context()))  # pruned first, then clipped on the way out
    assert math.isclose(global_norm(change), 1.0, rel_tol=1e-4)
    assert int(sum((v != 0).sum() for k, v in change.items() if k != "steps")) == round(0.5 * 20_010)


@pytest.mark.parametrize("factory", [lambda: clip_update_mod(0), lambda: model_noise_mod(-1), lambda: prune_mod(0)])
def test_bad_mod_params_are_refused(factory):
    with pytest.raises(ValueError):
        factory()
