import pytest

from grocery.index import DatasetError, fingerprint, read_classes, read_split


def test_tiny_classes_in_id_order(tiny_dataset):
    coarse = read_classes(tiny_dataset, "coarse")
    assert [c.name for c in coarse] == ["Apple", "Pear", "Milk"]
    assert len(coarse[0].iconic_images) == 2  # both apple varieties
    assert all(p.is_file() for c in coarse for p in c.iconic_images)
    fine = read_classes(tiny_dataset, "fine")
    assert [c.name for c in fine] == ["Red-Apple", "Pink-Apple", "Green-Pear", "Blue-Milk"]
    assert fine[2].description() == "A green-pear from the tiny set."


def test_split_labels_follow_the_level(tiny_dataset):
    coarse = read_split(tiny_dataset, "val", "coarse")
    fine = read_split(tiny_dataset, "val", "fine")
    assert [s.path for s in coarse] == [s.path for s in fine]
    assert {s.label for s in coarse} == {0, 1, 2}
    assert {s.label for s in fine} == {0, 1, 2, 3}


@pytest.mark.dataset
def test_shared_dataset_levels(shared_dataset):
    coarse = read_classes(shared_dataset, "coarse")
    fine = read_classes(shared_dataset, "fine")
    assert len(coarse) == 43 and len(fine) == 81
    assert coarse[0].name == "Apple" and fine[0].name == "Golden-Delicious"
    assert all(p.is_file() for c in fine for p in c.iconic_images)
    assert fine[0].description().startswith("Golden Delicious has a white juicy pulp")
    assert len(read_split(shared_dataset, "train")) == 2640
    assert len(read_split(shared_dataset, "val")) == 296


def _copy_with_index(tmp_path, tiny_dataset, index_text):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(tiny_dataset, root)
    (root / "train.txt").write_text(index_text)
    return root


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("train/Apple/Red-Apple/Red-Apple_000.jpg, 0", "expected 'path, fine_label, coarse_label'"),
        ("train/Apple/Red-Apple/Red-Apple_000.jpg, 0, x", "label 'x' is not an integer"),
        ("train/Apple/Red-Apple/Red-Apple_000.jpg, 0, 7", "coarse label 7 is outside 0..2"),
        ("train/Apple/Red-Apple/missing.jpg, 0, 0", "missing.jpg not found"),
    ],
)
def test_broken_index_names_file_and_line(tmp_path, tiny_dataset, line, problem):
    good = "train/Apple/Red-Apple/Red-Apple_001.jpg, 0, 0\n"
    root = _copy_with_index(tmp_path, tiny_dataset, good + good + line + "\n")
    with pytest.raises(DatasetError) as error:
        read_split(root, "train")
    assert f"{root / 'train.txt'}:3:" in str(error.value)
    assert problem in str(error.value)


def test_missing_split_and_level(tiny_dataset):
    with pytest.raises(DatasetError, match=r"test2\.txt: split index not found"):
        read_split(tiny_dataset, "test2")
    with pytest.raises(DatasetError, match="label level"):
        read_classes(tiny_dataset, "medium")


def test_any_split_name_is_accepted(tiny_dataset):
    assert len(read_split(tiny_dataset, "test")) == 3 * 4


def test_fingerprint_changes_with_the_index(tmp_path, tiny_dataset):
    root = _copy_with_index(tmp_path, tiny_dataset, (tiny_dataset / "train.txt").read_text())
    before = fingerprint(root, "train")
    assert before == fingerprint(tiny_dataset, "train")
    (root / "train.txt").write_text((tiny_dataset / "train.txt").read_text().splitlines()[0] + "\n")
    assert fingerprint(root, "train") != before
