"""The resumable sampler: which samples form each micro-batch, as a pure function of (seed, epoch).

Because the order of an epoch depends only on the seed and the epoch number, resuming in the
middle of an epoch is O(1): rebuild that epoch's batch list and start at the saved batch index.
Nothing is loaded and thrown away, and no RNG state has to be replayed.

The permutation comes from NumPy's SeedSequence-keyed PCG64, whose output NumPy keeps stable
across releases, so a checkpoint resumes with the same data order after a library upgrade.
"""

import numpy as np


class EpochSampler:
    """Splits `num_samples` into micro-batches of `batch_size` indices, reshuffled every epoch.

    lengths: optional per-sample lengths (audio frames); batches then group samples of similar
        length (shuffle, cut into mega-batches of `group_size` batches, sort each by length,
        shuffle the batches), which cuts padding without making the order predictable.
    rank, world_size: with several processes, each rank takes every world_size-th batch of the
        same global list, so all ranks agree on the order and a position is one number.
    """

    def __init__(self, num_samples, batch_size, seed, shuffle=True, drop_last=False, lengths=None,
                 group_size=50, rank=0, world_size=1):
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
        self.rank = rank
        self.world_size = world_size

    def epoch_rng(self, epoch):
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))

    def global_batches(self, epoch):
        """Every micro-batch of this epoch, for all ranks, as lists of sample indices."""
        rng = self.epoch_rng(epoch)
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        if self.lengths is not None:
            mega = self.batch_size * self.group_size
            order = np.concatenate([
                chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                for chunk in np.split(order, range(mega, len(order), mega))
            ])
        batches = [order[i:i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.lengths is not None and self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        # Every rank must take the same number of batches or collectives would hang.
        usable = len(batches) - len(batches) % self.world_size
        return batches[:usable]

    def batches(self, epoch):
        """This rank's micro-batches for `epoch`."""
        return self.global_batches(epoch)[self.rank::self.world_size]

    def __len__(self):
        """Micro-batches per epoch for this rank (the same every epoch)."""
        full, rest = divmod(self.num_samples, self.batch_size)
        total = full + (1 if rest and not self.drop_last else 0)
        return total // self.world_size
