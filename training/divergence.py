"""Noticing that training diverges, without a host-device sync per step.

A part that nobody watches for 11 hours must not train on after its loss went NaN, save NaN
weights over the good ones, or resume from them. Four things count as diverging:
- a non-finite loss, or a non-finite gradient norm (outside fp16, where the GradScaler skips
  such steps on purpose and no harm is done: those are counted instead);
- a training loss far above its recent level (`spike_factor`, below);
- an fp16 loss scale that collapsed below 1: every step overflows, so none trains;
- a non-finite weight or optimizer moment, looked for before anything is written.

`Watch.observe` runs at every optimizer step and only adds to tensors that stay on the device.
train_part.py reads them (`Watch.totals`, one sync) at the steps where it logs, evaluates or saves:
the only moments anything is written. Those steps are counted in optimizer steps, so a run that was
interrupted and resumed checks at the same steps and makes the same decisions as one that was not.
What it then does (roll back, skip the data since, lower the learning rate) is `recover` there;
`advice` and `report` are the sentences a part ends with.

The spike rule: the mean loss since the last log, once it covers at least 10 steps, is more than
`spike_factor` (default 3) times the median of the last 10 logged losses (5 at least). A mean over
10 steps is what makes it safe: the largest ratio of a 10-step mean to that median in the embedded
runs is 1.03 (lm, 480 logs), 1.14 (asr) and 1.16 (reg), while single steps reach 2.9 (asr late in
training, when some batches are three times harder than others) and 2.2 (reg). So the rule needs
log_every_steps >= 10 (the default) and is off with shorter logging intervals. It looks upward only.
"""

import copy
import dataclasses
import math
import statistics

import torch

import ckpt

SPIKE_WINDOW, SPIKE_MIN_HISTORY, SPIKE_MIN_STEPS = 10, 5, 10


class Watch:
    """Sums since the last log, on the device: the loss and its units, fp16 steps skipped, and
    whether any step saw a non-finite gradient norm."""

    def __init__(self, device, fp16):
        self.device, self.fp16 = device, fp16
        self.skipped_total = 0  # this part's steps skipped by the GradScaler (host, for the summary)
        self.sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, units, skipped, bad
        self.steps = 0

    def reset(self):
        """After a log or a roll-back, right after a check read the sums (one more small read, of the skips)."""
        self.skipped_total += int(self.sums[2].item())
        self.sums.zero_()
        self.steps = 0

    def state_dict(self):  # saved with the training state: a resumed part logs the same means
        return {"sums": self.sums.tolist(), "steps": self.steps}

    def load_state_dict(self, state):
        self.sums = torch.tensor(state["sums"], dtype=torch.float64, device=self.device)
        self.steps = state["steps"]

    def observe(self, loss_sum, units, grad_norm):
        """One optimizer step: its loss summed over `units` (tokens, labels, rows; a host number) and
        the gradient norm (None when not computed: no clipping and no fp16). No sync: device ops only."""
        loss = loss_sum.detach().double()
        self.steps += 1
        if grad_norm is None:
            self.sums[0] += loss
            self.sums[1] += units
            return
        overflow = ~torch.isfinite(grad_norm)
        if self.fp16:  # the scaler skips this step (the weights stay as they were): count it, leave its loss out
            self.sums[0] += torch.where(overflow, 0.0, loss)
            self.sums[1] += (~overflow).double() * units
            self.sums[2] += overflow.double()
        else:
            self.sums[0] += loss
            self.sums[1] += units
            self.sums[3] += overflow.double()

    def totals(self, sum_over_ranks):
        """The sums as host numbers (the one sync), added over all processes."""
        loss, units, skipped, bad = sum_over_ranks(self.sums)
        return {"loss": loss / units if units else None, "skipped": int(skipped), "bad": bad > 0, "steps": self.steps}


def symptom(totals, recent_losses, scale, spike_factor):
    """The symptom of divergence, as a phrase for the log and metrics.json (recorded as `seen`), or None."""
    if totals["bad"]:
        return "a non-finite gradient norm"
    loss = totals["loss"]
    if loss is not None and not math.isfinite(loss):
        return f"a non-finite training loss ({loss})"
    if scale is not None and scale < 1.0:
        return f"the fp16 loss scale collapsed to {scale:g} (every step overflowed)"
    judged = totals["steps"] >= SPIKE_MIN_STEPS and len(recent_losses) >= SPIKE_MIN_HISTORY
    if loss is not None and spike_factor and judged:
        level = statistics.median(recent_losses[-SPIKE_WINDOW:])
        if loss > spike_factor * level:
            return f"a loss spike ({loss:.4g}, more than {spike_factor:g} x the recent {level:.4g})"
    return None


def state_symptom(model, optimizer):
    """Names the first weight or optimizer tensor that holds NaN or inf, or None (checked before
    every write: a checkpoint never holds a non-finite state)."""
    named = [(f"weight {n}", p) for n, p in model.named_parameters()]
    # AdamW's step counts are counts, and on the CPU beside CUDA moments unless the optimizer is fused.
    named += [(f"optimizer {k}", t) for state in optimizer.state.values() for k, t in state.items()
              if isinstance(t, torch.Tensor) and t.is_floating_point() and k != "step"]
    if not named:
        return None
    device = named[0][1].device
    finite = torch.stack([torch.isfinite(t).all().to(device) for _, t in named]).cpu()  # one sync
    bad = [name for (name, _), ok in zip(named, finite.tolist()) if not ok]
    return f"a non-finite {bad[0]}" if bad else None


@dataclasses.dataclass
class RollBackPoint:
    """The last good state, which a divergence rolls back to: a training checkpoint on disk that was
    checked before it was written (`path`), or, until the part has written one, a copy in host memory
    of the state it started from (`state`)."""
    step: int
    path: str = None
    state: dict = None

    def load(self):
        """The state itself: read from its file (verified), or a fresh copy of the one in memory."""
        return ckpt.load(self.path).state if self.path else host_copy(self.state)


def host_copy(state):
    """A copy of a training state in host memory that training cannot change (tied tensors stay
    tied): the roll-back point of a part that has not saved yet."""
    tensors, skeleton = ckpt.flatten_state(state)
    return ckpt.unflatten_state(copy.deepcopy(skeleton), {k: t.detach().to("cpu", copy=True) for k, t in tensors.items()})


def lr_scale(history):
    """The learning rate's factor after the recoveries so far (each lowers it by its lr_factor)."""
    return math.prod(event.get("lr_factor", 1.0) for event in history.get("recoveries", []))


def streak(history, back_to):
    """How many recoveries already went back to the same state: no good checkpoint since."""
    return sum(1 for event in history.get("recoveries", []) if event["back_to"] == back_to)


def advice(times, good_step, symptom, step, scale, cfg, fp16):
    """The sentence a part that gives up ends with: what happened, where it stands, what to try."""
    return (f"training diverged {times} times after step {good_step} (last: {symptom} at step {step}); the hand-off "
            f"is the last good state, at step {good_step}, with the learning rate at {scale:g} x the plan. Try a "
            f"lower --set lr (now {cfg.lr:g})" + (", --amp bf16 on a GPU that has it" if fp16 else "")
            + (", --set grad_clip=1" if not cfg.grad_clip else "") + ", or check the data")


def report(history, part, skipped_total, scale):
    """The part's last lines (a string) about fp16 skips (`scale` None without fp16) and this part's divergences."""
    lines = [] if scale is None else [f"fp16: the GradScaler skipped {skipped_total} of this part's steps (overflow); "
                                      f"loss scale now {scale:g}"]
    steps = [str(event["step"]) for event in history.get("recoveries", []) if event["part"] == part]
    if steps:
        lines.append(f"diverged {len(steps)} time(s) in this part, at step(s) {', '.join(steps)}; each rolled back "
                     f"and is recorded under 'recoveries' in metrics.json")
    return "".join(line + "\n" for line in lines)
