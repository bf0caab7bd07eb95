"""Data for Baton's tasks: one module per modality (text, audio, table), each with the wiring its task
trains on, the resumable sampler, embedded samples.

Each task's data object (`text.LMData`, `audio.ASRData`, `table.RegData`) offers the same few
things to train_part.py: a `sampler` (this rank's micro-batches of training indices, per epoch),
`batches(index_batches, epoch)` yielding `(inputs, count)` where `model(**inputs)` returns
`(output, loss summed over count units)`, `evaluate(model, keep_going)` giving additive sums over
this rank's share of the validation set, `summarize(sums)` turning the sums of all ranks into
metrics, `best_metric` (lower is better), `meta` (what inference needs besides the weights), and a
`fingerprint` of the training data.

Beside the tasks, three helpers of the training stage (train_part.py) live here, since the top
level holds only the stages, ckpt.py and the packages: config.py (the settings every task has),
divergence.py (what counts as a diverging run) and record.py (the run's metrics.json and plots)."""

import numpy as np
import xxhash


class DataError(Exception):
    """Bad input data; the message is one sentence that says what to fix."""


def held_out(ids, fraction):
    """Which rows are validation: decided by a hash of each id, so the split does not depend on the
    row order and a row stays on its side when the file grows."""
    return np.array([xxhash.xxh3_64_intdigest(str(i).encode()) % 10_000 < fraction * 10_000 for i in ids], dtype=bool)
