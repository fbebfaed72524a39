"""Token features for the MAP and decoder probes: cached in float16 when they fit a size budget,
streamed from the frozen encoder when they do not.

Both kinds give the probes the same two things: shuffled training batches for a number of epochs,
and the samples in order for scoring. A cached set holds ``Features.tokens`` [N, T, D] (float16,
on the CPU; each batch moves to the device); a streamed set runs the encoder over the probe set
again for every epoch and every scoring pass, keeping the rows of its split (a held-out
validation split is a subset of train's rows). Streamed batches come in the data's order,
re-cut to the batch size: there is no random access into a stream of shards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from .features import extract_batch, use_bf16
from .grid import batch_order

MIB = 2**20


def token_shape(encoder, transform, device="cpu") -> tuple[int, int]:
    """(T, D) of the last block's tokens at the transform's size (one forward of a blank image)."""
    x = torch.zeros(1, 3, transform.size, transform.size, device=device)
    m = encoder.eval().to(device)
    with torch.no_grad():
        tokens = extract_batch(m, x, 1, tokens=True)[2]
    return tokens.shape[1], tokens.shape[2]


def token_bytes(samples: int, shape: tuple[int, int]) -> int:
    return samples * shape[0] * shape[1] * 2  # float16


class CachedTokens:
    """Tokens in memory: [N, T, D] float16 and the targets. ``float32_mib``: hold them as float32 when that
    copy fits, so no batch pays the conversion (on a CPU it costs as much as a matmul over the batch)."""

    mode = "cached"

    def __init__(self, tokens: torch.Tensor, targets: torch.Tensor, float32_mib: float = 0.0,
                 rows: torch.Tensor | None = None):
        """``rows``: this split's rows of ``tokens`` / ``targets`` (a held-out val shares train's tensors, no copy)."""
        if rows is not None:
            targets = targets[rows]
        if tokens.dtype != torch.float32 and (len(targets) * tokens[0].numel() * 4 / MIB) <= float32_mib:
            tokens = (tokens if rows is None else tokens[rows]).float()
            rows = None
        self.tokens, self.targets, self.rows = tokens, targets, rows
        self.dim = tokens.shape[-1]

    def _take(self, index: torch.Tensor) -> torch.Tensor:
        # index_select, not tokens[index]: 6x faster on a CPU for [N, T, D] rows (1.6 against 10 ms for 256 x 37 x 192)
        return torch.index_select(self.tokens, 0, index if self.rows is None else self.rows[index])

    def __len__(self) -> int:
        return len(self.targets)

    def steps(self, batch_size: int, epochs: int) -> int:
        return epochs * math.ceil(len(self) / batch_size)

    def batches(self, batch_size: int, epochs: int, seed: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index in batch_order(len(self), batch_size, epochs, seed):
            yield self._take(index).to(device, non_blocking=True), self.targets[index].to(device)

    def in_order(self, chunk: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), chunk):
            index = torch.arange(start, min(start + chunk, len(self)))
            yield self._take(index).to(device), self.targets[index].to(device)


class StreamedTokens:
    """Tokens computed by the encoder on every pass over ``source``, keeping the rows in ``rows`` (None: all).

    Training order: a random-access probe set (folders, HF datasets, CIFAR, ...) is read in a fresh
    permutation of its rows every epoch, as cached tokens are; shards can only be read in order, so
    their rows are shuffled in blocks of ``cfg.stream_shuffle_rows`` (a class-sorted shard set then
    mixes only the classes within a block). Scoring reads the rows in order."""

    mode = "streamed"

    def __init__(self, encoder, source, transform, cfg, device, samples: int, dim: int,
                 rows: torch.Tensor | None = None):
        self.encoder, self.source, self.transform, self.cfg, self.device = encoder, source, transform, cfg, device
        self.dim, self.indexed = dim, hasattr(source, "item")
        self.rows = torch.arange(samples) if rows is None else rows
        self.keep = torch.zeros(samples, dtype=torch.bool)
        self.keep[self.rows] = True

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def order(source_indexed: bool, shuffle_rows: int) -> str:
        if source_indexed:
            return "a fresh random permutation of the rows every epoch (random access)"
        return f"shard order, shuffled in blocks of {shuffle_rows} rows"

    def steps(self, batch_size: int, epochs: int) -> int:
        return epochs * math.ceil(len(self) / batch_size)

    def _stream(self, order: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Tokens of the kept rows: in ``order`` (random-access sets), else in the data's order."""
        device, cfg = torch.device(self.device), self.cfg
        encoder = self.encoder.eval().to(device)
        bf16, seen = use_bf16(cfg.precision, device), 0
        if self.indexed:
            batches = self.source.batches(self.transform, cfg.batch_size, cfg.workers,
                                          (self.rows if order is None else order).tolist())
        else:
            batches = self.source.batches(self.transform, cfg.batch_size, cfg.workers)
        for images, targets in batches:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                x = self.transform.normalize(images.to(device, non_blocking=True))
                tokens = extract_batch(encoder, x, 1, tokens=True)[2].to(torch.float16)
            targets = targets.to(device)
            if not self.indexed:
                keep = self.keep[seen:seen + len(targets)].to(device)
                tokens, targets = tokens[keep], targets[keep]
            seen += len(images)
            if len(targets):
                yield tokens, targets

    @staticmethod
    def _rebatch(stream, batch_size: int, block: int = 0, generator: torch.Generator | None = None):
        """Batches of ``batch_size`` rows; with ``block``, rows gathered ``block`` at a time and permuted."""
        held_tokens, held_targets, held = [], [], 0
        block = max(block, batch_size)
        for tokens, targets in stream:
            held_tokens.append(tokens)
            held_targets.append(targets)
            held += len(targets)
            if held < (block if generator is not None else batch_size):
                continue
            all_tokens, all_targets = torch.cat(held_tokens), torch.cat(held_targets)
            if generator is not None:
                perm = torch.randperm(held, generator=generator).to(all_tokens.device)
                all_tokens, all_targets = all_tokens[perm], all_targets[perm]
            full = held // batch_size * batch_size
            for start in range(0, full, batch_size):
                yield all_tokens[start:start + batch_size], all_targets[start:start + batch_size]
            held_tokens, held_targets, held = [all_tokens[full:]], [all_targets[full:]], held - full
        if held:
            all_tokens, all_targets = torch.cat(held_tokens), torch.cat(held_targets)
            if generator is not None:
                perm = torch.randperm(held, generator=generator).to(all_tokens.device)
                all_tokens, all_targets = all_tokens[perm], all_targets[perm]
            for start in range(0, held, batch_size):
                yield all_tokens[start:start + batch_size], all_targets[start:start + batch_size]

    def batches(self, batch_size: int, epochs: int, seed: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            if self.indexed:
                order = self.rows[torch.randperm(len(self.rows), generator=generator)]
                yield from self._rebatch(self._stream(order), batch_size)
            else:
                yield from self._rebatch(self._stream(), batch_size, self.cfg.stream_shuffle_rows, generator)

    def in_order(self, chunk: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from self._stream()
