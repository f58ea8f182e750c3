"""Where a document's files live under STORAGE_DIR; the web and the worker share this layout.

    <STORAGE_DIR>/<doc id>/original          the upload, byte for byte, never deleted by a failure
    <STORAGE_DIR>/<doc id>/work/             the running attempt's output (wiped at each attempt)
    <STORAGE_DIR>/<doc id>/out/              the finished output, swapped in whole at the end
        manifest.json, page-0001.jpg, thumb-0001.jpg, text-0001.txt, ...

Nothing the client sends becomes part of a path: the directory is the server-made document id.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from livedoc.ids import valid_doc_id

MANIFEST = "manifest.json"


class DocumentFiles:
    """The files of one document."""

    def __init__(self, root: str | os.PathLike, doc_id: str):
        if not valid_doc_id(doc_id):
            raise ValueError("not a document id")
        self.root = Path(root) / doc_id

    @property
    def original(self) -> Path:
        """The uploaded bytes."""
        return self.root / "original"

    @property
    def work(self) -> Path:
        """Scratch output of the attempt in progress."""
        return self.root / "work"

    @property
    def out(self) -> Path:
        """Output of the last successful attempt."""
        return self.root / "out"

    def save_original(self, data: bytes) -> None:
        """Write the upload atomically (a crash leaves no half file behind)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "original.part"
        tmp.write_bytes(data)
        os.replace(tmp, self.original)

    def save_original_stream(self, stream: BinaryIO, chunk_size: int = 1024 * 1024) -> int:
        """Copy an upload to the original in chunks, atomically; returns the bytes written."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "original.part"
        written = 0
        try:
            with open(tmp, "wb") as out:
                while chunk := stream.read(chunk_size):
                    out.write(chunk)
                    written += len(chunk)
            os.replace(tmp, self.original)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return written

    def fresh_work(self) -> Path:
        """An empty work directory: the partial output of an earlier attempt is removed first."""
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        return self.work

    def publish_work(self, manifest: dict) -> None:
        """Write the manifest and swap the finished work directory in as the output."""
        (self.work / MANIFEST).write_text(json.dumps(manifest))
        old = self.root / "out.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.out.exists():
            os.replace(self.out, old)
        os.replace(self.work, self.out)
        shutil.rmtree(old, ignore_errors=True)

    def discard_work(self) -> None:
        """Remove a failed attempt's partial output."""
        shutil.rmtree(self.work, ignore_errors=True)

    def manifest(self) -> dict | None:
        """The finished output's manifest, or None when there is none."""
        try:
            return json.loads((self.out / MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    def output_file(self, name: str) -> Path | None:
        """A file of the finished output, by a name the manifest lists; None otherwise."""
        manifest = self.manifest()
        if manifest is None or name not in manifest.get("files", ()):
            return None
        return self.out / name


def page_names(n: int) -> dict[str, str]:
    """File names of page n's image, thumbnail and text."""
    return {"image": f"page-{n:04d}.jpg", "thumb": f"thumb-{n:04d}.jpg", "text": f"text-{n:04d}.txt"}
