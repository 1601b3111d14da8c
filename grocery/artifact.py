"""Self-describing model artifacts: a directory with weights and metadata.

``model.safetensors`` holds the weights (no pickle, so loading runs no code);
``metadata.json`` holds everything else needed to use them: arch, class names in
id order, label level, preprocessing, training parameters, metrics, a fingerprint
of the training data and library versions, and ``fine_to_coarse`` for a coarse
classifier read from a fine-class head. ``load_artifact`` needs nothing else.
"""

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import grocery
from grocery.networks import FineToCoarse, create_model
from grocery.transforms import Preprocessing

WEIGHTS_NAME = "model.safetensors"
METADATA_NAME = "metadata.json"
ONNX_NAMES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "download": "model.download.onnx"}
CHECK_IMAGES_NAME = "check_images.safetensors"
# Training's epoch checkpoint, kept in the artifact's folder: read by a resumed run, never by serving.
CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


class ArtifactError(ValueError):
    """A directory that is not a usable model artifact."""


@dataclass
class Artifact:
    path: Path
    metadata: dict

    @property
    def arch(self) -> str:
        return self.metadata["arch"]

    @property
    def class_names(self) -> list[str]:
        return self.metadata["class_names"]

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.metadata["preprocessing"])

    def onnx_path(self, fmt: str = "onnx") -> Path:
        return self.path / ONNX_NAMES[fmt]

    def build_model(self) -> nn.Module:
        fine_to_coarse = self.metadata.get("fine_to_coarse")
        if fine_to_coarse is None:
            model = create_model(len(self.class_names), self.arch, "none")
        else:  # coarse classes read from a fine-class head: still a plain coarse classifier outside
            model = FineToCoarse(create_model(len(fine_to_coarse), self.arch, "none"), fine_to_coarse)
        model.load_state_dict(load_file(str(self.path / WEIGHTS_NAME)))
        return model.eval()


def save_artifact(
    directory: str | Path,
    model: nn.Module,
    *,
    arch: str,
    class_names: list[str],
    label_level: str,
    preprocessing: Preprocessing,
    training: dict,
    metrics: dict,
    history: list[dict],
    data_fingerprint: str,
    fine_to_coarse: list[int] | None = None,
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # safetensors wants plain contiguous tensors; channels_last weights are strided.
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(directory / WEIGHTS_NAME))
    metadata = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "label_level": label_level,
        "preprocessing": preprocessing.to_dict(),
        "training": training,
        "metrics": metrics,
        "history": history,
        "data_fingerprint": data_fingerprint,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": library_versions(),
    }
    if fine_to_coarse is not None:
        metadata["fine_to_coarse"] = list(fine_to_coarse)
    (directory / METADATA_NAME).write_text(json.dumps(metadata, indent=2) + "\n")
    return directory


def read_artifact(directory: str | Path) -> Artifact:
    """Read and check an artifact's metadata; weights are loaded by ``build_model``."""
    directory = Path(directory)
    meta_path = directory / METADATA_NAME
    if not meta_path.is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise ArtifactError(f"{directory} is not a model artifact (needs {METADATA_NAME} and {WEIGHTS_NAME})")
    try:
        metadata = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{meta_path}: invalid JSON ({e})") from None
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{meta_path}: unsupported format_version {metadata.get('format_version')!r}")
    return Artifact(directory, metadata)


def serving_file(name: str) -> bool:
    """Whether serving reads a file of an artifact's folder (what a copy for serving needs)."""
    return name not in (CHECKPOINT_NAME, ONNX_NAMES["download"])  # the download graph is for users, not serving


def update_metadata(directory: str | Path, **entries) -> dict:
    """Add or replace top-level entries of an artifact's metadata.json (written whole, atomically)."""
    meta_path = Path(directory) / METADATA_NAME
    metadata = {**json.loads(meta_path.read_text()), **entries}
    partial = meta_path.with_suffix(".partial")
    partial.write_text(json.dumps(metadata, indent=2) + "\n")
    partial.replace(meta_path)
    return metadata


def load_artifact(directory: str | Path) -> tuple[nn.Module, Artifact]:
    artifact = read_artifact(directory)
    return artifact.build_model(), artifact


def library_versions() -> dict:
    import timm
    import torchvision

    return {
        "grocery": grocery.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }
