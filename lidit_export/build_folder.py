"""A build folder written as one transaction, so that a killed or concurrent build never loses a working one.

- **Lock**: a build holds an exclusive `flock` on BUILD/.lock for its whole run; a second build (or
  export, or parity writing its findings) into the same folder is refused at once with the holder's pid.
  The kernel drops the lock when the holder dies, kill -9 included.
- **New files never replace old ones**: every graph, external-data file, engine and tokenizer is named
  after the key it was made from (`onnx/dit-<key>.onnx`), so the manifest in place keeps naming files
  that nothing touches until it is replaced.
- **Progress is durable**: each finished artifact is recorded at once in BUILD/.pending.json; a rerun
  after a kill reuses every record whose key and file hash still match (not the file's mere existence).
- **One commit**: manifest.json is replaced atomically at the very end; only then are the files that no
  manifest names any more, and the journal, removed.
- Temp files that a killed run left (`.name.*` folders and `*.tmp` files) are removed under the lock.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import threading
from pathlib import Path

from lidit_runtime.manifest import (MANIFEST, ComponentRecord, EngineRecord, Manifest, file_sha256, load_manifest,
                                    named_files)
from lidit_runtime.schema import from_dict

from .artifacts import atomic_write_json, atomic_write_text
from .errors import ArtifactError

LOCK = ".lock"
PENDING = ".pending.json"
ARTIFACT_FOLDERS = ("onnx", "engines", "tokenizers")  # what the manifest names, and what is cleaned after a commit
_held: dict[tuple, int] = {}  # (build folder, thread) holding its lock -> nesting depth


class BuildFolder:
    """`with BuildFolder(path) as folder:` lock, reuse (`reusable_*`), record (`add_*`), `commit(manifest)`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None
        self.previous: Manifest | None = None
        self.pending: dict = {"components": {}, "engines": {}}

    def __enter__(self) -> "BuildFolder":
        if self.path.exists() and not self.path.is_dir():
            raise ArtifactError(f"{self.path} is a file, not a build folder; choose another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ArtifactError(f"cannot create build folder {self.path} ({e.strerror}); choose another --out") from None
        self._fd = acquire_lock(self.path)
        self.previous = _load_or_none(self.path)
        self.pending = _read_pending(self.path)
        return self

    def __exit__(self, *exc) -> None:
        release_lock(self.path, self._fd)

    # --- reuse: a record whose key matches and whose file still hashes to its sha256 ----------------------
    def reusable_component(self, name: str, key: str) -> ComponentRecord | None:
        return self._reusable("components", name, key, lambda rec: rec.input_key)

    def reusable_engine(self, name: str, key: str) -> EngineRecord | None:
        return self._reusable("engines", name, key, lambda rec: rec.key)

    def _reusable(self, kind: str, name: str, key: str, key_of):
        """The record of the manifest in place, else of the journal, made from `key` with its files intact."""
        previous = getattr(self.previous, kind).get(name) if self.previous else None
        for rec in (previous, self.pending[kind].get(key)):
            if rec is not None and rec.name == name and key_of(rec) == key and all(
                    self._intact(rel, digest) for rel, digest in _files_of(rec)):
                return rec
        return None

    def _intact(self, rel: str, digest: str | None) -> bool:
        file = self.path / rel
        return file.is_file() and not file.is_symlink() and file_sha256(file) == digest

    # --- progress --------------------------------------------------------------------------------------
    def add_component(self, rec: ComponentRecord) -> None:
        self.pending["components"][rec.input_key] = rec
        self._write_pending()

    def add_engine(self, rec: EngineRecord) -> None:
        self.pending["engines"][rec.key] = rec
        self._write_pending()

    def _write_pending(self) -> None:
        atomic_write_json(self.path / PENDING, {kind: {k: dataclasses.asdict(r) for k, r in records.items()}
                                                for kind, records in self.pending.items()})

    # --- the commit ------------------------------------------------------------------------------------
    def commit(self, manifest: Manifest) -> None:
        """Replace manifest.json atomically, then remove what no manifest names any more."""
        atomic_write_text(self.path / MANIFEST, manifest.to_json())
        self.previous = manifest
        self.pending = {"components": {}, "engines": {}}
        keep = {self.path / rel for _, rel, _ in named_files(manifest)}
        for folder in ARTIFACT_FOLDERS:
            for entry in (self.path / folder).glob("*") if (self.path / folder).is_dir() else ():
                if entry not in keep and (entry.suffix in (".onnx", ".data", ".engine") or folder == "tokenizers"):
                    entry.unlink()
        (self.path / PENDING).unlink(missing_ok=True)


def _files_of(rec) -> list[tuple[str, str | None]]:
    """(path, sha256) of a record's files: a graph may have external data beside it."""
    data = getattr(rec, "data_file", None)
    return [(rec.file, rec.sha256)] + ([(data, rec.data_sha256)] if data is not None else [])


def acquire_lock(path: Path) -> int | None:
    """An exclusive, non-blocking flock on PATH/.lock (re-entrant within one thread; another thread or process
    is refused); stale temp files of a killed run are removed once it is held."""
    key = (path.resolve(), threading.get_ident())
    if key in _held:
        _held[key] += 1
        return None
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ArtifactError(f"another lidit-export process (pid {holder}) is writing {path}; wait for it to finish "
                            "or choose another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = 1
    remove_stale_temp(path)
    return fd


def release_lock(path: Path, fd: int | None) -> None:
    key = (path.resolve(), threading.get_ident())
    _held[key] -= 1
    if _held[key] == 0:
        del _held[key]
        os.close(fd)  # closing the descriptor releases the flock


def remove_stale_temp(path: Path) -> None:
    """Temp entries a killed run left: dot-entries in the artifact and calibration folders, `.*.tmp` at the top."""
    for folder in (*ARTIFACT_FOLDERS, "calibration"):
        for entry in (path / folder).glob(".*") if (path / folder).is_dir() else ():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for entry in path.glob(".*.tmp"):
        entry.unlink()


def _load_or_none(path: Path) -> Manifest | None:
    try:
        return load_manifest(path, check_files=False)
    except ArtifactError:  # no manifest, or one from another version: nothing to reuse from it
        return None


def _read_pending(path: Path) -> dict:
    """The journal of a killed run; a damaged one only means less is reused."""
    empty = {"components": {}, "engines": {}}
    try:
        data = json.loads((path / PENDING).read_text())
        return {"components": {k: from_dict(ComponentRecord, v, "pending", ValueError)
                               for k, v in data["components"].items()},
                "engines": {k: from_dict(EngineRecord, v, "pending", ValueError) for k, v in data["engines"].items()}}
    except FileNotFoundError:
        return empty
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return empty
