"""`xenblock status`: every disk xenblock has built, checked against the
kernel and xenstore.

The records under /run/xenblock say what was built; the kernel says what
still exists, and xenstore whether the guest and its backend still do. Where
they disagree the row says so: a record whose device is gone, a record whose
backend is gone from xenstore (a guest destroyed while its remove did not
run or failed: `xenblock cleanup` takes it down), and a device of ours that
no record names (a loop device with our marker, a device-mapper device with
our UUID prefix, an nbd device with our backend identifier, a qemu-nbd
serving on a socket of ours).
"""
import os
from collections import namedtuple

from . import dm, fill, nbd, qemunbd
from .blockdev import Devnum, diskseq

# One disk: its backend path (key), guest name and domid, vdev, script,
# target, devices ([node (devnum)]), access (r/w), fill (a Level or None),
# problems ([text]) and pool (a thin snapshot's fill.Pool, or None).
Row = namedtuple("Row", "key guest domid vdev script target devices access fill problems pool",
                 defaults=(None,))


def rows(state, xs):
    """A Row for each record, then one for each device of ours no record
    names (key None)."""
    from .cleanup import unrecorded
    records, devices, loops, volumes, served = unrecorded(state)
    levels = {key: level for level in fill.levels(state) for key in level.keys}
    pools = {key: pool for pool in fill.pools(state) for key in pool.keys}
    found = [_row(record, xs, levels.get(record["key"]))._replace(pool=pools.get(record["key"]))
             for record in records]
    strays = [f"{dm.node(device.devnum)} ({device.name})" for device in devices]
    strays += [f"{nbd.node(index)} ({mark})" for index, mark in served.devices]
    strays += [f"qemu-nbd pid {pid} ({path})" for pid, path in served.daemons]
    strays += [f"{node} ({mark})" for node, _, mark in loops] + [volume.full_name for volume in volumes]
    return found + [_stray(node) for node in strays]


def _row(record, xs, level):
    key, domid = record["key"], record.get("frontend_id")
    guest = xs.read(f"/local/domain/{domid}/name") if domid is not None else None
    problems = []
    state = record.get("state", "unknown")
    if state != "connected":
        doing = ("a remove is taking it down, or stopped" if state == "removing"
                 else "an add is building it, or was killed")
        problems.append(f"record {state}: {doing}")
    if xs.read(f"{key}/frontend-id") is None:
        problems.append("its backend is gone from xenstore (the guest went and its remove did not run or "
                        "failed): `xenblock cleanup` takes it down")
    devices = []
    for step in record["steps"]:
        if step["undo"] == "qemu_nbd" and not qemunbd.running(step):
            problems.append(f"its qemu-nbd (pid {step.get('pid')}) serving {step['image']} is gone")
        if "node" not in step:
            continue
        devices.append(f"{step['node']} ({step['devnum']})" if "devnum" in step else step["node"])
        if not _exists(step):
            problems.append(f"{step['node']} is gone")
    if level is not None and level.usage is None and not any("is gone" in p for p in problems):
        problems.append("no snapshot in its device-mapper device")
    return Row(key, guest, domid, xs.read(f"{key}/dev"), f"block-{record['type']}", record["target"], devices,
               "w" if "w" in record.get("mode", "r") else "r", level, problems)


def _exists(step):
    """Whether the kernel object a step names is still the one it made."""
    if step.get("undo") == "dm":
        return dm.info(step["uuid"]) is not None
    if "devnum" not in step:
        return True  # a step of a kind with no device of its own
    devnum = Devnum.parse(step["devnum"])
    if not os.path.exists(devnum.sysfs()):
        return False
    return step.get("diskseq") is None or diskseq(devnum) == step["diskseq"]


def _stray(node):
    return Row(None, None, None, None, None, None, [node], None, None,
               ["a device of xenblock's that no record names (a record lost with /run, or a run killed "
                "between making it and recording it)"])


def as_json(row, warn_at):
    data = row._asdict()
    data["fill"] = None if row.fill is None or row.fill.usage is None else {
        "used": fill.used_text(row.fill.usage), "percent": fill.percent(row.fill.usage.fill)
        if row.fill.usage.problem is None else None, "warning": fill.warnings(row.fill, warn_at)}
    data["pool"] = None if row.pool is None else {
        "name": row.pool.name, **_pool_percents(row.pool.usage), "warning": fill.pool_warnings(row.pool, warn_at)}
    return data


def _pool_percents(usage):
    if usage.problem is not None:
        return {"data": None, "metadata": None}
    return {"data": fill.percent(usage.data_fill), "metadata": fill.percent(usage.metadata_fill)}


def fill_text(level, warn_at, pool=None):
    """The FILL column: the level (a thin snapshot's: its pool's data
    use), marked when it needs a person."""
    if pool is not None:
        usage = pool.usage
        text = f"DEAD pool ({usage.problem})" if usage.problem else f"pool {fill.percent(usage.data_fill)}"
        return f"{text} !" if fill.pool_warnings(pool, warn_at) else text
    if level is None:
        return "-"
    if level.usage is None:
        return "?"
    if level.usage.problem is not None:
        return f"DEAD ({level.usage.problem})"
    text = fill.percent(level.usage.fill)
    return f"{text} !" if fill.warnings(level, warn_at) else text
