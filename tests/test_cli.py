"""The grocery command end to end on the tiny dataset."""

import json

from grocery.cli import main


def test_train_evaluate_export(tiny_dataset, tmp_path, capsys):
    output = tmp_path / "m1"
    assert (
        main(
            [
                "train",
                "--data-dir",
                str(tiny_dataset),
                "--output",
                str(output),
                "--arch",
                "mobilenet_v3_small",
                "--weights",
                "none",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--learning-rate",
                "3e-3",
                "--freeze",
                "0",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["epochs"] == 1
    assert (output / "model.onnx").is_file()

    assert main(["evaluate", "--model", str(output), "--split", "test", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["count"] == 12 and metrics["split"] == "test"
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1
    assert set(metrics["per_class"]) == {"Apple", "Pear", "Milk"}
    assert metrics["per_class"]["Apple"]["support"] == 6
    confusion = (output / "eval-test" / "confusion.csv").read_text().splitlines()
    assert confusion[0] == "true \\ predicted,Apple,Pear,Milk" and len(confusion) == 4
    assert sum(int(x) for line in confusion[1:] for x in line.split(",")[1:]) == 12
    assert (output / "eval-test" / "confusion.png").read_bytes()[:4] == b"\x89PNG"

    assert main(["evaluate", "--model", str(output), "--split", "test"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("test: top-1 ") and "Milk" in text

    assert main(["export", "--model", str(output), "--format", "onnx-int8", "--calibration-images", "8"]) == 0
    assert capsys.readouterr().out.strip() == str(output / "model.int8.onnx")
    assert (output / "model.int8.onnx").is_file()
    assert main(["evaluate", "--model", str(output), "--split", "test", "--runtime", "onnx-int8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runtime"] == "onnx-int8"


def test_resume_flag_reads_the_checkpoint(tiny_dataset, tmp_path, capsys):
    output = tmp_path / "m2"
    common = ["--data-dir", str(tiny_dataset), "--output", str(output), "--no-onnx"]
    assert (
        main(
            [
                "train",
                *common,
                "--arch",
                "mobilenet_v3_small",
                "--weights",
                "none",
                "--epochs",
                "1",
                "--freeze",
                "0",
                "--batch-size",
                "16",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["train", *common, "--resume", "--epochs", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 2
    metadata = json.loads((output / "metadata.json").read_text())
    assert metadata["arch"] == "mobilenet_v3_small" and metadata["training"]["batch_size"] == 16
    assert [h["epoch"] for h in metadata["history"]] == [1, 2]


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path), "--output", str(tmp_path / "x")]) == 2
    assert "classes.csv: class table not found" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path), "a.jpg"]) == 2
    assert "is not a model artifact" in capsys.readouterr().err
