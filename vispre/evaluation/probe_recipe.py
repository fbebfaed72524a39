"""An evaluation recipe (``eval/*.yaml``): which data, which transform, which probes (typed).

``vispre eval RECIPE --encoder DIR key=value ...`` fills :class:`ProbeRecipe` from the YAML
(``_base_:`` inheritance) and the overrides; an unknown key is an error that names it.
Defaults follow DINOv2's linear protocol, big_vision's MAP head, the decoder probe of Beyer et al. (2023) and
DINO's kNN unless marked "ours".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# DINOv2 eval/linear.py: 13 learning rates, scaled by the batch size / 256
DINOV2_LRS = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1]
TASKS = ("single", "multi")  # single-label classes | multi-label (multi-hot targets)
SET_KINDS = ("shards", "folder", "cifar10", "cifar100", "hf", "clevr", "coco_boxes", "visor")


@dataclass
class ProbeSetConfig:
    kind: str = "shards"  # shards | folder | cifar10 | cifar100 | hf | clevr | coco_boxes | visor
    # shards: a shard spec (vispre.data.urls); folder: class sub-folders (ImageNet's train/ or val/);
    # cifar10/100: the folder holding cifar-10-batches-py/ (or that folder); hf: save_to_disk folder or hub name;
    # clevr: the CLEVR_v1.0 folder; coco_boxes: the image folder (val2017/); visor: GroundTruth-SparseAnnotations/
    # (layouts: vispre.evaluation.suites)
    path: str = "???"
    split: str = ""  # cifar: train | test; hf: the split (a DatasetDict on disk, or load_dataset); clevr, visor
    format: str = "labelled"  # shards: labelled (KEY.cls) | json (multi-label: KEY.json[label_key])
    image_key: str = "image"  # hf: the image column
    label_key: str = "label"  # hf: the label column; shards json: the key holding a list of labels
    # N samples drawn class-stratified at random with the recipe's seed (quick runs; recorded in the protocol)
    limit: Optional[int] = None
    clevr_task: str = "count"  # clevr: count (objects - 3, 8 classes) | distance (closest object's depth, 6 bins)
    annotations: str = ""  # coco_boxes: the instances json
    max_area: float = 1024.0  # coco_boxes: boxes with area below this (COCO's "small": 32 x 32)
    context: float = 2.0  # coco_boxes, visor: the crop is a square this many times the box's longer side
    exclude: list[str] = field(default_factory=lambda: ["left hand", "right hand"])  # visor: names not objects


@dataclass
class TransformConfig:
    """Resize the shorter side to size / crop_pct, centre-crop size, normalise. Unset fields come from
    the encoder's pretrained_cfg (input_size, crop_pct, interpolation, mean, std), as timm does."""

    size: Optional[int] = None
    crop_pct: Optional[float] = None
    interpolation: Optional[str] = None  # bilinear | bicubic | nearest
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None


@dataclass
class FeatureConfig:
    batch_size: int = 256
    workers: int = 2  # loader processes (0: decode in the main process)
    n_last_blocks: int = 4  # pooled features stored per block (the probe grid uses the last 1 and 4)
    precision: str = "auto"  # auto (bf16 autocast on CUDA, else fp32) | fp32 | bf16
    store_dtype: str = "float32"  # float32 | float16 | bfloat16: the cached files (ImageNet: float16 halves them)
    cache: bool = True
    # MAP / decoder probes: the last block's tokens are cached (float16) when train + val + test fit in this
    # many MiB, and streamed from the encoder on every pass otherwise (the protocol records which)
    token_budget_mib: float = 4096.0
    # cached tokens are held in memory as float32 when a split's copy fits this many MiB (no conversion per
    # batch: it costs as much as a matmul on a CPU); above it they stay float16
    token_float32_mib: float = 2048.0
    # streamed tokens from shards (no random access) are shuffled in blocks of this many rows for training
    stream_shuffle_rows: int = 8192
    cache_dir: Optional[str] = None  # default $VISPRE_CACHE or ~/.cache/vispre/features
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:1 ...


@dataclass
class LinearConfig:
    """DINOv2's grid, all heads trained together on frozen features (no augmentation: cached features)."""

    enabled: bool = True
    learning_rates: list[float] = field(default_factory=lambda: list(DINOV2_LRS))
    n_last_blocks: list[int] = field(default_factory=lambda: [1, 4])
    avgpool: list[bool] = field(default_factory=lambda: [False, True])  # + mean-pooled patch tokens
    epochs: int = 10
    batch_size: int = 1024
    momentum: float = 0.9
    scale_lr: bool = True  # lr x batch_size / 256 (DINOv2)


@dataclass
class MapConfig:
    """The MAP probe (big_vision's MAPHead: a learned query attends to the last block's tokens, LN + MLP
    residual, linear classifier), one head per learning rate trained in one pass. AdamW, linear warm-up,
    cosine to 0; heads chosen on val like the linear grid's."""

    enabled: bool = False
    learning_rates: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])
    epochs: int = 10
    batch_size: int = 512
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0  # linear warm-up (fractions allowed), then cosine to 0
    num_heads: int = 0  # attention heads; 0: token dim / 64 (ViT's head width), at least 1
    mlp_ratio: float = 4.0


@dataclass
class DecoderConfig(MapConfig):
    """The decoder probe (Beyer et al. 2023, the AB paper's main probe): ``layers`` pre-LN decoder layers
    (self-attention among ``queries`` learned query tokens, cross-attention to the last block's tokens,
    MLP), then a LayerNorm and a linear classifier on the queries' mean. The paper uses 4 layers."""

    layers: int = 4
    queries: int = 1


@dataclass
class KnnConfig:
    """DINO's weighted kNN on the last block's pooled feature (cosine similarity)."""

    enabled: bool = True
    ks: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    temperature: float = 0.07
    report_k: int = 20  # the k shown in the summary (fixed in advance, not chosen on test); all ks are saved
    chunk: int = 512  # test images per similarity block


@dataclass
class FewshotConfig:
    """n labelled images per class, several draws: L2-regularised logistic regression (L-BFGS) on the
    L2-normalised last-block feature (ours: CLIP's few-shot protocol uses logistic regression too)."""

    enabled: bool = False
    shots: list[int] = field(default_factory=lambda: [1, 5, 10])
    tries: int = 5
    l2: float = 1e-3  # weight decay on the head's weights
    max_iter: int = 100  # L-BFGS iterations


@dataclass
class ProbeRecipe:
    name: str = "eval"
    task: str = "single"  # single | multi
    num_classes: Optional[int] = None  # default: from the data (required for multi-label)
    train: ProbeSetConfig = field(default_factory=ProbeSetConfig)
    val: Optional[ProbeSetConfig] = None  # none: hold out val_fraction of train (seeded)
    test: ProbeSetConfig = field(default_factory=ProbeSetConfig)
    val_fraction: float = 0.1
    seed: int = 0
    output_dir: Optional[str] = None  # default: ENCODER_DIR/eval/NAME (NAME-random-init for --random-init)
    transform: TransformConfig = field(default_factory=TransformConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    map: MapConfig = field(default_factory=MapConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    fewshot: FewshotConfig = field(default_factory=FewshotConfig)


def check_config(cfg: ProbeRecipe) -> None:
    """Value checks the types cannot express; errors name the field."""
    from ..utils.typed_config import ConfigError

    if cfg.task not in TASKS:
        raise ConfigError(f"task: must be one of {TASKS}, got {cfg.task!r}")
    if cfg.task == "multi" and not cfg.num_classes:
        raise ConfigError("num_classes: required for task=multi (the length of the multi-hot target)")
    for name in ("train", "val", "test"):
        source = getattr(cfg, name)
        if source is not None and source.kind not in SET_KINDS:
            raise ConfigError(f"{name}.kind: must be one of {SET_KINDS}, got {source.kind!r}")
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"val_fraction: must be in (0, 1), got {cfg.val_fraction}")
    if cfg.linear.enabled and (not cfg.linear.learning_rates or not cfg.linear.n_last_blocks or not cfg.linear.avgpool):
        raise ConfigError("linear: learning_rates, n_last_blocks and avgpool must not be empty")
    if cfg.linear.enabled and max(cfg.linear.n_last_blocks) > cfg.features.n_last_blocks:
        raise ConfigError(f"linear.n_last_blocks: {max(cfg.linear.n_last_blocks)} blocks but features.n_last_blocks "
                          f"stores only {cfg.features.n_last_blocks}")
    for name in ("map", "decoder"):
        probe = getattr(cfg, name)
        if probe.enabled and (not probe.learning_rates or probe.epochs < 1 or probe.batch_size < 1):
            raise ConfigError(f"{name}: learning_rates must not be empty, epochs and batch_size >= 1")
    if cfg.decoder.enabled and (cfg.decoder.layers < 1 or cfg.decoder.queries < 1):
        raise ConfigError("decoder.layers and decoder.queries must be >= 1")
    if cfg.knn.enabled and cfg.knn.report_k not in cfg.knn.ks:
        raise ConfigError(f"knn.report_k: {cfg.knn.report_k} is not among knn.ks {cfg.knn.ks}")
    if cfg.features.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"features.precision: auto | fp32 | bf16, got {cfg.features.precision!r}")
    if cfg.features.store_dtype not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"features.store_dtype: float32 | float16 | bfloat16, got {cfg.features.store_dtype!r}")
