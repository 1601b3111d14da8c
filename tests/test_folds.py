"""k-fold splits over real index files, training on a fold, and the fine-to-coarse head."""

import collections
import json
from pathlib import Path

import pytest
import torch

from grocery.artifact import METADATA_NAME, load_artifact
from grocery.engine import CHECKPOINT_NAME, fit, read_fold_groups, training_samples
from grocery.folds import near_duplicate_groups, split_fold, stratified_folds
from grocery.index import fine_to_coarse, read_splits
from grocery.networks import FineToCoarse, create_model


def fold_sets(config_for_fold, folds: int) -> list[tuple[list, list]]:
    """(training, held-out) samples of every fold, as a training run reads them."""
    return [training_samples(config_for_fold(fold), "fine") for fold in range(folds)]


def test_folds_partition_the_pool(tiny_config):
    pool = read_splits(tiny_config().data_dir, "train+val", "fine")
    splits = fold_sets(lambda fold: tiny_config(train_split="train+val", folds=4, fold=fold), 4)
    held_out = [path for _, val in splits for path in (s.path for s in val)]
    assert len(held_out) == len(set(held_out)), "a photo is held out by two folds"
    assert sorted(held_out) == sorted(s.path for s in pool), "a photo is held out by no fold"
    for train, val in splits:
        assert not {s.path for s in train} & {s.path for s in val}
        assert len(train) + len(val) == len(pool)


def test_folds_are_class_stratified(tiny_config):
    splits = fold_sets(lambda fold: tiny_config(train_split="train+val", folds=4, fold=fold), 4)
    for _, val in splits:
        # 16 photos of each of the 4 fine classes over 4 folds: 4 of each in every fold.
        assert collections.Counter(s.label for s in val) == {0: 4, 1: 4, 2: 4, 3: 4}


def test_folds_are_deterministic_and_seeded(tiny_config):
    def held_out(**overrides):
        config = tiny_config(train_split="train+val", folds=4, fold=2, **overrides)
        return [s.path for s in training_samples(config, "coarse")[1]]

    assert held_out() == held_out()
    assert held_out() != held_out(fold_seed=1)
    # The folds are drawn on fine classes whatever the level trained, so every recipe meets the same photos.
    fine_config = tiny_config(train_split="train+val", folds=4, fold=2)
    assert [s.path for s in training_samples(fine_config, "fine")[1]] == held_out()


def test_shared_dataset_folds_are_stratified_and_even(shared_dataset):
    samples = read_splits(shared_dataset, "train+val", "fine")
    fold_of = stratified_folds([s.label for s in samples], 5, seed=0)
    assert stratified_folds([s.label for s in samples], 5, seed=0) == fold_of
    sizes = collections.Counter(fold_of)
    assert len(samples) == 2936 and max(sizes.values()) - min(sizes.values()) <= 1
    per_class = collections.defaultdict(collections.Counter)
    for sample, fold in zip(samples, fold_of, strict=True):
        per_class[sample.label][fold] += 1
    for label, counts in per_class.items():
        spread = [counts[f] for f in range(5)]
        assert max(spread) - min(spread) <= 1, f"fine class {label} spread over folds as {spread}"


def test_the_committed_near_duplicate_groups_fix_the_benchmarks_folds(shared_dataset):
    # The groups come from bf16 features, which differ from one CPU to another: the benchmark reads them
    # from this file so that every machine scores the same folds. It must name every photo of the pool.
    pool = read_splits(shared_dataset, "train+val", "fine")
    groups_file = Path(__file__).resolve().parents[1] / "benchmarks" / "folds" / "near-duplicates-0.85.json"
    groups = read_fold_groups(str(groups_file), shared_dataset, pool)
    fold_of = stratified_folds([s.label for s in pool], 5, seed=0, groups=groups)
    assert stratified_folds([s.label for s in pool], 5, seed=0, groups=groups) == fold_of
    folds_of_group, classes_of_group = collections.defaultdict(set), collections.defaultdict(set)
    for sample, group, fold in zip(pool, groups, fold_of, strict=True):
        folds_of_group[group].add(fold)
        classes_of_group[group].add(sample.label)
    assert all(len(folds) == 1 for folds in folds_of_group.values()), "a group split over two folds"
    assert all(len(classes) == 1 for classes in classes_of_group.values()), "a group joins two classes"
    sizes = collections.Counter(fold_of)
    assert sorted(sizes) == [0, 1, 2, 3, 4]
    assert min(sizes.values()) > 0.15 * len(pool) and max(sizes.values()) < 0.25 * len(pool), sizes


def test_fold_arguments_are_checked():
    with pytest.raises(ValueError, match="at least 2"):
        stratified_folds([0, 1, 2], 1)
    with pytest.raises(ValueError, match="cannot fill"):
        stratified_folds([0, 1], 3)
    with pytest.raises(ValueError, match="outside 0..1"):
        split_fold(["a", "b"], [0, 1], 2)


def test_training_on_a_fold_validates_on_it(tiny_config, tmp_path):
    result = fit(tiny_config(epochs=1, train_split="train+val", folds=4, fold=1), tmp_path)
    assert result.status == "completed"
    metadata = json.loads((tmp_path / METADATA_NAME).read_text())
    assert metadata["training"]["folds"] == 4 and metadata["training"]["train_split"] == "train+val"


def test_coarse_read_from_fine_head_is_a_coarse_classifier(tiny_config, tmp_path):
    result = fit(tiny_config(epochs=1, coarse_from_fine=True), tmp_path)
    assert "val_fine_top1" in result.metrics
    model, artifact = load_artifact(tmp_path)
    assert artifact.class_names == ["Apple", "Pear", "Milk"]
    assert artifact.metadata["fine_to_coarse"] == [0, 0, 1, 2]
    inputs = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        coarse = model(inputs).softmax(1)
        fine = model.fine(inputs).softmax(1)
    # Apple = Red-Apple + Pink-Apple; the others are one fine class each.
    expected = torch.stack([fine[:, 0] + fine[:, 1], fine[:, 2], fine[:, 3]], dim=1)
    torch.testing.assert_close(coarse, expected, rtol=1e-5, atol=1e-6)


def test_fine_to_coarse_exports_to_onnx(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = FineToCoarse(create_model(4, "mobilenet_v3_small", "none"), [0, 0, 1, 2]).eval()
    inputs = torch.randn(2, 3, 64, 64)
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model,
        (inputs,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (exported,) = session.run(None, {"input": inputs.numpy()})
    with torch.inference_mode():
        torch.testing.assert_close(torch.from_numpy(exported), model(inputs), rtol=1e-4, atol=1e-5)


def test_index_coarse_labels_agree_with_the_class_table(tiny_dataset):
    mapping = fine_to_coarse(tiny_dataset)
    fine, coarse = read_splits(tiny_dataset, "train+val", "fine"), read_splits(tiny_dataset, "train+val", "coarse")
    assert [mapping[f.label] for f in fine] == [c.label for c in coarse]


def test_resume_with_ema_and_fine_head_matches_an_uninterrupted_run(tiny_config, tmp_path):
    config = tiny_config(coarse_from_fine=True, ema_decay=0.9, layer_decay=0.7, iconic_copies=1)
    assert fit(config, tmp_path / "whole").status == "completed"
    stopped = fit(config, tmp_path / "parted", callback=lambda e: e["kind"] == "epoch" and e["epoch"] == 1)
    assert stopped.status == "stopped"
    assert "ema" in torch.load(tmp_path / "parted" / CHECKPOINT_NAME, weights_only=True)
    assert fit(config, tmp_path / "parted", resume=tmp_path / "parted").status == "completed"
    whole, _ = load_artifact(tmp_path / "whole")
    parted, _ = load_artifact(tmp_path / "parted")
    for (name, a), b in zip(whole.state_dict().items(), parted.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_group_shares_one_fold_and_classes_stay_spread():
    strata = [i % 3 for i in range(60)]  # 3 classes of 20 photos
    groups = [(i % 3, i // 12) for i in range(60)]  # 5 groups of 4 photos in each class
    fold_of = stratified_folds(strata, 5, seed=3, groups=groups)
    by_group = collections.defaultdict(set)
    for group, fold in zip(groups, fold_of, strict=True):
        by_group[group].add(fold)
    assert all(len(folds) == 1 for folds in by_group.values())
    for stratum in range(3):
        assert collections.Counter(f for s, f in zip(strata, fold_of, strict=True) if s == stratum) == dict.fromkeys(
            range(5), 4
        )


def test_near_duplicates_are_grouped_within_a_class_only():
    base = torch.eye(4)
    # 0 and 1: one scene; 2: its class's other scene; 3: 0's twin, but of another class.
    features = torch.stack([base[0], base[0] + 0.05 * base[1], base[2], base[0]])
    groups = near_duplicate_groups(features, ["a", "a", "a", "b"], threshold=0.95)
    assert groups[0] == groups[1] and len({groups[0], groups[2], groups[3]}) == 3


def test_training_on_grouped_folds(tiny_config, tmp_path):
    pool = read_splits(tiny_config().data_dir, "train+val", "fine")
    # Pairs of consecutive photos of a class as one scene each.
    groups = {s.path.relative_to(tiny_config().data_dir).as_posix(): i // 2 for i, s in enumerate(pool)}
    (tmp_path / "groups.json").write_text(json.dumps(groups))
    config = tiny_config(train_split="train+val", folds=4, fold=0, fold_groups=str(tmp_path / "groups.json"))
    train, held_out = training_samples(config, "fine")
    held_paths = {s.path for s in held_out}
    for i in range(0, len(pool), 2):
        assert (pool[i].path in held_paths) == (pool[i + 1].path in held_paths)
    assert len(train) + len(held_out) == len(pool)
