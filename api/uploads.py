"""Prediction jobs on uploaded images: multipart image files, or one zip archive, stored under
the job's own folder on shared storage (GROCERY_UPLOAD_DIR/<job id>/input), or its prefix in a bucket,
for the workers."""

import hashlib
import struct
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Annotated, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.utils import secure_filename

from api.errors import APIError
from grocery import storage
from service.specs import Notify, PriorityName

# Not photos: macOS resource forks and Finder metadata that zip tools add.
IGNORED_PARTS = ("__MACOSX",)
COPY_CHUNK = 1 << 20
FILE_LIMITS = "GROCERY_MAX_UPLOAD_FILES, GROCERY_MAX_JOB_FILES"
# An archive may hold folders and macOS's __MACOSX copies beside its files: entries up to this many
# times the file limit; its central directory up to this many bytes an entry (a name of ~1 KiB).
ENTRIES_PER_FILE = 2
CENTRAL_BYTES_PER_ENTRY = 1024
END_RECORD = struct.Struct("<4sHHHHIIH")  # end of central directory: 22 bytes, then a comment
ZIP64_LOCATOR = struct.Struct("<4sIQI")
ZIP64_END_RECORD = struct.Struct("<4sQHHIIQQQQ")


class UploadForm(BaseModel):
    """The form fields that come with the files (strings, converted)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["predict"] = "predict"
    model: str = "latest"
    shard_size: Annotated[int, Field(ge=1, le=100_000)] | None = None
    max_failed_fraction: Annotated[float, Field(ge=0, le=1)] | None = None
    priority: PriorityName = "normal"
    output_url: Annotated[str, Field(max_length=2048)] | None = None  # as a JSON job's output.url
    # As a JSON job's notify: its url, and its events comma-separated (default all).
    notify_url: Annotated[str, Field(max_length=2048)] | None = None
    notify_events: str | None = None

    def notify(self) -> Notify | None:
        if self.notify_url is None:
            return None
        events = {"events": self.notify_events.split(",")} if self.notify_events else {}
        return Notify.model_validate({"url": self.notify_url, **events})


def upload_form(form: MultiDict) -> UploadForm:
    return UploadForm.model_validate(form.to_dict())


def upload_digest(form: MultiDict, files: MultiDict) -> str:
    """What makes two uploads the same request, for Idempotency-Key replays: fields, names, sizes."""
    digest = hashlib.sha256()
    for key, value in sorted(form.items(multi=True)):
        digest.update(f"{key}={value}\n".encode())
    for field, upload in files.items(multi=True):
        upload.stream.seek(0, 2)
        digest.update(f"{field}:{upload.filename}:{upload.stream.tell()}\n".encode())
        upload.stream.seek(0)
    return digest.hexdigest()


def keep_upload(files: MultiDict, job_uploads: Path | str, *, max_files: int, max_bytes: int) -> dict:
    """Store the upload in ``job_uploads``/input and return the job's input. For uploads kept in a
    bucket the files are checked and stored in a local staging folder first (the same rules and
    limits), then sent as objects: the input is then their prefix."""
    target = storage.join(job_uploads, "input")
    if not storage.is_url(target):
        return {"folder": str(target), "upload": store_upload(files, target, max_files=max_files, max_bytes=max_bytes)}
    with tempfile.TemporaryDirectory(prefix="grocery-upload-") as staging:
        stored = store_upload(files, Path(staging) / "input", max_files=max_files, max_bytes=max_bytes)
        try:
            storage.upload_tree(Path(staging) / "input", target)
        except storage.StorageError as e:
            raise storage_error(e) from None
    return {"url": storage.as_prefix(target), "upload": stored}


def storage_error(e: storage.StorageError) -> APIError:
    """The service's own upload storage failing: not the request's fault."""
    return APIError(503 if e.code == "storage_unavailable" else 500, e.code, f"the upload storage: {e}")


def store_upload(files: MultiDict, folder: Path, *, max_files: int, max_bytes: int) -> dict:
    """Save the images (field 'files') or extract the archive (field 'archive') into ``folder``."""
    unexpected = set(files.keys()) - {"files", "archive"}
    if unexpected:
        raise APIError(
            400, "unexpected_field", f"unexpected file fields {sorted(unexpected)}: use 'files' or 'archive'"
        )
    images = [f for f in files.getlist("files") if f.filename]
    archives = [f for f in files.getlist("archive") if f.filename]
    if bool(images) == bool(archives) or len(archives) > 1:
        raise APIError(
            400, "missing_file", "send image files as multipart field 'files', or one zip archive as field 'archive'"
        )
    folder.mkdir(parents=True)
    if archives:
        stored = extract_zip(archives[0], folder, max_files=max_files, max_bytes=max_bytes)
    else:
        stored = save_images(images, folder, max_files=max_files, max_bytes=max_bytes)
    # One bad file among many is one failed result; an upload of no image at all is refused now.
    if not any(looks_like_image(path) for path in folder.rglob("*") if path.is_file()):
        raise APIError(422, "no_images", "the upload holds no image files (JPEG, PNG, WebP, BMP, GIF or TIFF)")
    return stored


def looks_like_image(file: Path | BinaryIO) -> bool:
    """Whether a file starts as an image PIL can read (its header only: no decoding, no torch here)."""
    from PIL import Image, UnidentifiedImageError

    start = file.tell() if not isinstance(file, Path) else None
    try:
        with Image.open(file) as image:
            return image.format is not None
    except (UnidentifiedImageError, OSError, ValueError):
        return False
    finally:
        if start is not None:
            file.seek(start)


def save_images(images: list[FileStorage], folder: Path, *, max_files: int, max_bytes: int) -> dict:
    if len(images) > max_files:
        raise APIError(
            413,
            "too_many_files",
            f"{len(images)} files: at most {max_files} an upload ({FILE_LIMITS})",
        )
    names, total = set(), 0
    for image in images:
        name = _unique(secure_filename(image.filename) or "upload", names)
        image.save(folder / name)
        total += (folder / name).stat().st_size
        if total > max_bytes:
            raise APIError(413, "upload_too_large", f"the files exceed {max_bytes} bytes a job (GROCERY_MAX_JOB_BYTES)")
    return {"files": len(images), "bytes": total}


def _unique(name: str, taken: set[str]) -> str:
    stem, suffix, n = Path(name).stem, Path(name).suffix, 1
    candidate = name
    while candidate in taken:
        candidate, n = f"{stem}-{n}{suffix}", n + 1
    taken.add(candidate)
    return candidate


def extract_zip(upload: FileStorage, folder: Path, *, max_files: int, max_bytes: int) -> dict:
    """Extract safely: no member may leave ``folder`` (zip-slip), no two may claim one path, and
    neither the member count nor the bytes written may pass the limits, whatever the archive's
    headers claim. The count and the central directory's size are read from the end record first:
    parsing the directory costs memory per entry."""
    entries, central_bytes = central_directory(upload.stream)
    if entries > ENTRIES_PER_FILE * max_files:
        raise APIError(
            413,
            "too_many_files",
            f"archive holds {entries} entries: at most {max_files} files ({FILE_LIMITS})",
        )
    if central_bytes > CENTRAL_BYTES_PER_ENTRY * max(entries, 1):
        raise APIError(413, "archive_too_large", f"archive: a central directory of {central_bytes} bytes is refused")
    try:
        archive = zipfile.ZipFile(upload.stream)
    except (zipfile.BadZipFile, OSError):
        raise APIError(400, "invalid_archive", "archive: not a readable zip file") from None
    with archive:
        for member in archive.infolist():
            _check_member_name(member.filename)
        _check_no_clashes(archive.infolist())
        members = [m for m in archive.infolist() if not m.is_dir() and not _ignored(m.filename)]
        if len(members) > max_files:
            raise APIError(
                413,
                "too_many_files",
                f"archive holds {len(members)} files: at most {max_files} ({FILE_LIMITS})",
            )
        if sum(m.file_size for m in members) > max_bytes:
            raise APIError(413, "archive_too_large", _too_large(max_bytes))
        written = 0
        for member in members:
            written += _extract_member(archive, member, folder, budget=max_bytes - written, limit=max_bytes)
    return {"files": len(members), "bytes": written, "archive": upload.filename}


def central_directory(stream) -> tuple[int, int]:
    """(entries, central directory bytes) from the archive's end record (ZIP64's where it has one),
    reading only the last 64 KiB or so."""
    stream.seek(0, 2)
    size = stream.tell()
    tail_size = min(size, END_RECORD.size + 0xFFFF + ZIP64_LOCATOR.size)
    stream.seek(size - tail_size)
    tail = stream.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < END_RECORD.size:
        raise APIError(400, "invalid_archive", "archive: not a readable zip file")
    _, _, _, _, entries, central_bytes, offset, _ = END_RECORD.unpack_from(tail, at)
    if 0xFFFF in (entries,) or 0xFFFFFFFF in (central_bytes, offset):
        locator = at - ZIP64_LOCATOR.size
        if locator < 0 or tail[locator : locator + 4] != b"PK\x06\x07":
            raise APIError(400, "invalid_archive", "archive: a ZIP64 archive without its locator")
        record_at = ZIP64_LOCATOR.unpack_from(tail, locator)[2]
        stream.seek(record_at)
        record = stream.read(ZIP64_END_RECORD.size)
        if len(record) < ZIP64_END_RECORD.size or record[:4] != b"PK\x06\x06":
            raise APIError(400, "invalid_archive", "archive: a ZIP64 end record that is not one")
        *_, entries, central_bytes, _ = ZIP64_END_RECORD.unpack(record)
    stream.seek(0)
    return entries, central_bytes


def _check_no_clashes(members: list[zipfile.ZipInfo]) -> None:
    """Two members for one path, or a file where another member needs a folder (a.jpg, then
    a.jpg/b.jpg): refused, rather than one overwriting the other or the extraction failing midway."""
    files, folders = set(), set()
    for member in members:
        parts = PurePosixPath(member.filename.replace("\\", "/")).parts
        if member.is_dir():
            folders.add(parts)
            continue
        if parts in files:
            raise APIError(400, "duplicate_member", f"archive holds {member.filename!r} twice")
        files.add(parts)
        folders.update(parts[:i] for i in range(1, len(parts)))
    clash = next(iter(files & folders), None)
    if clash is not None:
        raise APIError(
            400, "clashing_members", f"archive member {'/'.join(clash)!r} is both a file and a folder of other members"
        )


def _check_member_name(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise APIError(
            400, "unsafe_archive", f"archive member {name!r} has an absolute or '..' path: refused (zip-slip)"
        )


def _ignored(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return any(part in IGNORED_PARTS for part in path.parts) or path.name.startswith("._")


def _extract_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, folder: Path, *, budget: int, limit: int) -> int:
    target = folder.joinpath(*PurePosixPath(member.filename.replace("\\", "/")).parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with archive.open(member) as source, open(target, "wb") as sink:
            while chunk := source.read(COPY_CHUNK):
                written += len(chunk)
                if written > budget:  # the headers understated the size: a zip bomb
                    raise APIError(413, "archive_too_large", _too_large(limit))
                sink.write(chunk)
    except (zipfile.BadZipFile, RuntimeError, OSError, EOFError) as e:  # RuntimeError: encrypted member
        raise APIError(400, "invalid_archive", f"archive member {member.filename!r} cannot be extracted: {e}") from None
    return written


def _too_large(limit: int) -> str:
    return f"the archive expands beyond {limit} bytes a job (GROCERY_MAX_JOB_BYTES)"
