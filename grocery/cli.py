"""grocery: train, evaluate and run the grocery classifier on this machine (train, evaluate, predict,
export), or use the job service (worker, tokens, jobs, models: the service's URL is GROCERY_URL)."""

import argparse
import csv
import json
import sys
from pathlib import Path

from grocery.config import OFF_SWITCH, TRAIN_PARAMS
from grocery.results import RESULT_COLUMNS, Prediction, csv_values


def main(argv: list[str] | None = None, *, also: dict[str, str] | None = None) -> int:
    """``also``: commands another program runs under the same name, listed in --help (cli/)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(also or {}).parse_args(argv)
    # Imported here so `grocery --help` answers without loading torch.
    from grocery.artifact import ArtifactError
    from grocery.index import DatasetError
    from grocery.networks import WeightsError

    try:
        return args.run(args) or 0
    except (DatasetError, WeightsError, ArtifactError, FileNotFoundError, ValueError) as e:
        print(f"grocery: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser(also: dict[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grocery", description=__doc__.split("\n\n")[0].replace("\n", " "))
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model and write an artifact")
    train.add_argument("--output", required=True, help="artifact directory (also holds checkpoint.pt)")
    add_training_flags(train)
    train.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="CHECKPOINT",
        help="continue from a checkpoint (default: OUTPUT/checkpoint.pt)",
    )
    train.add_argument(
        "--onnx",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also export model.onnx and model.int8.onnx, checked against torch, for fast serving (default: on)",
    )
    train.set_defaults(run=run_train)

    evaluate = commands.add_parser("evaluate", help="accuracy of a model on a split")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--data-dir", help="default: the directory the model was trained on")
    evaluate.add_argument("--split", default="val", help="any split whose DATA_DIR/<split>.txt exists")
    evaluate.add_argument("--output-dir", help="where the confusion matrix goes (default: MODEL/eval-SPLIT)")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    _add_runtime_options(evaluate)
    evaluate.set_defaults(run=run_evaluate)

    predict = commands.add_parser("predict", help="classify image files and folders")
    predict.add_argument("--model", required=True)
    predict.add_argument("paths", nargs="+", metavar="PATH")
    predict.add_argument("--output", help="a .csv or .jsonl file (default: JSONL on stdout)")
    predict.add_argument("--no-recursive", dest="recursive", action="store_false")
    _add_runtime_options(predict)
    predict.set_defaults(run=run_predict)

    export = commands.add_parser("export", help="write the model for ONNX Runtime into its artifact")
    export.add_argument("--model", required=True)
    export.add_argument("--format", default="onnx", choices=["onnx", "onnx-int8"])
    export.add_argument("--data-dir", help="calibration images for onnx-int8 (default: the training data)")
    export.add_argument("--calibration-images", type=int, default=128)
    export.set_defaults(run=run_export)

    for name, about in also.items():
        commands.add_parser(name, help=about)
    return parser


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for each TrainConfig field that has one (grocery.config). Unset flags stay None: the
    run takes the default recipe, or a resumed run its checkpoint's settings."""
    for p in TRAIN_PARAMS.values():
        if p.cli is False:
            continue
        if p.kind is not bool:
            parser.add_argument(p.flag, type=p.kind, choices=p.choices, required=p.required, help=p.help)
        elif p.cli == OFF_SWITCH:
            off = "--no-" + p.flag.removeprefix("--")
            parser.add_argument(off, dest=p.name, action="store_const", const=False, help=p.help)
        else:
            parser.add_argument(p.flag, action=argparse.BooleanOptionalAction, default=None, help=p.help)


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime",
        default="auto",
        help="auto (default): the fastest engine that agrees with fp32 on this machine, measured once per model; "
        "or one by name: torch, onnx, onnx-int8, openvino, openvino-bf16, openvino-int8 (torch-fp16/bf16 on a GPU)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, help="inference threads (default: the cores this process may use)")
    parser.add_argument("--decode-threads", type=int, help="image decoding threads (default: one per core)")
    parser.add_argument("--max-pixels", type=int, help="refuse larger images (default: Pillow's limit, ~89 MP)")


def run_train(args) -> int:
    from grocery.engine import fit, resumed_config

    resume = Path(args.resume or args.output) if args.resume is not None else None
    given = {name: getattr(args, name) for name in TRAIN_PARAMS if getattr(args, name, None) is not None}
    config = resumed_config(resume, given)
    progress = TrainingProgress()
    result = fit(config, args.output, resume=resume, callback=progress)
    progress.close()
    if result.status == "completed" and args.onnx:
        from grocery.export import prepare_for_serving

        prepare_for_serving(args.output)  # ONNX fp32 and int8, checked; check images for the runtime chooser
    print(
        json.dumps(
            {
                "status": result.status,
                "epochs": result.epochs_done,
                "output": args.output,
                **{k: v for k, v in result.metrics.items() if k != "epoch"},
            }
        )
    )
    return 0


class TrainingProgress:
    """Per-step bar on a terminal, one line per epoch always (stderr)."""

    def __init__(self):
        self.bar = None

    def __call__(self, event: dict) -> bool:
        if event["kind"] == "step" and sys.stderr.isatty():
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(total=event["steps"], desc=f"epoch {event['epoch']}", leave=False)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{event['loss']:.3f}")
        elif event["kind"] == "plan":
            timed = ", ".join(f"{step} {seconds:.4f} s" for step, seconds in event.get("steps_timed", {}).items())
            print(
                f"time budget: {event['epochs']} epochs, about {event['seconds'] / 60:.1f} min"
                f" of the {event['seconds_left'] / 60:.1f} left, training steps {event['step']}"
                + (f" (an image: {timed})" if timed else ""),
                file=sys.stderr,
            )
        elif event["kind"] == "epoch":
            self.close()
            print(
                f"epoch {event['epoch']}/{event['epochs']}: train loss {event['train_loss']:.4f} "
                f"acc {event['train_acc']:.3f}, val top1 {event['val_top1']:.3f} top5 {event['val_top5']:.3f} "
                f"({event['train_seconds']:.0f}s, {event['train_images_per_s']:.1f} img/s)",
                file=sys.stderr,
            )
        return False

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _predictor(args):
    from grocery.predict import Predictor

    limits = {"max_pixels": args.max_pixels} if args.max_pixels else {}
    return Predictor.from_path(
        args.model,
        runtime=args.runtime,
        batch_size=args.batch_size,
        threads=args.threads,
        decode_threads=args.decode_threads,
        **limits,
    )


def run_evaluate(args) -> int:
    from grocery import evaluation, index

    predictor = _predictor(args)
    meta = predictor.artifact.metadata
    data_dir = Path(args.data_dir or meta["training"]["data_dir"])
    samples = index.read_split(data_dir, args.split, meta["label_level"], len(predictor.class_names))
    predictions = list(_with_progress(predictor.predict_files([s.path for s in samples]), len(samples)))
    top5 = [[t["class_id"] for t in p.top5] if p.top5 else None for p in predictions]
    metrics = evaluation.classification_metrics([s.label for s in samples], top5, predictor.class_names)
    out_dir = Path(args.output_dir or Path(args.model) / f"eval-{args.split}")
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluation.write_confusion_csv(out_dir / "confusion.csv", metrics["confusion"], predictor.class_names)
    evaluation.write_confusion_png(out_dir / "confusion.png", metrics["confusion"], predictor.class_names)
    summary = {
        "split": args.split,
        "data_dir": str(data_dir),
        "runtime": predictor.runtime,
        **{k: v for k, v in metrics.items() if k != "confusion"},
        "confusion_csv": str(out_dir / "confusion.csv"),
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"{args.split}: top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  "
        f"({metrics['count']} images, {metrics['errors']} unreadable, runtime {predictor.runtime})"
    )
    width = max(len(n) for n in predictor.class_names)
    for name, stats in metrics["per_class"].items():
        accuracy = "   n/a" if stats["accuracy"] is None else f"{stats['accuracy']:.3f}"
        print(f"  {name:<{width}}  {accuracy}  ({stats['support']})")
    print(f"confusion matrix: {out_dir / 'confusion.csv'}, {out_dir / 'confusion.png'}")
    return 0


def run_predict(args) -> int:
    from grocery.predict import iter_image_files

    predictor = _predictor(args)
    paths = list(iter_image_files(args.paths, recursive=args.recursive))
    rows = _with_progress(predictor.predict_files(paths), len(paths))
    failed = 0
    with PredictionWriter(args.output) as writer:
        for row in rows:
            failed += row.error is not None
            writer.write(row)
    print(f"{len(paths)} files, {failed} failed", file=sys.stderr)
    return 0


def _with_progress(rows, total: int):
    if not sys.stderr.isatty():
        return rows
    from tqdm import tqdm

    return tqdm(rows, total=total, unit="img")


class PredictionWriter:
    """Predictions as CSV (by a .csv extension: RESULT_COLUMNS, as the job service's exports) or JSON
    lines (as its result pages), to a file or stdout."""

    def __init__(self, output: str | None):
        self.output = output
        self.csv = output is not None and output.lower().endswith(".csv")

    def __enter__(self):
        self.file = open(self.output, "w", newline="") if self.output else sys.stdout
        if self.csv:
            self.writer = csv.writer(self.file)
            self.writer.writerow(RESULT_COLUMNS)
        return self

    def write(self, prediction: Prediction) -> None:
        if self.csv:
            self.writer.writerow(csv_values(prediction.to_row()))
        else:
            self.file.write(json.dumps(prediction.to_dict()) + "\n")

    def __exit__(self, *exc):
        if self.output:
            self.file.close()


def run_export(args) -> int:
    from grocery.export import export

    path = export(args.model, args.format, data_dir=args.data_dir, calibration_images=args.calibration_images)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
