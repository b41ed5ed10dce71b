"""The teardown record: the one memory of what a disk's add created.

One JSON file per backend path under the state directory (a tmpfs: records
describe kernel objects of this boot). A step is written *before* the kernel
object it describes is created, then completed once it exists, so a script
killed at any point leaves a record that names everything that may exist.
Every write is atomic (temporary file, fsync, rename): a reader sees the old
record or the new one, never half of one.

Record fields: key (the XENBUS_PATH), type, target, mode, frontend_id,
image (identity of the image, for the sharing check), writable, state
("building" until connected) and steps (list of dicts, each with "undo": the
name of the undo function in lifecycle.UNDO, plus that function's data).
"""
import json
import os

RECORD_SUFFIX = ".json"


class StateDir:
    def __init__(self, path):
        self.path = path
        self.lock_dir = os.path.join(path, "lock")
        self.marker_dir = os.path.join(path, "udev")
        for directory in (path, self.lock_dir, self.marker_dir):
            os.makedirs(directory, mode=0o700, exist_ok=True)

    def lock_path(self, name):
        return os.path.join(self.lock_dir, _filename(name))

    def record_path(self, key):
        return os.path.join(self.path, _filename(key) + RECORD_SUFFIX)

    def load(self, key):
        return _read_json(self.record_path(key))

    def save(self, record):
        path = self.record_path(record["key"])
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temporary, path)

    def delete(self, key):
        try:
            os.unlink(self.record_path(key))
        except FileNotFoundError:
            pass

    def records(self):
        """Every record, in name order; ones vanishing meanwhile are skipped."""
        found = []
        for name in sorted(os.listdir(self.path)):
            if name.endswith(RECORD_SUFFIX):
                record = _read_json(os.path.join(self.path, name))
                if record is not None:
                    found.append(record)
        return found


def new_record(key, disk_type, request):
    return {
        "key": key,
        "type": disk_type,
        "target": request.target,
        "mode": request.mode,
        "frontend_id": request.frontend_id,
        "writable": request.writable,
        "image": None,
        "state": "building",
        "steps": [],
    }


def _filename(key):
    # xenstore paths use only [A-Za-z0-9-/_@]: "~" cannot clash, and keeps the
    # name readable for an administrator looking at /run/xenblock.
    return key.strip("/").replace("/", "~")


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None

