"""Data for Baton's tasks: one module per modality (text, audio, table), each with the wiring its task
trains on, the resumable sampler, embedded samples.

Each task's data object (`text.LMData`, `audio.ASRData`, `table.RegData`) offers the same few
things to train_part.py: `len()` training items for the sampler, `batches(index_batches, epoch)`
yielding `(inputs, count)` where `model(**inputs)` returns `(output, loss summed over count units)`,
`evaluate(model, keep_going)` giving additive sums over this rank's share of the validation set,
`summarize(sums)` turning the sums of all ranks into metrics, and a `fingerprint` of the data."""

import numpy as np
import xxhash


class DataError(Exception):
    """Bad input data; the message is one sentence that says what to fix."""


def held_out(ids, fraction):
    """Which rows are validation: decided by a hash of each id, so the split does not depend on the
    row order and a row stays on its side when the file grows."""
    return np.array([xxhash.xxh3_64_intdigest(str(i).encode()) % 10_000 < fraction * 10_000 for i in ids], dtype=bool)
