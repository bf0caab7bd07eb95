"""The training stage: one part of a run that may span many time-limited sessions.

    python train_part.py --task lm --part 1 --budget-hours 11
    python train_part.py --task lm --part 2 --budget-hours 11     # next session, same command +1

A part trains until its time budget (wall clock from Python's start) is nearly spent, until
`--max-steps`, until the planned epochs are done, or until SIGTERM/SIGINT; then it writes the
hand-off checkpoint `checkpoint_part{N}.safetensors` (the baton) and prints the next command.

The contracts this file keeps:
- Determinism: training G steps in one go, or k steps, a process exit and a resume for the rest,
  gives bit-identical weights on CPU, for every task, with dropout and shuffling on, for any k
  (a stop falls between optimizer steps, mid-epoch included). The checkpoint holds everything that
  decides what comes next: weights, AdamW moments, the GradScaler, every RNG, the data position.
  The data order is a pure function of (seed, epoch) and the learning rate of the global step, so
  resuming jumps to its position in O(1) and has no scheduler state to lose.
- The budget: the hand-off is on disk before `--budget-hours` runs out, whatever a step costs.
- Bad input is one sentence on stderr and exit code 2, never a traceback, and it never destroys a
  checkpoint that is already on disk.
- Divergence: nothing non-finite is ever written. A diverging part (training/divergence.py: what counts)
  rolls back to its last good checkpoint, skips the data since and goes on at a lower learning rate,
  recorded in the checkpoint and metrics.json, so a resumed run decides the same; when it keeps
  diverging, the part stops with the last good state as its hand-off.
The checkpoint file itself is described in ckpt.py.

Read top to bottom: the command line, the training loop (between the TRAINING SECTION banners:
a step trains its micro-batches piece by piece, then the checks at its boundary and the recovery
from divergence), evaluating and saving, the end of a part; then how a part is set up (`Part`:
everything the loop uses, in named steps), the model for training and the learning rate. The
chapters of the stage live in training/ (its __init__.py says in which order to read them):
signals.py (SIGTERM and Ctrl-C), tasks.py and each task's config, data and model (lm.py, asr.py,
reg.py), the settings, finding the checkpoint to continue from, what a checkpoint holds of a part
and loading it back (state.py), AdamW, the time budget, divergence, the run's record, running out
of memory, and several processes (torchrun).
"""

import time

STARTED = time.time()  # the budget's clock: Python's own start-up before this line takes ~30 ms

# Installed before the slow imports below so that a SIGTERM at any moment, even while torch loads,
# ends in a clean save at the next step boundary instead of a lost session (training/signals.py).
from training import signals  # noqa: E402  (imports nothing heavy)

if __name__ == "__main__":
    signals.install()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from tqdm import tqdm  # noqa: E402

import ckpt  # noqa: E402
from data import DataError  # noqa: E402
from model.hf_weights import WeightsError  # noqa: E402
from training import divergence  # noqa: E402
from training.budget import TimeBudget, format_seconds  # noqa: E402
from training.config import (ConfigError, keep_global_batch, note_plan_change, print_config,  # noqa: E402
                             resolve_settings)
from training.devices import choose_device, peak_flops  # noqa: E402
from training.discovery import choose_checkpoint  # noqa: E402
from training.distributed import (all_ranks, any_rank, claim_error, decided_on_rank0, from_rank0,  # noqa: E402
                                  gather, sibling_error, start_processes, sum_over_ranks, torchrun_launcher,
                                  under_torchrun)
from training.divergence import RollBackPoint  # noqa: E402
from training.memory import OutOfMemory, pieces_for, probe_part, rows_of, split_further, split_rows  # noqa: E402
from training.optimizer import make_optimizer  # noqa: E402
from training.record import (close_part, new_history, progress_line, recent, record, write_metrics,  # noqa: E402
                             write_plots)
from training.signals import Interrupted, signals_at_once, stop  # noqa: E402
from training.state import (Best, Position, draw_seed, header, random_seed_everything, restore,  # noqa: E402
                            roll_back, roll_back_point_at_start, training_state)
from training.tasks import TASKS  # noqa: E402

COMMANDS = {"train": "python train_part.py", "infer": "python infer.py"}  # as printed (kaggle_kernel.py sets its own)


# -----------------------------------------------------------------------------
# The command line

def part_number(text):
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("--part is a number from 1, or 'auto'")
    return int(text)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Train one part of a Baton run.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=list(TASKS), help="which model family to train")
    p.add_argument("--part", type=part_number, default=1,
                   help="session number, names the hand-off file; 'auto' = one more than the newest checkpoint's")
    p.add_argument("--budget-hours", type=float, default=None,
                   help="wall-clock budget from process start; the hand-off is written before it ends "
                        "(default: none, or 11 on Kaggle)")
    p.add_argument("--data", default=None, help="training data (default: the embedded sample)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<task>, on Kaggle /kaggle/working/runs/<task>)")
    p.add_argument("--resume", default="auto",
                   help="'auto' = newest valid checkpoint in --out then the input roots; 'none' = start "
                        "fresh; or a checkpoint path (.safetensors, or a legacy .pt/.pth)")
    p.add_argument("--max-steps", type=int, default=None, help="stop once the global optimizer step reaches this")
    p.add_argument("--seed", type=int, default=None, help="same as --set seed=S")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable); an unknown key lists the valid ones")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    p.add_argument("--amp", choices=("fp16", "bf16", "off"), default=None,
                   help="mixed precision (default: bf16 on GPUs with compute capability >= 8.0, "
                        "fp16 on older GPUs, off on CPU)")
    args = p.parse_args(argv)
    args.kaggle = "KAGGLE_KERNEL_RUN_TYPE" in os.environ  # set inside every Kaggle session
    if args.budget_hours is None and args.kaggle:
        args.budget_hours = 11.0  # Kaggle ends GPU sessions at 12 hours
    if args.budget_hours is not None and args.budget_hours <= 0:
        p.error("--budget-hours must be positive")
    if args.out is None:
        args.out = os.path.join("/kaggle/working" if args.kaggle else ".", "runs", args.task)
    return args


def main(argv=None, started=None):
    """Run one part; returns the exit code. `started` (a time.time()) defaults to Python's start."""
    part = Part(parse_args(argv), STARTED if started is None else started)
    try:
        with signals_at_once():  # setting up has no step boundary to wait for
            part.set_up()
        try:
            finish(part, train(part))
        except (Exception, Interrupted) as e:  # a fault or a signal mid-step: keep the last finished step
            hand_off_after_fault(part, e)
            raise  # with its traceback (exit 1), unless it is one of those below
        return 0
    except Interrupted as e:
        if not part.ready:  # nothing was written: a token file or manifest check being made is removed whole
            failed = sibling_error()  # torchrun stops the other processes once one has failed
            if failed is not None:
                print(f"stopped: torchrun stopped this process ({e} while setting up) because another one "
                      f"failed: {failed}")
                return 0  # torchrun's report names the one that failed, not this one
            start = f"from {part.chosen.path}" if part.chosen is not None else "where this one would have"
            launcher = (" (under torchrun this is usually the launcher stopping this process after another one "
                        "failed: see the errors above)") if under_torchrun() else ""
            print(f"stopped: {e} while setting up, before this part's first step; nothing new to hand off, and "
                  f"the next part starts {start}{launcher}")
        return 0
    except (ConfigError, DataError, ckpt.CheckpointError, WeightsError) as e:  # one sentence each
        if claim_error(str(e)):  # under torchrun: the first process of the node to fail says it, whatever its rank
            print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------- TRAINING SECTION BEGIN

def train(part):
    """Optimizer steps until a stop rule fires; returns the reason. Each epoch's batch list is a pure
    function of (seed, epoch), so a resumed part rebuilds it and continues at its position. A step
    takes the list's next `per_step` micro-batches (grad_accum x ranks), micro-batch i to rank
    i % world, so the same samples make the same step whatever the number of processes."""
    position, ranks = part.position, part.ranks
    part.model.train()
    try:
        while position.epoch < part.total_epochs:
            epoch = position.epoch
            batches = part.task.sampler.batches(epoch)  # all ranks'; O(epoch size) to build, O(1) to jump into
            stream = part.task.batches(batches[position.batch_in_epoch:][ranks.rank::ranks.world], epoch)
            while position.epoch == epoch:
                reason = stop_reason(part)  # the only place a part may stop: between optimizer steps
                if reason:
                    return reason
                t0 = time.monotonic()
                if part.budget.first_step_at is None:  # where the run stands, and its step rate so far
                    part.budget.note_first_step()
                    tqdm.write(progress_line(part.history, part.total_steps, position.global_step, part.args.budget_hours))
                lr = learning_rate(position.global_step, part.cfg, part.steps_per_epoch) * divergence.lr_scale(part.history)
                size = min(part.per_step, len(batches) - position.batch_in_epoch)  # the step's, all ranks'
                micro_batches = [next(stream) for _ in range(ranks.share(size))]
                try:
                    train_step(part, micro_batches, lr)
                except Interrupted:  # a signal in its forward and backward: nothing is applied yet
                    undo_step(part)
                    return f"signal {stop.signal} (in step {position.global_step + 1}, undone)"
                work = sum(map(part.task.work, batches[position.batch_in_epoch:position.batch_in_epoch + size]))
                position.advance(size, len(batches))
                part.updating = False
                part.budget.observe_step(time.monotonic() - t0, work)
                part.bar.update(1)
                log_evaluate_save(part, lr, epoch)
        return "finished"
    finally:
        part.bar.close()


def train_step(part, micro_batches, lr):
    """One optimizer step over this rank's micro-batches of the step, each `(inputs, units)`."""
    ranks, scaler, optimizer = part.ranks, part.scaler, part.optimizer
    for group in optimizer.param_groups:
        group["lr"] = lr
    # Normalise by the units (tokens, CTC labels, rows) of the whole step, not per micro-batch, so a
    # short final step or uneven batches weigh each unit the same. DDP averages the ranks'
    # gradients, so dividing by the mean units over ranks weighs every unit of every rank the same too.
    step_units = units = sum(count for _, count in micro_batches)
    if ranks.world > 1:
        step_units = sum_over_ranks(ranks, [units])[0] / ranks.world
    trained = with_stand_in(part, micro_batches)
    part.step_rng = (part.position.global_step, ckpt.capture_rng())
    step_loss = forward_backward(part, trained, step_units)
    if ranks.world > 1 and trained:
        part.last_inputs = trained[-1][0]
    part.updating = True  # until the position moves on (train), the state is neither this step's nor the last
    grad_norm = None
    if part.cfg.grad_clip > 0 or scaler.is_enabled():
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        grad_norm = torch.nn.utils.clip_grad_norm_(part.model.parameters(), part.cfg.grad_clip or math.inf)
    part.watch.observe(step_loss, units, grad_norm)  # device ops only: read at the next check
    scaler.step(optimizer)  # skipped by the scaler if an fp16 gradient overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def with_stand_in(part, micro_batches):
    """(inputs, units, first sample) of each micro-batch this rank trains: those with inputs (None:
    unreadable clips, asr). Under DDP every rank joins the gradient exchange once a step, so a rank
    left with nothing (an epoch's short last step, or only unreadable clips) trains a stand-in: its
    previous micro-batch again, weighed 0. The first sample is the micro-batch's place among the
    step's samples, the same on any number of processes (micro-batch j of rank r is micro-batch
    r + j * world of the step); None where the draws are per rank (random_draws=rank) or do not count."""
    ranks, cfg = part.ranks, part.cfg
    by_sample = cfg.random_draws == "sample"
    real = [(inputs, count, (ranks.rank + j * ranks.world) * cfg.batch_size if by_sample else None)
            for j, (inputs, count) in enumerate(micro_batches) if inputs is not None]
    if ranks.world > 1 and not real and part.last_inputs is not None:
        return [(part.last_inputs, 0, None)]
    return real


def forward_backward(part, micro_batches, step_units):
    """The forward and backward of the step's micro-batches; returns the summed loss. A micro-batch that
    runs out of memory is planned in more pieces (training/memory.py) and the step runs again, its
    gradients and random draws undone first (one process; with several it is OutOfMemory's sentence)."""
    step = part.position.global_step + 1
    while True:
        # Nothing is applied before the last backward, so a signal need not wait for the step's end
        # (one process: several must all reach the gradient exchange).
        with signals_at_once(part.ranks.world == 1):
            step_loss, failed = train_pieces(part, pieces_of_step(part, micro_batches, step), step_units)
        if failed is None:
            return step_loss
        part.optimizer.zero_grad(set_to_none=True)
        ckpt.restore_rng(part.step_rng[1])
        if part.device.type == "cuda":
            torch.cuda.empty_cache()
        tqdm.write(split_further(part.history, step, failed, micro_batches[failed][0], part.device))


def pieces_of_step(part, micro_batches, step):
    """(micro-batch index, inputs, weight, seed) of every piece trained in step `step`: each micro-batch in
    the pieces the record plans for it (1 unless it ran out of memory before); weight 0 for a stand-in.
    The seed of a piece's random draws follows from the samples it holds (training/state.py's
    draw_seed), so a micro-batch in halves draws as two micro-batches of half the size would."""
    pieces = []
    for i, (inputs, count, first) in enumerate(micro_batches):
        for piece in split_rows(inputs, pieces_for(part.history, step, i, inputs)):
            rows = rows_of(piece)
            seed = None if first is None else draw_seed(part.cfg.seed, step, first, rows)
            pieces.append((i, piece, 0.0 if count == 0 else 1.0, seed))
            first = None if first is None else first + rows
    return pieces


def train_pieces(part, pieces, step_units):
    """Forward and backward of every piece; (the summed loss, None), or (None, i) when micro-batch i
    ran out of memory: leaving this frame frees what the failed attempt held."""
    step_loss = torch.zeros((), device=part.device)
    for k, (i, inputs, weight, seed) in enumerate(pieces):
        exchange = part.ranks.world == 1 or k == len(pieces) - 1  # gradients cross ranks once, after the last
        try:
            step_loss += train_piece(part, inputs, weight, seed, step_units, exchange)
        except torch.OutOfMemoryError:
            if part.ranks.world > 1:  # the other ranks are on their way into the exchange: no going back alone
                raise OutOfMemory(f"out of memory at step {part.position.global_step + 1} in micro-batch {i} on rank "
                                  f"{part.ranks.rank}; with several processes a micro-batch is not split after the "
                                  f"fact: --set probe_memory=true picks the pieces at the start, or lower "
                                  f"batch_size and raise grad_accum") from None
            return None, i
    return step_loss, None


def train_piece(part, inputs, weight, seed, step_units, exchange):
    """Forward and backward of one piece; returns its loss, summed over its units and detached."""
    if seed is not None:  # dropout, masks and LayerDrop of these samples, whatever the number of processes
        torch.manual_seed(seed)
    with contextlib.nullcontext() if exchange else part.train_model.no_sync():
        with part.autocast():
            _, loss_sum = part.train_model(**inputs)
            loss_sum = loss_sum * weight  # 0: a stand-in, which only keeps this rank in the exchange
        part.scaler.scale(loss_sum / step_units).backward()
    return loss_sum.detach()


def undo_step(part):
    """Back to the state after the last finished step, from the middle of the next one (before its
    update): its gradients cleared, the random draws it made undone."""
    part.optimizer.zero_grad(set_to_none=True)
    if part.step_rng is not None and part.step_rng[0] == part.position.global_step:
        ckpt.restore_rng(part.step_rng[1])


def stop_reason(part):
    """Why the part stops at this step boundary, or None; every rank comes to the same answer."""
    position, cfg, args = part.position, part.cfg, part.args
    if part.divergence_advice:
        return "diverged"
    if any_rank(part.ranks, stop.signal is not None):
        return f"signal {stop.signal or 'on another process'}"
    if args.max_steps is not None and position.global_step >= args.max_steps:
        return f"max steps {args.max_steps}"
    if cfg.part_epochs and position.epoch - part.start_epoch >= cfg.part_epochs:
        return f"part_epochs {cfg.part_epochs}"
    if not all_ranks(part.ranks, part.budget.room_for_step()):
        return "time budget"
    return None


def log_evaluate_save(part, lr, epoch):
    """After a step: at the steps that log, evaluate or save, first check that training is sound (the
    one host-device sync); if it is not, roll back (recover) and write nothing. Then do what is due."""
    cfg, ranks, step = part.cfg, part.ranks, part.position.global_step
    log_due = step % cfg.log_every_steps == 0
    epoch_done = part.position.epoch != epoch
    eval_due = step % cfg.eval_every_steps == 0 if cfg.eval_every_steps else epoch_done
    save_due = bool(cfg.save_every_steps) and step % cfg.save_every_steps == 0
    minutes = (time.monotonic() - part.last_save) / 60
    clock_due = any_rank(ranks, cfg.save_every_minutes and minutes >= cfg.save_every_minutes)
    if not (log_due or eval_due or save_due or clock_due):
        return
    totals, symptom = check(part, scan_state=eval_due or save_due or clock_due)
    if symptom and (log_due or eval_due or save_due):
        # Only at steps counted in steps, never at a moment the wall clock chose, so that a resumed
        # run decides the same; a save the clock asked for waits until then.
        return recover(part, symptom)
    if log_due:
        log_training(part, totals, lr, epoch)
    if eval_due:
        evaluate_and_record(part, lr, epoch)
    if (save_due or clock_due) and not symptom:
        save(part, ckpt.rolling_name(part.position.epoch, part.position.step_in_epoch, step))
        part.last_save = time.monotonic()


def check(part, scan_state):
    """(the sums since the last log, the symptom of divergence or None), the same on every rank. With
    scan_state every weight and AdamW moment is looked at too (before anything is written)."""
    totals = part.watch.totals(lambda sums: sum_over_ranks(part.ranks, sums))
    scale = part.scaler.get_scale() if part.scaler.is_enabled() else None
    symptom = divergence.symptom(totals, recent(part.history, "train_loss", divergence.SPIKE_WINDOW), scale,
                                 part.cfg.spike_factor)
    if symptom is None and scan_state:
        symptom = divergence.state_symptom(part.model, part.optimizer)
    return totals, from_rank0(part.ranks, symptom)


def log_training(part, totals, lr, epoch):
    """The training loss since the last log into the record and the progress bar; fp16's skipped steps too."""
    step, skipped = part.position.global_step, totals["skipped"]
    record(part.history, steps=step, epochs=epoch, learning_rate=lr, train_loss=totals["loss"],
           **({"skipped_steps": skipped} if part.scaler.is_enabled() else {}))
    part.watch.reset()
    postfix = {"loss": "-" if totals["loss"] is None else f"{totals['loss']:.4f}", "lr": f"{lr:.2e}", "step": step,
               "left": format_seconds(part.budget.left())}
    if part.scaler.is_enabled():  # a stall shows here; a loss scale that collapsed counts as diverging
        postfix["skipped"] = part.watch.skipped_total
    part.bar.set_postfix(refresh=False, **postfix)


def recover(part, symptom):
    """Roll back to the last good state; the data since it is skipped (the loader is already past it,
    so the steps that led here are not seen again) and the learning rate is lowered. The event goes
    into the record, which the checkpoint carries: a resumed run knows the rate and what was skipped."""
    step, good_step = part.position.global_step, part.good.step
    cfg, history = part.cfg, part.history
    repeats = divergence.streak(history, good_step)
    roll_back(part, part.good.load())
    history["recoveries"] = history.get("recoveries", []) + [
        {"step": step, "part": part.number, "seen": symptom, "back_to": good_step,
         "skipped_steps": [good_step + 1, step], "lr_factor": cfg.recover_lr_factor}]
    scale = divergence.lr_scale(history)
    if repeats >= cfg.max_recoveries:
        part.divergence_advice = divergence.advice(repeats + 1, good_step, symptom, step, scale, cfg,
                                                   part.scaler.is_enabled())
        return
    tqdm.write(f"step {step}: {symptom}; rolled back to step {good_step}, skipping the data of steps "
               f"{good_step + 1}-{step}; learning rate now {scale:g} x the plan (recovery {repeats + 1} of at most "
               f"{cfg.max_recoveries} from this state)")

# ---------------------------------------------------------------- TRAINING SECTION END


# -----------------------------------------------------------------------------
# Evaluating and saving

def evaluate_and_record(part, lr, epoch):
    """Evaluate if the budget has room for it, and add the metrics to the run's record."""
    if not all_ranks(part.ranks, part.budget.room_for_eval()):
        return
    metrics = evaluate(part)
    if metrics is None:
        return
    record(part.history, steps=part.position.global_step, epochs=epoch, learning_rate=lr, **metrics)
    if part.ranks.main:
        write_metrics(part.run_folder, part.history)
    tqdm.write(f"step {part.position.global_step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


def evaluate(part):
    """Each rank scores its share of the validation set; the sums are added over ranks and the best
    model is kept. Returns the metrics, or None if the budget or a signal cut it short on any rank."""
    t0 = time.monotonic()
    part.model.eval()
    # fork_rng: evaluation must not move the training RNG, or a run with more evaluations would differ.
    with torch.random.fork_rng(devices=[part.device] if part.device.type == "cuda" else []), part.autocast():
        sums = part.task.evaluate(part.model, lambda: stop.signal is None and part.budget.can_continue_eval())
    part.model.train()
    shares = gather(part.ranks, sums)
    part.budget.observe_eval(time.monotonic() - t0)
    if any(share is None for share in shares):
        return None
    metrics = part.task.summarize({key: sum(share[key] for share in shares) for key in shares[0]})
    part.last_eval_step = step = part.position.global_step
    if part.best.improves(metrics[part.best.metric], step):
        save_best(part, metrics)
    return metrics


def save(part, name, final=False):
    """Rank 0 writes one full checkpoint (with every rank's RNG), then latest.txt, pruning,
    metrics.json and the plots; the others wait for its outcome. Returns (path, bytes), or None
    when a periodic save found no room (the hand-off raises instead)."""
    t0 = time.monotonic()
    rng_states = gather(part.ranks, ckpt.capture_rng())
    try:  # the broadcast of rank 0's outcome is also the barrier: nobody runs ahead of a save
        path, nbytes = decided_on_rank0(part.ranks, lambda: write_training_checkpoint(part, name, rng_states, final),
                                        ckpt.CheckpointError)
    except ckpt.CheckpointError as e:
        if final:
            raise
        tqdm.write(f"warning: {e}; training goes on")
        return None
    finally:
        part.budget.observe_save(time.monotonic() - t0)
    if not final:  # written after a check found it sound: the new roll-back point
        part.good = RollBackPoint(part.position.global_step, path)
    return path, nbytes


def write_training_checkpoint(part, name, rng_states, final):
    """save's work on rank 0: the file, latest.txt, pruning, metrics.json and the plots; (path, bytes)."""
    out = part.run_folder
    point = RollBackPoint(part.position.global_step, name) if not final else part.good
    good = {"step": point.step, "file": os.path.basename(point.path) if point.path else None}
    state = training_state(part, rng_states, good)
    meta = {**header(part, "train"), "world_size": part.ranks.world, "batch_in_epoch": "all ranks",
            "data_fingerprint": part.task.fingerprint}
    path = os.path.join(out, name)
    ckpt.make_room(out, ckpt.state_bytes(state), part.cfg.keep_last)
    nbytes = ckpt.write_file(path, state, meta)
    ckpt.write_text_atomic(os.path.join(out, ckpt.LATEST_NAME), name + "\n")
    ckpt.prune(out, part.cfg.keep_last)
    write_metrics(out, part.history)
    write_plots(out, part.history)
    return path, nbytes


def save_best(part, metrics):
    """best_model.safetensors: the weights alone, with the metrics that made them the best."""
    if not part.ranks.main:
        return
    try:
        state = {"model": part.model.state_dict()}
        ckpt.make_room(part.run_folder, ckpt.state_bytes(state), part.cfg.keep_last)
        ckpt.write_file(os.path.join(part.run_folder, ckpt.BEST_NAME), state, {**header(part, "weights"), "metrics": metrics})
    except ckpt.CheckpointError as e:
        tqdm.write(f"warning: best model not saved: {e}")


# -----------------------------------------------------------------------------
# The end of a part: the hand-off and what to run next

def finish(part, stop_reason):
    args = part.args
    _, symptom = check(part, scan_state=True)  # the hand-off is checked like every other write
    if symptom and stop_reason == "finished":  # the plan's end is a step count too: decide as at any check
        recover(part, symptom)
    elif symptom:  # a stop the clock or a signal chose: go back whole, so the next part replays from there
        roll_back(part, part.good.load(), whole=True)
        print(f"note: {symptom} since the last check; the hand-off is the last good state (step {part.good.step}), "
              f"and the next part trains on from there and decides at the same step as an uninterrupted run")
    position = part.position
    if stop_reason == "finished" and part.last_eval_step != position.global_step:
        # the finished model's score, unless it was just evaluated
        evaluate_and_record(part, part.optimizer.param_groups[0]["lr"], position.epoch - 1)
    close_part(part.history, part.number, position.global_step, time.time() - part.started, part.budget.spent["steps"])
    path, nbytes = save(part, ckpt.handoff_name(part.number), final=True)
    part.handed_off = path
    elapsed = time.time() - part.started
    print(f"\nstopped: {stop_reason} at global step {position.global_step} "
          f"(epoch {position.epoch}/{part.total_epochs}) after {format_seconds(elapsed)}")
    print(part.budget.summary(elapsed, speed(part), part.cfg.compile))
    print(progress_line(part.history, part.total_steps, position.global_step, args.budget_hours))
    scale = part.scaler.get_scale() if part.scaler.is_enabled() else None
    print(divergence.report(part.history, part.number, part.watch.skipped_total, scale), end="")
    if part.divergence_advice:
        print(f"stopped because {part.divergence_advice}", file=sys.stderr)
    if part.best.value is not None:
        print(f"best {part.best.metric} {part.best.value:.4f} at step {part.best.step}: "
              f"{os.path.join(part.run_folder, ckpt.BEST_NAME)}")
    print(f"baton: {path} ({ckpt.file_size_text(nbytes)})")
    if stop_reason == "finished":
        print(f"training is complete. Predict with:\n  {COMMANDS['infer']} --task {args.task} --ckpt {part.run_folder}")
    else:
        print(f"next: {next_command(part)}")
    if args.kaggle:
        print(f"Kaggle: /kaggle/working disappears with this session. Keep the baton: Save Version, then in the "
              f"next session Add Data > Notebook Output > this notebook (Baton searches /kaggle/input), "
              f"or download {path} and upload it as a dataset.")


def speed(part):
    """The steady throughput for the time line: ': 9,300 tokens a second', with MFU on a GPU (lm)."""
    pace = part.budget.pace()
    if pace is None:
        return ""
    text = f": {pace[1]:,.{0 if pace[1] >= 100 else 1}f} {part.task.work_unit} a second"
    peak = peak_flops(part.device, part.amp)
    if peak and part.task.flops_per_work:
        text += f", MFU {pace[1] * part.task.flops_per_work(part.model) / peak:.1%}"
    return text


def next_command(part, environ=None):
    """The command that continues the run in the next session (over several nodes, with torchrun's node
    and rendezvous flags: training/distributed.py's torchrun_launcher)."""
    args, world = part.args, part.ranks.world
    out_flag = "" if part.run_folder == os.path.join(".", "runs", args.task) else f" --out {part.run_folder}"
    launcher = COMMANDS["train"] if world == 1 else \
        COMMANDS["train"].replace("python ", f"{torchrun_launcher(world, environ)} ", 1)
    hours = f" --budget-hours {args.budget_hours:g}" if args.budget_hours else ""
    return f"{launcher} --task {args.task} --part {part.number + 1}{hours}{out_flag}"


def hand_off_after_fault(part, error):
    """After an exception or a signal in the middle of a step: the hand-off of the last finished step,
    if that state is whole (no optimizer update half applied, every value finite), and where it is.
    The step that failed is undone: its gradients, and the random draws it made."""
    if part.handed_off or isinstance(error, ckpt.CheckpointError):  # the hand-off is what failed, or is written
        return
    what, step = (f"{error}" if isinstance(error, Interrupted) else type(error).__name__), part.position.global_step
    newest = part.good.path or f"none yet: the part began at step {part.good.step} without a checkpoint to resume"
    if part.ranks.world > 1:
        print(f"{what} at step {step + 1} on one of {part.ranks.world} processes, the others not at a step boundary: "
              f"no hand-off is written; the next part resumes from the newest checkpoint in {part.run_folder}")
        return
    if part.updating:
        print(f"{what} during the optimizer update of step {step + 1}: the weights are half updated, so no hand-off "
              f"is written; the newest good checkpoint is {newest}")
        return
    undo_step(part)
    _, symptom = check(part, scan_state=True)
    if symptom:
        print(f"{what} at step {step + 1}, and the state before it is not sound ({symptom}): no hand-off is "
              f"written; the newest good checkpoint is {newest}")
        return
    try:
        close_part(part.history, part.number, step, time.time() - part.started, part.budget.spent["steps"])
        path, _ = save(part, ckpt.handoff_name(part.number), final=True)
    except Exception as e:  # the first error is the one to see; this one is said
        print(f"{what} at step {step + 1}, and the hand-off could not be written ({type(e).__name__}: {e})")
        return
    print(f"\nstopped: {what} in step {step + 1}; the hand-off {path} holds step {step}, the last one finished "
          f"(the failed step is undone), and continues exactly.\nnext: {next_command(part)}")
    sys.stdout.flush()


# -----------------------------------------------------------------------------
# Setting up a part: everything the loop needs, in one object

class Part:
    """One part of a run: its settings, model, optimizer and where training stands. The loop above
    moves it forward; `save` writes it to a checkpoint and `Part(...)` of the next session reads it back."""

    def __init__(self, args, started):
        self.args, self.started = args, started  # args stay as parsed: what a part decides is kept here
        self.budget = TimeBudget(args.budget_hours, started)
        self.run_folder = args.out
        self.number = args.part  # this part's number ("auto" until the checkpoint to continue is chosen)
        self.chosen = None       # the checkpoint it continues from (or a weights-only/.pt file it starts from)
        self.ready = False       # set up: the loop may run
        self.handed_off = None   # the hand-off's path, once written

    def set_up(self):
        """In this order: the random draws of the initial weights and of every rank follow from it."""
        self.join_processes()
        self.choose_checkpoint()
        self.settle_config()
        self.build_model_and_optimizer()
        self.plan_steps()
        self.resume()
        self.check_budget()
        self.bar = tqdm(total=self.total_steps, initial=self.position.global_step, unit="step", dynamic_ncols=True,
                        mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr, disable=not self.ranks.main)
        self.ready = True

    def join_processes(self):
        """torchrun's ranks, the device and precision, the run folder."""
        args = self.args
        self.ranks = start_processes(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if not self.ranks.main:  # one log: rank 0 speaks for all (errors still reach stderr)
            sys.stdout = open(os.devnull, "w")
        self.device, self.amp = choose_device(args)  # the amp is recorded in every checkpoint, with the device type
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.amp)
        try:
            os.makedirs(self.run_folder, exist_ok=True)
        except OSError as e:  # a file of that name, or a place nobody may write to
            raise ConfigError(f"--out {self.run_folder} cannot be the run folder ({e.strerror or e}); give a folder "
                              f"that can be created and written") from None
        if self.ranks.main:
            ckpt.remove_stale_temp_files(self.run_folder)

    def choose_checkpoint(self):
        """The file to continue from (training/discovery.py) and so this part's number."""
        self.chosen, self.number = choose_checkpoint(self.args, self.ranks)
        is_training = self.chosen is not None and self.chosen.is_training
        self.resumed = self.chosen if is_training else None  # not a weights-only or .pt file

    def settle_config(self):
        """Defaults or the checkpoint's config, --set, the world size and the machine: printed, then fixed."""
        cfg = keep_global_batch(resolve_config(self.args, self.resumed), self.args, self.resumed, self.ranks.world)
        self.cfg = cfg.resolved(self.resumed)
        print_config(self.cfg)

    def build_model_and_optimizer(self):
        cfg, ranks = self.cfg, self.ranks
        random_seed_everything(cfg.seed)  # the same initial weights on every rank
        # The task's model, and the task object: its batches, evaluation and metrics (training/__init__.py).
        self.model, self.task = TASKS[self.args.task].build(cfg, self.device, ranks.rank, ranks.world, self.resumed,
                                                            self.run_folder)
        self.model.gradient_checkpointing = cfg.grad_checkpointing
        self.model.to(self.device)
        if ranks.world > 1:
            random_seed_everything(cfg.seed + 1000 * ranks.rank)  # but each rank its own dropout and masks
        self.train_model = wrap_for_training(self.model, cfg, ranks, self.device)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.idle_scaler_state = {}  # an earlier fp16 part's loss scale, kept while this part runs without one
        self.watch = divergence.Watch(self.device, fp16=self.amp == "fp16")

    def plan_steps(self):
        cfg, world = self.cfg, self.ranks.world
        self.per_step = cfg.grad_accum * world  # micro-batches of all ranks per optimizer step
        self.steps_per_epoch = math.ceil(len(self.task.sampler) / self.per_step)
        self.total_epochs = cfg.epochs + cfg.phase2_epochs
        self.total_steps = self.total_epochs * self.steps_per_epoch
        processes = f" x {world} processes" if world > 1 else ""
        print(f"model: {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M parameters on {self.device}"
              f"{processes} (amp {self.amp}); {self.steps_per_epoch} steps/epoch, {self.total_steps} planned steps")
        note_plan_change(self)

    def resume(self):
        """Where training stands: from the chosen checkpoint, or the start; and what the loop keeps."""
        self.position = Position()
        self.best = Best(self.task.best_metric)
        self.history = new_history()
        if self.chosen is not None:
            restore(self, self.chosen)
        # What a divergence rolls back to (see recover): the newest finite training checkpoint, or a copy
        # in memory of the state this part starts from until it has written one.
        self.good = roll_back_point_at_start(self, self.chosen)
        self.divergence_advice = None  # once divergence repeats: why the part stops, and what to try
        self.history["parts"].append({"part": self.number, "start_step": self.position.global_step})
        self.start_epoch = self.position.epoch
        self.last_eval_step = None
        self.last_save = time.monotonic()
        self.last_inputs = None  # the previous micro-batch, for train_step's stand-in under DDP
        self.step_rng = None  # (global step, the RNG as that step began): what a failed step is undone to
        self.updating = False  # between a step's first change to the weights and its position's move
        if self.cfg.probe_memory:  # the pieces every micro-batch is trained in (training/memory.py)
            print(probe_part(self))

    def check_budget(self):
        """The final save must fit in what is left after start-up, with room for a step."""
        if self.budget.deadline is not None:  # weights + AdamW's two moments dominate the file
            # Tied weights count twice here (the file stores them once): the estimate errs on the safe side.
            nbytes = 3 * sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
            seconds = ckpt.estimate_write_seconds(self.run_folder, nbytes) if self.ranks.main else None
            self.budget.expect_save(from_rank0(self.ranks, seconds))
        if not all_ranks(self.ranks, self.budget.room_for_step() or stop.signal):
            raise ConfigError(f"--budget-hours {self.args.budget_hours:g} is too small: start-up took "
                              f"{time.time() - self.started:.0f} s and the final save needs more than the "
                              f"{max(self.budget.left(), 0):.0f} s left; give the part more time")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)


# -----------------------------------------------------------------------------
# Setting up: the config, the model for training, the optimizer, the device

def resolve_config(args, resumed):
    """Defaults + --set for a fresh run; the checkpoint's config + --set when resuming (training/config.py).
    Each task's config extends TrainConfig, the fields every task has (training/lm.py, asr.py, reg.py)."""
    cli = list(args.settings) + ([f"data={args.data}"] if args.data is not None else []) + \
        ([f"seed={args.seed}"] if args.seed is not None else [])
    saved_config = resumed.meta.get("config") if resumed is not None else None
    return resolve_settings(TASKS[args.task].config, cli, saved_config if isinstance(saved_config, dict) else None)


def wrap_for_training(model, cfg, ranks, device):
    """The module the training forward runs through: DDP across processes, torch.compile if asked.
    Checkpoints and evaluation use the plain `model`, so weights keep their own names."""
    train_model = model
    if ranks.world > 1:  # a model that may leave parameters without a gradient says so (wav2vec2.py)
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=getattr(model, "skips_parameters", False))
    return torch.compile(train_model) if cfg.compile else train_model


# -----------------------------------------------------------------------------
# The learning rate: a pure function of the global step, so resuming needs no scheduler state

def learning_rate(step, cfg, steps_per_epoch):
    """LR for optimizer step `step` (0-based): linear warm-up, cosine decay to lr * min_lr_ratio over
    phase 1 (all parts together), then phase 2 at a fixed phase2_lr."""
    phase1 = cfg.epochs * steps_per_epoch
    if step >= phase1:
        return cfg.phase2_lr
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, phase1 - cfg.warmup_steps)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


if __name__ == "__main__":
    code = main()
    # The baton is fsynced; Python's teardown of torch would only add ~1 s past the budget.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
