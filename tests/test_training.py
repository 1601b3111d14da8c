"""Training on the tiny generated dataset: artifacts, stop, resume, reproducibility."""

import dataclasses
import json
import time

import pytest
import torch
from safetensors.torch import load_file

from grocery import engine
from grocery.artifact import METADATA_NAME, WEIGHTS_NAME, ArtifactError, load_artifact, read_artifact
from grocery.config import DEFAULT_TIME_BUDGET
from grocery.engine import (
    CHECKPOINT_NAME,
    TrainConfig,
    TrainingSetup,
    checkpoint_config,
    fit,
    resolve_compile,
    resumed_config,
    seed_everything,
    train_one_epoch,
)


def test_artifact_is_self_describing(tiny_model, tiny_dataset):
    metadata = json.loads((tiny_model / METADATA_NAME).read_text())
    assert metadata["arch"] == "efficientnet_lite0"
    assert metadata["class_names"] == ["Apple", "Pear", "Milk"]
    assert metadata["label_level"] == "coarse"
    assert metadata["preprocessing"]["input_size"] == 64
    assert metadata["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert metadata["training"]["epochs"] == 3 and metadata["training"]["data_dir"] == str(tiny_dataset)
    assert [h["epoch"] for h in metadata["history"]] == [1, 2, 3]
    assert 0 <= metadata["metrics"]["val_top1"] <= 1
    assert len(metadata["data_fingerprint"]) == 16
    assert {"torch", "torchvision", "timm", "grocery"} <= set(metadata["versions"])


def test_artifact_round_trip_gives_identical_logits(tiny_model):
    model, artifact = load_artifact(tiny_model)
    again, _ = load_artifact(tiny_model)
    inputs = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(inputs), again(inputs))
    stored = load_file(str(tiny_model / WEIGHTS_NAME))
    assert all(torch.equal(stored[k], v) for k, v in model.state_dict().items())


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="not a model artifact"):
        read_artifact(tmp_path)


def test_training_learns_the_tiny_classes(tiny_model):
    history = read_artifact(tiny_model).metadata["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_callback_sees_progress_and_can_stop(tiny_config, tmp_path):
    events = []

    def stop_at_third_step(event):
        events.append(event)
        return event["kind"] == "step" and event["step"] == 3

    result = fit(tiny_config(), tmp_path, callback=stop_at_third_step)
    assert result.status == "stopped" and result.epochs_done == 0
    plan, *steps = events  # the default time budget's plan comes before the first step
    assert plan["kind"] == "plan" and [e["step"] for e in steps] == [1, 2, 3]
    assert all(e["kind"] == "step" and e["epoch"] == 1 and e["loss"] > 0 for e in steps)
    assert not (tmp_path / WEIGHTS_NAME).exists()  # a stopped run registers no model


def test_resume_continues_where_it_stopped(tiny_config, tmp_path):
    """Stop after epoch 1, resume: epoch 2 runs and the weights equal an uninterrupted run's."""
    config = tiny_config(decode_cache=True)
    assert fit(config, tmp_path / "whole").status == "completed"
    stopped = fit(config, tmp_path / "parted", callback=lambda e: e["kind"] == "epoch" and e["epoch"] == 1)
    assert stopped.status == "stopped" and stopped.epochs_done == 1
    assert torch.load(tmp_path / "parted" / CHECKPOINT_NAME, weights_only=True)["epoch"] == 1

    seen_epochs = []
    resumed = fit(
        config, tmp_path / "parted", resume=tmp_path / "parted", callback=lambda e: seen_epochs.append(e["epoch"])
    )
    assert resumed.status == "completed" and set(seen_epochs) == {2}
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    whole_weights = load_file(str(tmp_path / "whole" / WEIGHTS_NAME))
    resumed_weights = load_file(str(tmp_path / "parted" / WEIGHTS_NAME))
    assert all(torch.equal(whole_weights[k], resumed_weights[k]) for k in whole_weights)


def test_resume_keeps_the_decode_size_and_budget_a_checkpoint_was_trained_with(tiny_config, tmp_path):
    """A checkpoint from before train_decode_scale cropped from input-size decodes, and resumes so;
    one from before the default budget trained every epoch it was given."""
    config = tiny_config(train_decode_scale=1.5)
    fit(config, tmp_path, callback=lambda e: e["kind"] == "epoch" and e["epoch"] == 1)
    assert checkpoint_config(tmp_path)["train_decode_scale"] == 1.5
    assert checkpoint_config(tmp_path)["time_budget"] == DEFAULT_TIME_BUDGET
    checkpoint = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    del checkpoint["config"]["train_decode_scale"]
    checkpoint["config"]["time_budget"] = None
    torch.save(checkpoint, tmp_path / CHECKPOINT_NAME)
    assert checkpoint_config(tmp_path)["train_decode_scale"] == 1.0
    assert checkpoint_config(tmp_path)["time_budget"] == 0


def test_a_resumed_run_keeps_its_checkpoints_settings_over_the_defaults(tiny_config, tmp_path):
    """A worker resumes a job whose params name only what the user gave: the rest comes from the
    checkpoint, not from defaults that an upgrade between the attempts may have changed."""
    config = tiny_config(epochs=3, train_decode_scale=1.5)
    fit(config, tmp_path, callback=lambda e: e["kind"] == "epoch" and e["epoch"] == 1)
    assert TrainConfig(data_dir="d").epochs != 3 and TrainConfig(data_dir="d").train_decode_scale != 1.5
    resumed = resumed_config(tmp_path, {"data_dir": "/elsewhere"})
    assert (resumed.epochs, resumed.train_decode_scale, resumed.arch) == (3, 1.5, "mobilenet_v3_small")
    assert resumed.data_dir == "/elsewhere"  # this machine's copy of the dataset
    assert resumed_config(tmp_path, {"epochs": 4}).epochs == 4  # what is given still wins
    assert resumed_config(None, {"data_dir": "d"}) == TrainConfig(data_dir="d")


def test_same_seed_same_model(tiny_config, tmp_path):
    config = tiny_config(epochs=1, decode_cache=False)
    fit(config, tmp_path / "a")
    fit(config, tmp_path / "b")
    a, b = (load_file(str(tmp_path / d / WEIGHTS_NAME)) for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fine_labels(tiny_config, tmp_path):
    fit(tiny_config(epochs=1, label_level="fine"), tmp_path)
    assert read_artifact(tmp_path).class_names == ["Red-Apple", "Pink-Apple", "Green-Pear", "Blue-Milk"]


def test_training_crops_are_cut_from_photos_decoded_larger_than_the_input(tiny_config, tmp_path):
    config = tiny_config(train_decode_scale=1.5, epochs=1)
    setup = TrainingSetup(config)
    assert setup.train_set.cache.shape[2:] == (96, 96)  # what crops are cut from
    assert setup.train_set[0][0].shape == (3, 64, 64)  # what the model trains on
    assert setup.val_set.cache.shape[2:] == (64, 64)  # what it is validated on, as it will serve
    fit(config, tmp_path)
    artifact = read_artifact(tmp_path)
    assert artifact.preprocessing.input_size == 64
    assert artifact.metadata["training"]["train_decode_scale"] == 1.5


def test_unknown_parameter_is_refused(tiny_dataset):
    with pytest.raises(ValueError, match="unknown training parameters: \\['learning_rat'\\]"):
        TrainConfig.from_dict({"data_dir": str(tiny_dataset), "learning_rat": 0.1})


@pytest.mark.parametrize("options", [{"mix": 1.0}, {"loader_workers": 1}, {"decode_cache": False}])
def test_training_options_complete(tiny_config, tmp_path, options):
    result = fit(tiny_config(epochs=1, **options), tmp_path)
    assert result.status == "completed"
    assert 0 < result.metrics["train_loss"] < 10 and 0 <= result.metrics["val_top1"] <= 1


def test_progressive_resizing_grows_the_crops_to_the_input_size(tiny_config, tmp_path):
    config = tiny_config(epochs=4, input_size=64, min_input_size=32)
    assert [config.epoch_input_size(e) for e in range(1, 5)] == [32, 32, 48, 64]  # the last quarter at full size
    result = fit(config, tmp_path)
    assert [h["input_size"] for h in result.history] == [32, 32, 48, 64]
    assert read_artifact(tmp_path).preprocessing.input_size == 64  # it serves at the full size
    with pytest.raises(ValueError, match=r"min_input_size \(64\) must be below input_size \(64\)"):
        fit(tiny_config(min_input_size=64), tmp_path / "not-growing")


def test_a_time_budget_plans_the_epochs_and_records_them(tiny_config, tmp_path):
    events = []
    config = tiny_config(epochs=1000, time_budget=0.1)  # 6 s for what would take many minutes
    result = fit(config, tmp_path / "budget", callback=lambda e: events.append(e) if e["kind"] == "plan" else None)
    [plan] = events
    assert 1 <= plan["epochs"] < 1000 and plan["seconds"] <= plan["seconds_left"] < 6
    assert result.epochs_done == len(result.history) == plan["epochs"]
    recorded = read_artifact(tmp_path / "budget").metadata["training"]
    assert recorded["epochs"] == plan["epochs"] and recorded["time_budget"] == 0.1
    # The recorded settings without the budget train the same model: the plan drew no random numbers.
    fit(tiny_config(epochs=plan["epochs"], time_budget=0), tmp_path / "again")
    a, b = (load_file(str(tmp_path / d / WEIGHTS_NAME)) for d in ("budget", "again"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_budgeted_run_resumes_with_its_planned_epochs(tiny_config, tmp_path):
    events = []

    def stop_after_the_first_epoch(event):
        events.append(event)
        return event["kind"] == "epoch"

    fit(tiny_config(epochs=1000, time_budget=0.1), tmp_path, callback=stop_after_the_first_epoch)
    [plan] = [e for e in events if e["kind"] == "plan"]
    # Resumed, it trains the epochs it planned: 1,000 were their bound; epochs given anew are asked for.
    resumed = resumed_config(tmp_path, {"time_budget": 0.1})
    assert resumed.epochs == plan["epochs"] < 1000 and resumed_config(tmp_path, {"epochs": 7}).epochs == 7
    result = fit(
        resumed, tmp_path, resume=tmp_path, callback=lambda e: e["kind"] == "plan" and pytest.fail("re-planned")
    )
    assert result.epochs_done == plan["epochs"]


def test_the_default_budget_keeps_every_epoch_that_fits_and_0_plans_none(tiny_config, tmp_path):
    assert TrainConfig(data_dir="d").time_budget == DEFAULT_TIME_BUDGET  # the default recipe plans its epochs
    for budget, planned in ((DEFAULT_TIME_BUDGET, [2]), (0, [])):
        plans = []
        result = fit(tiny_config(epochs=2, time_budget=budget), tmp_path / str(budget), callback=plans.append)
        assert result.epochs_done == 2 and [e["epochs"] for e in plans if e["kind"] == "plan"] == planned


def test_auto_compiles_long_fp32_runs_on_the_cpu(tiny_config):
    cpu, pool_steps = torch.device("cpu"), 2936 // 32
    default = tiny_config(input_size=224, epochs=16, batch_size=32)
    assert resolve_compile(default, cpu, None, pool_steps)
    assert not resolve_compile(default, cpu, torch.bfloat16, pool_steps)  # bf16 steps gained nothing
    assert not resolve_compile(default, torch.device("cuda"), None, pool_steps)
    assert not resolve_compile(default, cpu, None, 10)  # 5,120 images: the minute's compiling would not repay
    assert not resolve_compile(dataclasses.replace(default, input_size=112), cpu, None, pool_steps)  # a quarter
    assert not resolve_compile(dataclasses.replace(default, time_budget=5), cpu, None, pool_steps)
    assert not resolve_compile(dataclasses.replace(default, min_input_size=128), cpu, None, pool_steps)
    assert resolve_compile(dataclasses.replace(default, time_budget=28), cpu, None, pool_steps)
    assert resolve_compile(dataclasses.replace(default, time_budget=0), cpu, None, pool_steps)  # no budget
    assert not resolve_compile(dataclasses.replace(default, compile="off"), cpu, None, pool_steps)
    assert resolve_compile(dataclasses.replace(default, compile="on"), cpu, torch.bfloat16, 1)
    with pytest.raises(ValueError, match="compile must be one of auto, on, off, not 'yes'"):
        resolve_compile(dataclasses.replace(default, compile="yes"), cpu, None, 1)


def test_auto_times_bf16_against_fp32_compiled_and_trains_with_the_faster(tiny_config, monkeypatch):
    """Where bf16 is native and a run is long enough to compile, "auto" times both steps, keeps the faster
    and the plan says which and why. (bf16 runs on any CPU, emulated where not native: so it runs here.)"""
    monkeypatch.setattr(engine, "native_bf16", lambda device: True)
    setup = TrainingSetup(tiny_config(epochs=100_000, time_budget=0))  # long enough to compile
    assert set(setup.step_seconds) == {"bf16", "fp32 compiled"}
    fastest = min(setup.step_seconds, key=setup.step_seconds.get)
    assert setup.compiled == (fastest == "fp32 compiled") == (setup.autocast_dtype is None)
    assert setup.config.precision == fastest.split()[0]  # recorded: the run given its record trains the same steps
    plan = engine.plan_epochs(setup, time.perf_counter() + 60)
    assert plan["step"] == fastest and plan["steps_timed"] == pytest.approx(setup.step_seconds, abs=1e-5)
    # A short run, or one that names its precision or compiling, trains as it is told without timing anything.
    for config in (tiny_config(epochs=2), tiny_config(epochs=100_000, time_budget=0, precision="bf16")):
        setup = TrainingSetup(config)
        assert setup.step_seconds == {} and setup.autocast_dtype == torch.bfloat16 and not setup.compiled
    setup = TrainingSetup(tiny_config(epochs=100_000, time_budget=0, compile="on"))
    assert setup.step_seconds == {} and setup.autocast_dtype == torch.bfloat16 and setup.compiled


def test_compiled_training_steps_train_as_eager_ones(tiny_config):
    losses = {}
    for mode in ("off", "on"):
        seed_everything(0)
        setup = TrainingSetup(tiny_config(compile=mode, precision="fp32"))
        assert setup.compiled == (mode == "on") and (setup.forward is setup.model) == (mode == "off")
        assert setup.config.compile == mode  # what the artifact records
        losses[mode] = train_one_epoch(setup, 1)["train_loss"]
    # The same batches, augmentations and steps (the trial compile drew no numbers), fused kernels' rounding.
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-4)


def test_where_compiling_fails_the_run_trains_uncompiled(tiny_config, tmp_path, monkeypatch, caplog):
    from torch._inductor import config as inductor

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing compiled before
    with inductor.patch({"cpp.cxx": (str(tmp_path / "no-compiler"),)}):  # a machine without a C++ compiler
        setup = TrainingSetup(tiny_config(compile="on", precision="fp32", input_size=48))
    assert not setup.compiled and setup.forward is setup.model and setup.config.compile == "off"
    assert "torch.compile failed here, training uncompiled" in caplog.text
    assert train_one_epoch(setup, 1)["train_loss"] > 0


def test_white_balance_tints_each_channel_within_its_bounds():
    from grocery.transforms import WhiteBalance

    grey = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    torch.manual_seed(0)
    tinted = [WhiteBalance(0.2)(grey)[:, 0, 0].tolist() for _ in range(50)]
    assert all(80 <= v <= 120 for pixel in tinted for v in pixel)
    assert any(len(set(pixel)) == 3 for pixel in tinted)  # the channels move apart: a tint, not brightness
