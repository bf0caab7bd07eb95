"""train_part.py with poisoned optimizer steps, for tests that need real processes (torchrun):
BATON_POISON="5:nan" makes the loss of global step 5 NaN on every rank, "5:nan@1" only on rank 1,
as a corrupt batch dealt to one rank would (see test_divergence.py's `poison` for the in-process
version). BATON_OOM_ROWS=2 makes every forward of more than 2 samples raise torch.OutOfMemoryError,
as a GPU too small for the micro-batch would ("none": nothing fits); BATON_FAIL_AT=5 raises RuntimeError in the forward
of global step 5. Not a test module: pytest collects only test_*.py."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_part  # noqa: E402


def poisoned_steps():
    steps = {}
    for item in os.environ.get("BATON_POISON", "").split(","):
        step, _, rest = item.partition(":")
        factor, _, rank = rest.partition("@")
        if step and (not rank or int(rank) == int(os.environ.get("RANK", "0"))):
            steps[int(step)] = float(factor)
    return steps


class Poisoned:
    """The training module, its loss multiplied by `factor`; everything else (DDP's no_sync) passes through."""

    def __init__(self, module, factor):
        self.module, self.factor = module, factor

    def __call__(self, **inputs):
        output, loss_sum = self.module(**inputs)
        return output, loss_sum * self.factor

    def __getattr__(self, name):
        return getattr(self.module, name)


class TooSmallMemory:
    """The training module on a machine where only `rows` samples fit at a time."""

    def __init__(self, module, rows):
        self.module, self.rows = module, rows

    def __call__(self, **inputs):
        rows = next(v.shape[0] for v in inputs.values() if hasattr(v, "shape"))
        if rows <= self.rows:
            return self.module(**inputs)
        self.module(**inputs)  # as a real one, the failed attempt has drawn its dropout before it fails
        raise torch.OutOfMemoryError(f"poisoned: {rows} samples do not fit, {self.rows or 0} do")

    def __getattr__(self, name):
        return getattr(self.module, name)


def install_faults(oom_rows, fail_at):
    real = train_part.wrap_for_training

    def wrapped(model, cfg, ranks, device):
        module = real(model, cfg, ranks, device)
        return TooSmallMemory(module, oom_rows) if oom_rows is not None else module
    train_part.wrap_for_training = wrapped
    if fail_at:
        step = train_part.train_step

        def failing(part, micro_batches, lr):
            if part.position.global_step + 1 == fail_at:
                model = part.train_model

                def broken(**inputs):
                    model(**inputs)  # the step's forward runs (and draws its dropout) before it fails
                    raise RuntimeError(f"poisoned: step {fail_at} fails")
                part.train_model = broken
            return step(part, micro_batches, lr)
        train_part.train_step = failing


def install(steps):
    real = train_part.train_step

    def poisoned(part, micro_batches, lr):
        factor, model = steps.get(part.position.global_step + 1), part.train_model
        if factor is not None:
            part.train_model = Poisoned(model, factor)
        try:
            return real(part, micro_batches, lr)
        finally:
            part.train_model = model
    train_part.train_step = poisoned


if __name__ == "__main__":
    install(poisoned_steps())
    rows = os.environ.get("BATON_OOM_ROWS")
    install_faults(None if rows is None else 0 if rows == "none" else int(rows), int(os.environ.get("BATON_FAIL_AT", "0")))
    code = train_part.main()
    # As train_part.py ends: the baton is on disk, and Python's teardown of torch under torchrun can
    # abort ("terminate called without an active exception", seen once in a full CI run).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
