"""Object storage: files named by ``s3://bucket/key`` URLs, listed, read and written through boto3.

boto3's standard chain finds the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile,
an instance or task role) and the endpoint (AWS_ENDPOINT_URL, for MinIO and other S3-compatible
stores); nothing here stores or logs them. Torch-free, so the API can check and list URLs too.
"""

import concurrent.futures
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SCHEME = "s3://"
# Concurrent GETs while a batch is fetched: an object's latency, not its size, bounds one thread.
FETCH_THREADS = 16


class StorageError(Exception):
    """An object that cannot be read or written; ``code`` says why, as the API's error codes do."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def is_url(location: str | Path) -> bool:
    return str(location).startswith(SCHEME)


@dataclass(frozen=True)
class ObjectURL:
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> "ObjectURL":
        """Refuses what S3 would take literally but a reader takes for a path: '.', '..' and empty
        segments (a prefix's trailing '/' excepted)."""
        if not is_url(url):
            raise ValueError(f"{url!r} is not an {SCHEME} URL")
        bucket, _, key = url[len(SCHEME) :].partition("/")
        if not bucket:
            raise ValueError(f"{url!r} names no bucket")
        segments = key.split("/")[:-1] if key.endswith("/") else key.split("/")
        if key and any(segment in ("", ".", "..") for segment in segments):
            raise ValueError(f"{url!r} holds an empty, '.' or '..' segment")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    def child(self, name: str) -> "ObjectURL":
        return ObjectURL(self.bucket, f"{self.key.rstrip('/')}/{name}" if self.key else name)


def as_prefix(url: str) -> str:
    """The URL of a "folder": a key prefix that ends with '/', so that s3://b/photos is not s3://b/photos2."""
    parsed = ObjectURL.parse(url)
    key = parsed.key if not parsed.key or parsed.key.endswith("/") else parsed.key + "/"
    return str(ObjectURL(parsed.bucket, key))


def join(location: str | Path, *names: str) -> str | Path:
    """``names`` under a folder (a Path) or under an object prefix (a URL, no trailing '/')."""
    if not is_url(location):
        return Path(location).joinpath(*names)
    url = ObjectURL.parse(as_prefix(str(location)))
    for name in names:
        url = url.child(name)
    return str(url)


def within(url: str, prefix: str) -> bool:
    """Whether the object ``url`` lies under the folder ``prefix`` (both as ObjectURL.parse accepts)."""
    return url.startswith(as_prefix(prefix))


_clients: dict[int, object] = {}
_clients_lock = threading.Lock()


def client():
    """One S3 client per process (a client is thread-safe, but not to be shared across a fork)."""
    pid = os.getpid()
    with _clients_lock:
        if pid not in _clients:
            import boto3
            from botocore.config import Config

            config = Config(max_pool_connections=FETCH_THREADS * 2, retries={"mode": "standard"})
            _clients[pid] = boto3.session.Session().client("s3", config=config)
        return _clients[pid]


def _error(e: Exception, url: str) -> StorageError:
    """A StorageError that names the object and the reason, never the credentials."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if not isinstance(e, ClientError) and isinstance(e.__context__, ClientError):
        e = e.__context__  # boto3's upload_file wraps the service's answer in S3UploadFailedError
    if isinstance(e, NoCredentialsError):
        return StorageError("storage_unavailable", f"{url}: no credentials for the object store")
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            return StorageError("not_found", f"{url}: no such object")
        if code == "NoSuchBucket":
            return StorageError("not_found", f"{url}: no such bucket")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError("access_denied", f"{url}: access denied ({code})")
        return StorageError("unreadable", f"{url}: {code or type(e).__name__}")
    return StorageError("storage_unavailable", f"{url}: the object store does not answer ({type(e).__name__})")


def read_bytes(url: str) -> bytes:
    parsed = ObjectURL.parse(url)
    try:
        return client().get_object(Bucket=parsed.bucket, Key=parsed.key)["Body"].read()
    except Exception as e:
        raise _error(e, url) from None


def fetcher(count: int) -> concurrent.futures.ThreadPoolExecutor:
    """A pool for fetching ``count`` objects at once, FETCH_THREADS at most."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=min(FETCH_THREADS, max(1, count)))


def list_objects(prefix: str, *, recursive: bool = True, matches=None) -> Iterator[str]:
    """The URLs of the objects under the folder ``prefix``, in key order (S3's, repeatable), one page
    at a time; ``matches`` tests an object's name (its key's last segment). Not recursive: the
    prefix's own objects only."""
    parsed = ObjectURL.parse(as_prefix(prefix))
    options = {"Bucket": parsed.bucket, "Prefix": parsed.key}
    if not recursive:
        options["Delimiter"] = "/"
    try:
        for page in client().get_paginator("list_objects_v2").paginate(**options):
            for item in page.get("Contents", ()):
                name = item["Key"].rsplit("/", 1)[-1]
                if item["Key"].endswith("/") or (matches is not None and not matches(name)):
                    continue  # a "folder" marker object, or a name the job did not ask for
                yield str(ObjectURL(parsed.bucket, item["Key"]))
    except Exception as e:
        raise _error(e, prefix) from None


def has_objects(prefix: str) -> bool:
    """Whether anything lies under the folder ``prefix``; a StorageError if it cannot be listed."""
    parsed = ObjectURL.parse(as_prefix(prefix))
    try:
        page = client().list_objects_v2(Bucket=parsed.bucket, Prefix=parsed.key, MaxKeys=1)
    except Exception as e:
        raise _error(e, prefix) from None
    return page.get("KeyCount", 0) > 0


def write_bytes(url: str, data: bytes) -> None:
    parsed = ObjectURL.parse(url)
    try:
        client().put_object(Bucket=parsed.bucket, Key=parsed.key, Body=data)
    except Exception as e:
        raise _error(e, url) from None


def upload_file(path: str | Path, url: str) -> int:
    """Upload a local file (multipart when large); returns its size."""
    parsed = ObjectURL.parse(url)
    try:
        client().upload_file(str(path), parsed.bucket, parsed.key)
    except Exception as e:
        raise _error(e, url) from None
    return Path(path).stat().st_size


def download_file(url: str, path: str | Path) -> None:
    parsed = ObjectURL.parse(url)
    try:
        client().download_file(parsed.bucket, parsed.key, str(path))
    except Exception as e:
        raise _error(e, url) from None


def upload_tree(folder: str | Path, prefix: str) -> list[str]:
    """Every file under ``folder`` to the same relative keys under ``prefix``; returns their URLs."""
    base, root = Path(folder), ObjectURL.parse(as_prefix(prefix))
    urls = []
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        url = str(root.child(path.relative_to(base).as_posix()))
        upload_file(path, url)
        urls.append(url)
    return urls


def download_tree(prefix: str, folder: str | Path, *, matches=None) -> list[Path]:
    """Every object under ``prefix`` (whose name ``matches``, as list_objects tests it) to the same
    relative paths under ``folder``."""
    root = ObjectURL.parse(as_prefix(prefix))
    paths = []
    for url in list_objects(prefix, matches=matches):
        relative = ObjectURL.parse(url).key[len(root.key) :]
        target = Path(folder) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        download_file(url, target)
        paths.append(target)
    return paths


def cached_tree(prefix: str, folder: str | Path, *, matches=None) -> Path:
    """``folder``, a local copy of the objects under ``prefix`` (as download_tree takes them), downloaded
    the first time only. The copy is downloaded beside it and renamed into place, so that no process
    reads a half-written one; of two processes downloading at once, the first rename wins and the other
    drops its copy. Nothing under the prefix: a StorageError ("not_found"), and nothing is kept."""
    folder = Path(folder)
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        if not download_tree(prefix, partial, matches=matches):
            raise StorageError("not_found", f"{prefix}: no objects")
        try:
            partial.rename(folder)
        except OSError:
            if not folder.is_dir():  # not another process's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def delete_prefix(prefix: str) -> int:
    """Delete every object under the folder ``prefix``; returns how many."""
    parsed = ObjectURL.parse(as_prefix(prefix))
    urls = [ObjectURL.parse(url).key for url in list_objects(prefix)]
    for start in range(0, len(urls), 1000):
        keys = [{"Key": key} for key in urls[start : start + 1000]]
        try:
            client().delete_objects(Bucket=parsed.bucket, Delete={"Objects": keys, "Quiet": True})
        except Exception as e:
            raise _error(e, prefix) from None
    return len(urls)
