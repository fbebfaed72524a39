"""Evaluation: probes and kNN on features with a known answer, the grid against one head alone, the feature
cache, recipes and an end-to-end ``vispre eval`` on tiny generated shards (data sources:
test_evaluation_sources.py)."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vispre.data.shard_writer import update_sizes, write_shard
from vispre.evaluation import EvalTransform, Features, KnnConfig, LinearConfig, ProbeRecipe, cached_features
from vispre.evaluation.features import extract_batch
from vispre.evaluation.fewshot import fewshot_eval
from vispre.evaluation.grid import GridOptimConfig, GridOptimizer
from vispre.evaluation.knn import knn_eval, knn_votes
from vispre.evaluation.linear import (
    LinearHeads,
    Variant,
    linear_probe,
    train_grid,
    train_single_head,
)
from vispre.evaluation.metrics import average_precision, multilabel_metrics
from vispre.evaluation.probe_data import ShardProbeSet
from vispre.evaluation.probe_recipe import FeatureConfig, FewshotConfig, check_config
from vispre.models import build_encoder
from vispre.utils.typed_config import ConfigError, load_config

CLASSES, DIM = 10, 32


def clusters(n_per_class: int, seed: int, spread: float = 6.0, classes: int = CLASSES) -> Features:
    """Gaussian clusters, one per class (unit noise, centres ~spread apart): linearly separable."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, DIM, generator=torch.Generator().manual_seed(123)) * spread / math.sqrt(2)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    blocks = [centres[y] + torch.randn(len(y), DIM, generator=g) for _ in range(4)]
    return Features(blocks, centres[y] + torch.randn(len(y), DIM, generator=g), y)


def noise(n: int, seed: int) -> Features:
    """Features and labels drawn independently: nothing to learn."""
    g = torch.Generator().manual_seed(seed)
    return Features([torch.randn(n, DIM, generator=g) for _ in range(4)], torch.randn(n, DIM, generator=g),
                    torch.randint(0, CLASSES, (n,), generator=g))


FAST_GRID = LinearConfig(learning_rates=[1e-3, 1e-2, 1e-1], epochs=10, batch_size=128)


def test_separable_clusters_reach_100_percent():
    probe = linear_probe(clusters(100, 0), clusters(20, 1), clusters(50, 2), FAST_GRID, task="single",
                         num_classes=CLASSES)
    assert probe["best"]["test"]["top1"] >= 99.0 and probe["best"]["test"]["mean_per_class"] >= 99.0
    assert len(probe["heads"]) == 3 * 4  # lrs x {1, 4 blocks} x {with, without patch mean}
    knn = knn_eval(clusters(100, 0), clusters(50, 2), KnnConfig(), task="single", num_classes=CLASSES)
    assert all(m["top1"] >= 99.0 for m in knn["per_k"].values())


def test_random_labels_stay_at_chance():
    # 1000 test images at chance p = 0.1: top-1 is Binomial(1000, 0.1) / 1000, sd = sqrt(.1 * .9 / 1000) = 0.95
    # points; the head is chosen on val, so its test accuracy is still an unbiased draw: allow 4 sd.
    tolerance = 4 * 100 * math.sqrt(0.1 * 0.9 / 1000)
    probe = linear_probe(noise(2000, 0), noise(500, 1), noise(1000, 2), FAST_GRID, task="single", num_classes=CLASSES)
    assert abs(probe["best"]["test"]["top1"] - 10) < tolerance
    assert probe["best"]["val"]["top1"] > probe["best"]["test"]["top1"] - tolerance  # chosen on val: optimistic there
    knn = knn_eval(noise(2000, 0), noise(1000, 2), KnnConfig(), task="single", num_classes=CLASSES)
    assert all(abs(m["top1"] - 10) < tolerance for m in knn["per_k"].values())


def test_grid_equals_each_head_trained_alone():
    """Batching heads must not change the maths: every head of the grid = nn.Linear + torch.optim.SGD
    + CosineAnnealingLR with the same lr, init and batches."""
    train = clusters(30, 0, spread=1.0)  # overlapping clusters: the weights keep moving until the end
    variants, lrs = [Variant(1, False), Variant(4, True)], [0.003, 0.03, 0.3]
    for task, targets in (("single", train.targets), ("multi", torch.nn.functional.one_hot(train.targets).float())):
        data = Features(train.blocks, train.patch_mean, targets)
        heads = train_grid(data, variants, lrs, task=task, num_classes=CLASSES, epochs=3, batch_size=64, seed=7)
        for v in variants:
            for i, lr in enumerate(lrs):
                alone = train_single_head(data, v, lr, task=task, num_classes=CLASSES, epochs=3, batch_size=64, seed=7)
                with torch.no_grad():
                    weight, bias = heads[v].head(i)
                    assert (alone.weight.T - weight).abs().max() < 1e-5, (task, v, lr)
                    assert (alone.weight.T - heads[v].head(0)[0]).abs().max() > 1e-3 or i == 0  # lrs differ
                    assert torch.allclose(alone.bias, bias, atol=1e-6)


def test_heads_share_the_init_and_keep_their_own_lr():
    heads = LinearHeads(8, 3, [0.1, 1.0])
    assert torch.equal(heads.head(0)[0], heads.head(1)[0])
    x = torch.randn(5, 8)
    heads(x).sum().backward()
    before = heads.weight.detach().clone()
    GridOptimizer(heads.param_lrs(), GridOptimConfig(kind="sgd", momentum=0.9)).step(1.0)
    step = before - heads.weight.detach()
    assert torch.allclose(step[:, 1], 10 * step[:, 0], atol=1e-7)


def multilabel(n: int, seed: int, learnable: bool) -> Features:
    """Each image holds 2 of 10 labels; features are the sum of its labels' centres (or pure noise)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(n, CLASSES)
    y.scatter_(1, torch.rand(n, CLASSES, generator=g).topk(2, dim=1).indices, 1.0)
    centres = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(5)) * 3
    x = lambda: (y @ centres if learnable else 0) + torch.randn(n, DIM, generator=g)  # noqa: E731
    return Features([x() for _ in range(4)], x(), y)


def test_multilabel_probe_and_knn():
    probe = linear_probe(multilabel(1500, 0, True), multilabel(300, 1, True), multilabel(500, 2, True),
                         LinearConfig(learning_rates=[0.1, 1.0], epochs=20, batch_size=128), task="multi",
                         num_classes=CLASSES)
    assert probe["best"]["test"]["mAP"] >= 99.0 and probe["best"]["test"]["exact_match"] >= 95.0
    # random scores rank positives anywhere: E[AP] is about the prevalence (2 of 10 = 20%) + O(log n / n_pos)
    chance = linear_probe(multilabel(1500, 0, False), multilabel(300, 1, False), multilabel(1000, 2, False),
                          LinearConfig(learning_rates=[0.1, 1.0], epochs=5, batch_size=128), task="multi",
                          num_classes=CLASSES)
    assert abs(chance["best"]["test"]["mAP"] - 20) < 5
    knn = knn_eval(multilabel(1500, 0, True), multilabel(500, 2, True), KnnConfig(ks=[10, 20], report_k=10),
                   task="multi", num_classes=CLASSES)
    assert knn["per_k"]["10"]["mAP"] >= 90.0


def test_average_precision_matches_sklearn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(200, 4, generator=g) < 0.3).float()
    scores = (torch.rand(200, 4, generator=g) * 5).round() / 5 + targets * 0.3  # many ties
    ours = average_precision(scores, targets)
    for c in range(4):
        assert ours[c].item() == pytest.approx(metrics.average_precision_score(targets[:, c], scores[:, c]), abs=1e-6)
    perfect = multilabel_metrics(targets * 2 - 1, targets)
    assert perfect == {"mAP": 100.0, "exact_match": 100.0, "label_accuracy": 100.0}


def test_knn_votes_match_the_formula():
    g = torch.Generator().manual_seed(0)
    train_x, train_y = torch.randn(30, 8, generator=g), torch.randint(0, 4, (30,), generator=g)
    test_x = torch.randn(7, 8, generator=g)
    votes = knn_votes(train_x, train_y, test_x, [1, 5], temperature=0.1, num_classes=4, chunk=3)
    cos = torch.nn.functional.normalize(test_x, dim=1) @ torch.nn.functional.normalize(train_x, dim=1).T
    for i in range(7):
        order = cos[i].argsort(descending=True)
        for k in (1, 5):
            expected = torch.zeros(4)
            for j in order[:k]:  # votes_c = sum_{j <= k} exp(s_j / T) [y_j = c]
                expected[train_y[j]] += torch.exp(cos[i, j] / 0.1)
            assert torch.allclose(votes[k][i], expected, rtol=1e-5)


def test_fewshot_mean_and_std_over_draws():
    result = fewshot_eval(clusters(50, 0), clusters(20, 2), FewshotConfig(enabled=True, shots=[1, 5], tries=3),
                          task="single", num_classes=CLASSES)
    for n in ("1", "5"):
        entry = result["per_shots"][n]
        assert len(entry["tries"]) == 3 and entry["top1"]["mean"] >= 95.0
        assert entry["tries"][0]["train_samples"] == int(n) * CLASSES
        values = [t["top1"] for t in entry["tries"]]
        assert entry["top1"]["std"] == pytest.approx(float(np.std(values, ddof=1)))
    chance = fewshot_eval(noise(500, 0), noise(1000, 2), FewshotConfig(enabled=True, shots=[5], tries=3),
                          task="single", num_classes=CLASSES)
    assert abs(chance["per_shots"]["5"]["top1"]["mean"] - 10) < 4 * 100 * math.sqrt(0.1 * 0.9 / 1000)


# ------------------------------------------------------------------------------------ features


def tiny_vit():
    torch.manual_seed(0)
    return build_encoder("vit_tiny_patch16_224", img_size=32, patch_size=8).eval()


def test_one_pass_extraction_equals_the_encoder_api():
    encoder, x = tiny_vit(), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        blocks, patch_mean = extract_batch(encoder, x, 4)
        expected = encoder.intermediate_features(x, n_last_blocks=4)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(blocks, expected))
        assert torch.allclose(patch_mean, encoder(x).tokens.mean(1), atol=1e-6)
        resnet = build_encoder("resnet18").eval()
        blocks, patch_mean = extract_batch(resnet, torch.randn(2, 3, 64, 64), 2)
        assert [b.shape[1] for b in blocks] == [256, 512] and patch_mean.shape == (2, 512)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


COLOURS = np.array([[220, 30, 30], [30, 200, 40], [40, 60, 230]])


def coloured(label: int, rs: np.random.RandomState, size: int = 40) -> np.ndarray:
    """A noisy image of one of three colours: the class is visible even to a random encoder."""
    return np.clip(COLOURS[label] + rs.randn(size, size, 3) * 25, 0, 255).astype(np.uint8)


def write_labelled_shards(directory: Path, n: int, seed: int, multi: bool = False, shards: int = 2) -> Path:
    rs, counts = np.random.RandomState(seed), {}
    for s in range(shards):
        samples = []
        for i in range(s, n, shards):
            label = int(rs.randint(3))
            sample = {"__key__": f"s{seed}-{i:05d}", "png": png(coloured(label, rs))}
            sample.update({"json": {"labels": sorted({label, 3 + i % 2})}} if multi else {"cls": label})
            samples.append(sample)
        counts[f"part-{s:05d}.tar"] = write_shard(directory / f"part-{s:05d}.tar", samples)
    update_sizes(directory, counts)
    return directory


def test_cache_hits_then_misses_when_the_weights_change(tmp_path):
    shards = write_labelled_shards(tmp_path / "shards", 12, seed=0)
    encoder, cfg = tiny_vit(), FeatureConfig(batch_size=5, workers=0, cache_dir=str(tmp_path / "cache"))
    source = ShardProbeSet(str(shards), "labelled", "label", "single", None)
    transform = EvalTransform.from_encoder(encoder)
    first, info1 = cached_features(encoder, source, transform, cfg)
    again, info2 = cached_features(encoder, source, transform, cfg)
    assert (info1["cache"], info2["cache"]) == ("miss", "hit") and info1["key"] == info2["key"]
    assert len(first) == 12
    assert all(torch.equal(a, b) for a, b in zip(first.tensors().values(), again.tensors().values()))
    assert sorted(first.targets.tolist()) == sorted(source_labels(shards))
    with torch.no_grad():
        encoder.timm_model.blocks[-1].mlp.fc2.bias.add_(0.5)  # new weights, same architecture
    changed, info3 = cached_features(encoder, source, transform, cfg)
    assert info3["cache"] == "miss" and info3["key"] != info1["key"]
    assert not torch.allclose(changed.blocks[-1], first.blocks[-1])
    _, info4 = cached_features(encoder, source, EvalTransform(32, crop_pct=1.0), cfg)  # another transform
    assert info4["cache"] == "miss" and info4["key"] != info3["key"]
    assert len(list((tmp_path / "cache").iterdir())) == 3


def source_labels(shards: Path) -> list[int]:
    import tarfile

    labels = []
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as t:
            labels += [int(t.extractfile(m).read()) for m in t.getmembers() if m.name.endswith(".cls")]
    return labels


# ----------------------------------------------------------------------------------- configs


def test_config_errors_name_the_field(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train: {kind: shards, path: a}\ntest: {kind: shards, path: b}\nlinear: {epochz: 3}\n")
    with pytest.raises(ConfigError, match="linear.epochz"):
        load_config(ProbeRecipe, recipe)
    with pytest.raises(ConfigError, match="test.path"):
        load_config(ProbeRecipe, Path(__file__).parents[1] / "eval" / "cifar10.yaml", ["train.path=x"])
    cfg = load_config(ProbeRecipe, Path(__file__).parents[1] / "eval" / "demo_scenes.yaml", ["num_classes=null"])
    with pytest.raises(ConfigError, match="num_classes"):
        check_config(cfg)


def test_every_recipe_loads():
    from vispre.commands.eval import recipe_kind
    from vispre.rl.rl_recipe import load_offline_rl_config

    for recipe in sorted((Path(__file__).parents[1] / "eval").glob("*.yaml")):
        if recipe_kind(recipe) == "offline_rl":
            assert load_offline_rl_config(recipe).kind == "offline_rl"
            continue
        if recipe_kind(recipe) == "suite":
            from vispre.commands.eval import suite_members

            assert all(path.is_file() for _, path, _ in suite_members(str(recipe), []))
            continue
        if recipe_kind(recipe) != "probe":  # other kinds (viva, ...) are run and tested by their own modules
            continue
        overrides = ["train.path=x", "test.path=y"]
        if "coco" in recipe.stem:
            overrides += ["train.annotations=a.json", "test.annotations=b.json"]
        cfg = load_config(ProbeRecipe, recipe, overrides)
        check_config(cfg)
        assert cfg.name == recipe.stem


# -------------------------------------------------------------------------------- end to end


def test_vispre_eval_end_to_end(tmp_path, capsys):
    from tests.test_export import trained_checkpoint
    from vispre.cli import main
    from vispre.export.write import export

    encoder_dir = export(trained_checkpoint(tmp_path / "run")[0], tmp_path / "encoder")
    train = write_labelled_shards(tmp_path / "train", 60, seed=0)
    test = write_labelled_shards(tmp_path / "test", 30, seed=1)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"name: tiny\ntrain: {{path: {train}}}\ntest: {{path: {test}}}\nval_fraction: 0.2\n"
                      "features: {batch_size: 16, workers: 0, n_last_blocks: 2}\nlinear: {n_last_blocks: [1, 2]}\n"
                      "knn: {ks: [5, 10], report_k: 5}\n"
                      "fewshot: {enabled: true, shots: [2], tries: 2}\n"
                      "map: {enabled: true, learning_rates: [0.001, 0.003], epochs: 3, batch_size: 16}\n"
                      "decoder: {enabled: true, learning_rates: [0.001], epochs: 2, batch_size: 16, layers: 1}\n")
    args = ["eval", str(recipe), "--encoder", str(encoder_dir), "--append-to-card", "linear.epochs=5",
            "linear.batch_size=16", "linear.learning_rates=[0.01,0.1]", f"features.cache_dir={tmp_path / 'cache'}"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    out = encoder_dir / "eval" / "tiny"
    results = json.loads((out / "results.json").read_text())
    protocol = results["protocol"]
    assert protocol["data"]["sizes"] == {"train": 48, "val": 12, "test": 30}
    assert protocol["linear"]["epochs"] == 5 and protocol["linear"]["learning_rates"] == [0.01, 0.1]
    assert protocol["encoder"]["path"] == str(encoder_dir.resolve()) and protocol["encoder"]["random_init"] is False
    assert protocol["resolution"] == 32 and protocol["num_classes"] == 3 and len(results["linear"]["heads"]) == 8
    assert results["knn"]["per_k"]["5"]["top1"] >= 90.0  # three colours: trivial even for a barely trained ViT
    assert set(results["scores"]) >= {"linear/top1", "linear/mean_per_class", "knn/k5/top1", "fewshot/2shot/top1",
                                      "map/top1", "decoder/top1"}
    assert len(results["map"]["heads"]) == 2 and results["map"]["tokens"] == "cached"
    assert results["map"]["best"]["test"]["top1"] > results["chance"]["top1"]  # three colours: easy
    tokens = protocol["features"]["tokens"]
    assert tokens["mode"] == "cached" and tokens["shape"] == [17, 64]  # CLS + 4 x 4 patches of the test export
    assert protocol["map"]["learning_rates"] == [0.001, 0.003] and "layers" not in protocol["map"]
    assert protocol["decoder"]["head"].startswith("decoder (Beyer et al. 2023): 1 pre-LN layers")
    for plot in ("linear_probe.png", "knn.png", "map_probe.png", "decoder_probe.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{results['scores']['linear/top1']:6.2f}" in printed
    card = json.loads((encoder_dir / "scores.json").read_text())
    assert card["tiny"]["scores"] == results["scores"] and "tiny" in (encoder_dir / "README.md").read_text()
    # second run, options after the overrides, random weights: features re-extracted (new weights hash)
    assert main(["eval", str(recipe), "linear.epochs=2", "--encoder", str(encoder_dir), "--random-init",
                 f"features.cache_dir={tmp_path / 'cache'}"]) == 0
    random = json.loads((encoder_dir / "eval" / "tiny-random-init" / "results.json").read_text())
    assert "map/top1" in random["scores"]
    assert random["protocol"]["encoder"]["weights_hash"] != protocol["encoder"]["weights_hash"]
    assert {c["cache"] for c in random["protocol"]["features"]["cache"].values()} == {"miss"}
    assert main(args) == 0  # the same encoder again: every split from the cache
    again = json.loads((out / "results.json").read_text())
    assert {c["cache"] for c in again["protocol"]["features"]["cache"].values()} == {"hit"}
    assert again["scores"] == results["scores"]
    assert results["random_init_scores"] is None  # the first run had no random-init run beside it
    assert again["random_init_scores"] == random["scores"]  # drawn on the plots as a reference line
