"""No host sync and no graph break in the train step, proven on the CPU.

`HostWaits` records every op dispatched while one training epoch and one validation run,
and names those that would make a CUDA host wait for the device: reading a value
(`_local_scalar_dense` behind `.item()`, `bool()`, `float()`), ops whose output size depends
on values (`nonzero`, `masked_select`, `unique`), and any copy from a device tensor to the
host (visible where a CUDA device exists; on the CPU every tensor is on the host). The
compile test counts Dynamo's graph breaks for every compile mode.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from latent_evolution.config.compose import to_config
from latent_evolution.config.schema import COMPILE_MODES
from latent_evolution.training.trainer import Trainer

TINY = ("data=tiny", "model=small", "hardware=cpu", "data.splits.train=[200,1200]")
aten = torch.ops.aten
VALUE_READS = {
    aten._local_scalar_dense,
    aten.item,
    aten.is_nonzero,
    aten.equal,
    aten.nonzero,
    aten.nonzero_static,
    aten.masked_select,
    aten._unique2,
    aten.unique_dim,
    aten.unique_consecutive,
    aten.repeat_interleave,
}


def tensors(tree: object) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class HostWaits(TorchDispatchMode):
    """Records the ops of a region that would wait for a CUDA device on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0
        self.waits: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.seen += 1
        on_device = any(t.device.type != "cpu" for t in tensors((args, kwargs)))
        to_host = on_device and any(t.device.type == "cpu" for t in tensors(out))
        if func.overloadpacket in VALUE_READS or to_host:
            self.waits.append(str(func))
        return out


def trainer_for(compose, tmp_path, *extra: str) -> Trainer:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = to_config(compose(*TINY, "training.batch_size=32", f"hardware.device={device}", *extra))
    return Trainer(cfg, tmp_path)


@pytest.mark.parametrize(
    "extra",
    [(), ("data.device=cpu",), ("data.stream.enabled=true", "data.stream.chunk_frames=256")],
    ids=["device-resident", "host-staged", "streamed"],
)
def test_an_epoch_and_a_validation_wait_for_nothing(compose, tmp_path, extra):
    trainer = trainer_for(compose, tmp_path, "training.grad_clip_norm=1.0", *extra)
    trainer.train_epoch()  # warm-up: lazily created optimizer state, allocator, kernels
    with HostWaits() as mode:
        parts = trainer.train_epoch()
        val = trainer.split_loss(trainer.data.val)
    assert mode.waits == []
    assert mode.seen > trainer.steps_per_epoch * 20  # it saw the steps' ops
    assert torch.isfinite(torch.cat([parts, val.view(1)])).all()  # read after the region


@pytest.mark.parametrize("mode", [m for m in COMPILE_MODES if m != "none"])
def test_the_compiled_step_has_no_graph_break(compose, tmp_path, mode):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    # 3 multiples: the loop over frames unrolls into the graph, without a break
    trainer = trainer_for(
        compose, tmp_path, f"hardware.compile={mode}", "training.evolve_multiple_steps=3"
    )
    frames = trainer.loss_frames
    batch = next(trainer.data.train.random(32, 1, frames, trainer.batch_rng, frames[-1]))
    trainer.step(*batch)
    assert trainer.step.compiled  # compiled, not the eager fallback
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] >= 1


@pytest.mark.parametrize(
    "extra",
    [(), ("data.stream.enabled=true", "data.stream.chunk_frames=256")],
    ids=["device-resident", "streamed"],
)
def test_a_rollout_waits_for_nothing(compose, tmp_path, extra):
    """Every start, every step: the sums stay on the device until rollout_split reads them."""
    from latent_evolution.evaluation.rollout import draw_starts, rollout_sums

    trainer = trainer_for(
        compose,
        tmp_path,
        "evaluation.max_horizon=40",
        "evaluation.horizons=[40]",
        "evaluation.cell_type_horizons=[40]",
        "evaluation.batch_size=16",
        *extra,
    )
    ev, window = trainer.config.evaluation, list(trainer.config.data.splits.val)
    offsets = draw_starts(window, ev, "val")
    args = (trainer.model, trainer.data.val, offsets, ev, trainer.autocast)
    rollout_sums(*args)  # warm-up
    with HostWaits() as mode:
        sums = rollout_sums(*args)
    assert mode.waits == []
    assert mode.seen > ev.max_horizon * -(-ev.starts // ev.batch_size) * 5  # saw every step
    assert all(torch.isfinite(s).all() for s in sums)
