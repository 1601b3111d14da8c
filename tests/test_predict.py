"""Prediction: batches with bad files, runtimes, output formats."""

import csv
import io
import json
import os

import pytest
import torch
from PIL import Image

from grocery.cli import main
from grocery.predict import Predictor, iter_image_files
from grocery.results import RESULT_COLUMNS


@pytest.fixture
def mixed_folder(tmp_path, tiny_dataset):
    """Good images in nested folders with one of each bad kind among them."""
    folder = tmp_path / "photos"
    (folder / "nested" / "deeper").mkdir(parents=True)
    val = sorted((tiny_dataset / "val").rglob("*.jpg"))
    for i, source in enumerate(val[:6]):
        target = folder / ("nested/deeper" if i % 2 else "") / f"good_{i}.jpg"
        target.write_bytes(source.read_bytes())
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "nested" / "notes.jpg").write_text("not an image")
    (folder / "truncated.jpg").write_bytes(val[0].read_bytes()[:300])
    (folder / "readme.txt").write_text("skipped: not an image extension")
    return folder


EXPECTED_ERRORS = {"empty.jpg": "empty_file", "notes.jpg": "not_an_image", "truncated.jpg": "truncated"}


def test_listing_is_recursive_ordered_and_filtered(mixed_folder):
    names = [p.relative_to(mixed_folder).as_posix() for p in iter_image_files([mixed_folder])]
    # A folder's files in name order, then its subfolders depth-first; readme.txt is no image.
    assert names == [
        "empty.jpg",
        "good_0.jpg",
        "good_2.jpg",
        "good_4.jpg",
        "truncated.jpg",
        "nested/notes.jpg",
        "nested/deeper/good_1.jpg",
        "nested/deeper/good_3.jpg",
        "nested/deeper/good_5.jpg",
    ]
    top_level = [p.name for p in iter_image_files([mixed_folder], recursive=False)]
    assert "good_1.jpg" not in top_level and "good_0.jpg" in top_level


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_bad_files_are_error_rows_and_the_rest_classify(tiny_model, mixed_folder, runtime):
    predictor = Predictor.from_path(tiny_model, runtime=runtime, batch_size=4)
    paths = list(iter_image_files([mixed_folder]))
    rows = list(predictor.predict_files(paths))
    assert [r.path for r in rows] == [str(p) for p in paths]
    for row in rows:
        name = os.path.basename(row.path)
        if name in EXPECTED_ERRORS:
            assert row.error["code"] == EXPECTED_ERRORS[name] and row.label is None
        else:
            assert row.error is None and row.label in ["Apple", "Pear", "Milk"]
            assert len(row.top5) == 3 and row.top5[0]["class_id"] == row.class_id
            assert row.confidence == row.top5[0]["confidence"] and 0 < row.confidence <= 1


def test_predictions_match_the_labels(tiny_model, tiny_dataset):
    """Solid-colour classes: a trained model gets most validation images right."""
    from grocery.index import read_split

    samples = read_split(tiny_dataset, "val")
    rows = list(Predictor.from_path(tiny_model, runtime="torch").predict_files([s.path for s in samples]))
    correct = sum(r.class_id == s.label for r, s in zip(rows, samples, strict=True))
    assert correct / len(samples) >= 0.75


def test_onnx_agrees_with_torch(tiny_model, tiny_dataset):
    batch = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    torch_probs = Predictor.from_path(tiny_model, runtime="torch").predict_batch(batch)
    onnx_probs = Predictor.from_path(tiny_model, runtime="onnx").predict_batch(batch)
    assert torch.allclose(torch_probs, onnx_probs, atol=1e-4)
    auto = Predictor.from_path(tiny_model)  # auto: measured on this machine (tests/test_runtimes.py)
    assert auto.choice.record["variants"][auto.runtime]["accepted"]


def test_predict_bytes(tiny_model, tiny_dataset):
    predictor = Predictor.from_path(tiny_model)
    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), (40, 180, 40)).save(buffer, "PNG")
    row = predictor.predict_bytes(buffer.getvalue(), "pear.png")
    assert row.error is None and row.path == "pear.png"
    assert predictor.predict_bytes(b"GIF89a nonsense", "x.gif").error["code"] == "not_an_image"


def test_missing_onnx_export_is_a_clear_error(tiny_model):
    with pytest.raises(FileNotFoundError, match="grocery export --model .* --format onnx-int8"):
        Predictor.from_path(tiny_model, runtime="onnx-int8")


def test_cli_predict_jsonl_to_stdout(tiny_model, mixed_folder, capsys):
    assert main(["predict", "--model", str(tiny_model), str(mixed_folder)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 9
    assert {os.path.basename(r["path"]): r["error"]["code"] for r in rows if r["error"]} == EXPECTED_ERRORS
    assert set(rows[0]) == {"path", "label", "class_id", "confidence", "top5", "error"}


def test_cli_predict_csv_file(tiny_model, mixed_folder, tmp_path):
    output = tmp_path / "preds.csv"
    single = mixed_folder / "good_0.jpg"
    assert (
        main(
            [
                "predict",
                "--model",
                str(tiny_model),
                str(single),
                str(mixed_folder / "empty.jpg"),
                "--output",
                str(output),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(output.open()))
    assert [r["path"] for r in rows] == [str(single), str(mixed_folder / "empty.jpg")]
    assert rows[0]["label"] in ["Apple", "Pear", "Milk"] and json.loads(rows[0]["top5"])[0]["label"] == rows[0]["label"]
    # The job service's CSV columns (grocery.results): the error's code and message apart.
    assert list(rows[0]) == list(RESULT_COLUMNS)
    assert rows[1]["error_code"] == "empty_file" and rows[1]["error_message"] and rows[1]["label"] == ""


def test_cli_pixel_limit(tiny_model, mixed_folder, capsys):
    assert main(["predict", "--model", str(tiny_model), str(mixed_folder / "good_0.jpg"), "--max-pixels", "100"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["error"]["code"] == "too_large" and "pixel limit of 100" in row["error"]["message"]
