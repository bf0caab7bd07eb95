"""SIGTERM and SIGINT: a request to stop that the training stage acts on at its next step boundary,
or at once where none comes soon.

Kaggle, a preemptible machine or torchrun sends SIGTERM some seconds before the end; Ctrl-C sends
SIGINT. train_part.py installs `request_stop` before it imports torch (this module imports nothing
heavy), so that a signal at any moment ends in a clean save instead of a lost session. The loop asks
`stop.signal` between optimizer steps. Where no step boundary comes soon (setting up: tokenizing,
checking a manifest; a step's forward and backward, compilation included) the stage runs inside
`signals_at_once()`, and a signal raises Interrupted there and then.
"""

import contextlib
import dataclasses
import signal


class Interrupted(BaseException):
    """A SIGTERM/SIGINT acted on at once; a BaseException, so that no `except Exception` keeps it."""


@dataclasses.dataclass
class StopRequest:
    signal: str = None     # the name of the first SIGTERM/SIGINT received, None while there was none
    at_once: bool = False  # inside signals_at_once: raise Interrupted instead of waiting for a boundary


stop = StopRequest()  # one per process, as the signal handlers are


def request_stop(signum, frame):
    if stop.signal is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C means "now"; the checkpoint files stay whole
    stop.signal = signal.Signals(signum).name
    raise_at_once(signum, frame)


def raise_at_once(signum, frame):
    """An exception raised by a signal handler lands wherever the main thread is, and a few places
    swallow it (an at-fork hook of `logging` while a tokenizer pool starts, a __del__): so it is
    raised again every half second (SIGALRM) until it gets through and signals_at_once ends."""
    if not stop.at_once:
        return
    if hasattr(signal, "setitimer"):
        signal.signal(signal.SIGALRM, raise_at_once)
        signal.setitimer(signal.ITIMER_REAL, 0.5, 0.5)
    raise Interrupted(stop.signal)


def install():
    """SIGTERM and SIGINT request a stop (the second Ctrl-C stops at once)."""
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


@contextlib.contextmanager
def signals_at_once(enabled=True):
    """Within, a SIGTERM/SIGINT raises Interrupted at once (also one that came just before)."""
    if not enabled:
        yield
        return
    stop.at_once = True
    try:
        if stop.signal is not None:
            raise Interrupted(stop.signal)
        yield
    finally:
        stop.at_once = False
        if stop.signal is not None and hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)  # raise_at_once's repeats
