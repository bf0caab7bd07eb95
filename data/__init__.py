"""Data only: reading, checking and serving what the tasks train on, with nothing of the models or
the training stage (nothing here imports model/ or training/).

- text.py: corpora, token files (a corpus tokenized once, memory-mapped by every part), windows;
  tokenizers.py: bytes, characters, GPT-2's BPE;
- manifest.py: which speech clips, with which transcripts and split; audio.py: 16 kHz audio, the
  dataset, batches and the manifest check a run keeps; transcripts.py: normalisation, the CTC
  vocabulary, Bengali post-processing, WER and CER;
- table.py: CSV tables, the target's log scale, SMAPE;
- sampler.py: the resumable order of training examples; inputs.py: where attached inputs live;
- samples/: the embedded default data, and make_*.py: the scripts that made it.
"""

import numpy as np
import xxhash


class DataError(Exception):
    """Bad input data; the message is one sentence that says what to fix."""


def held_out(ids, fraction):
    """Which rows are validation: decided by a hash of each id, so the split does not depend on the
    row order and a row stays on its side when the file grows."""
    return np.array([xxhash.xxh3_64_intdigest(str(i).encode()) % 10_000 < fraction * 10_000 for i in ids], dtype=bool)
