"""train_part.py with poisoned optimizer steps, for tests that need real processes (torchrun):
BATON_POISON="5:nan" makes the loss of global step 5 NaN on every rank, "5:nan@1" only on rank 1,
as a corrupt batch dealt to one rank would (see test_divergence.py's `poison` for the in-process
version). Not a test module: pytest collects only test_*.py."""

import os
import sys

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


def install(steps):
    real = train_part.train_step

    def poisoned(part, window, lr):
        factor, model = steps.get(part.position.global_step + 1), part.train_model
        if factor is not None:
            part.train_model = Poisoned(model, factor)
        try:
            return real(part, window, lr)
        finally:
            part.train_model = model
    train_part.train_step = poisoned


if __name__ == "__main__":
    install(poisoned_steps())
    code = train_part.main()
    # As train_part.py ends: the baton is on disk, and Python's teardown of torch under torchrun can
    # abort ("terminate called without an active exception", seen once in a full CI run).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
