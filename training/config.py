"""Settings: the fields every task has (`TrainConfig`), how `--set key=value` changes them, and how a
resumed run keeps its global batch on another number of processes (`keep_global_batch`).

Each task extends TrainConfig in its own module: `training/lm.py`'s LMConfig, `asr.py`'s ASRConfig,
`reg.py`'s RegConfig. A config is printed when a part starts and stored in every checkpoint; a resumed
part starts from the checkpoint's config, with the command line's `--set` applied on top.
"""

import dataclasses
import math
import typing


class ConfigError(Exception):
    """A bad command line or setting; the message is one sentence that says what to do."""


@dataclasses.dataclass
class TrainConfig:
    """Fields every task has: the plan of the whole run (all parts) and how it is saved."""
    data: str = ""                  # training data path; "" = the embedded sample
    seed: int = 1337                # seeds model init, data order and dropout
    # Where dropout, attention dropout, SpecAugment and LayerDrop draw from: "sample" = streams seeded by
    # (seed, step, the samples' place in the step), the same on any number of processes; "rank" = one
    # stream per process (batons written before Baton had this setting keep it).
    random_draws: str = "sample"

    # What a checkpoint written before a field existed ran with, where that differs from the default:
    # resuming it goes on as it began (`resolve_settings`), unless --set says otherwise.
    BEFORE_STORED: typing.ClassVar[dict] = {"random_draws": "rank"}
    epochs: int = 10                # passes over the training data in phase 1 (the main phase)
    batch_size: int = 16            # samples per micro-batch
    grad_accum: int = 1             # micro-batches per optimizer step
    lr: float = 1e-3                # peak learning rate of phase 1
    min_lr_ratio: float = 0.1       # phase 1 decays (cosine) to lr * min_lr_ratio
    warmup_steps: int = 100         # linear warm-up, in optimizer steps
    weight_decay: float = 0.1       # AdamW decay on matrices (not on biases, norms)
    beta2: float = 0.99             # AdamW second-moment decay
    grad_clip: float = 1.0          # max global gradient norm; 0 = off
    phase2_epochs: int = 0          # extra epochs after phase 1 at a fixed low LR (0 = none)
    phase2_lr: float = 5e-6         # the phase-2 learning rate
    part_epochs: int = 0            # stop a part after this many epochs (the seeds' 18 a part); 0 = budget only
    eval_every_steps: int = 250     # validation every N optimizer steps; 0 = at each epoch end
    log_every_steps: int = 10       # training loss / LR into metrics.json every N steps
    save_every_steps: int = 500     # rolling checkpoint every N steps; 0 = off
    save_every_minutes: float = 30  # ... and at least every N minutes; 0 = off
    keep_last: int = 3              # rolling checkpoints kept, at least 1 (hand-offs and best are never pruned)
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    probe_memory: bool = False      # at a part's start, try the largest micro-batch and train in as many pieces as fit
    compile: bool = False           # torch.compile the training forward (slow to start; faster steps on GPUs)
    adamw: str = "auto"             # AdamW's implementation: auto (fused on CUDA, foreach elsewhere), fused, foreach
    # A diverging run (training/divergence.py) rolls back to its last good checkpoint, skips the data since,
    # and goes on at a lower learning rate; after max_recoveries in a row without a good checkpoint
    # between, the part stops with the last good state as its hand-off.
    spike_factor: float = 3.0       # a loss above this x its recent median counts as diverging; 0 = off
    max_recoveries: int = 3         # roll-backs to the same checkpoint before the part stops; 0 = stop at once
    recover_lr_factor: float = 0.5  # each recovery multiplies the learning rate by this

    def __post_init__(self):
        for name in ("epochs", "batch_size", "grad_accum", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("warmup_steps", "eval_every_steps", "save_every_steps", "keep_last", "phase2_epochs", "part_epochs",
                     "max_recoveries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more (got {getattr(self, name)})")
        if self.random_draws not in ("sample", "rank"):
            raise ConfigError(f"random_draws must be 'sample' or 'rank' (got {self.random_draws!r})")
        if not self.lr > 0 or not self.phase2_lr > 0:
            raise ConfigError("lr and phase2_lr must be positive")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("min_lr_ratio must be between 0 and 1")
        if self.adamw not in ("auto", "fused", "foreach"):
            raise ConfigError(f"adamw must be 'auto', 'fused' or 'foreach' (got {self.adamw!r})")
        if not 0 < self.recover_lr_factor <= 1 or not (self.spike_factor == 0 or self.spike_factor > 1):
            raise ConfigError("recover_lr_factor must be in (0, 1], and spike_factor 0 (off) or above 1")

    def resolved(self, resumed):
        """The config with the settings that depend on the machine or on the checkpoint `resumed` (or
        None) settled, before it is printed; nothing changes it after. A task overrides this when it
        has such settings (asr: the transcripts' normaliser)."""
        return self


def apply_settings(cfg, settings):
    """Return cfg with `key=value` strings applied; an unknown key lists the valid ones."""
    valid = [f.name for f in dataclasses.fields(cfg)]
    changes = {}
    presets = getattr(type(cfg), "PRESETS", {})
    for item in settings:  # a preset goes first, so explicit settings override its values
        key, _, name = item.partition("=")
        if key.strip() == "preset" and name.strip() in presets:
            changes.update(presets[name.strip()])
    for item in settings:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        if key not in valid:
            raise ConfigError(f"unknown setting {key!r} for this task; valid settings: {', '.join(valid)}")
        changes[key] = parse_setting(type(cfg), key, raw.strip())
    return dataclasses.replace(cfg, **changes)


def resolve_settings(cfg_cls, settings, saved_config=None):
    """A fresh run's config: the defaults with `settings` applied. A resumed run's: the checkpoint's
    `saved_config` with `settings` on top, printing every field that changed, because the run then
    differs from an uninterrupted one (and the fields this version no longer has)."""
    if saved_config is None:
        return apply_settings(cfg_cls(), settings)
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    dropped = sorted(set(saved_config) - names)
    if dropped:
        print(f"note: the checkpoint's settings {', '.join(dropped)} are not used by this version")
    before_stored = {k: v for k, v in cfg_cls.BEFORE_STORED.items() if k not in saved_config}
    old = cfg_cls(**before_stored, **{k: v for k, v in saved_config.items() if k in names})
    cfg = apply_settings(old, settings)
    for f in dataclasses.fields(cfg):
        if getattr(old, f.name) != getattr(cfg, f.name):
            print(f"warning: {f.name} changed from {getattr(old, f.name)!r} to {getattr(cfg, f.name)!r} on resume; "
                  f"the run will not be identical to an uninterrupted one")
    return cfg


def keep_global_batch(cfg, args, resumed, world):
    """On another number of processes than the checkpoint's, grad_accum scales so that a step still
    takes the same micro-batches: T4 x2 -> one GPU (and back) is the same run, up to float rounding.
    A --set grad_accum that repeats the checkpoint's value (the same command line again) asks for
    nothing new; another value is the user's, and the line in plan_steps says what it changes."""
    before = resumed.meta.get("world_size", 1) if resumed is not None else world
    saved_accum = (resumed.meta.get("config") or {}).get("grad_accum") if resumed is not None else None
    asked = any(s.partition("=")[0].strip() == "grad_accum" for s in args.settings)
    if before == world or (asked and cfg.grad_accum != saved_accum):
        return cfg
    per_step = cfg.grad_accum * before
    if per_step % world:
        print(f"warning: a step of {per_step} micro-batches ({before} process(es) x grad_accum {cfg.grad_accum}) cannot "
              f"be dealt evenly to {world} processes, so from here a step takes {cfg.grad_accum * world} and the run "
              f"differs from an uninterrupted one (--set grad_accum=N chooses another)")
        return cfg
    print(f"note: the checkpoint was written by {before} process(es) and this part has {world}: grad_accum "
          f"{cfg.grad_accum} -> {per_step // world} keeps a step at {per_step} micro-batches, so the run goes on with "
          f"the same samples at the same steps and the same learning rates (weights equal up to float rounding)")
    return dataclasses.replace(cfg, grad_accum=per_step // world)


def note_plan_change(part):
    """One line when this part's step takes other samples than the checkpoint's did (another
    batch_size or grad_accum, or a step that cannot be dealt evenly to this many processes): the
    global batch and the plan, before and after."""
    resumed = part.resumed
    if resumed is None or not isinstance(resumed.state.get("sampler"), dict):
        return
    old_cfg, old_world = resumed.meta.get("config") or {}, resumed.meta.get("world_size", 1)
    old_batch, old_accum = old_cfg.get("batch_size"), old_cfg.get("grad_accum")
    if old_batch is None or old_accum is None:
        return
    old_global, new_global = old_batch * old_accum * old_world, part.cfg.batch_size * part.cfg.grad_accum * part.ranks.world
    old_steps = math.ceil(resumed.state["sampler"]["batches_per_epoch"] / (old_accum * old_world))
    if old_global == new_global and old_steps == part.steps_per_epoch:
        return
    print(f"note: the global batch goes from {old_global} samples a step ({old_batch} x grad_accum {old_accum} x "
          f"{old_world} process(es)) to {new_global} ({part.cfg.batch_size} x {part.cfg.grad_accum} x {part.ranks.world}), "
          f"and the plan from {old_steps:,} to {part.steps_per_epoch:,} steps an epoch: from here the run differs "
          f"from an uninterrupted one")


def parse_setting(cls, key, raw):
    """Convert the text of `--set key=value` to the type of the config field."""
    kind = typing.get_type_hints(cls)[key]
    try:
        if kind is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError
            return raw.lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError:
        raise ConfigError(f"--set {key}={raw}: expected {kind.__name__}") from None


def print_config(cfg):
    print(f"config ({type(cfg).__name__}):")
    for f in dataclasses.fields(cfg):
        print(f"  {f.name:20s} {getattr(cfg, f.name)!r}")
