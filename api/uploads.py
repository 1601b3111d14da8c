"""Prediction jobs on uploaded images: multipart image files, or one zip archive, stored under
the job's own folder on shared storage (GROCERY_UPLOAD_DIR/<job id>/input) for the workers."""

import hashlib
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.utils import secure_filename

from api.errors import APIError

# Not photos: macOS resource forks and Finder metadata that zip tools add.
IGNORED_PARTS = ("__MACOSX",)
COPY_CHUNK = 1 << 20


class UploadForm(BaseModel):
    """The form fields that come with the files (strings, converted)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["predict"] = "predict"
    model: str = "latest"
    shard_size: Annotated[int, Field(ge=1, le=100_000)] | None = None
    max_failed_fraction: Annotated[float, Field(ge=0, le=1)] | None = None


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
        return extract_zip(archives[0], folder, max_files=max_files, max_bytes=max_bytes)
    return save_images(images, folder, max_files=max_files, max_bytes=max_bytes)


def save_images(images: list[FileStorage], folder: Path, *, max_files: int, max_bytes: int) -> dict:
    if len(images) > max_files:
        raise APIError(413, "too_many_files", f"{len(images)} files: at most {max_files} a job (GROCERY_MAX_JOB_FILES)")
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
    """Extract safely: no member may leave ``folder`` (zip-slip), and neither the member count nor
    the bytes written may pass the limits, whatever the archive's headers claim."""
    try:
        archive = zipfile.ZipFile(upload.stream)
    except (zipfile.BadZipFile, OSError):
        raise APIError(400, "invalid_archive", "archive: not a readable zip file") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        for member in members:
            _check_member_name(member.filename)
        members = [m for m in members if not _ignored(m.filename)]
        if len(members) > max_files:
            raise APIError(
                413,
                "too_many_files",
                f"archive holds {len(members)} files: at most {max_files} (GROCERY_MAX_JOB_FILES)",
            )
        if sum(m.file_size for m in members) > max_bytes:
            raise APIError(413, "archive_too_large", _too_large(max_bytes))
        written = 0
        for member in members:
            written += _extract_member(archive, member, folder, budget=max_bytes - written, limit=max_bytes)
    return {"files": len(members), "bytes": written, "archive": upload.filename}


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


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
