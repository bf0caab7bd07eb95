"""What a checkpoint holds of a part, and loading it back: where training stands (`Position`), the
best evaluation (`Best`), the header and the training state that train_part.py's `save` writes,
and `restore` and `roll_back`, which load them into a part (a resume, or a roll-back after a
divergence). The part object is train_part.py's `Part`; ckpt.py knows nothing of any of this.
"""

import dataclasses
import math
import os
import random

import numpy as np
import torch

import ckpt
from training import divergence
from training.config import ConfigError
from training.distributed import gather
from training.divergence import RollBackPoint
from training.optimizer import load_optimizer_state
from training.record import pack, unpack


@dataclasses.dataclass
class Position:
    """Where training stands, saved as the checkpoint's `progress`."""
    epoch: int = 0                # completed epochs
    batch_in_epoch: int = 0       # micro-batches of this epoch already trained on
    step_in_epoch: int = 0        # optimizer steps into this epoch
    global_step: int = 0          # optimizer steps of the whole run, all parts

    def advance(self, micro_batches, batches_per_epoch):
        """One optimizer step over `micro_batches`; the last one of an epoch moves to the next epoch."""
        self.global_step += 1
        self.step_in_epoch += 1
        self.batch_in_epoch += micro_batches
        if self.batch_in_epoch >= batches_per_epoch:
            self.epoch, self.batch_in_epoch, self.step_in_epoch = self.epoch + 1, 0, 0


@dataclasses.dataclass
class Best:
    """The best evaluation so far (lower is better), saved as the checkpoint's `best`."""
    metric: str
    value: float = None
    step: int = None

    def improves(self, value, step):
        """Whether `value` at `step` is a new best; if it is, it is kept."""
        if not math.isfinite(value) or (self.value is not None and value >= self.value):
            return False
        self.value, self.step = value, step
        return True


def restore(part, saved):
    """Load a checkpoint into the part: weights, optimizer, scaler, position, record, RNG."""
    ckpt.check_compatible(saved, part.model.state_dict())
    if not saved.is_training:
        part.model.load_state_dict(saved.state["model"])
        return initialise_from(part, saved)
    try:  # the whole state, as a roll-back loads it; the RNG last, after all that draws from it is built
        roll_back(part, saved.state, whole=True)
    except ValueError as e:  # from the optimizer's load
        raise ConfigError(f"the optimizer state in {saved.path} does not fit this run's trainable parameters ({e}); "
                          f"was freeze_feature_encoder changed?") from None
    if saved.meta.get("data_fingerprint") != part.task.fingerprint:
        print("warning: the training data differs from the checkpoint's; the data order will differ")
    position, saved_world = part.position, saved.meta.get("world_size", 1)
    if saved_world > 1 and saved.meta.get("batch_in_epoch") != "all ranks":
        position.batch_in_epoch *= saved_world  # an older file counted one rank's micro-batches
    note_setup_change(part, saved)
    print(f"resumed from {saved.path}: epoch {position.epoch}, step {position.step_in_epoch} "
          f"in epoch, global step {position.global_step}")


def note_setup_change(part, saved):
    """One line when the device or precision differs from the checkpoint's: the run goes on, but is
    bit-identical to an uninterrupted one only on the same device, precision and software."""
    before, now = (saved.meta.get("device"), saved.meta.get("amp")), (part.device.type, part.amp)
    if before[1] is None or before == now:  # files before Baton recorded them say nothing
        return
    kept = " (its fp16 loss scale is kept in the checkpoint for a later fp16 part)" if part.idle_scaler_state else ""
    print(f"note: {saved.path} was trained on {before[0]} with amp {before[1]} and this part runs on {now[0]} with "
          f"amp {now[1]}{kept}: the same run, equal up to float rounding, not bit for bit")


def restore_rng_of_rank(part, rng):
    """Every rank's RNG is in the file (one state per rank); a rank the file did not have gets a seed."""
    states = rng if isinstance(rng, list) else [rng]
    if part.ranks.rank < len(states):
        ckpt.restore_rng(states[part.ranks.rank])
    else:
        random_seed_everything(part.cfg.seed + 1000 * part.ranks.rank + part.position.global_step)


def roll_back_point_at_start(part, saved):
    """What to roll back to until this part's first save: the training checkpoint it resumed from, or
    the good state which that hand-off names (where an uninterrupted run would go back to) if it lies
    beside it; else a copy in host memory of the state the part starts from."""
    if saved is not None and saved.is_training:
        named = saved.state.get("good") or {}
        beside = os.path.join(os.path.dirname(saved.path), named.get("file") or "")
        if named.get("file") and os.path.isfile(beside):
            return RollBackPoint(named["step"], beside)
        return RollBackPoint(part.position.global_step, saved.path)
    rng_states = gather(part.ranks, ckpt.capture_rng())
    return RollBackPoint(part.position.global_step, state=divergence.host_copy(training_state(part, rng_states, None)))


def roll_back(part, state, whole=False):
    """Load a good state's weights, AdamW moments and loss scale; with `whole`, its position, record,
    the sums since its last log and RNG too, as if the steps since had never run (also how a part
    resumes: restore)."""
    part.model.load_state_dict(state["model"])
    load_optimizer_state(part.optimizer, state["optimizer"])
    if state.get("scaler") and part.scaler.is_enabled():
        part.scaler.load_state_dict(state["scaler"])
    elif state.get("scaler"):  # kept for a later fp16 part, which goes on with this loss scale
        part.idle_scaler_state = dict(state["scaler"])
    part.watch.reset()
    if whole:
        part.position = Position(**state["progress"])
        part.best, part.history = Best(**state["best"]), unpack(state["history"])
        if state.get("watch"):
            part.watch.load_state_dict(state["watch"])
        restore_rng_of_rank(part, state["rng"])


def initialise_from(part, saved):
    """A weights-only or legacy file: what it has, and a note of what it lacks."""
    carried, lost = ["model weights"], ["RNG state (not in the file)"]
    if saved.state.get("optimizer"):
        try:
            load_optimizer_state(part.optimizer, saved.state["optimizer"])
            carried.append("optimizer moments")
        except (ValueError, KeyError) as e:
            lost.append(f"optimizer state (it does not fit this model: {e})")
    if saved.state.get("scheduler"):
        lost.append("scheduler state (Baton's learning rate is a function of the global step)")
    # The global step is the one unambiguous counter (files disagree on whether `epoch` counts from
    # 0 or 1, and whether `step` counts batches or optimizer steps): the position follows from it.
    step, per_epoch = int(saved.meta.get("global_step") or 0), part.steps_per_epoch
    part.position = Position(epoch=step // per_epoch, batch_in_epoch=(step % per_epoch) * part.cfg.grad_accum,
                             step_in_epoch=step % per_epoch, global_step=step)
    if step:
        lost.append(f"the file's data order (continuing in Baton's order at epoch {part.position.epoch}, "
                    f"step {part.position.step_in_epoch}; the file said epoch {saved.meta.get('epoch')}, "
                    f"step {saved.meta.get('step_in_epoch')})")
    print(f"initialised from {saved.path} at global step {step}: carried {', '.join(carried)}; "
          f"not carried: {'; '.join(lost)}")


def header(part, kind):
    """The checkpoint header: what discovery, resuming and inference read without the payload."""
    position = part.position
    return {"task": part.args.task, "kind": kind, "part": part.number, "epoch": position.epoch,
            "step_in_epoch": position.step_in_epoch, "global_step": position.global_step,
            "config": dataclasses.asdict(part.cfg), "model_config": dataclasses.asdict(part.model.config),
            "task_meta": part.task.meta, "device": part.device.type, "amp": part.amp}


def training_state(part, rng_states, good):
    """Everything the next part needs to continue exactly (the RNG of every rank included), and the
    state a divergence would roll back to (`good`: its step and file name, None if held in memory).
    Resuming reads the position from `progress` (the header repeats it, so that discovery need not
    read the payload); `sampler` and `scheduler` describe the data order and the learning-rate plan
    for a reader of the file and are never read back: the order is a function of (seed, epoch) and
    the learning rate one of the global step."""
    position, cfg = part.position, part.cfg
    return {"model": part.model.state_dict(), "optimizer": part.optimizer.state_dict(),
            "scaler": part.scaler.state_dict() if part.scaler.is_enabled() else part.idle_scaler_state,
            "scheduler": {"kind": "warmup_cosine_then_phase2", "last_lr": part.optimizer.param_groups[0]["lr"]},
            "rng": rng_states, "progress": dataclasses.asdict(position), "best": dataclasses.asdict(part.best),
            "history": pack(part.history), "good": good, "watch": part.watch.state_dict(),
            "sampler": {"seed": cfg.seed, "epoch": position.epoch, "batch_in_epoch": position.batch_in_epoch,
                        "batches_per_epoch": len(part.task.sampler)}}


def draw_seed(seed, step, first, samples):
    """The seed of the random draws (dropout, masks, LayerDrop) of the `samples` samples from the
    `first`-th of optimizer step `step` (1-based), counted over all ranks in micro-batches of
    batch_size: the same samples draw the same on any number of processes, and a micro-batch trained
    in pieces draws as micro-batches of the pieces' size would."""
    return int(np.random.SeedSequence([seed % 2**32, step, first, samples]).generate_state(1, np.uint64)[0] >> 1)


def random_seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
