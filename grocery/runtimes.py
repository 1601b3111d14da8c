"""Serving runtimes, and choosing among them by measurement on the machine that serves.

One artifact can run on several engines: torch eager, ONNX Runtime on the fp32 or the int8 (static
QDQ) graph, OpenVINO on the same graphs in fp32, bf16 or int8, and on a GPU torch with fp16 or bf16
autocast. Which is fastest depends on the CPU (Intel Sapphire Rapids has AMX, AMD Zen 5 has
avx512_bf16 and VNNI) and on the threads a worker has, so no rule fixed in advance picks well.
``choose`` times every variant the machine can run, at several inference batch sizes, on the
model's own check images, accepts only those whose top-1 agrees with torch fp32 on at least
``AGREEMENT_THRESHOLD`` of them, and the fastest accepted one serves, at its fastest batch size.
The choice is cached in the artifact, per machine, and made by one process at a time
(``choose_cached``): the processes that share a machine serve on the same variant. A measurement is
a sequence of short steps (building an engine, timing one batch size, one batch of the agreement
check): a service runs each while its machine is quiet (grocery.machine_lock), and each timing is
repeated, its spread recorded and the timing taken again where the spread shows noise.
"""

import contextlib
import fcntl
import functools
import importlib.util
import json
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from grocery.artifact import Artifact
from grocery.machine_lock import MeasurementStopped
from grocery.transforms import normalize

# Names a user may ask for (`--runtime`); "auto" asks `choose`.
RUNTIMES = ("torch", "torch-fp16", "torch-bf16", "onnx", "onnx-int8", "openvino", "openvino-bf16", "openvino-int8")
AGREEMENT_THRESHOLD = 0.995
CHOICES_NAME = "runtimes.json"
CHOICES_LOCK_NAME = ".runtimes.lock"  # beside CHOICES_NAME: held while one process measures
# The graph each variant reads: None is the torch module itself.
GRAPH = {
    "torch": None,
    "torch-fp16": None,
    "torch-bf16": None,
    "onnx": "onnx",
    "onnx-int8": "onnx-int8",
    "openvino": "onnx",
    "openvino-bf16": "onnx",
    "openvino-int8": "onnx-int8",
}
# The module each provisional variant runs on.
ENGINE_MODULES = {"openvino": "openvino", "onnx": "onnxruntime"}
# Variants that compute in fp32 like torch: without check images they are the only ones trusted.
FP32_VARIANTS = ("torch", "onnx", "openvino")
# A timing is the best of TIMING_REPEATS runs; where their spread ((best - worst) / best) is above
# NOISY_SPREAD something else had the cores, and the timing is taken again, NOISY_RETRIES times at most.
TIMING_REPEATS = 3
NOISY_SPREAD = 0.1
NOISY_RETRIES = 2
# What serves before a machine has measured a model: an fp32 variant of the exported graph (checked
# against torch when it was exported), the first of these that is installed, else torch; at a small
# inference batch (ONNX Runtime fp32 ran 64 img/s at batch 8 against 28 at 64 on one thread of an AMD
# EPYC); a GPU, torch at its largest. OpenVINO fp32 was the faster of the two on every CPU measured:
# 89.4 and 103.0 img/s against 71.9 and 82.1 on AMD EPYCs, 112.3 against 83.1 on an Intel Xeon with AMX.
PROVISIONAL_VARIANTS = ("openvino", "onnx")
PROVISIONAL_INFERENCE_BATCH = 8
# The CPU flags that decide which reduced-precision kernels exist; part of the machine's identity.
PRECISION_FLAGS = ("avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "avx512_vnni", "avx_vnni", "avx512f", "avx2")

Engine = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N, 3, S, S) -> class probabilities (N, C)
PostProcess = Callable[[torch.Tensor], torch.Tensor]  # an exported graph's logits -> class probabilities


class RuntimeUnavailable(RuntimeError):
    """A variant this artifact or machine cannot run (no exported graph, no such instructions)."""


def cuda_available() -> bool:
    return torch.cuda.is_available()


def build_engine(artifact: Artifact, name: str, *, threads: int) -> Engine:
    """An inference function for one runtime variant; raises RuntimeUnavailable when it cannot run here."""
    if name not in RUNTIMES:
        raise ValueError(f"runtime must be one of {('auto', *RUNTIMES)}, not {name!r}")
    graph = GRAPH[name]
    if graph is not None and not artifact.onnx_path(graph).is_file():
        raise FileNotFoundError(
            f"{artifact.onnx_path(graph)} not found: "
            f"run `grocery export --model {artifact.path} --format {graph}` first"
        )
    if name.startswith("torch"):
        dtype = {"torch": None, "torch-fp16": torch.float16, "torch-bf16": torch.bfloat16}[name]
        return _torch_engine(artifact, dtype)
    if name.startswith("onnx"):
        return _onnx_engine(artifact, artifact.onnx_path(graph), threads)
    precision = "bf16" if name == "openvino-bf16" else "f32"
    return _openvino_engine(artifact, artifact.onnx_path(graph), precision, threads)


def _torch_engine(artifact: Artifact, dtype: torch.dtype | None) -> Engine:
    device = torch.device("cuda" if cuda_available() else "cpu")
    if dtype is torch.float16 and device.type != "cuda":
        raise RuntimeUnavailable("fp16 autocast is for GPUs")
    model = artifact.build_model().to(device, memory_format=torch.channels_last)
    pre = artifact.preprocessing

    @torch.inference_mode()
    def infer(batch_u8: torch.Tensor) -> torch.Tensor:
        inputs = normalize(batch_u8.to(device, non_blocking=True), pre).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(inputs)
        return logits.float().softmax(1).cpu()

    return infer


def class_probabilities(artifact: Artifact) -> PostProcess:
    """What turns the exported graph's logits into the artifact's class probabilities.

    A FineToCoarse model exports its fine network only (grocery.export.graph_module): each coarse
    class's probability is then the sum of its fine classes' softmax probabilities, which is what
    torch serves (softmax of FineToCoarse's log summed probabilities). A graph whose output is
    already as wide as the classes (a plain classifier, or an older export holding the coarse step)
    gets a plain softmax.
    """
    fine_to_coarse = artifact.metadata.get("fine_to_coarse")
    if fine_to_coarse is None:
        return _softmax
    coarse = len(artifact.class_names)
    member = torch.zeros(len(fine_to_coarse), coarse, dtype=torch.float32)  # (fine, coarse), 0 or 1
    member[torch.arange(len(fine_to_coarse)), torch.tensor(fine_to_coarse)] = 1.0

    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != len(fine_to_coarse):
            return _softmax(logits)
        return logits.float().softmax(1) @ member

    return probabilities


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(1)


def _onnx_engine(artifact: Artifact, path: Path, threads: int) -> Engine:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning ORT threads would steal the cores the decode threads need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # not a warning per unused initializer of an exported graph
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    pre, probabilities = artifact.preprocessing, class_probabilities(artifact)

    def infer(batch_u8: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run(None, {"input": normalize(batch_u8, pre).numpy()})
        return probabilities(torch.from_numpy(logits))

    return infer


_OPENVINO_LOCK = threading.Lock()
_openvino_core = None  # see openvino_core


def openvino_core():
    """The process's one OpenVINO Core, kept until the process exits.

    Each Core creates its own CPU plugin, and on Linux each CPU plugin installs a fresh alternate
    signal stack (sigaltstack, an mmap'd block) on the thread that creates it, remembering the
    previous one; released, it unmaps its block and restores the previous stack if its own is still
    current. That is only sound when plugins are released in the reverse order of their creation:
    engines released in another order (the runtime chooser's, Predictors dropped by the garbage
    collector or evicted from a cache) left the thread's alternate stack pointing at unmapped
    memory, and the next signal caught on that stack killed the process with SIGSEGV (the kernel's,
    as it cannot write the signal frame; faulthandler, itself on that stack, prints nothing).
    Python installs every handler with SA_ONSTACK: the SIGCHLD handler a torch DataLoader with
    workers sets did it in the test suite. With one Core there is one plugin and one stack, never
    unmapped while the process runs. Compiled models still take their own settings (threads, precision).
    Not for use across fork: a forked child must not use its parent's Core (the service's workers
    are started with exec, and a DataLoader's forked workers never infer).
    """
    global _openvino_core
    with _OPENVINO_LOCK:  # two threads loading their first models must not make two Cores
        if _openvino_core is None:
            import openvino as ov

            _openvino_core = ov.Core()
        return _openvino_core


def _openvino_engine(artifact: Artifact, path: Path, precision: str, threads: int) -> Engine:
    try:
        core = openvino_core()
    except ImportError:
        raise RuntimeUnavailable("OpenVINO is not installed (pip install openvino)") from None
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if precision == "bf16" and "BF16" not in capabilities:
        raise RuntimeUnavailable("this CPU has no bf16 instructions (avx512_bf16 or AMX)")
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": precision,
        "NUM_STREAMS": 1,
        # Pinning would fight the other worker processes sharing this machine's cores.
        "ENABLE_CPU_PINNING": False,
    }
    compiled = core.compile_model(_uint8_input(core.read_model(str(path)), artifact.preprocessing), "CPU", config)
    request = compiled.create_infer_request()
    probabilities = class_probabilities(artifact)

    def infer(batch_u8: torch.Tensor) -> torch.Tensor:
        request.infer({0: batch_u8.contiguous().numpy()})
        # The output tensor is the request's own buffer, overwritten by the next call: copy it.
        logits = torch.from_numpy(np.array(request.get_output_tensor(0).data, dtype=np.float32))
        return probabilities(logits)

    return infer


def _uint8_input(model, pre):
    """The graph taking uint8 pixels, normalised inside it: OpenVINO folds the mean and scale into the
    first convolution, where torch would write and read a float copy of every batch first."""
    from openvino import Layout, Type
    from openvino.preprocess import PrePostProcessor

    steps = PrePostProcessor(model)
    steps.input().tensor().set_element_type(Type.u8).set_layout(Layout("NCHW"))
    steps.input().model().set_layout(Layout("NCHW"))
    steps.input().preprocess().convert_element_type(Type.f32).mean([m * 255 for m in pre.mean]).scale(
        [s * 255 for s in pre.std]
    )
    return steps.build()


@functools.cache
def machine_key(threads: int) -> str:
    """What decides a runtime's speed here: the processor, its precision instructions, the threads."""
    if cuda_available():
        return f"cuda:{torch.cuda.get_device_name(0)}|threads={threads}"
    name, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    present = ",".join(f for f in PRECISION_FLAGS if f in flags)
    return f"cpu:{name}|{present}|threads={threads}"


def candidates(artifact: Artifact) -> list[str]:
    """The variants worth timing on this machine: the GPU's on a GPU, the CPU's otherwise."""
    if cuda_available():
        return ["torch", "torch-fp16", "torch-bf16"]
    return [
        n
        for n in RUNTIMES
        if not n.startswith("torch-") and (GRAPH[n] is None or artifact.onnx_path(GRAPH[n]).is_file())
    ]


def inference_batches(batch_size: int) -> list[int]:
    """The batch sizes a variant is timed at: 4, 8 and 16 where below the worker's batch, and that batch.

    A worker reads and writes results 64 files at a time, but on a CPU a smaller batch can infer
    faster: its activations stay in the core's cache. One thread of OpenVINO on EfficientNet-Lite0
    ran 148-164 img/s at batches of 4-8 against 113-121 at 64 on an AMD EPYC with avx512_bf16;
    a GPU wants the largest. So the size is measured with the variant, not fixed.
    """
    return [size for size in (4, 8, 16) if size < batch_size] + [batch_size]


def in_batches_of(engine: Engine, size: int) -> Engine:
    """The engine called on slices of at most ``size`` images, the slices' probabilities joined."""

    def infer(batch_u8: torch.Tensor) -> torch.Tensor:
        if len(batch_u8) <= size:
            return engine(batch_u8)
        return torch.cat([engine(part) for part in batch_u8.split(size)])

    return infer


@dataclass
class Choice:
    runtime: str
    record: dict  # what was measured: every variant's speed and agreement, the machine, when
    measured: bool = False  # measured by this call, not read from a record of an earlier one

    @property
    def inference_batch(self) -> int:
        """The batch size the chosen variant infers at (a worker's batch is cut into such slices)."""
        return self.record["inference_batch"]

    @property
    def provisional(self) -> bool:
        """Served before the machine measured (``provisional``), not measured."""
        return bool(self.record.get("provisional"))


def provisional(artifact: Artifact, *, threads: int, batch_size: int = 64) -> Choice:
    """What serves until this machine has measured the artifact's runtimes, measuring nothing: an fp32
    variant, which needs no agreement check (PROVISIONAL_VARIANTS on the exported graph, else torch)."""
    if cuda_available():
        runtime, batch = "torch", batch_size
    else:
        installed = [n for n in PROVISIONAL_VARIANTS if importlib.util.find_spec(ENGINE_MODULES[n]) is not None]
        exported = artifact.onnx_path(GRAPH["onnx"]).is_file()
        runtime = installed[0] if exported and installed else "torch"
        batch = min(PROVISIONAL_INFERENCE_BATCH, batch_size)
    record = {"runtime": runtime, "inference_batch": batch, "machine": machine_key(threads), "provisional": True}
    return Choice(runtime, record)


class Unlocked:
    """The steps of a measurement that runs them as they come (``grocery predict --runtime auto``): a
    service runs them in grocery.machine_lock's quiet windows instead."""

    def step(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def summary(self) -> dict:
        return {"exclusive": False}


def choose(
    artifact: Artifact,
    *,
    threads: int,
    batch_size: int = 64,
    check_images: torch.Tensor | None = None,
    names: list[str] | None = None,
    min_seconds: float = 0.25,
    steps=None,
) -> Choice:
    """Time each variant at each of ``inference_batches`` (``min_seconds`` each) and check it against
    torch fp32 on the check images; the fastest accepted variant wins, at its fastest batch size.

    Torch fp32 is the reference and always accepted. A variant that fails to build or run is
    recorded with its error and skipped. ``names`` limits the variants tried (default: ``candidates``).
    Without check images (an artifact whose validation photos are gone) only fp32 variants serve.
    ``steps`` runs each step of the work (``step()``, a context) and says how (``summary()``); default
    ``Unlocked``. The record says how quiet the machine was: its load before and after, the timings'
    largest spread, how many were taken again, and the steps' summary.
    """
    steps = steps or Unlocked()
    load_before = os.getloadavg()
    images, reference = (check_images, None) if check_images is not None else load_check_images(artifact)
    timing = (
        images[:batch_size]
        if len(images)
        else torch.randint(0, 256, (batch_size, *images.shape[1:]), dtype=torch.uint8)
    )
    # Torch fp32 is the reference: its labels come stored with the check images, or are computed here.
    with steps.step():
        reference_engine = build_engine(artifact, "torch", threads=threads)  # raises: the model cannot serve at all
    reference = reference if reference is not None else top1(reference_engine, images, batch_size, steps)
    variants = {"torch": speeds(reference_engine, timing, min_seconds, steps)}
    variants["torch"] |= {"agreement": 1.0 if len(images) else None, "accepted": True}
    for name in names or candidates(artifact):
        if name != "torch":
            variants[name] = measure(artifact, name, threads, timing, images, reference, batch_size, min_seconds, steps)
    accepted = [n for n, v in variants.items() if v["accepted"]]
    best = max(accepted, key=lambda n: variants[n]["images_per_s"])
    record = {
        "runtime": best,
        "inference_batch": variants[best]["inference_batch"],
        "machine": machine_key(threads),
        "threads": threads,
        "batch_size": batch_size,
        "threshold": AGREEMENT_THRESHOLD,
        "check_images": len(images),
        "variants": variants,
        "quiet": quietness(variants, load_before, steps),
        "chosen_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return Choice(best, record, measured=True)


def quietness(variants: dict, load_before: tuple[float, ...], steps) -> dict:
    """How quiet the machine was while it was measured: what tells a trustworthy record from noise."""
    timed = [v for v in variants.values() if "spread_by_batch" in v]
    return {
        "load_before": [round(load, 2) for load in load_before],
        "load_after": [round(load, 2) for load in os.getloadavg()],
        "max_spread": max((s for v in timed for s in v["spread_by_batch"].values()), default=None),
        "retimed": sum(v["retimed"] for v in timed),
        **steps.summary(),
    }


def measure(
    artifact: Artifact,
    name: str,
    threads: int,
    timing: torch.Tensor,
    images: torch.Tensor,
    reference: torch.Tensor,
    batch_size: int,
    min_seconds: float,
    steps,
) -> dict:
    """One variant's speed and agreement with the reference, and whether it may serve."""
    try:
        with steps.step():
            engine = build_engine(artifact, name, threads=threads)
        speed = speeds(engine, timing, min_seconds, steps)
        # Agreement as it would serve: a batch size can change the kernels, and so the rounding.
        labels = top1(in_batches_of(engine, speed["inference_batch"]), images, batch_size, steps)
    except MeasurementStopped:
        raise
    except Exception as e:  # an engine that cannot run here is one refused variant, never a failed load
        return {"accepted": False, "error": f"{type(e).__name__}: {e}"}
    if not len(images):  # nothing to compare on: trust only what computes in fp32 as torch does
        return {**speed, "agreement": None, "accepted": name in FP32_VARIANTS}
    agreement = float((labels == reference).float().mean())
    return {**speed, "agreement": round(agreement, 4), "accepted": agreement >= AGREEMENT_THRESHOLD}


def speeds(engine: Engine, timing: torch.Tensor, min_seconds: float, steps=None) -> dict:
    """A variant's images per second at its fastest inference batch size, and at each size tried,
    with each timing's spread and how many timings were taken again."""
    steps = steps or Unlocked()
    timed = {size: timed_quietly(engine, timing[:size], min_seconds, steps) for size in inference_batches(len(timing))}
    by_batch = {size: round(speed, 1) for size, (speed, _, _) in timed.items()}
    fastest = max(by_batch, key=by_batch.get)
    return {
        "images_per_s": by_batch[fastest],
        "inference_batch": fastest,
        "images_per_s_by_batch": {str(size): speed for size, speed in by_batch.items()},
        "spread_by_batch": {str(size): round(spread, 3) for size, (_, spread, _) in timed.items()},
        "retimed": sum(retimed for _, _, retimed in timed.values()),
    }


def timed_quietly(engine: Engine, batch: torch.Tensor, min_seconds: float, steps) -> tuple[float, float, int]:
    """Images per second at one batch size: the best of TIMING_REPEATS timings, their spread,
    and how many times it was taken again because the spread showed noise (the least noisy one is kept)."""
    with steps.step():
        engine(batch)  # warm-up: first-call allocations and graph compilation are not throughput
    kept, retimed = None, -1
    while kept is None or (kept[1] > NOISY_SPREAD and retimed < NOISY_RETRIES):
        retimed += 1
        rates = []
        for _ in range(TIMING_REPEATS):  # a step each: a task that arrives waits for one of them at most
            with steps.step():
                rates.append(images_per_second(engine, batch, min_seconds / TIMING_REPEATS))
        spread = (max(rates) - min(rates)) / max(rates)
        if kept is None or spread < kept[1]:
            kept = (max(rates), spread)
    return kept[0], kept[1], retimed


def images_per_second(engine: Engine, batch: torch.Tensor, min_seconds: float) -> float:
    runs, start = 0, time.perf_counter()
    while runs < 1 or time.perf_counter() - start < min_seconds:
        engine(batch)
        runs += 1
    return runs * len(batch) / (time.perf_counter() - start)


def top1(engine: Engine, images: torch.Tensor, batch_size: int, steps=None) -> torch.Tensor:
    """Top-1 labels, a step per batch."""
    steps, labels = steps or Unlocked(), []
    for i in range(0, len(images), batch_size):
        with steps.step():
            labels.append(engine(images[i : i + batch_size]).argmax(1))
    return torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)


def load_check_images(artifact: Artifact) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The artifact's check images (see grocery.export), uint8 (N, 3, S, S), and torch fp32's top-1 on them."""
    from grocery.export import read_check_images

    return read_check_images(artifact)


def choose_cached(
    artifact: Artifact, *, threads: int, batch_size: int = 64, steps=None, wait: bool = True
) -> Choice | None:
    """``choose``, measured once per machine and kept in the artifact's runtimes.json.

    The processes sharing the artifact's folder (a machine's workers) take turns, under a file lock:
    the first measures and records, the others wait and then read what it recorded, so they all serve
    on one variant. ``wait=False``: None at once where another process measures the artifact now.
    ``steps``: as ``choose`` runs them (a service runs them in its machine's quiet windows, so that no
    task of the machine runs while it times).
    """
    key = machine_key(threads)
    path = artifact.path / CHOICES_NAME
    with measuring_alone(artifact.path / CHOICES_LOCK_NAME, wait=wait) as alone:
        if not alone:
            return None
        record = read_choices(path).get(key)
        if record is not None and is_current(artifact, record):
            return Choice(record["runtime"], record)
        choice = choose(artifact, threads=threads, batch_size=batch_size, steps=steps)
        write_choice(path, key, choice.record)
        return choice


def is_current(artifact: Artifact, record: dict) -> bool:
    """Whether a recorded choice may serve the artifact here: a variant it can run, and a record from
    after batch sizes were timed (an older one is measured again)."""
    return record.get("runtime") in candidates(artifact) + ["torch"] and "inference_batch" in record


@contextlib.contextmanager
def measuring_alone(lock_path: Path, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on ``lock_path`` (flock: released when the process dies, so a killed
    worker never leaves it held); yields whether this process has it (``wait=False``: False at once
    where another holds it). Where the lock file cannot be made (a read-only artifact), unlocked."""
    try:
        lock = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(lock)  # and with it the lock


def read_choices(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_choice(path: Path, key: str, record: dict) -> None:
    """Merge one machine's choice into the file (under choose_cached's lock, no other process writes it meanwhile)."""
    choices = read_choices(path)
    choices[key] = record
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        partial.write_text(json.dumps(choices, indent=2) + "\n")
        partial.replace(path)
    except OSError:
        partial.unlink(missing_ok=True)  # a read-only artifact: the choice still serves this process
