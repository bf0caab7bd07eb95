"""Several processes: torchrun's ranks and the few collectives train_part.py needs.

`torchrun --nproc_per_node N train_part.py ...` starts N copies of the part; each joins the process
group that torchrun describes in its environment (NCCL between GPUs, gloo between CPU processes).
Without torchrun a part is rank 0 of 1 and every function here returns at once. Decisions that end
a loop or start a collective (stop, evaluate, save) are agreed by all ranks with one small
all-reduce, so no rank waits in a collective for one that went elsewhere.
"""

import dataclasses
import os

import torch
import torch.distributed as dist

from training.config import ConfigError


@dataclasses.dataclass
class Ranks:
    """This process among torchrun's workers (rank 0 of 1 without torchrun)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = None  # where collectives exchange tensors: the GPU for NCCL, else CPU

    @property
    def main(self):
        return self.rank == 0

    def share(self, micro_batches):
        """How many of a step's `micro_batches` (of all ranks) are this rank's: micro-batch i of a step
        goes to rank i % world, so the ranks take turns and a short last step leaves some without one."""
        return len(range(self.rank, micro_batches, self.world))


def start_processes(device_type):
    """Join the process group torchrun describes in the environment: NCCL between GPUs (one per
    process), gloo between CPU processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(device=torch.device("cpu"))
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        gpus, here = torch.cuda.device_count(), int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if gpus == 0:
            raise ConfigError("--device cuda was asked for but no CUDA GPU is visible")
        if here > gpus:  # two processes on one GPU would only fight over its memory (NCCL refuses it)
            raise ConfigError(f"torchrun started {here} processes on this machine, which has {gpus} GPU(s): "
                              f"one process per GPU, so use --nproc_per_node {gpus} (or --device cpu)")
        torch.cuda.set_device(ranks.local_rank)
        ranks.device = torch.device("cuda", torch.cuda.current_device())
    else:
        ranks.device = torch.device("cpu")
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return ranks


def any_rank(ranks, flag):
    """True on every rank if `flag` is true on any."""
    if ranks.world == 1:
        return bool(flag)
    t = torch.tensor([float(bool(flag))], device=ranks.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_ranks(ranks, flag):
    """True on every rank if `flag` is true on all."""
    return not any_rank(ranks, not flag)


def sum_over_ranks(ranks, values):
    """The list (or 1-d tensor on this rank's device) `values` added element-wise over all ranks."""
    if ranks.world == 1:
        return values.tolist() if isinstance(values, torch.Tensor) else list(values)
    t = values.clone() if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=torch.float64, device=ranks.device)
    dist.all_reduce(t)
    return t.tolist()


def from_rank0(ranks, obj):
    """Rank 0's value of a picklable object, on every rank."""
    if ranks.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def decided_on_rank0(ranks, decide, errors):
    """What `decide()` returns on rank 0, on every rank: rank 0 decides (reads files, writes one) and the
    others learn the outcome. An error of the `errors` types that it raises is raised on every rank, so
    that no rank is left waiting in a collective for one that went elsewhere."""
    outcome = None
    if ranks.main:
        try:
            outcome = (decide(), None)
        except errors as e:
            outcome = (None, e)
    value, error = from_rank0(ranks, outcome)
    if error is not None:
        raise error
    return value


def gather(ranks, obj):
    """Every rank's value of a picklable object, as a list in rank order."""
    if ranks.world == 1:
        return [obj]
    out = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out
