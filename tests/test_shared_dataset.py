"""On the real Grocery Store Dataset (skipped where ../shared is absent)."""

import pytest
import torch

from grocery.artifact import load_artifact
from grocery.datasets import GroceryDataset
from grocery.engine import TrainConfig, fit
from grocery.index import read_split
from grocery.transforms import normalize

pytestmark = pytest.mark.dataset


@pytest.fixture(scope="module")
def one_epoch(shared_dataset, tmp_path_factory):
    """One epoch of the default recipe on a 320-image subset, step losses recorded."""
    losses = []
    config = TrainConfig(data_dir=str(shared_dataset), epochs=1, train_limit=320, val_limit=96, threads=2)
    output = tmp_path_factory.mktemp("shared-model")
    result = fit(config, output, callback=lambda e: losses.append(e["loss"]) if e["kind"] == "step" else None)
    return result, losses, output


def test_one_epoch_lowers_the_loss_and_beats_chance(one_epoch):
    result, losses, _ = one_epoch
    assert result.status == "completed" and len(losses) == 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    chance = 1 / 43
    assert result.metrics["val_top1"] > 5 * chance


def test_artifact_round_trip_gives_identical_logits_on_real_images(one_epoch, shared_dataset):
    result, _, output = one_epoch
    loaded, artifact = load_artifact(output)
    samples = read_split(shared_dataset, "val")[:16]
    batch = torch.stack([GroceryDataset(samples, 224)[i][0] for i in range(len(samples))])
    inputs = normalize(batch, artifact.preprocessing).contiguous(memory_format=torch.channels_last)
    trained = result.model.eval()
    loaded = loaded.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.equal(trained(inputs), loaded(inputs))
