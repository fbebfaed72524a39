"""The token probes (MAP, decoder): they read what a pooled feature loses, the one-pass grid equals
heads trained one at a time with torch.optim, streamed tokens give the cached result."""

import math

import pytest
import torch

from vispre.evaluation import Features, LinearConfig
from vispre.evaluation.grid import GridOptimizer, batch_order, fit, train_reference
from vispre.evaluation.linear import linear_probe
from vispre.evaluation.probe_recipe import DecoderConfig, MapConfig
from vispre.evaluation.token_probe import make_grid, make_head, optim_config, token_probe
from vispre.evaluation.tokens import CachedTokens

TOKENS, DIM, CLASSES = 16, 32, 4


def marked_token(n: int, seed: int) -> tuple[Features, CachedTokens]:
    """16 tokens, each its position's code plus noise; one token, at a random position p, also carries a
    marker. The label is p // 4. The mean token is the same whatever p (the marker is added once, the
    codes always sum the same), so a linear probe on pooled features is at chance; attending to the
    marked token reads its position code."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randn(TOKENS, DIM, generator=torch.Generator().manual_seed(99))
    marker = torch.randn(DIM, generator=torch.Generator().manual_seed(98))
    marker = 4 * marker / marker.norm()
    position = torch.randint(0, TOKENS, (n,), generator=g)
    tokens = codes + 0.3 * torch.randn(n, TOKENS, DIM, generator=g)
    tokens[torch.arange(n), position] += marker
    labels = position // (TOKENS // CLASSES)
    cls = torch.randn(n, DIM, generator=g)  # a CLS token that saw nothing
    features = Features([cls] * 4, tokens.mean(1), labels, tokens.half())
    return features, CachedTokens(tokens.half(), labels)


def test_map_and_decoder_read_a_token_position_that_pooling_loses():
    (train_f, train), (val_f, val), (test_f, test) = (marked_token(n, s) for n, s in ((1200, 0), (300, 1), (600, 2)))
    linear = linear_probe(train_f, val_f, test_f, LinearConfig(learning_rates=[0.01, 0.1, 1.0], epochs=20,
                                                               batch_size=128), task="single", num_classes=CLASSES)
    chance_band = 4 * 100 * math.sqrt(0.25 * 0.75 / 600)  # 4 sd of a binomial proportion at p = 0.25
    assert abs(linear["best"]["test"]["top1"] - 25) < chance_band
    cfg = MapConfig(enabled=True, learning_rates=[1e-3, 3e-3], epochs=15, batch_size=64, num_heads=2)
    map_probe = token_probe("map", train, val, test, cfg, task="single", num_classes=CLASSES)
    assert map_probe["best"]["test"]["top1"] >= 90.0 and map_probe["tokens"] == "cached"
    dec = DecoderConfig(enabled=True, learning_rates=[1e-3, 3e-3], epochs=15, batch_size=64, num_heads=2, layers=1)
    decoder = token_probe("decoder", train, val, test, dec, task="single", num_classes=CLASSES)
    assert decoder["best"]["test"]["top1"] >= 90.0


@pytest.mark.parametrize("kind,task", [("map", "single"), ("map", "multi"), ("decoder", "single")])
def test_token_grid_equals_each_head_trained_alone(kind, task):
    """Every head of the one-pass grid (attention folded, heads stacked, one AdamW over the stack) ends
    where the same head ends when trained alone: timm's AttentionPoolLatent / torch's MultiheadAttention,
    torch.optim.AdamW, LambdaLR, same init and batches. Scores on test are the same."""
    _, train = marked_token(192, 0)
    _, test = marked_token(200, 2)
    targets = train.targets if task == "single" else torch.nn.functional.one_hot(train.targets, CLASSES).float()
    train = CachedTokens(train.tokens, targets)
    cfg = (MapConfig(learning_rates=[3e-4, 3e-3, 1e-2], epochs=3, batch_size=64, num_heads=2, weight_decay=0.05)
           if kind == "map" else
           DecoderConfig(learning_rates=[3e-4, 3e-3, 1e-2], epochs=3, batch_size=64, num_heads=2, layers=2, queries=2))
    head = make_head(kind, cfg, DIM, CLASSES, seed=3)
    torch.nn.init.normal_(head.fc.weight, std=0.1)  # zero-initialised: the first step would move only fc
    grid = make_grid(kind, head, cfg.learning_rates)
    steps = train.steps(cfg.batch_size, cfg.epochs)
    fit(grid, GridOptimizer(grid.param_lrs(), optim_config(cfg)), train.batches(cfg.batch_size, cfg.epochs, 5, "cpu"),
        steps, task=task, warmup=2)
    x = test.tokens.float()
    with torch.no_grad():
        together = grid(x)
    for i, lr in enumerate(cfg.learning_rates):
        alone = make_head(kind, cfg, DIM, CLASSES, seed=3)
        alone.load_state_dict(head.state_dict())
        batches = ((train.tokens[b], train.targets[b]) for b in batch_order(len(train), cfg.batch_size, cfg.epochs, 5))
        train_reference(alone, batches, steps, task=task, lr=lr, optim=optim_config(cfg), warmup=2)
        with torch.no_grad():
            logits = alone(x)
            assert (logits - together[:, i]).abs().max() < 1e-4, (kind, lr)
            assert (logits - together[:, 0]).abs().max() > 1e-2 or i == 0  # the learning rates matter
            assert torch.equal(logits.argmax(1), together[:, i].argmax(1))


@pytest.mark.parametrize("kind", ["map", "decoder"])
def test_fused_per_head_adamw_equals_the_foreach_path(kind):
    """The token grids step AdamW with torch's fused kernel once per head (GridOptimizer.fused holds the heads'
    rates); the elementwise foreach path it replaced gives the same outputs after 6 steps with decay."""
    _, train = marked_token(96, 0)
    cfg = (MapConfig(learning_rates=[1e-3, 1e-2], num_heads=2, weight_decay=0.05) if kind == "map" else
           DecoderConfig(learning_rates=[1e-3, 1e-2], num_heads=2, layers=1, queries=2, weight_decay=0.05))
    head = make_head(kind, cfg, DIM, CLASSES, seed=1)
    torch.nn.init.normal_(head.fc.weight, std=0.1)
    grids = []
    for fused in (True, False):
        grid = make_grid(kind, head, cfg.learning_rates)
        optimizer = GridOptimizer(grid.param_lrs(), optim_config(cfg))
        assert optimizer.fused == pytest.approx(cfg.learning_rates)
        if not fused:
            optimizer.fused = None
        fit(grid, optimizer, train.batches(32, 2, 0, "cpu"), 6, task="single", warmup=2)
        grids.append(grid)
    # outputs, not parameters: a key bias (it cancels in the softmax) gets a zero gradient, whose rounding
    # noise AdamW scales to full steps differently in the two paths without changing any output
    x = train.tokens[:64].float()
    with torch.no_grad():
        fused, foreach, start = grids[0](x), grids[1](x), make_grid(kind, head, cfg.learning_rates)(x)
    assert (fused - foreach).abs().max() < 1e-5
    assert (fused - start).abs().max() > 1e-2  # the steps moved the heads


def test_tokens_streamed_over_the_budget_and_compare(tmp_path):
    """Over features.token_budget_mib the tokens are streamed from the encoder (and the protocol says so);
    under it they are cached. The MAP score is in results.json either way; eval compare tabulates both."""
    from tests.test_evaluation import tiny_vit, write_labelled_shards
    from vispre.evaluation import ProbeRecipe, evaluate
    from vispre.evaluation.compare import compare
    from vispre.utils.typed_config import load_config

    train = write_labelled_shards(tmp_path / "train", 60, seed=0)
    test = write_labelled_shards(tmp_path / "test", 30, seed=1)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"name: tiny\ntrain: {{path: {train}}}\ntest: {{path: {test}}}\nval_fraction: 0.2\n"
                      f"features: {{batch_size: 16, workers: 0, n_last_blocks: 2, cache_dir: {tmp_path / 'cache'}}}\n"
                      "linear: {n_last_blocks: [1], avgpool: [false], epochs: 3, learning_rates: [0.1]}\n"
                      "knn: {enabled: false}\n"
                      "map: {enabled: true, learning_rates: [0.003], epochs: 4, batch_size: 16}\n")
    runs = {}
    for name, budget in (("streamed", 0.01), ("cached", 100)):
        cfg = load_config(ProbeRecipe, recipe, [f"features.token_budget_mib={budget}"])
        runs[name] = evaluate(cfg, tiny_vit(), tmp_path / name)
        tokens = runs[name]["protocol"]["features"]["tokens"]
        assert tokens["mode"] == name and runs[name]["map"]["tokens"] == name
        assert tokens["mib"] == pytest.approx(90 * 17 * 192 * 2 / 2**20, abs=0.05)  # 90 images, CLS + 16 patches
        assert runs[name]["scores"]["map/top1"] >= 90.0  # three colours
    assert {c["cache"] for c in runs["streamed"]["protocol"]["features"]["cache"].values()} == {"miss"}
    written = compare([str(tmp_path / "streamed"), str(tmp_path / "cached" / "results.json")], tmp_path / "cmp")
    table = written["markdown"].read_text().splitlines()
    assert table[0] == "| encoder | eval | metric | linear | map | chance |" and len(table) == 4
    assert f"{runs['cached']['scores']['map/top1']:.2f}" in table[3]
    assert written["csv"].read_text().splitlines()[0] == "encoder,eval,metric,linear,map,chance"
    assert written["chart"].read_bytes()[:4] == b"\x89PNG"


def test_cached_rows_read_the_split_without_copying_it():
    features, tokens = marked_token(50, 0)
    rows = torch.tensor([3, 7, 11, 20, 41])
    view = CachedTokens(features.tokens, features.targets, rows=rows)
    copy = CachedTokens(features.tokens[rows], features.targets[rows])
    assert view.tokens.data_ptr() == features.tokens.data_ptr() and len(view) == 5  # float16 kept, shared
    for (a, ya), (b, yb) in zip(view.batches(2, 2, 0, "cpu"), copy.batches(2, 2, 0, "cpu")):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(view.in_order(3, "cpu"), copy.in_order(3, "cpu")))
    as_float = CachedTokens(features.tokens, features.targets, float32_mib=1.0, rows=rows)  # 5 x 16 x 32 x 4 B fit
    assert as_float.tokens.dtype == torch.float32 and torch.equal(as_float.tokens, features.tokens[rows].float())


def test_streamed_tokens_are_shuffled_for_training(tmp_path):
    """Streamed from class-sorted data, training batches still mix the classes: random-access sets are read
    in a new permutation each epoch, shards in shuffled blocks; scoring reads the rows in order."""
    import numpy as np
    from PIL import Image

    from tests.test_evaluation import coloured, png, tiny_vit
    from vispre.data.shard_writer import update_sizes, write_shard
    from vispre.evaluation import EvalTransform
    from vispre.evaluation.probe_data import FolderProbeSet, ShardProbeSet
    from vispre.evaluation.probe_recipe import FeatureConfig
    from vispre.evaluation.tokens import StreamedTokens

    rs = np.random.RandomState(0)
    for c in range(3):
        (tmp_path / "folder" / f"c{c}").mkdir(parents=True)
        for i in range(8):
            Image.fromarray(coloured(c, rs)).save(tmp_path / "folder" / f"c{c}" / f"{i}.png")
    samples = [{"__key__": f"k{i:03d}", "png": png(coloured(i // 8, rs)), "cls": i // 8} for i in range(24)]
    update_sizes(tmp_path / "shards", {"a.tar": write_shard(tmp_path / "shards" / "a.tar", samples)})
    cfg = FeatureConfig(batch_size=5, workers=0, stream_shuffle_rows=64)
    encoder, transform = tiny_vit(), EvalTransform(32)
    rows = torch.tensor([0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22])  # every other image: 4 per class
    for source in (FolderProbeSet(str(tmp_path / "folder")), ShardProbeSet(str(tmp_path / "shards"), "labelled",
                                                                           "label", "single", None)):
        tokens = StreamedTokens(encoder, source, transform, cfg, "cpu", 24, 192, rows)
        epochs = [[y for _, y in tokens.batches(4, 1, seed, "cpu")] for seed in (0, 1)]
        for batches in epochs:
            assert sorted(torch.cat(batches).tolist()) == [0] * 4 + [1] * 4 + [2] * 4  # each kept row once
            assert any(len(set(b.tolist())) > 1 for b in batches[:1])  # the first batch mixes classes
        assert [b.tolist() for b in epochs[0]] != [b.tolist() for b in epochs[1]]
        scored = torch.cat([y for _, y in tokens.in_order(5, "cpu")])
        assert scored.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and tokens.steps(4, 2) == 6
