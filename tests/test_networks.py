"""Architectures and pretrained weights: conversion, checks and offline errors."""

import hashlib

import pytest
import torch

from grocery.networks import (
    ARCHS,
    WeightsError,
    convert_lukemelas_efficientnet,
    create_model,
    freeze_stages,
    read_state_dict,
)


@pytest.mark.parametrize(
    "arch, sha256, blocks",
    [
        ("efficientnet_lite0", "57934424", 16),
        ("efficientnet_lite1", "77cc7160", 21),
        ("efficientnet_lite2", "9656183e", 21),
    ],
)
def test_packaged_efficientnet_weights_load_strictly_into_timm(arch, sha256, blocks):
    import timm

    path = ARCHS[arch].imagenet_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith(sha256)
    model = timm.create_model(f"tf_{arch}", pretrained=False)
    stages = [len(stage) for stage in model.blocks]
    assert sum(stages) == blocks and stages[0] == 1  # deeper than Lite0, with one first-stage block each
    converted = convert_lukemelas_efficientnet(read_state_dict(path), stages)
    model.load_state_dict(converted, strict=True)  # raises on any missing or unexpected key


def test_weights_with_more_blocks_than_the_architecture_are_refused():
    state = read_state_dict(ARCHS["efficientnet_lite2"].imagenet_file())
    with pytest.raises(WeightsError, match="more blocks than the architecture's 16"):
        convert_lukemelas_efficientnet(state, [1, 2, 2, 3, 3, 4, 1])


def test_imagenet_backbone_is_loaded_and_the_head_is_new():
    lite0_stages = [1, 2, 2, 3, 3, 4, 1]
    reference = convert_lukemelas_efficientnet(
        read_state_dict(ARCHS["efficientnet_lite0"].imagenet_file()), lite0_stages
    )
    model = create_model(43, "efficientnet_lite0", "imagenet")
    state = model.state_dict()
    assert torch.equal(state["blocks.3.1.conv_dw.weight"], reference["blocks.3.1.conv_dw.weight"])
    assert state["classifier.weight"].shape == (43, 1280)
    assert state["classifier.weight"].abs().max() < 0.1  # small init, not timm's ImageNet-sized one


def test_mobilenet_head_replaced_as_in_the_workshop():
    model = create_model(43, "mobilenet_v3_small", "none")
    assert model.classifier[3].out_features == 43 and model.classifier[3].in_features == 1024
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 43)


def test_mobilenet_imagenet_offline_names_the_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as error:
        create_model(43, "mobilenet_v3_small", "imagenet")
    message = str(error.value)
    assert "mobilenet_v3_small-047dcff4.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message


def test_mobilenet_imagenet_cache_is_hash_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    cached.parent.mkdir(parents=True)
    torch.save(create_model(1000, "mobilenet_v3_small", "none").state_dict(), cached)
    with pytest.raises(WeightsError, match="sha256 .* does not match the expected 047dcff4"):
        create_model(43, "mobilenet_v3_small", "imagenet")


def test_weights_from_a_file_keep_the_backbone(tmp_path):
    source = create_model(10, "mobilenet_v3_small", "none")
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = create_model(43, "mobilenet_v3_small", tmp_path / "w.pth")
    assert torch.equal(model.features[3].block[0][0].weight, source.features[3].block[0][0].weight)
    assert model.classifier[3].out_features == 43


def test_weights_that_do_not_fit_are_refused(tmp_path):
    torch.save(create_model(10, "mobilenet_v3_small", "none").state_dict(), tmp_path / "mobilenet.pth")
    with pytest.raises(WeightsError, match="does not fit efficientnet_lite0"):
        create_model(43, "efficientnet_lite0", tmp_path / "mobilenet.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="not a readable weights file"):
        create_model(43, "efficientnet_lite0", tmp_path / "junk.pth")
    with pytest.raises(WeightsError, match="not found"):
        create_model(43, "efficientnet_lite0", tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="unknown arch 'resnet'"):
        create_model(43, "resnet", "none")


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_freezing_stops_gradients_in_early_stages(arch):
    model = create_model(5, arch, "none")
    frozen = freeze_stages(model, arch, 3)
    assert len(frozen) == 3
    assert not model.conv_stem.weight.requires_grad and not model.blocks[1][0].conv_pw.weight.requires_grad
    assert model.blocks[2][0].conv_pw.weight.requires_grad and model.classifier.weight.requires_grad
