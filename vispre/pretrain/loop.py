"""The one training loop for every method, on accelerate.

The same code runs as one CPU process and under ``accelerate launch`` on many GPUs or nodes:
accelerate picks the device, wraps the method in DDP, handles mixed precision and gradient
accumulation. The data loader is *not* prepared: it splits by rank and worker itself and keeps
an exact, resumable position (see ``vispre.data``).
"""

from __future__ import annotations

import json
import logging
import math
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
from ..utils.typed_config import to_yaml
from ..views.photometric import Photometric
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .recipe import PretrainConfig

log = logging.getLogger("vispre.train")


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
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision(cfg.train.precision),
            gradient_accumulation_steps=cfg.train.grad_accum, log_with=list(cfg.train.trackers) or None,
            project_dir=str(self.out),
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(minutes=10)),
                             DistributedDataParallelKwargs(find_unused_parameters=False)])
        acc = self.accelerator
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        encoder = build_encoder(cfg.model.name, **cfg.model.kwargs)
        if cfg.model.init:  # before build_method: the EMA copy starts from these weights too
            init_encoder(encoder, cfg.model.init, cfg.model.init_prefix)
        self.method = build_method(cfg.method, encoder)
        global_batch = cfg.data.batch_size * acc.num_processes * cfg.train.grad_accum
        if cfg.optim.lr_scaling not in ("linear", "none"):
            raise ValueError(f"optim.lr_scaling must be 'linear' or 'none', got {cfg.optim.lr_scaling!r}")
        self.base_lr = cfg.optim.lr * (global_batch / 256 if cfg.optim.lr_scaling == "linear" else 1.0)
        optimizer = torch.optim.AdamW(param_groups(self.method), lr=self.base_lr, betas=tuple(cfg.optim.betas),
                                      eps=cfg.optim.eps)
        # the method builds its batches (ICVF samples (s, s', s+, z) in clips; AB pairs two streams)
        self.loader = self.method.build_loader(cfg.data, acc.process_index, acc.num_processes,
                                               second=cfg.annotation_data)
        self.model, self.optimizer = acc.prepare(self.method, optimizer)
        self.step = 0
        self.probe = None

    # -- state --------------------------------------------------------------------------------------
    def state(self) -> dict:
        """Every rank must call this (the loaders gather all ranks' positions)."""
        return {"data": self.loader.state_dict(),
                "config": to_yaml(self.cfg)}

    def save(self) -> None:
        state = self.state()
        if self.accelerator.is_main_process:
            path = save_checkpoint(self.out / "checkpoints", self.step, self.accelerator.unwrap_model(self.model),
                                   self.optimizer, state, keep=self.cfg.train.keep_checkpoints)
            log.info("checkpoint %s", path)
        self.accelerator.wait_for_everyone()

    def resume(self, which: str) -> None:
        path = find_checkpoint(self.out / "checkpoints", which)
        if path is None:
            log.info("no checkpoint under %s: starting from scratch", self.out / "checkpoints")
            return
        state = load_checkpoint(path, self.accelerator.unwrap_model(self.model), self.optimizer)
        self.step = state["step"]
        self.loader.load_state_dict(state["data"])
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
        acc, metrics, wait = self.accelerator, {}, 0.0
        for _ in range(self.cfg.train.grad_accum):
            start = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - start
            with acc.accumulate(self.model):
                loss, metrics = self.model(batch)
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.unwrap_model(self.model).before_optimizer_step()
                    if self.cfg.optim.clip_grad > 0:
                        metrics["grad_norm"] = acc.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        o = self.cfg.optim
        acc.unwrap_model(self.model).update_target(
            cosine(self.step, self.cfg.train.steps, o.ema_momentum, o.ema_momentum_end))
        metrics["loss"] = loss.detach()
        return {k: float(v) for k, v in metrics.items()}, wait

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
            probe_cfg = replace(cfg, resampled=False, workers=0, shuffle_buffer=0, shard_shuffle=False,
                                batch_size=self.cfg.train.probe_images, eval_size=cfg.views[0].size, crop_pct=1.0)
            self.probe = next(iter(build_loader(probe_cfg)))["image"]
        method = self.accelerator.unwrap_model(self.model)
        images = Photometric.preset("none", 0)(self.probe.to(self.accelerator.device))
        features = method.export_encoder("target")(images).pooled
        return {"srank": srank(features), "rankme": rankme(features)}

    # -- the loop -----------------------------------------------------------------------------------
    def fit(self, resume: str | None = None) -> Path:
        acc, cfg = self.accelerator, self.cfg
        if resume:
            self.resume(resume)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(to_yaml(cfg))
        acc.init_trackers(cfg.name)
        batches = epochs(self.loader)
        jsonl = open(self.out / "metrics.jsonl", "a") if acc.is_main_process else None
        bar = tqdm(total=cfg.train.steps, initial=self.step, disable=not acc.is_main_process, unit="step")
        last_save, window, window_wait, window_start = time.time(), {}, 0.0, time.perf_counter()
        self.model.train()
        while self.step < cfg.train.steps:
            lr = self.schedules()
            metrics, wait = self.train_step(batches)
            self.step += 1
            bar.update(1)
            for k, v in metrics.items():
                window.setdefault(k, []).append(v)
            window_wait += wait
            if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
                seconds = time.perf_counter() - window_start
                n = len(window["loss"])
                row = {k: sum(v) / len(v) for k, v in window.items()}
                row.update(step=self.step, lr=lr, epoch=self.loader.epoch,
                           samples_per_s=n * cfg.data.batch_size * cfg.train.grad_accum * acc.num_processes / seconds,
                           data_wait=window_wait / seconds)
                if cfg.train.diagnostics_every and self.step % cfg.train.diagnostics_every == 0 and acc.is_main_process:
                    row.update(self.diagnostics())
                self.log(row, jsonl, bar)
                window, window_wait, window_start = {}, 0.0, time.perf_counter()
            if self.should_save(last_save):
                self.save()
                last_save = time.time()
        self.save()
        bar.close()
        acc.end_training()
        return self.out

    def should_save(self, last_save: float) -> bool:
        """Every N steps or M minutes; rank 0's clock decides so all ranks save together."""
        t = self.cfg.train
        due = [self.step % t.checkpoint_every_steps == 0 and self.step < t.steps
               or time.time() - last_save > 60 * t.checkpoint_every_minutes]
        return bool(broadcast_object_list(due)[0]) if self.accelerator.num_processes > 1 else due[0]

    def log(self, row: dict, jsonl, bar) -> None:
        self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=self.step)
        if jsonl is not None:
            jsonl.write(json.dumps(row) + "\n")
            jsonl.flush()
            bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['samples_per_s']:.0f}",
                            wait=f"{row['data_wait']:.0%}")


def pretrain(cfg: PretrainConfig, resume: str | None = None) -> Path:
    return Trainer(cfg).fit(resume)
