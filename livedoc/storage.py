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
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

# STORAGE_URL's grammar is a setting's: config.py validates it without importing livedoc.
from config import parse_s3_url
from livedoc.ids import valid_doc_id

MANIFEST = "manifest.json"
# The PDF an attempt rendered its pages from, when that is not the original (an Office document
# converted by LibreOffice): page-range jobs on other hosts and sharper renditions read it.
SOURCE_PDF = "source.pdf"
# The kinds whose pages come from a PDF, so that a page can be rendered again sharper.
HD_KINDS = ("pdf", "office")
LAYOUT = "layout.json"
ORIGINAL = "original"
CHUNK = 1024 * 1024
DELETE_BATCH = 1000  # the most keys one S3 DeleteObjects request takes
MOVE_THREADS = 16  # S3 copies in flight at once when an attempt takes over an earlier one's pages
# Page files by role: the viewer asks for them by these names, and only these.
PAGE_FILE = re.compile(r"^(page|thumb|text|layer|hd)-(\d{4,6})\.(jpg|txt|json)$")
MIMETYPES = {"jpg": "image/jpeg", "txt": "text/plain; charset=utf-8", "json": "application/json"}
# What a page's layer file says of the page, so a later attempt can keep the page as it is.
PAGE_META = ("width", "height", "chars")
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

    def get_prefix(self, key: str, limit: int) -> bytes | None:
        """At most the first `limit` bytes under key (whatever its size), or None when there are none."""

    def fetch(self, key: str, path: Path) -> None:
        """Copy the object under key into a local file (FileNotFoundError when absent)."""

    def exists(self, key: str) -> bool:
        """True when something is stored under key."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove everything under prefix."""

    def size_of_prefix(self, prefix: str) -> int:
        """Bytes stored under prefix."""

    def sizes(self, prefix: str) -> dict[str, int]:
        """Every key under prefix (relative to it) with its size, in one listing."""

    def move(self, src: str, dst: str, names: Iterable[str]) -> None:
        """Move the named keys from under prefix src to under prefix dst (replacing what is there)."""

    def local_path(self, key: str) -> Path | None:
        """A path the web can send directly (local storage), or None (object storage)."""

    def url(self, key: str, filename: str | None = None) -> str | None:
        """A short-lived URL browsers fetch directly (object storage), or None (local storage)."""

    def scratch_root(self) -> Path:
        """A local directory where workers write files before storing them."""

    def origin(self) -> str | None:
        """The origin browsers fetch url()s from (object storage), or None (local storage)."""

    def forked(self) -> None:
        """Make this storage safe to use in a process forked from the one that made it."""


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

    def forked(self) -> None:
        """Nothing to do: a directory holds no connections."""

    def put_stream(self, key: str, stream: BinaryIO) -> int:
        dest = self._path(key)
        tmp = self._tmp(dest)
        size = 0
        try:
            with open(tmp, "wb") as out:
                while chunk := stream.read(CHUNK):
                    out.write(chunk)
                    size += len(chunk)
            os.replace(tmp, dest)
        except BaseException:
            # A full disk (ENOSPC, EDQUOT), a cut upload, a quota hit while copying: the part
            # written so far would hold the space the disk is short of.
            tmp.unlink(missing_ok=True)
            raise
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

    def get_prefix(self, key: str, limit: int) -> bytes | None:
        try:
            with self._path(key).open("rb") as f:
                return f.read(max(0, limit))
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

    def sizes(self, prefix: str) -> dict[str, int]:
        top = self._path(prefix.rstrip("/"))
        out = {}
        for path in self._walk(top):
            try:
                out[path.relative_to(top).as_posix()] = path.stat().st_size
            except FileNotFoundError:
                pass  # removed while listed
        return out

    def move(self, src: str, dst: str, names: Iterable[str]) -> None:
        for name in names:
            dest = self._path(dst + name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(self._path(src + name), dest)
            except FileNotFoundError:
                pass  # gone meanwhile

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

    def origin(self) -> str | None:
        return None


class S3Storage:
    """Storage in an S3 bucket under a prefix (STORAGE_URL=s3://bucket/prefix), through boto3.

    One client per process, shared by every greenlet: boto3 clients are thread-safe, and under
    gunicorn's gevent worker botocore's urllib3 sockets are gevent's. Browsers get page files
    from presigned GET URLs, so page bytes never pass through a web worker.
    """

    def __init__(self, client, bucket: str, prefix: str, scratch_dir: str | os.PathLike, url_expiry: int):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.scratch = Path(scratch_dir)
        self.url_expiry = url_expiry
        from botocore.exceptions import ClientError

        self._client_error = ClientError

    @classmethod
    def from_settings(cls, settings) -> S3Storage:
        """The bucket STORAGE_URL names, through a client for S3_ENDPOINT_URL (or AWS)."""
        import boto3
        from botocore.config import Config

        bucket, prefix = parse_s3_url(settings.STORAGE_URL)
        endpoint = settings.S3_ENDPOINT_URL or None
        style = settings.S3_ADDRESSING_STYLE
        if style == "auto":
            # MinIO, Ceph and most other self-hosted endpoints know only path-style bucket URLs.
            style = "path" if endpoint else "virtual"
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": style},
            max_pool_connections=settings.S3_MAX_CONNECTIONS,
            retries={"mode": "standard", "max_attempts": 4},
            connect_timeout=5,
            read_timeout=30,
        )
        # Credentials and region come from the standard AWS chain (environment, config files, roles).
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=settings.S3_REGION or None, config=config
        )
        return cls(
            client, bucket, prefix, settings.SCRATCH_DIR or tempfile.gettempdir(), settings.S3_URL_EXPIRY
        )

    def _key(self, key: str) -> str:
        return self.prefix + key

    @staticmethod
    def _missing(exc) -> bool:
        return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")

    def put_file(self, key: str, path: Path) -> int:
        size = path.stat().st_size
        # upload_file switches to a multipart upload for large files; the object appears whole or not.
        self.client.upload_file(str(path), self.bucket, self._key(key))
        path.unlink(missing_ok=True)  # a local storage would have moved it: keep scratch as small
        return size

    def put_stream(self, key: str, stream: BinaryIO) -> int:
        counted = _CountingReader(stream)
        self.client.upload_fileobj(counted, self.bucket, self._key(key))
        return counted.count

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self._client_error as exc:
            if self._missing(exc):
                return None
            raise
        with obj["Body"] as body:
            return body.read()

    def get_prefix(self, key: str, limit: int) -> bytes | None:
        if limit <= 0:
            return b"" if self.exists(key) else None
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes=0-{limit - 1}")
        except self._client_error as exc:
            if self._missing(exc):
                return None
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # an empty object has no byte 0
            raise
        with obj["Body"] as body:
            return body.read(limit)  # a server that ignores Range still sends no more than this

    def fetch(self, key: str, path: Path) -> None:
        try:
            self.client.download_file(self.bucket, self._key(key), str(path))
        except self._client_error as exc:
            if self._missing(exc):
                raise FileNotFoundError(key) from None
            raise

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self._client_error as exc:
            if self._missing(exc):
                return False
            raise
        return True

    def _objects(self, prefix: str) -> Iterator[dict]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix)
        )
        for page in pages:
            yield from page.get("Contents", [])

    def delete_prefix(self, prefix: str) -> None:
        batch: list[dict] = []
        for obj in self._objects(prefix):
            batch.append({"Key": obj["Key"]})
            if len(batch) == DELETE_BATCH:
                self._delete(batch)
                batch = []
        if batch:
            self._delete(batch)

    def _delete(self, batch: list[dict]) -> None:
        resp = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        if resp.get("Errors"):
            err = resp["Errors"][0]
            raise OSError(f"S3 refused to delete {len(resp['Errors'])} objects: {err.get('Code')}")

    def size_of_prefix(self, prefix: str) -> int:
        return sum(obj["Size"] for obj in self._objects(prefix))

    def sizes(self, prefix: str) -> dict[str, int]:
        start = len(self._key(prefix))
        return {obj["Key"][start:]: obj["Size"] for obj in self._objects(prefix)}

    def move(self, src: str, dst: str, names: Iterable[str]) -> None:
        # S3 has no rename: a server-side copy of each, side by side (a book's pages are thousands of
        # objects, a round trip each), then the sources go in batches.
        names = list(names)

        def copy(name: str) -> None:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=self._key(dst + name),
                CopySource={"Bucket": self.bucket, "Key": self._key(src + name)},
            )

        with ThreadPoolExecutor(max_workers=MOVE_THREADS) as pool:
            list(pool.map(copy, names))
        for start in range(0, len(names), DELETE_BATCH):
            self._delete([{"Key": self._key(src + name)} for name in names[start : start + DELETE_BATCH]])

    def local_path(self, key: str) -> Path | None:
        return None

    def url(self, key: str, filename: str | None = None) -> str | None:
        if filename is not None:
            params = {
                "ResponseContentType": "application/octet-stream",
                "ResponseContentDisposition": content_disposition(filename),
            }
        else:
            params = {"ResponseContentType": mimetype_of(key)}
        # Signing is local: handing out a URL costs no request to S3.
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key), **params},
            ExpiresIn=self.url_expiry,
        )

    def origin(self) -> str:
        """scheme://host[:port] that browsers fetch presigned URLs from (for the CSP)."""
        parts = urlsplit(
            self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key("x")}, ExpiresIn=60
            )
        )
        return f"{parts.scheme}://{parts.netloc}"

    def scratch_root(self) -> Path:
        """A local temporary directory (SCRATCH_DIR): page files live there only until uploaded."""
        return self.scratch / "livedoc-scratch"

    def forked(self) -> None:
        """A client of this process's own: the parent's pooled sockets must not be shared."""
        import boto3

        meta = self.client.meta
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=meta.endpoint_url, region_name=meta.region_name, config=meta.config
        )


class _CountingReader:
    """A read-only file object that counts the bytes read through it (boto3 streams it in parts)."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        self.count += len(chunk)
        return chunk


def open_storage(settings) -> Storage:
    """The storage the settings name: S3 when STORAGE_URL is s3://bucket/prefix, else STORAGE_DIR."""
    if settings.STORAGE_URL:
        return S3Storage.from_settings(settings)
    return LocalStorage(settings.STORAGE_DIR)


def content_disposition(filename: str) -> str:
    """An attachment header value for any file name: an ASCII fallback plus RFC 5987 UTF-8."""
    from urllib.parse import quote

    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in filename)
    return f"attachment; filename=\"{fallback or 'download'}\"; filename*=UTF-8''{quote(filename, safe='')}"


def mimetype_of(name: str) -> str:
    """The Content-Type a page file is served with."""
    return MIMETYPES.get(name.rsplit(".", 1)[-1], "application/octet-stream")


def json_object(raw: bytes | str | None) -> dict | None:
    """The JSON object in raw bytes, or None when they are absent, not JSON, or not an object."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def page_names(n: int) -> dict[str, str]:
    """File names of page n's image, thumbnail, text and text layer."""
    return {
        "image": f"page-{n:04d}.jpg",
        "thumb": f"thumb-{n:04d}.jpg",
        "text": f"text-{n:04d}.txt",
        "layer": f"layer-{n:04d}.json",
    }


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

    def pdf_key(self, kind: str, attempt: int) -> str:
        """Where the PDF that an attempt's pages are rendered from lives."""
        return self.original_key if kind == "pdf" else self.key(attempt, SOURCE_PDF)

    def save_original_stream(self, stream: BinaryIO) -> int:
        """Store the upload atomically, in chunks; returns its size."""
        return self.storage.put_stream(self.original_key, stream)

    def save_original(self, data: bytes) -> None:
        """Store small upload bytes (tests, tools)."""
        self.storage.put_bytes(self.original_key, data)

    def read_json(self, attempt: int, name: str) -> dict | None:
        """A JSON file of an attempt, or None when it is absent or unreadable."""
        return json_object(self.storage.get_bytes(self.key(attempt, name)))

    def layout(self, attempt: int) -> dict | None:
        """Page sizes and outline of an attempt, known once it has validated the document."""
        return self.read_json(attempt, LAYOUT)

    def manifest(self, attempt: int) -> dict | None:
        """The completed attempt's manifest, or None."""
        return self.read_json(attempt, MANIFEST)

    def attempts_stored(self) -> list[int]:
        """The attempt numbers that hold output in storage, in one listing."""
        found = set()
        for name in self.storage.sizes(self.prefix):
            head = name.split("/", 1)[0]
            if "/" in name and head[:1] == "a" and head[1:].isdigit():
                found.add(int(head[1:]))
        return sorted(found)

    def carry_over(self, into: int) -> bool:
        """Give attempt `into` the output of the newest earlier attempt (its stored pages stay valid:
        the same source renders the same pages), and remove whatever older attempts left; False when
        attempt `into` holds nothing (no page to keep: no need to look)."""
        stored = self.attempts_stored()
        earlier = [a for a in stored if a < into]
        if earlier:
            # Only what is whole moves: a page missing one of its files is made again.
            sizes = self.storage.sizes(self.attempt_prefix(earlier[-1]))
            whole = self._whole(sizes)
            keep = {LAYOUT, SOURCE_PDF}
            keep.update(v for n in whole for v in page_names(n).values())
            keep.update(hd_name(n) for n in whole)
            self.storage.move(
                self.attempt_prefix(earlier[-1]), self.attempt_prefix(into), [k for k in sizes if k in keep]
            )
        for attempt in earlier:
            self.storage.delete_prefix(self.attempt_prefix(attempt))
        return bool(earlier) or into in stored

    def _whole(self, sizes: dict[str, int]) -> list[int]:
        out = []
        for name in sizes:
            parsed = parse_page_file(name)
            if parsed is not None and parsed[0] == "layer":
                if all(v in sizes for v in page_names(parsed[1]).values()):
                    out.append(parsed[1])
        return sorted(out)

    def leading_pages(self, attempt: int) -> int:
        """How many pages from page 1 on an attempt holds whole (one listing)."""
        ready = 0
        for n in self._whole(self.storage.sizes(self.attempt_prefix(attempt))):
            if n != ready + 1:
                break
            ready = n
        return ready

    def stored_pages(self, attempt: int) -> tuple[dict[int, dict], int]:
        """The pages an attempt holds whole (image, thumbnail, text, layer) by number, as manifest
        entries, and their bytes; a page whose layer does not say its size is left out (made again)."""
        sizes = self.storage.sizes(self.attempt_prefix(attempt))
        found: dict[int, dict] = {}
        total = 0
        for n in self._whole(sizes):
            names = page_names(n)
            meta = (json_object(self.storage.get_bytes(self.key(attempt, names["layer"]))) or {}).get("page")
            if not isinstance(meta, dict) or not all(isinstance(meta.get(k), int) for k in PAGE_META):
                continue
            found[n] = {"n": n, **names, **{k: meta[k] for k in PAGE_META}}
            total += sum(sizes[v] for v in names.values())
        return found, total

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
