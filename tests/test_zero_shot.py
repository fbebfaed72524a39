"""CLIP zero-shot classification and image-text retrieval on a CLIP export (issue 16): the metrics against hand
computations, and ``vispre eval`` on a tiny labelled set and a tiny caption set against open_clip used directly."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_interop import clip_checkpoint
from vispre.cli import main
from vispre.evaluation.retrieval import recall_at_k
from vispre.evaluation.zero_shot import class_embeddings, topk_accuracy
from vispre.export.write import export

SIZE = 160  # test_vit's input size: images at that size are neither resized nor cropped on either path


def test_recall_is_one_when_captions_embed_like_their_images():
    emb = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    scores = recall_at_k(emb, emb.clone(), torch.arange(6), [1, 5])
    assert scores == {"i2t_r@1": 100.0, "i2t_r@5": 100.0, "t2i_r@1": 100.0, "t2i_r@5": 100.0}


def test_recall_with_shuffled_captions_is_the_hand_computed_value():
    # image i = e_i; caption j (of image j) = e_perm[j] + 0.5 e_j: each image's nearest caption is the one
    # shuffled onto it, its own caption second. perm fixes 0 and 3 of 4: R@1 = 2/4 both ways, R@2 = 4/4.
    perm = [0, 2, 1, 3]
    eye = torch.eye(4)
    captions = torch.nn.functional.normalize(eye[perm] + 0.5 * eye, dim=-1)
    scores = recall_at_k(eye, captions, torch.arange(4), [1, 2])
    assert scores == {"i2t_r@1": 50.0, "i2t_r@2": 100.0, "t2i_r@1": 50.0, "t2i_r@2": 100.0}


def test_recall_counts_any_of_an_images_captions():
    # image 0 has captions 0 and 1, image 1 caption 2. Image 1's nearest caption is 1 (image 0's): miss at R@1.
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    captions = torch.nn.functional.normalize(torch.tensor([[0.2, 1.0], [0.1, 1.0], [0.0, 1.0]]), dim=-1)
    scores = recall_at_k(images, captions, torch.tensor([0, 0, 1]), [1])
    # image 0: nearest caption 0 (its own) -> hit; image 1: nearest caption 2 (its own) -> hit
    # caption 0 -> nearest image 1 (miss), caption 1 -> image 1 (miss), caption 2 -> image 1 (hit): 1/3
    assert scores["i2t_r@1"] == 100.0 and scores["t2i_r@1"] == pytest.approx(100.0 / 3)


def test_topk_accuracy_and_the_prompt_ensemble_by_hand():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1]])
    targets = torch.tensor([0, 1, 2, 1])
    # top-1 right: rows 0 only; top-2: rows 0 (0), 1 (2, 1), 2 (1, 2), 3 (0, 1) -> all four
    assert topk_accuracy(logits, targets, [1, 2, 5]) == {"top1": 25.0, "top2": 100.0, "top5": 100.0}
    vectors = {"a cat": [3.0, 4.0], "the cat": [1.0, 0.0], "a dog": [0.0, 2.0], "the dog": [0.0, 5.0]}
    classifier = class_embeddings(lambda texts: torch.tensor([vectors[t] for t in texts]), ["cat", "dog"],
                                  ["a {}", "the {name}"])
    cat = torch.tensor([0.6 + 1.0, 0.8]) / 2  # the mean of the normalised template embeddings, then normalised
    torch.testing.assert_close(classifier, torch.stack([cat / cat.norm(), torch.tensor([0.0, 1.0])]))


def _png(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def clip_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    run, _ = clip_checkpoint(root / "run")
    return export(run, root / "encoder", which="target")


def _open_clip(out):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{out}")


def test_zero_shot_eval_on_a_tiny_labelled_folder_matches_open_clip(clip_export, tmp_path, capsys):
    classes, templates = ["cat", "dog", "red car"], ["a photo of a {}.", "a blurry photo of a {}."]
    paths = []
    for c, name in enumerate(classes):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(4):
            paths.append((tmp_path / "data" / name / f"{i}.png", c))
            _png(paths[-1][0], 10 * c + i)
    recipe = tmp_path / "zs.yaml"
    recipe.write_text("name: zs\nkind: zero_shot\ndata: {kind: folder}\ntopk: [1, 2]\nworkers: 0\nbatch_size: 5\n"
                      f"templates: {json.dumps(templates)}\n")
    assert main(["eval", str(recipe), "--encoder", str(clip_export), f"data.path={tmp_path / 'data'}",
                 "--output", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["protocol"]["classnames"] == classes and results["protocol"]["samples"] == 12
    # the same with open_clip alone: its preprocess, tokenizer and prompt ensemble
    model, preprocess, tokenizer = _open_clip(clip_export)
    with torch.no_grad():
        images = model.encode_image(torch.stack([preprocess(Image.open(p)) for p, _ in paths]), normalize=True)
        weights = []
        for name in classes:
            t = model.encode_text(tokenizer([tpl.format(name) for tpl in templates]), normalize=True).mean(0)
            weights.append(t / t.norm())
        logits = images @ torch.stack(weights).T
    targets = torch.tensor([c for _, c in paths])
    ranked = logits.argsort(dim=1, descending=True)
    top1 = 100.0 * (ranked[:, 0] == targets).float().mean().item()
    top2 = 100.0 * (ranked[:, :2] == targets[:, None]).any(1).float().mean().item()
    assert results["scores"] == {"top1": pytest.approx(top1), "top2": pytest.approx(top2)}
    assert results["chance"]["top1"] == pytest.approx(100.0 / 3)
    assert f"top1 {top1:.2f}" in capsys.readouterr().out


def test_retrieval_eval_on_tiny_coco_captions_matches_open_clip(clip_export, tmp_path):
    captions = {1: ["a cat on a mat", "a small cat"], 2: ["a red car"], 3: ["two dogs", "dogs in snow", "a dog"],
                4: ["a blue sky"]}
    (tmp_path / "images").mkdir()
    for i in captions:
        _png(tmp_path / "images" / f"{i:012d}.png", 100 + i)
    coco = {"images": [{"id": i, "file_name": f"{i:012d}.png"} for i in captions],
            "annotations": [{"image_id": i, "id": 10 * i + j, "caption": c} for i, caps in captions.items()
                            for j, c in enumerate(caps)]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    assert main(["eval", "retrieval_coco", "--encoder", str(clip_export), f"captions={tmp_path / 'captions.json'}",
                 f"images={tmp_path / 'images'}", "ks=[1,2]", "workers=0", "--output", str(tmp_path / "out")]) == 0
    scores = json.loads((tmp_path / "out" / "results.json").read_text())["scores"]
    model, preprocess, tokenizer = _open_clip(clip_export)
    texts = [(c, i) for i, caps in captions.items() for c in caps]
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(Image.open(tmp_path / "images" / f"{i:012d}.png"))
                                              for i in captions]), normalize=True)
        txt = model.encode_text(tokenizer([c for c, _ in texts]), normalize=True)
    sim, ids = img @ txt.T, list(captions)
    for k in (1, 2):
        i2t = [any(texts[j][1] == ids[r] for j in sim[r].argsort(descending=True)[:k]) for r in range(len(ids))]
        t2i = [ids.index(texts[j][1]) in sim[:, j].argsort(descending=True)[:k].tolist() for j in range(len(texts))]
        assert scores[f"i2t_r@{k}"] == pytest.approx(100.0 * sum(i2t) / len(i2t))
        assert scores[f"t2i_r@{k}"] == pytest.approx(100.0 * sum(t2i) / len(t2i))


def test_a_non_clip_export_is_one_clear_error(tmp_path, capsys):
    from tests.test_export import trained_checkpoint

    out = export(trained_checkpoint(tmp_path / "run")[0], tmp_path / "encoder")
    assert main(["eval", "zero_shot_cifar10", "--encoder", str(out), "data.path=/nowhere"]) == 2
    assert "no open_clip_config.json" in capsys.readouterr().err


def test_the_imagenet_recipe_takes_open_clips_names_and_clips_80_templates(capsys):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from vispre.evaluation.zero_shot import ZeroShotRecipe, check_recipe, classnames_of, fill, templates_of
    from vispre.utils.recipe_files import resolve_recipe
    from vispre.utils.typed_config import load_config

    cfg = load_config(ZeroShotRecipe, resolve_recipe("zero_shot_imagenet", "eval"), ["data.path=/unused"])
    check_recipe(cfg)
    names, templates = classnames_of(cfg, None), templates_of(cfg)
    assert len(names) == 1000 and names[:2] == list(IMAGENET_CLASSNAMES[:2]) and len(templates) == 80
    assert fill(templates[0], "dog") == "a bad photo of a dog." and fill("a {name} here", "cat") == "a cat here"
