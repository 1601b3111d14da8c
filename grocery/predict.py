"""Batched prediction over files, folders and in-memory images.

Decoding runs on a small thread pool while the model infers the previous batch,
so a bad file costs one error row, never the batch. The engine is one of grocery.runtimes'
variants, by default the fastest one measured on this machine that agrees with fp32.
"""

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from grocery import images, runtimes, storage
from grocery.artifact import Artifact, read_artifact
from grocery.listing import chunked, name_matcher, walk_files
from grocery.results import Prediction


def iter_image_files(paths: Iterable[str | Path], recursive: bool = True) -> Iterator[str | Path]:
    """Files as given, and image files found in folders (in walk_files' repeatable order) and under
    object prefixes (an s3:// URL ending in '/', in key order)."""
    for given in paths:
        if storage.is_url(given):
            is_prefix = str(given).endswith("/")
            yield from (
                storage.list_objects(str(given), recursive=recursive, matches=name_matcher(None))
                if is_prefix
                else [str(given)]
            )
            continue
        path = Path(given)
        if path.is_dir():
            yield from map(Path, walk_files(path, recursive=recursive))
        else:
            yield path  # named explicitly: tried whatever it is, so a typo becomes an error row


class Predictor:
    def __init__(
        self,
        artifact: Artifact,
        *,
        runtime: str = "auto",
        batch_size: int = 64,
        threads: int | None = None,
        decode_threads: int | None = None,
        max_pixels: int = images.DEFAULT_MAX_PIXELS,
        choice: runtimes.Choice | None = None,
    ):
        if runtime not in ("auto", *runtimes.RUNTIMES):
            raise ValueError(f"runtime must be one of {('auto', *runtimes.RUNTIMES)}, not {runtime!r}")
        self.artifact = artifact
        self.pre = artifact.preprocessing
        self.class_names = artifact.class_names
        self.batch_size = batch_size
        # One decode thread per core measured best here (2 on 2 cores: 290 img/s vs 214 with 1 or 3).
        self.decode_threads = decode_threads or len(os.sched_getaffinity(0))
        self.max_pixels = max_pixels
        self.threads = threads or len(os.sched_getaffinity(0))
        # Decoding and resizing run torch ops too: a worker process given one core keeps to it.
        torch.set_num_threads(self.threads)
        # auto: the fastest variant that agrees with fp32, measured on this machine (grocery.runtimes),
        # unless the caller brings the choice this machine made already (a service keeps it per machine).
        if runtime == "auto" and choice is None:
            choice = runtimes.choose_cached(artifact, threads=self.threads, batch_size=batch_size)
        self.choice = choice if runtime == "auto" else None
        self.runtime = self.choice.runtime if self.choice else runtime
        # Files are read and results written batch_size at a time; the engine infers at the size measured fastest.
        self.inference_batch = self.choice.inference_batch if self.choice else batch_size
        engine = runtimes.build_engine(artifact, self.runtime, threads=self.threads)
        self._infer = runtimes.in_batches_of(engine, self.inference_batch)
        # A model on the GPU also decodes there (nvjpeg), so the CPU threads only read files.
        self.decode_on_gpu = self.runtime.startswith("torch") and runtimes.cuda_available()

    @classmethod
    def from_path(cls, model_dir: str | Path, **options) -> "Predictor":
        return cls(read_artifact(model_dir), **options)

    def predict_batch(self, batch_u8: torch.Tensor) -> torch.Tensor:
        """Class probabilities for uint8 images (N, 3, S, S) already resized."""
        return self._infer(batch_u8)

    def predict_bytes(self, data: bytes, name: str = "upload") -> Prediction:
        try:
            image = images.resize(images.decode(data, max_pixels=self.max_pixels, name=name), self.pre.input_size)
        except images.ImageError as e:
            return Prediction(name, error=e.as_dict())
        return self._rows([name], image[None])[0]

    def predict_files(self, paths: Iterable[str | Path]) -> Iterator[Prediction]:
        """One Prediction per path (a file, or an object's s3:// URL), in input order, streaming:
        memory stays bounded by a few batches."""
        with ThreadPoolExecutor(max_workers=self.decode_threads) as pool:
            pending = deque()
            for chunk in chunked(map(str, paths), self.batch_size):
                pending.append(pool.submit(self._decode_chunk, chunk))
                if len(pending) > self.decode_threads:
                    yield from self._finish(*pending.popleft().result())
            while pending:
                yield from self._finish(*pending.popleft().result())

    def _decode_chunk(self, paths: list[str]) -> tuple[list[str], torch.Tensor, dict[int, dict]]:
        blobs, errors = {}, {}
        for i, data in enumerate(images.read_many(paths)):
            if isinstance(data, images.ImageError):
                errors[i] = data.as_dict()
            else:
                blobs[i] = data
        if self.decode_on_gpu:
            return paths, self._decode_on_gpu(paths, blobs, errors), errors
        size = self.pre.input_size
        batch = torch.empty((len(blobs), 3, size, size), dtype=torch.uint8)
        good = 0
        for i, data in blobs.items():
            try:
                batch[good] = images.resize(images.decode(data, max_pixels=self.max_pixels, name=paths[i]), size)
                good += 1
            except images.ImageError as e:
                errors[i] = e.as_dict()
        return paths, batch[:good], errors

    def _decode_on_gpu(self, paths: list[str], blobs: dict[int, bytes], errors: dict[int, dict]) -> torch.Tensor:
        names = [paths[i] for i in blobs]
        decoded = images.decode_resized_on_gpu(
            list(blobs.values()), self.pre.input_size, names=names, max_pixels=self.max_pixels
        )
        good = []
        for i, result in zip(blobs, decoded, strict=True):
            if isinstance(result, images.ImageError):
                errors[i] = result.as_dict()
            else:
                good.append(result)
        size = self.pre.input_size
        return torch.stack(good) if good else torch.empty((0, 3, size, size), dtype=torch.uint8, device="cuda")

    def _finish(self, names: list[str], batch: torch.Tensor, errors: dict[int, dict]) -> list[Prediction]:
        good_names = [n for i, n in enumerate(names) if i not in errors]
        rows = iter(self._rows(good_names, batch) if good_names else [])
        return [Prediction(n, error=errors[i]) if i in errors else next(rows) for i, n in enumerate(names)]

    def _rows(self, names: list[str], batch: torch.Tensor) -> list[Prediction]:
        probs = self.predict_batch(batch)
        top = probs.topk(min(5, probs.shape[1]), dim=1)
        values, indices = top.values.tolist(), top.indices.tolist()
        rows = []
        for name, vals, idxs in zip(names, values, indices, strict=True):
            top5 = [
                {"label": self.class_names[c], "class_id": c, "confidence": round(v, 6)}
                for v, c in zip(vals, idxs, strict=False)
            ]
            rows.append(Prediction(name, self.class_names[idxs[0]], idxs[0], round(vals[0], 6), top5))
        return rows
