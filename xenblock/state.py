"""The teardown record: the one memory of what a disk's add created.

One JSON file per backend path under the state directory (a tmpfs: records
describe kernel objects of this boot). A step is written *before* the kernel
object it describes is created, then completed once it exists, so a script
killed at any point leaves a record that names everything that may exist.
Every write is atomic (temporary file, fsync, rename): a reader sees the old
record or the new one, never half of one.

Record fields: format (RECORD_FORMAT; a record without it is format 1, the
layout before the field existed), key (the XENBUS_PATH), type, target, mode, frontend_id,
images (for the sharing check: each image the disk uses, as {"id": its
identity, "writable": bool, "extent": [start, end) in bytes or None for all
of it}), state ("building" until connected, "removing" once a teardown
has begun) and steps (list of dicts, each
with "undo": the name of the undo function in build.UNDO, plus that
function's data).

The directory is fixed, not a setting: the udev rule
(etc/udev/rules.d/59-xenblock.rules) tests for markers under it and cannot
read a configuration file.
"""
import json
import os

from . import locks
from .errors import HotplugError

STATE_DIR = "/run/xenblock"
RECORD_SUFFIX = ".json"
TEMPORARY_SUFFIX = ".tmp"
# Raised whenever the record layout changes, so that a run of an upgraded
# package refuses a record it would misread instead of undoing wrong steps.
RECORD_FORMAT = 1


class StateDir:
    def __init__(self, path=STATE_DIR):
        self.path = path
        self.lock_dir = os.path.join(path, "lock")
        self.marker_dir = os.path.join(path, "udev")
        for directory in (path, self.lock_dir, self.marker_dir):
            os.makedirs(directory, mode=0o700, exist_ok=True)

    def lock_path(self, name):
        return os.path.join(self.lock_dir, _filename(name))

    def image_lock_path(self, image_id):
        """The lock of an image (see lifecycle._image_locked), held while its
        users are checked and a disk is built on it."""
        return self.lock_path(f"image:{image_id}")

    def shared_loop_lock_path(self, image_id):
        """The lock of a base image's shared loop device, held only while
        it is found, bound or released (xenblock.build): never while waiting
        for another lock, so a remove waits for no add's whole build."""
        return self.lock_path(f"shared-loop:{image_id}")

    def record_path(self, key):
        return os.path.join(self.path, _filename(key) + RECORD_SUFFIX)

    def load(self, key):
        return _read_json(self.record_path(key))

    def save(self, record):
        # Saved only under the key's lock, so one temporary name per key is
        # enough; one left by a kill before the rename is overwritten by the
        # next save, removed by delete, or swept.
        path = self.record_path(record["key"])
        temporary = path + TEMPORARY_SUFFIX
        with open(temporary, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temporary, path)

    def delete(self, key):
        path = self.record_path(key)
        _unlink(path)
        _unlink(path + TEMPORARY_SUFFIX)

    def records(self):
        """Every record, in name order; ones vanishing meanwhile are skipped."""
        found = []
        for name in sorted(os.listdir(self.path)):
            if name.endswith(RECORD_SUFFIX):
                record = _read_json(os.path.join(self.path, name))
                if record is not None:
                    found.append(record)
        return found

    def sweep(self):
        """Remove what killed runs left and no run will come back for: lock
        files nobody holds, and temporary records of keys whose lock is free
        (a run that holds it may be writing one)."""
        for name in os.listdir(self.lock_dir):
            with locks.held_if_free(os.path.join(self.lock_dir, name)):
                pass  # released, so unlinked
        for name in os.listdir(self.path):
            if name.endswith(RECORD_SUFFIX + TEMPORARY_SUFFIX):
                lock = os.path.join(self.lock_dir, name[: -len(RECORD_SUFFIX + TEMPORARY_SUFFIX)])
                with locks.held_if_free(lock) as free:
                    if free:
                        _unlink(os.path.join(self.path, name))


def new_record(key, disk_type, request, uses):
    return {
        "format": RECORD_FORMAT,
        "key": key,
        "type": disk_type,
        "target": request.target,
        "mode": request.mode,
        "frontend_id": request.frontend_id,
        "images": [{"id": use.source.image_id, "writable": use.writable,
                    "extent": list(use.extent) if use.extent else None} for use in uses],
        "state": "building",
        "steps": [],
    }


def _filename(key):
    # xenstore paths use only [A-Za-z0-9-/_@]: "~" cannot clash, and keeps the
    # name readable for an administrator looking at /run/xenblock. An
    # absolute path keeps its leading "~": it names another node than the
    # relative one (which xenstored resolves under the caller's domain).
    return key.replace("/", "~")


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _read_json(path):
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    found = record.get("format", 1)
    if found != RECORD_FORMAT:
        raise HotplugError(f"{path}: record format {found}, this xenblock reads format {RECORD_FORMAT}; "
                           "undo it with the xenblock version that wrote it")
    return record
