"""Several processes: torchrun's ranks and the few collectives train_part.py needs.

`torchrun --nproc_per_node N train_part.py ...` starts N copies of the part; each joins the process
group that torchrun describes in its environment (NCCL between GPUs, gloo between CPU processes).
Without torchrun a part is rank 0 of 1 and every function here returns at once. Decisions that end
a loop or start a collective (stop, evaluate, save) are agreed by all ranks with one small
all-reduce, so no rank waits in a collective for one that went elsewhere.

When one worker fails, torchrun stops the others with SIGTERM: an error is said by the first worker
of a node to end with it, whatever its rank (`claim_error`), and the others say why they stopped
(`sibling_error`). The "next:" line of a run over several nodes carries the node and rendezvous
flags (`torchrun_launcher`).
"""

import contextlib
import dataclasses
import io
import json
import os
import shlex
import time

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


# -----------------------------------------------------------------------------
# Errors under torchrun: said once per node, whichever rank fails first

ERROR_MARKER = "baton_error.txt"


def under_torchrun(environ=None):
    """True in a worker that torchrun (or `python -m torch.distributed.run`) started."""
    return "TORCHELASTIC_RUN_ID" in (os.environ if environ is None else environ)


def node_folder(environ=None):
    """The folder torchrun made for this attempt of this node's workers, or None (not under torchrun,
    or started with `--log-dir /dev/null`). Every worker's TORCHELASTIC_ERROR_FILE is
    <log dir>/<run id>_<random>/attempt_<restart>/<local rank>/error.json: the folder two levels up is
    new for each launch and each restart (mkdtemp, then made afresh), and shared by this node's workers
    only, so a marker in it is never one of an earlier run."""
    error_file = (os.environ if environ is None else environ).get("TORCHELASTIC_ERROR_FILE", "")
    if not error_file or error_file == os.devnull:
        return None
    return os.path.dirname(os.path.dirname(error_file))


def claim_error(sentence, environ=None):
    """Whether this process is the one to print its error `sentence`: under torchrun, the first of this
    node's workers to claim it (the others, which mostly fail alike, print nothing); elsewhere always.
    The claim is a hard link of a file that already holds the sentence, so it is atomic and whole
    before the process exits and torchrun stops the others. The sentence also goes into this worker's
    TORCHELASTIC_ERROR_FILE, which torchrun's failure report shows for each failed worker."""
    environ = os.environ if environ is None else environ
    folder = node_folder(environ)
    if folder is None:
        return True
    report_error(environ["TORCHELASTIC_ERROR_FILE"], f"error: {sentence}")
    marker = os.path.join(folder, ERROR_MARKER)
    draft = f"{marker}.{os.getpid()}"
    try:
        with open(draft, "w") as f:
            f.write(sentence)
        try:
            os.link(draft, marker)
        except FileExistsError:
            return False
        finally:
            os.unlink(draft)
    except OSError:  # the folder is gone or read-only: better said twice than not at all
        return True
    return True


def report_error(error_file, message):
    """`message` in torchrun's error file for this worker, written whole, in the format of torch's own
    @record (the report shows "traceback : <message>" instead of a pointer to the docs); a failure to
    write it changes nothing else."""
    data = {"message": {"message": message,
                        "extraInfo": {"py_callstack": message, "timestamp": str(int(time.time()))}}}
    try:
        with open(error_file + ".part", "w") as f:
            json.dump(data, f)
        os.replace(error_file + ".part", error_file)
    except OSError:
        pass


def sibling_error(environ=None):
    """The error sentence another of this node's torchrun workers claimed (claim_error), or None."""
    folder = node_folder(environ)
    if folder is None:
        return None
    try:
        with open(os.path.join(folder, ERROR_MARKER)) as f:
            return f.read()
    except OSError:
        return None


# -----------------------------------------------------------------------------
# The launcher of the next part

PLACEHOLDER_RENDEZVOUS = "--rdzv_backend c10d --rdzv_endpoint HOST:PORT"


def torchrun_launcher(world, environ=None, agent_argv=None):
    """The torchrun command (up to the script) that starts the next part like this one: on one node
    `torchrun --nproc_per_node N`; on several, the number of nodes and processes per node (from
    torchrun's environment) and the rendezvous flags this run was started with, read from the
    launcher's command line (`agent_argv`, by default that of the parent process), or
    PLACEHOLDER_RENDEZVOUS where they cannot be known."""
    environ = os.environ if environ is None else environ
    per_node = int(environ.get("LOCAL_WORLD_SIZE", world))
    nodes = int(environ.get("GROUP_WORLD_SIZE", 0)) or max(1, world // max(per_node, 1))
    if nodes <= 1:
        return f"torchrun --nproc_per_node {world}"
    flags = rendezvous_flags(launcher_argv() if agent_argv is None else agent_argv)
    return f"torchrun --nnodes {nodes} --nproc_per_node {per_node} {flags or PLACEHOLDER_RENDEZVOUS}"


def launcher_argv():
    """The command line of the parent process (torchrun's agent, in a worker), or None (not Linux)."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return None


def rendezvous_flags(agent_argv):
    """The rendezvous flags in torchrun's command line `agent_argv` (read with torchrun's own parser, so
    its PET_* environment variables count too), or None when it is not torchrun's or has none. A static
    rendezvous differs per node by --node_rank: that one is written NODE_RANK."""
    if not agent_argv:
        return None
    names = [os.path.basename(a) for a in agent_argv]
    starts = [i + 1 for i, name in enumerate(names)
              if name == "torchrun" or (name == "torch.distributed.run" and i > 0 and agent_argv[i - 1] == "-m")]
    if not starts:
        return None
    rest = agent_argv[starts[0]:]
    try:
        from torch.distributed.run import get_args_parser
        with contextlib.redirect_stderr(io.StringIO()):  # argparse's usage lines, if it cannot parse them
            a = get_args_parser().parse_args(rest)
    except (Exception, SystemExit):
        return None
    if a.standalone:
        return None
    if a.rdzv_backend == "static":  # torchrun's default: each node gives its own --node_rank
        where = (f"--rdzv_backend static --rdzv_endpoint {shlex.quote(a.rdzv_endpoint)}" if a.rdzv_endpoint else
                 f"--master_addr {shlex.quote(a.master_addr)} --master_port {a.master_port or 29500}")
        return f"{where} --node_rank NODE_RANK"
    if not a.rdzv_endpoint:
        return None
    flags = f"--rdzv_backend {shlex.quote(a.rdzv_backend)} --rdzv_endpoint {shlex.quote(a.rdzv_endpoint)}"
    if a.rdzv_id and a.rdzv_id != "none":
        flags += f" --rdzv_id {shlex.quote(a.rdzv_id)}"
    if a.rdzv_conf:
        flags += f" --rdzv_conf {shlex.quote(a.rdzv_conf)}"
    return flags
