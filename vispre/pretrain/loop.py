"""The one training loop for every method, on accelerate.

The same code runs as one CPU process and under ``accelerate launch`` on many GPUs or nodes:
accelerate picks the device, wraps the method in DDP, handles mixed precision and gradient
accumulation. The data loader is *not* prepared: it splits by rank and worker itself and keeps
an exact, resumable position (see ``vispre.data``).

What a run survives (issue 14; README "What vispre guarantees"):

* SIGTERM, SIGINT, SIGUSR1 on any rank: every rank finishes the step, one checkpoint is written, and
  ``fit`` raises ``Preempted`` (``vispre pretrain`` exits 75); ``--resume`` continues exactly.
* a non-finite loss or gradient: the step is skipped (no optimizer or EMA update) or the run stops
  (``train.nonfinite``); more than ``train.max_nonfinite_skips`` skips in a row stop it too
  (``NonFiniteLoss``, exit 3). A non-finite model is never checkpointed (``checkpoint.py``).
* a second trainer on the same ``output_dir``: refused (``vispre.utils.runlock``); a rerun into a
  directory that holds a run needs ``resume`` or ``overwrite``.
* padding batches (finite epochs, uneven shards, several ranks): the gradient is averaged over the
  ranks' real batches, not diluted by the padding ranks' zeros.

On a GPU the host never waits for the device inside a step (README "GPU path"): metrics stay on the device
until the log (``step_metrics``), a non-finite step is skipped by the fused optimizer and a masked target
update on the device, and the stop rules are checked at each log and before each checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, broadcast_object_list
from tqdm import tqdm

from ..data import build_loader
from ..methods import build_method
from ..models import build_encoder
from ..models.init_weights import init_encoder
from ..utils.diagnostics import rankme, srank
from ..utils.errors import UserError
from ..utils.io import write_atomic
from ..utils.progress import quiet
from ..utils.runlock import RunLock
from ..utils.stop_signals import StopSignals
from ..utils.typed_config import to_yaml
from ..views.photometric import Photometric
from .checkpoint import (
    CheckpointWriteError,
    NonFiniteCheckpoint,
    checkpoint_name,
    clean_temporary,
    find_checkpoint,
    load_checkpoint,
    nonfinite_tensors,
    save_checkpoint,
)
from .gradients import usable_gradients
from .recipe import PretrainConfig
from .sharded import is_sharded, load_sharded_checkpoint, save_sharded_checkpoint
from .speed import build_optimizer, compile_encoders, ddp_kwargs, fused_attention, skips_on_device, use_channels_last
from .step_metrics import MetricWindow, NonFiniteLoss, NonFiniteWatch, check_nonfinite  # noqa: F401
from .trackers import checked_trackers, recipe_hparams

log = logging.getLogger("vispre.train")


class Preempted(Exception):
    """A stop signal arrived; every rank finished its step and the checkpoint ``path`` was written."""

    def __init__(self, signal_name: str, step: int, path: Path):
        super().__init__(f"{signal_name}: stopped at step {step} after writing {path}; continue with --resume")
        self.signal_name, self.step, self.path = signal_name, step, path


class OutputDirInUse(UserError):
    """``train.output_dir`` holds an earlier run and neither resume nor overwrite was asked for."""


def is_padding(batch) -> bool:
    """A padding batch (a finite epoch's filler on a rank with fewer batches): no valid sample."""
    valid = batch.get("valid") if isinstance(batch, dict) else None
    return valid is not None and not bool(valid.any())


def cosine(step: int, total: int, start: float, end: float, warmup: int = 0, warmup_start: float = 0.0) -> float:
    """Linear warm-up from ``warmup_start`` to ``start`` over ``warmup`` steps, then cosine to ``end``."""
    if step < warmup:
        return warmup_start + (start - warmup_start) * step / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(t, 1.0)))


def param_groups(model: torch.nn.Module) -> list[dict]:
    """Weight decay on matrices only: biases, norms and other 1-d parameters are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "decay": True}, {"params": no_decay, "decay": False, "weight_decay": 0.0}]


def mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def epochs(loader):
    """Batches forever, epoch after epoch (the loader keeps the epoch count and position)."""
    while True:
        yield from loader


class Trainer:
    def __init__(self, cfg: PretrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.train.output_dir)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        ddp_handler = DistributedDataParallelKwargs(**ddp_kwargs(cfg.train.ddp))  # read at prepare()
        timeout = InitProcessGroupKwargs(timeout=timedelta(minutes=cfg.train.dist_timeout_minutes))
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision(cfg.train.precision),
            gradient_accumulation_steps=cfg.train.grad_accum, log_with=checked_trackers(cfg.train.trackers),
            project_dir=str(self.out),
            kwargs_handlers=[timeout, ddp_handler])
        acc = self.accelerator
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        fused_attention()  # timm's Attention reads the flag when it is built
        encoder = build_encoder(cfg.model.name, **cfg.model.kwargs)
        if cfg.model.init:  # before build_method: the EMA copy starts from these weights too
            init_encoder(encoder, cfg.model.init, cfg.model.init_prefix)
        self.method = build_method(cfg.method, encoder)
        ddp_handler.find_unused_parameters |= self.method.has_unused_parameters()  # e.g. AB with one loss off
        if use_channels_last(str(cfg.train.channels_last).lower(), encoder, acc.device):
            self.method.to(memory_format=torch.channels_last)  # 4-d weights NHWC; convolutions follow them
        if cfg.train.compile:
            log.info("torch.compile (%s): %s", cfg.train.compile_backend,
                     ", ".join(compile_encoders(self.method, cfg.train.compile_backend, cfg.train.compile_mode)))
        global_batch = cfg.data.batch_size * acc.num_processes * cfg.train.grad_accum
        if cfg.optim.lr_scaling not in ("linear", "none"):
            raise ValueError(f"optim.lr_scaling must be 'linear' or 'none', got {cfg.optim.lr_scaling!r}")
        self.base_lr = cfg.optim.lr * (global_batch / 256 if cfg.optim.lr_scaling == "linear" else 1.0)
        optimizer = build_optimizer(param_groups(self.method), acc.device, str(cfg.train.fused_adamw).lower(),
                                    lr=self.base_lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
        self.nonfinite_watch = NonFiniteWatch(acc.device, cfg.train.max_nonfinite_skips)
        # stop / save flags agreed over a CPU (gloo) group: an NCCL all-reduce read on the host would wait
        # for the GPU every step
        self.control_group = None
        if acc.num_processes > 1 and torch.distributed.get_backend() != "gloo":
            self.control_group = torch.distributed.new_group(backend="gloo")
        # the method builds its batches (ICVF samples (s, s', s+, z) in clips; AB pairs two streams)
        self.loader = self.method.build_loader(cfg.data, acc.process_index, acc.num_processes,
                                               second=cfg.annotation_data)
        self.samples_per_step = self.method.samples_per_step(cfg.data)
        self.model, self.optimizer = acc.prepare(self.method, optimizer)
        self.step = 0
        self.probe = None

    @property
    def skip_on_device(self) -> bool:
        """Fused AdamW skips a non-finite step on the device (``found_inf``); fp16's GradScaler sets found_inf
        itself. Read each step: a test or a plugin may swap the optimizer after ``__init__``."""
        return skips_on_device(self.optimizer.optimizer) and self.accelerator.scaler is None

    # -- state --------------------------------------------------------------------------------------
    def state(self) -> dict:
        """Every rank must call this (the loaders gather all ranks' positions)."""
        return {"data": self.loader.state_dict(),
                "config": to_yaml(self.cfg)}

    def save(self) -> Path:
        """Every rank calls it; rank 0 writes. A non-finite model (identical on every rank) is refused on every
        rank; a failed write on rank 0 (a full disk) is raised on every rank too, so none waits for the others."""
        acc = self.accelerator
        path = self.out / "checkpoints" / checkpoint_name(self.step)
        if self.saved_step == self.step and path.exists():
            return path  # already written at this step (a stop signal right after a periodic save)
        state = self.state()
        if is_sharded(self.model):  # FSDP: every rank gathers the full state, rank 0 checks and writes it
            path = save_sharded_checkpoint(self.out / "checkpoints", self.step, self.model, self.optimizer, state,
                                           keep=self.cfg.train.keep_checkpoints)
            self.saved_step = self.step
            return path
        bad = nonfinite_tensors(acc.unwrap_model(self.model).state_dict())
        if bad:
            raise NonFiniteCheckpoint(f"not writing {path}: the model holds NaN or inf in {len(bad)} tensors "
                                      f"({', '.join(bad[:5])}); the previous checkpoints are kept")
        error = None
        if acc.is_main_process:
            try:
                path = save_checkpoint(self.out / "checkpoints", self.step, acc.unwrap_model(self.model),
                                       self.optimizer, state, keep=self.cfg.train.keep_checkpoints)
                log.info("checkpoint %s", path)
            except CheckpointWriteError as e:
                error = str(e)
        if acc.num_processes > 1:
            error = broadcast_object_list([error])[0]
        if error is not None:
            raise CheckpointWriteError(error)
        self.saved_step = self.step
        return path

    def claim_output_dir(self, resume: str | None, overwrite: bool) -> None:
        """Rank 0 locks ``train.output_dir`` (released when ``fit`` ends) and applies the rerun policy: a
        directory holding an earlier run (checkpoints or metrics) needs ``resume`` or ``overwrite``
        (which deletes that run's checkpoints and logs). Then it removes temporary checkpoint directories
        an interrupted save left. Every rank raises the same error."""
        acc, error = self.accelerator, None
        if acc.is_main_process:
            try:
                if resume and overwrite:
                    raise UserError("--resume and --overwrite exclude each other: continue the run or replace it")
                self.lock = RunLock(self.out).acquire()
                checkpoints = self.out / "checkpoints"
                earlier = sorted(p.name for p in checkpoints.glob("checkpoint-*")) if checkpoints.is_dir() else []
                metrics = self.out / "metrics.jsonl"
                if metrics.is_file() and metrics.stat().st_size:
                    earlier.append(metrics.name)
                if earlier and not resume and not overwrite:
                    raise OutputDirInUse(
                        f"train.output_dir {self.out} already holds a run ({', '.join(earlier[-3:])}): pass --resume "
                        "to continue it, --overwrite to delete it and start over, or choose another train.output_dir")
                if earlier and overwrite:
                    log.warning("--overwrite: deleting the earlier run's checkpoints and logs in %s", self.out)
                    shutil.rmtree(checkpoints, ignore_errors=True)
                    metrics.unlink(missing_ok=True)
                if checkpoints.is_dir():
                    clean_temporary(checkpoints)
            except (UserError, OSError) as e:  # OSError: e.g. no permission to create the directory
                error = e
        if acc.num_processes > 1:
            message = broadcast_object_list([None if error is None else (type(error).__name__, str(error))])[0]
            if message is not None and error is None:
                error = (OutputDirInUse if message[0] == "OutputDirInUse" else UserError)(message[1])
        if error is not None:
            self.release_output_dir()
            raise error

    def release_output_dir(self) -> None:
        if getattr(self, "lock", None) is not None:
            self.lock.release()
            self.lock = None

    def resume(self, which: str) -> None:
        path = find_checkpoint(self.out / "checkpoints", which)
        if path is None:
            log.info("no checkpoint under %s: starting from scratch", self.out / "checkpoints")
            return
        load = load_sharded_checkpoint if is_sharded(self.model) else load_checkpoint  # FSDP: into the shards
        state = load(path, self.accelerator.unwrap_model(self.model), self.optimizer)
        if not isinstance(state.get("data"), dict):
            raise UserError(f"{path / 'state.json'}: data must be the data stream's state (a JSON object)")
        self.step = state["step"]
        try:
            self.loader.load_state_dict(state["data"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path / 'state.json'}: data: cannot resume the data stream ({e})") from e
        self.saved_step = self.step
        log.info("resumed from %s at step %d", path, self.step)

    # -- one optimizer step -------------------------------------------------------------------------
    def schedules(self) -> float:
        o, total = self.cfg.optim, self.cfg.train.steps
        warmup = int(o.warmup_fraction * total)
        lr = cosine(self.step, total, self.base_lr, o.min_lr, warmup)
        wd = cosine(self.step, total, o.weight_decay, o.weight_decay_end)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group.get("decay"):
                group["weight_decay"] = wd
        self.accelerator.unwrap_model(self.model).set_step(self.step, total, self.cfg.train.seed,
                                                           self.accelerator.process_index)
        return lr

    def train_step(self, batches) -> tuple[dict, float]:
        """One optimizer step: (metrics as detached tensors on the device, seconds spent waiting for data).
        Nothing here makes the host wait for the device, unless the optimizer cannot skip on the device
        (``train.fused_adamw=false``, fp16) or the method's target update takes only a float."""
        acc, metrics, wait = self.accelerator, {}, 0.0
        method = acc.unwrap_model(self.model)
        real, bad, ok = 0, None, None  # real (not padding) batches; a loss non-finite (device); usable (device)
        for _ in range(self.cfg.train.grad_accum):
            start = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - start
            real += not is_padding(batch)  # the loader's host tensor: no device sync
            with acc.accumulate(self.model):
                loss, metrics = self.model(batch)
                acc.backward(loss)
                bad_now = ~torch.isfinite(loss.detach())
                bad = bad_now if bad is None else bad | bad_now
                apply = True
                if acc.sync_gradients:
                    ok, grad_norm = usable_gradients(acc, self.model, real, bad, self.cfg.train.grad_accum,
                                                     self.cfg.optim.clip_grad)
                    if grad_norm is not None:
                        metrics["grad_norm"] = grad_norm
                    if self.skip_on_device:
                        self.optimizer.optimizer.found_inf = (~ok).float()  # 1: the fused kernels skip the update
                    else:
                        apply = bool(ok)  # the host waits for the device here
                if apply:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        o = self.cfg.optim
        momentum = cosine(self.step, self.cfg.train.steps, o.ema_momentum, o.ema_momentum_end)
        if getattr(type(method).update_target, "tensor_momentum", False):
            method.update_target(ok.double() * (momentum - 1.0) + 1.0)  # 1 on a skipped step: no update
        elif bool(ok):  # a method whose target update takes a float: the host reads the flag
            method.update_target(momentum)
        metrics["loss"] = loss.detach()
        metrics["nonfinite"] = (~ok).float()
        return metrics, wait

    # -- diagnostics --------------------------------------------------------------------------------
    @torch.no_grad()
    def diagnostics(self) -> dict:
        """srank and RankMe of the target encoder's features on a fixed probe batch."""
        own = self.accelerator.unwrap_model(self.model).diagnostics(self.cfg.data, self.cfg.train.probe_images)
        if own is not None:  # methods whose data are not image views (ICVF: clips, values against distances)
            return own
        if self.probe is None:
            from dataclasses import replace

            cfg = self.cfg.data
            probe_cfg = replace(cfg, weights=None, resampled=False, workers=0, shuffle_buffer=0, shard_shuffle=False,
                                batch_size=self.cfg.train.probe_images, eval_size=cfg.views[0].size, crop_pct=1.0)
            self.probe = next(iter(build_loader(probe_cfg)))["image"]
        method = self.accelerator.unwrap_model(self.model)
        images = Photometric.preset("none", 0)(self.probe.to(self.accelerator.device))
        features = method.export_encoder("target")(images).pooled
        return {"srank": srank(features), "rankme": rankme(features)}

    # -- the loop -----------------------------------------------------------------------------------
    def fit(self, resume: str | None = None, overwrite: bool = False) -> Path:
        """Train to ``train.steps``. ``resume``: "latest" or a checkpoint path; ``overwrite``: replace an earlier
        run in ``train.output_dir`` (without either, a directory holding one is refused). Raises ``Preempted``
        after a stop signal (a checkpoint written) and ``NonFiniteLoss`` on a non-finite loss it may not skip."""
        acc, cfg = self.accelerator, self.cfg
        self.saved_step, self.nonfinite_in_row = None, 0
        self.claim_output_dir(resume, overwrite)
        signals = StopSignals().install()
        jsonl = bar = batches = None
        finished = False
        try:
            if resume:
                self.resume(resume)
            if acc.is_main_process:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "config.yaml").write_text(to_yaml(cfg))
                self.trim_metrics()
            acc.init_trackers(cfg.name, config=recipe_hparams(cfg))  # the recipe as every tracker's hparams
            batches = epochs(self.loader)
            jsonl = open(self.out / "metrics.jsonl", "a") if acc.is_main_process else None
            bar = tqdm(total=cfg.train.steps, initial=self.step, unit="step",
                       disable=not acc.is_main_process or quiet())  # vispre -q: no bar
            last_save, window, window_wait, window_start = time.time(), MetricWindow(), 0.0, time.perf_counter()
            self.model.train()
            while self.step < cfg.train.steps:
                lr = self.schedules()
                metrics, wait = self.train_step(batches)
                self.step += 1
                bar.update(1)
                window.add(metrics)  # on the device: read at the log, one host sync per window
                self.nonfinite_watch.update(self.step, metrics["nonfinite"] > 0, metrics["loss"])
                window_wait += wait
                if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
                    seconds = time.perf_counter() - window_start
                    n = window.steps
                    row, watched = window.reduce(self.nonfinite_watch.state)
                    check_nonfinite(self.nonfinite_watch.read(watched), cfg.train, self.step)
                    row.update(step=self.step, lr=lr, epoch=self.loader.epoch,
                               samples_per_s=n * self.samples_per_step * cfg.train.grad_accum * acc.num_processes
                               / seconds, data_wait=window_wait / seconds)
                    if cfg.train.diagnostics_every and self.step % cfg.train.diagnostics_every == 0 \
                            and acc.is_main_process:
                        row.update(self.diagnostics())
                    self.log(row, jsonl, bar)
                    window, window_wait, window_start = MetricWindow(), 0.0, time.perf_counter()
                due, stop = self.should_save(last_save, signals.received is not None)
                if due or stop:
                    if window.steps:  # steps since the log: their stop rules first (a small host sync)
                        watched = self.nonfinite_watch.state.tolist()
                        check_nonfinite(self.nonfinite_watch.read(watched), cfg.train, self.step)
                    path = self.save()
                    last_save = time.time()
                if stop:
                    name = signals.name or "a stop signal on another rank"
                    log.warning("%s: stopped at step %d, checkpoint %s", name, self.step, path)
                    raise Preempted(name, self.step, path)
            check_nonfinite(self.nonfinite_watch.read(self.nonfinite_watch.state.tolist()), cfg.train,
                            self.step)
            self.save()
            finished = True
        finally:
            signals.restore()
            # shut the loaders' workers down: left alive, they hang the interpreter's exit (they ignore SIGTERM)
            getattr(batches, "close", lambda: None)()
            getattr(self.loader, "close", lambda: None)()
            if bar is not None:
                bar.close()
            if jsonl is not None:
                jsonl.close()
            if not finished:  # preempted or stopped: flush the trackers' logs (the process group stays up)
                for tracker in acc.trackers:
                    try:
                        tracker.finish()
                    except Exception as e:  # the stop's own error matters more
                        log.warning("could not close the %s tracker: %s", tracker.name, e)
            self.release_output_dir()
        acc.end_training()
        return self.out

    def trim_metrics(self) -> None:
        """Drop metrics rows after the step training (re)starts from: a run killed after its last checkpoint
        logged steps the resumed run logs again, and the log keeps one row per step."""
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return
        def step_of(line: str) -> float:
            try:
                return json.loads(line).get("step", 0)
            except ValueError:  # a line cut by a kill mid-write
                return math.inf

        lines = path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and step_of(line) <= self.step]
        if len(kept) < len(lines):
            log.info("metrics.jsonl: dropping %d rows after step %d (logged after the checkpoint resumed from)",
                     len(lines) - len(kept), self.step)
            write_atomic(path, "".join(line + "\n" for line in kept))

    def should_save(self, last_save: float, stop: bool = False) -> tuple[bool, bool]:
        """(save now, stop now), the same on every rank: every N steps or M minutes by rank 0's clock; stop when
        any rank received a stop signal. One small all-reduce per step, on the CPU (gloo): it does not wait for
        the GPU."""
        t = self.cfg.train
        due = (self.step % t.checkpoint_every_steps == 0 and self.step < t.steps
               or time.time() - last_save > 60 * t.checkpoint_every_minutes)
        if self.accelerator.num_processes == 1:
            return due, stop
        flags = torch.tensor([int(due) if self.accelerator.is_main_process else 0, int(stop)])
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX, group=self.control_group)
        return bool(flags[0]), bool(flags[1])

    def log(self, row: dict, jsonl, bar) -> None:
        self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=self.step)
        if jsonl is not None:
            jsonl.write(json.dumps(row) + "\n")
            jsonl.flush()
            bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['samples_per_s']:.0f}",
                            wait=f"{row['data_wait']:.0%}")


def pretrain(cfg: PretrainConfig, resume: str | None = None, overwrite: bool = False) -> Path:
    return Trainer(cfg).fit(resume, overwrite)
