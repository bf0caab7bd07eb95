"""The resumable sampler: which samples form each micro-batch, as a pure function of (seed, epoch).

Because the order of an epoch depends only on the seed and the epoch number, resuming in the
middle of an epoch is O(1): rebuild that epoch's batch list (one array, `Batches`) and start at
the saved batch index.
Nothing is loaded and thrown away, and no RNG state has to be replayed.

The list is the same for any number of processes: train_part.py deals each optimizer step the
next micro-batches of it (grad_accum x processes of them), micro-batch i of a step to rank
i % processes, so a run that changes its number of processes keeps its data order.

The permutation comes from NumPy's SeedSequence-keyed PCG64, whose output NumPy keeps stable
across releases, so a checkpoint resumes with the same data order after a library upgrade.
"""

import collections.abc

import numpy as np


class EpochSampler:
    """Splits `num_samples` into micro-batches of `batch_size` indices, reshuffled every epoch.

    lengths: optional per-sample lengths (audio frames); batches then group samples of similar
        length (shuffle, cut into mega-batches of `group_size` batches, sort each by length,
        shuffle the batches), which cuts padding without making the order predictable.
    The batches are those of all processes together (see the module's docstring).
    """

    def __init__(self, num_samples, batch_size, seed, shuffle=True, drop_last=False, lengths=None, group_size=50):
        if num_samples <= 0:
            raise ValueError("the sampler needs at least one sample")
        if lengths is not None and len(lengths) != num_samples:
            raise ValueError("lengths must give one length per sample")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.group_size = group_size

    def epoch_rng(self, epoch):
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))

    def batches(self, epoch):
        """Every micro-batch of this epoch, for all ranks (a sequence of lists of sample indices)."""
        rng = self.epoch_rng(epoch)
        # 4 bytes a sample, shuffled in place: the same order as rng.permutation(n), which is int64.
        order = np.arange(self.num_samples, dtype=np.uint32 if self.num_samples < 1 << 32 else np.int64)
        if self.shuffle:
            rng.shuffle(order)
        if self.lengths is not None:
            mega = self.batch_size * self.group_size
            order = np.concatenate([
                chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                for chunk in np.split(order, range(mega, len(order), mega))
            ])
        count = len(order) // self.batch_size if self.drop_last else -(-len(order) // self.batch_size)
        picks = rng.permutation(count) if self.lengths is not None and self.shuffle else range(count)
        return Batches(order, self.batch_size, picks)

    def largest(self, batches):
        """The micro-batch of `batches` (an epoch's) that pads to the most: samples x its longest, by
        `lengths`; without lengths every micro-batch is as large as the first."""
        if self.lengths is None:
            return batches[0]
        lengths = self.lengths[batches.order]  # in the epoch's order
        lengths = np.concatenate([lengths, np.zeros(-len(lengths) % self.batch_size, dtype=lengths.dtype)])
        rows = lengths.reshape(-1, self.batch_size)  # (batches, batch_size), the last padded with 0
        counts = np.minimum(self.batch_size, len(batches.order) - np.arange(len(rows)) * self.batch_size)
        padded = rows.max(axis=1) * counts
        picks = np.asarray(batches.picks)
        return batches[int(np.argmax(padded[picks]))]

    def __len__(self):
        """Micro-batches per epoch, of all ranks together (the same every epoch)."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)


class Batches(collections.abc.Sequence):
    """An epoch's micro-batches, each a list of sample indices, held as one array of the epoch's
    order (4 bytes a sample) and the numbers of the batches taken from it: an epoch of a hundred
    million token windows costs 400 MB, not the 5 GB its batches would as Python lists. Slicing
    (`batches[k:]`, a rank's `batches[rank::world]`) is a view."""

    def __init__(self, order, batch_size, picks):
        self.order, self.batch_size, self.picks = order, batch_size, picks

    def __len__(self):
        return len(self.picks)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Batches(self.order, self.batch_size, self.picks[i])
        start = int(self.picks[i]) * self.batch_size
        return self.order[start:start + self.batch_size].tolist()

    def __eq__(self, other):
        return isinstance(other, collections.abc.Sequence) and list(self) == list(other)
