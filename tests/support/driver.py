"""Drive hotplug scripts the way libxl does: backend nodes, environment, add/remove.

One driver serves both tiers: on the host it points at the xenstored double
and the checkout's scripts; in the Xen VM at the real xenstored and the
scripts installed in /etc/xen/scripts. The test cases do not know which.
"""
import itertools
import os
import subprocess
from dataclasses import dataclass, field

import pyxs

from xenblock import upgrade
from xenblock.state import StateDir

_devids = itertools.count(51712, 16)


@dataclass
class Driver:
    client: pyxs.Client  # connected
    script_dir: str
    env: dict  # added to the scripts' environment
    state_dir: str
    log_file: str
    prefix: str  # backend directories live under here
    keys: list = field(default_factory=list)
    # Backends whose last run through here was a successful remove: cleanup
    # does not remove them again. A second remove costs a script run (seconds
    # under emulation) and could hide what the first one left. A test that
    # runs add by itself (Popen) is not seen here: its key is removed.
    removed: set = field(default_factory=set)

    def read(self, key, default=None):
        try:
            return self.client.read(key.encode()).decode()
        except pyxs.PyXSError:
            return default

    def write(self, key, value):
        self.client.write(key.encode(), str(value).encode())

    def write_unchecked(self, key, value):
        """write, past pyxs's own check (7-bit text without control
        characters): xenstored itself stores any bytes a domU config gives.
        value: text, or bytes (any, empty or not UTF-8 too)."""
        from pyxs._internal import Op, Packet, next_rq_id
        data = value if isinstance(value, bytes) else value.encode()
        packet = Packet(Op.WRITE, key.encode() + b"\0" + data, rq_id=next_rq_id(), tx_id=0)
        assert self.client.router.send(packet).get().op == Op.WRITE

    def children(self, key):
        """The names of key's child nodes; [] if key is not there."""
        try:
            return sorted(name.decode() for name in self.client.list(key.encode()))
        except pyxs.PyXSError:
            return []

    def delete(self, key):
        try:
            self.client.delete(key.encode())
        except pyxs.PyXSError:
            pass

    def backend(self, target, mode="w", frontend_id=0, script="block-file", prefix=None, omit=(), devid=None):
        """Create a backend directory as libxl does before running add; returns
        its key. prefix: another parent than the driver's; omit: nodes to leave
        out; devid: the guest's device number (a new one unless given)."""
        key = f"{prefix or self.prefix}/{frontend_id}/{devid or next(_devids)}"
        nodes = {"params": target, "mode": mode, "frontend-id": frontend_id, "script": script,
                 "state": 2, "type": "phy", "device-type": "disk", "online": 1}
        for name, value in nodes.items():
            if name not in omit:
                self.write(f"{key}/{name}", value)
        self.keys.append(key)
        return key

    def run(self, command, key, script="block-file", env=None, wrapper=()):
        """wrapper: argv words the script runs under (unshare ..., say);
        env: variables to add, None for one to leave out."""
        environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.env,
                   "XENBUS_TYPE": "vbd", "XENBUS_PATH": key, "XENBUS_BASE_PATH": "backend",
                   "script": os.path.join(self.script_dir, script), **(env or {})}
        environ = {name: value for name, value in environ.items() if value is not None}
        self.removed.discard(key)
        result = subprocess.run([*wrapper, os.path.join(self.script_dir, script), command], env=environ,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        if command == "remove" and result.returncode == 0 and "XENBUS_PATH" not in (env or {}):
            self.removed.add(key)
        return result

    def add(self, key, **kw):
        return self.run("add", key, **kw)

    def remove(self, key, **kw):
        return self.run("remove", key, **kw)

    def destroy_backend(self, key):
        """What libxl does after remove: the backend directory goes."""
        self.delete(key)

    def log_offset(self):
        """Where the hotplug log ends now (made if missing); see log_since."""
        with open(self.log_file, "a"):
            return os.path.getsize(self.log_file)

    def log_since(self, offset):
        """The hotplug log's lines written after log_offset() gave offset."""
        with open(self.log_file) as f:
            f.seek(offset)
            return f.read().splitlines()

    def record(self, key):
        """The teardown record of key, as the scripts keep it; None if none."""
        return StateDir(self.state_dir).load(key)

    def record_path(self, key):
        return StateDir(self.state_dir).record_path(key)

    def save_record(self, record):
        StateDir(self.state_dir).save(record)

    def state_files(self):
        """Every file under the state directory (records, locks, udev
        markers) but the upgrade lock, kept on purpose (xenblock/upgrade.py)."""
        found = []
        for directory, _, files in os.walk(self.state_dir):
            found += [os.path.join(directory, name) for name in files]
        return sorted(set(found) - {upgrade.LOCK})

    def cleanup(self):
        """Take down what a test left: remove each backend but those removed
        already, then delete the backend directories."""
        for key in self.keys:
            if key not in self.removed:
                self.remove(key)
            self.delete(key)
