"""Where documents' files live: one storage interface, and the layout web and worker share.

    <doc id>/original                  the upload, byte for byte, never deleted by a failure
    <doc id>/a<attempt>/layout.json    page sizes and the outline, written before the first page
    <doc id>/a<attempt>/page-0001.jpg  page image; thumb-0001.jpg; text-0001.txt; layer-0001.json
    <doc id>/a<attempt>/manifest.json  written last, when the attempt completes
    <doc id>/a<attempt>/hd-0001.jpg    a sharper rendition, made on demand for zoomed-in readers

Each page's files are written before the progress says the page is ready, so a page whose number
is at most `ready` is always whole. Keys are built from the server-made document id and numbers
only: nothing the client sends becomes part of a path.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from livedoc.ids import valid_doc_id

MANIFEST = "manifest.json"
LAYOUT = "layout.json"
ORIGINAL = "original"
CHUNK = 1024 * 1024
# Page files by role: the viewer asks for them by these names, and only these.
PAGE_FILE = re.compile(r"^(page|thumb|text|layer|hd)-(\d{4,6})\.(jpg|txt|json)$")
MIMETYPES = {"jpg": "image/jpeg", "txt": "text/plain; charset=utf-8", "json": "application/json"}
_SUFFIX = {"page": "jpg", "thumb": "jpg", "text": "txt", "layer": "json", "hd": "jpg"}


class Storage(Protocol):
    """Bytes by key: a local directory or an object store; what the web and the worker share."""

    def put_file(self, key: str, path: Path) -> int:
        """Store a finished local file under key (the file may be moved); returns its size."""

    def put_stream(self, key: str, stream: BinaryIO) -> int:
        """Store a stream under key, in chunks, atomically; returns the bytes written."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store small bytes under key, atomically."""

    def get_bytes(self, key: str) -> bytes | None:
        """The bytes under key, or None when there are none."""

    def fetch(self, key: str, path: Path) -> None:
        """Copy the object under key into a local file (FileNotFoundError when absent)."""

    def exists(self, key: str) -> bool:
        """True when something is stored under key."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove everything under prefix."""

    def size_of_prefix(self, prefix: str) -> int:
        """Bytes stored under prefix."""

    def local_path(self, key: str) -> Path | None:
        """A path the web can send directly (local storage), or None (object storage)."""

    def url(self, key: str, filename: str | None = None) -> str | None:
        """A short-lived URL browsers fetch directly (object storage), or None (local storage)."""

    def scratch_root(self) -> Path:
        """A local directory where workers write files before storing them."""


class LocalStorage:
    """Storage in a directory (STORAGE_DIR); writes are atomic renames."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def _tmp(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.with_name(path.name + ".part")

    def put_file(self, key: str, path: Path) -> int:
        dest = self._path(key)
        size = path.stat().st_size
        tmp = self._tmp(dest)
        try:
            os.replace(path, dest)  # scratch space on the same filesystem: a rename, no copy
        except OSError:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        return size

    def scratch_root(self) -> Path:
        """Where workers write files before storing them (same filesystem: stores are renames)."""
        return self.root / ".scratch"

    def put_stream(self, key: str, stream: BinaryIO) -> int:
        dest = self._path(key)
        tmp = self._tmp(dest)
        size = 0
        with open(tmp, "wb") as out:
            while chunk := stream.read(CHUNK):
                out.write(chunk)
                size += len(chunk)
        os.replace(tmp, dest)
        return size

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        tmp = self._tmp(dest)
        tmp.write_bytes(data)
        os.replace(tmp, dest)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def fetch(self, key: str, path: Path) -> None:
        shutil.copyfile(self._path(key), path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete_prefix(self, prefix: str) -> None:
        target = self._path(prefix.rstrip("/"))
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        elif target.exists() or target.is_symlink():
            target.unlink()

    def size_of_prefix(self, prefix: str) -> int:
        return sum(p.stat().st_size for p in self._walk(self._path(prefix.rstrip("/"))))

    @staticmethod
    def _walk(top: Path) -> Iterator[Path]:
        for base, _dirs, names in os.walk(top):
            for name in names:
                yield Path(base) / name

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def url(self, key: str, filename: str | None = None) -> str | None:
        return None


def open_storage(settings) -> Storage:
    """The storage the settings name (STORAGE_DIR today; object storage when STORAGE_URL says so)."""
    return LocalStorage(settings.STORAGE_DIR)


def page_names(n: int) -> dict[str, str]:
    """File names of page n's image, thumbnail, text and text layer."""
    return {"image": f"page-{n:04d}.jpg", "thumb": f"thumb-{n:04d}.jpg", "text": f"text-{n:04d}.txt",
            "layer": f"layer-{n:04d}.json"}


def hd_name(n: int) -> str:
    """File name of page n's sharper rendition."""
    return f"hd-{n:04d}.jpg"


def parse_page_file(name: str) -> tuple[str, int] | None:
    """(role, page number) for a page file name; None for anything else."""
    match = PAGE_FILE.match(name)
    if not match or _SUFFIX[match.group(1)] != match.group(3):
        return None
    return match.group(1), int(match.group(2))


class DocumentFiles:
    """The files of one document in a storage."""

    def __init__(self, storage: Storage, doc_id: str):
        if not valid_doc_id(doc_id):
            raise ValueError("not a document id")
        self.storage = storage
        self.doc_id = doc_id

    @property
    def prefix(self) -> str:
        """Everything of this document lives under this prefix."""
        return f"{self.doc_id}/"

    @property
    def original_key(self) -> str:
        """Where the uploaded bytes live."""
        return self.prefix + ORIGINAL

    def attempt_prefix(self, attempt: int) -> str:
        """Where one attempt's output lives."""
        return f"{self.prefix}a{int(attempt)}/"

    def key(self, attempt: int, name: str) -> str:
        """The key of one output file of an attempt."""
        return self.attempt_prefix(attempt) + name

    def save_original_stream(self, stream: BinaryIO) -> int:
        """Store the upload atomically, in chunks; returns its size."""
        return self.storage.put_stream(self.original_key, stream)

    def save_original(self, data: bytes) -> None:
        """Store small upload bytes (tests, tools)."""
        self.storage.put_bytes(self.original_key, data)

    def read_json(self, attempt: int, name: str) -> dict | None:
        """A JSON file of an attempt, or None when it is absent or unreadable."""
        raw = self.storage.get_bytes(self.key(attempt, name))
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def layout(self, attempt: int) -> dict | None:
        """Page sizes and outline of an attempt, known once it has validated the document."""
        return self.read_json(attempt, LAYOUT)

    def manifest(self, attempt: int) -> dict | None:
        """The completed attempt's manifest, or None."""
        return self.read_json(attempt, MANIFEST)

    def clear_attempts(self, upto: int) -> None:
        """Remove the output of attempts 1..upto (a new attempt starts clean); keeps the original."""
        for attempt in range(1, upto + 1):
            self.storage.delete_prefix(self.attempt_prefix(attempt))

    def delete(self) -> None:
        """Remove everything of this document."""
        self.storage.delete_prefix(self.prefix)

    def stored_bytes(self) -> int:
        """Bytes this document holds in storage."""
        return self.storage.size_of_prefix(self.prefix)
