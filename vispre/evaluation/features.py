"""Frozen features, extracted once per split and cached on disk.

Per image we keep DINOv2's linear-probe inputs: the pooled feature (CLS token after the final norm,
or the patch mean for models without one) of each of the last ``n`` blocks, and the mean of the last
block's patch tokens; and, for the probes that attend to tokens (MAP, decoder), the last block's
normed tokens [T, D] (prefix tokens first, then the patches), stored in float16: 196 x 384 floats
per image for ViT-S/16 at 224 px, 150 kB, so ImageNet's train set is 190 GB. The caller caches
them only under a size budget and streams them from the encoder otherwise (vispre.evaluation.tokens).
A cache entry is ``CACHE/KEY/features.safetensors`` + ``meta.json``, where KEY
hashes everything that changes the numbers: the encoder's weights (a hash of its state dict, so a
random init, a fine-tune or a new export never hits an old entry), its architecture, the transform,
the data's identity, the number of blocks, the precision and the stored dtype.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..utils.device import resolve_device  # noqa: F401  (re-exported)
from .transform import EvalTransform

log = logging.getLogger("vispre.evaluation")

FEATURES_VERSION = 1  # bump when what is stored changes
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Features:
    blocks: list[torch.Tensor]  # pooled feature of each of the last n blocks, [N, D_i], oldest first
    patch_mean: torch.Tensor  # [N, D]: mean of the last block's patch tokens
    targets: torch.Tensor  # int64 [N] or multi-hot float [N, C]
    tokens: torch.Tensor | None = None  # [N, T, D] last block's normed tokens (prefix first), float16

    def __len__(self) -> int:
        return len(self.targets)

    def linear_input(self, n_blocks: int, avgpool: bool) -> torch.Tensor:
        """DINOv2's create_linear_input: [pooled_{L-n+1}, ..., pooled_L (, mean of patches_L)], float."""
        parts = self.blocks[-n_blocks:] + ([self.patch_mean] if avgpool else [])
        return torch.cat([p.float() for p in parts], dim=1)

    def matrix(self) -> torch.Tensor:
        """[N, sum of block dims + patch dim]: the blocks oldest first, then the patch mean (stored dtype);
        every linear input is a column range of it (``Variant.columns``)."""
        return torch.cat(self.blocks + [self.patch_mean], dim=1)

    def pooled(self) -> Features:
        """The same features without the tokens (subsets of it do not copy them)."""
        return Features(self.blocks, self.patch_mean, self.targets)

    def subset(self, index: torch.Tensor) -> Features:
        tokens = None if self.tokens is None else self.tokens[index.to(self.tokens.device)]
        return Features([b[index] for b in self.blocks], self.patch_mean[index], self.targets[index], tokens)

    def to(self, device) -> Features:
        """The pooled features and targets on ``device``; tokens stay where they are (the token probes move
        one batch at a time)."""
        return Features([b.to(device) for b in self.blocks], self.patch_mean.to(device), self.targets.to(device),
                        self.tokens)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"block_{i}": b for i, b in enumerate(self.blocks)}
        out = {**out, "patch_mean": self.patch_mean, "targets": self.targets}
        return out if self.tokens is None else {**out, "tokens": self.tokens}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Features:
        blocks = [tensors[f"block_{i}"] for i in range(sum(k.startswith("block_") for k in tensors))]
        return cls(blocks, tensors["patch_mean"], tensors["targets"], tensors.get("tokens"))


def state_dict_hash(module: torch.nn.Module) -> str:
    """blake2b over every tensor's name, dtype, shape and bytes (weights and buffers)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def encoder_identity(encoder) -> dict:
    return {"architecture": encoder.name, "model_args": json.loads(json.dumps(encoder.model_args, default=str)),
            "weights": state_dict_hash(encoder.timm_model)}


def use_bf16(precision: str, device: torch.device) -> bool:
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def extract_batch(encoder, x: torch.Tensor, n_blocks: int, tokens: bool = False):
    """The last ``n_blocks`` pooled features and the last block's patch-token mean of a batch (and, with
    ``tokens``, the last block's normed tokens [B, T, D], prefix first, as a third element).

    ViT-like models: one pass of timm's forward_intermediates gives every block's normed tokens, pooled
    as ``Encoder.intermediate_features`` pools them (CLS, else the patch mean); the tests check it
    equals that plus ``Encoder.forward(x).tokens.mean(1)``, which is what other models run (two passes:
    the Encoder API has no single call that returns both, and extraction is most of the CPU time).
    """
    blocks = encoder.vit_intermediates(x, n_blocks)
    if blocks is not None:
        pooled = [encoder.pool_block(patches, prefix) for patches, prefix in blocks]
        patches, prefix = blocks[-1]
        if tokens:
            return pooled, patches.mean(1), torch.cat([prefix, patches], 1)
        return pooled, patches.mean(1)
    out = encoder(x)
    if tokens:
        return encoder.intermediate_features(x, n_last_blocks=n_blocks), out.tokens.mean(1), out.tokens
    return encoder.intermediate_features(x, n_last_blocks=n_blocks), out.tokens.mean(1)


def extract(encoder, source, transform: EvalTransform, *, n_blocks: int = 4, batch_size: int = 256, workers: int = 2,
            device: torch.device | str = "cpu", precision: str = "auto", store_dtype: str = "float32",
            tokens: bool = False, progress: bool = False) -> Features:
    """Run the frozen encoder over every image of ``source`` (in eval mode); features on the CPU, tokens
    (with ``tokens``) in float16."""
    from ..utils.progress import progress as progress_bar

    device = torch.device(device)
    encoder = encoder.eval().to(device)
    bf16, dtype = use_bf16(precision, device), DTYPES[store_dtype]
    blocks: list[list[torch.Tensor]] = [[] for _ in range(n_blocks)]
    patch_means, targets, token_parts = [], [], []
    count = source.count() if hasattr(source, "count") else None  # None: shards without sizes.json
    bar = progress_bar(total=count, desc=f"features {source.describe()}", unit="img", disable=not progress)
    for images, batch_targets in source.batches(transform, batch_size, workers):
        bar.update(len(images))
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            x = transform.normalize(images.to(device, non_blocking=True))
            try:
                pooled, patch_mean, *rest = extract_batch(encoder, x, n_blocks, tokens)
            except (AssertionError, IndexError) as e:  # timm asserts "last-n (4) is out of range (1 to 2)"
                raise ValueError(f"{encoder.name} has fewer blocks than features.n_last_blocks={n_blocks} ({e}): "
                                 "lower features.n_last_blocks and linear.n_last_blocks") from e
            for store, feature in zip(blocks, pooled):
                store.append(feature.float().to("cpu", dtype))
            patch_means.append(patch_mean.float().to("cpu", dtype))
            if tokens:
                token_parts.append(rest[0].to("cpu", torch.float16))
        targets.append(batch_targets)
    bar.close()
    if not targets:
        raise ValueError(f"{source.describe()}: no images")
    # concatenated outside inference mode: ordinary tensors that later code may index, modify and train on
    return Features([torch.cat(b) for b in blocks], torch.cat(patch_means), torch.cat(targets),
                    torch.cat(token_parts) if tokens else None)


def cache_key(parts: dict) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def default_cache_dir() -> Path:
    if os.environ.get("VISPRE_CACHE"):
        return Path(os.environ["VISPRE_CACHE"]) / "features"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vispre" / "features"


def cached_features(encoder, source, transform: EvalTransform, cfg, *, encoder_id: dict | None = None,
                    device: torch.device | str = "cpu", tokens: bool = False,
                    progress: bool = False) -> tuple[Features, dict]:
    """Features of ``source`` from the cache, or extracted and stored. ``cfg``: a FeatureConfig; ``tokens``:
    keep the last block's tokens too (a separate entry). Returns (features, info) where info says hit/miss,
    the key, the path and the seconds taken."""
    device = torch.device(device)
    parts = {"version": FEATURES_VERSION, "encoder": encoder_id or encoder_identity(encoder),
             "transform": transform.describe(), "data": source.identity(), "n_blocks": cfg.n_last_blocks,
             "bf16": use_bf16(cfg.precision, device), "store_dtype": cfg.store_dtype}
    if tokens:
        parts["tokens"] = "last block, normed, prefix first, float16"
    key = cache_key(parts)
    entry = Path(cfg.cache_dir or default_cache_dir()) / key
    start = time.perf_counter()
    if cfg.cache and (entry / "meta.json").is_file():
        features = Features.from_tensors(load_file(str(entry / "features.safetensors")))
        log.info("features of %s: cache hit %s", source.describe(), entry)
        return features, {"cache": "hit", "key": key, "path": str(entry), "samples": len(features),
                          "seconds": round(time.perf_counter() - start, 3)}
    features = extract(encoder, source, transform, n_blocks=cfg.n_last_blocks, batch_size=cfg.batch_size,
                       workers=cfg.workers, device=device, precision=cfg.precision, store_dtype=cfg.store_dtype,
                       tokens=tokens, progress=progress)
    seconds = round(time.perf_counter() - start, 3)
    info = {"cache": "miss" if cfg.cache else "off", "key": key, "path": str(entry) if cfg.cache else None,
            "samples": len(features), "seconds": seconds}
    if cfg.cache:
        _store(entry, features, {**parts, "samples": len(features), "extract_seconds": seconds})
    return features, info


def _store(entry: Path, features: Features, meta: dict) -> None:
    """Write the entry under a temporary name and rename it in one step (meta.json marks it complete)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".tmp-{entry.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in features.tensors().items()}, str(tmp / "features.safetensors"))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if entry.exists():  # a concurrent run finished first: same key, same content
        shutil.rmtree(tmp, ignore_errors=True)
        return
    try:
        os.replace(tmp, entry)
    except OSError:  # lost a race with another writer
        shutil.rmtree(tmp, ignore_errors=True)
