"""block-lvsnap's parts that need no LVM (the host has none): the target,
the snapshot's name, the size and reuse rules, the config keys, the device
filter, and how lvs is run and read (a stand-in lvs on PATH). LVM itself is
exercised in tests/xen/test_block_lvsnap_xl.py."""
import json
import os

import pytest

from xenblock import config, lvm
from xenblock.blockdev import Devnum
from xenblock.deadline import Deadline
from xenblock.errors import HotplugError
from xenblock.types import lvsnap

# One row as LVM 2.03.16 printed it in the test dom0 (lvs --reportformat json --units b --nosuffix).
ROW = {"vg_name": "vg0", "lv_name": "xenblock-g-xvda", "lv_uuid": "wcPpRc-Kuvp-oGyI-MWY3-plhH-DWcR-0b3NX8",
       "lv_attr": "swi-a-s---", "lv_size": "8388608", "origin": "orig", "segtype": "linear",
       "lv_tags": "xenblock,xenblock-backend:backend/vbd/5/51712", "snap_percent": "0.00",
       "lv_kernel_major": "254", "lv_kernel_minor": "8", "lv_dm_path": "/dev/mapper/vg0-xenblock--g--xvda",
       "vg_free": "104857600"}


def volume(**changes):
    return lvm._volume({**ROW, **changes})


def origin(**changes):
    return volume(lv_name="orig", origin="", lv_attr="owi-a-s---", lv_tags="", snap_percent="",
                  lv_dm_path="/dev/mapper/vg0-orig", **changes)


@pytest.mark.parametrize("target, vg, lv, size", [
    ("vg0/web 2G", "vg0", "web", 2 << 30),
    (" vg0/web  30 ", "vg0", "web", 30 << 20),
    ("vg_1.a/lv+x-y", "vg_1.a", "lv+x-y", None),
])
def test_targets(target, vg, lv, size):
    spec = lvsnap.parse(target)
    assert (spec.vg, spec.lv, spec.size) == (vg, lv, size)


@pytest.mark.parametrize("target, words", [
    ("vg0", "expected <vg>/<lv> [<size>]"),
    ("/dev/vg0/web", "expected <vg>/<lv>"),
    ("vg0/web/x 1G", "expected <vg>/<lv>"),
    ("vg0/-web 1G", "expected <vg>/<lv>"),
    ("vg0/web 2X", "the snapshot's size: '2X' is not a size"),
    ("", "expected <vg>/<lv>"),
])
def test_bad_targets(target, words):
    with pytest.raises(HotplugError, match="^target") as raised:
        lvsnap.parse(target)
    assert words in str(raised.value)


def test_the_snapshot_is_named_after_guest_and_device_in_lvm_s_alphabet():
    spec = lvsnap.parse("vg0/web 1G")
    lvsnap.named_after(spec, "web server/1", "xvda")
    assert spec.name == "xenblock-web_server_1-xvda"
    lvsnap.named_after(spec, None, "51712")
    assert spec.name == "xenblock-unnamed-51712"
    lvsnap.named_after(spec, "g" * 200, "xvda")
    assert len(spec.name) == lvsnap.MAX_NAME


def checked_size(target, base):
    spec = lvsnap.parse(target)
    spec.origin = base
    lvsnap._check_size(spec)


def test_sizes_for_classic_and_thin_origins():
    checked_size("vg0/orig 100M", origin())  # exactly the free space
    checked_size("vg0/orig", origin(segtype="thin"))
    with pytest.raises(HotplugError, match="classic .* give the snapshot's size"):
        checked_size("vg0/orig", origin())
    with pytest.raises(HotplugError, match="thin volume: .* give no size"):
        checked_size("vg0/orig 8M", origin(segtype="thin"))
    with pytest.raises(HotplugError, match="snapshot of 101M asked for, volume group vg0 has 100M free"):
        checked_size("vg0/orig 101M", origin())


def ours(found, keep=False, lv="orig"):
    spec = lvsnap.parse(f"vg0/{lv} 8M")
    spec.keep = keep
    return lvsnap._ours(found, spec)


def test_what_an_lv_of_the_snapshot_s_name_may_be():
    assert ours(None) is None
    leftover = volume(lv_attr="swi-I-s---", snap_percent="100.00")
    assert ours(leftover) is leftover  # not kept: made afresh, whatever it holds
    with pytest.raises(HotplugError, match="is not xenblock's .* left alone"):
        ours(volume(lv_tags="mine"))
    with pytest.raises(HotplugError, match="kept snapshot of orig, not of vg0/other"):
        ours(volume(), lv="other")
    with pytest.raises(HotplugError, match="already open"):
        ours(volume(lv_attr="swi-aos---"))
    with pytest.raises(HotplugError, match="kept snapshot is invalid .* 100% full"):
        ours(leftover, keep=True)
    with pytest.raises(HotplugError, match="kept snapshot is invalid"):
        ours(volume(lv_attr="swi-I-s---", snap_percent=""), keep=True)  # lvs gives no percentage then
    kept = volume(snap_percent="42.00")
    assert ours(kept, keep=True) is kept


def test_volumes_read_from_lvs_json():
    found = volume()
    assert found.devnum == Devnum(254, 8) and found.ours and not found.thin and not found.open
    assert found.tags == {"xenblock", "xenblock-backend:backend/vbd/5/51712"} and found.snap_percent == 0.0
    assert volume(lv_kernel_major="-1", lv_kernel_minor="-1").devnum is None


def test_keep_settings(tmp_path):
    path = tmp_path / "x.conf"
    path.write_text("[lvsnap]\nkeep = yes\nkeep_origins = vg0/a  vg1/b\nlive_origin = yes\n")
    loaded = config.load({"XENBLOCK_CONFIG": str(path)})
    assert loaded.lvsnap_keep and loaded.lvsnap_live_origin
    assert loaded.lvsnap_keep_origins == {"vg0/a", "vg1/b"}
    path.write_text("[lvsnap]\nkeep_origins = vg0/a /dev/vg1/b\n")
    with pytest.raises(config.ConfigError, match="line 2: .* not '/dev/vg1/b'"):
        config.load({"XENBLOCK_CONFIG": str(path)})


def test_the_device_filter_rejects_our_devices_by_every_kernel_name(tmp_path, monkeypatch):
    markers, sys_block = tmp_path / "udev", tmp_path / "block"
    markers.mkdir()
    (markers / "loop3").write_text("xenblock:x\n")
    for entry, uuid, name, dev in [("dm-1", "XENBLOCK-backend.vbd.1", "xenblock-backend.vbd.1", "254:1"),
                                   ("dm-2", "LVM-abc", "vg0-xenblock--g--xvda", "254:2"),
                                   ("dm-3", "LVM-def", "vg0-orig", "254:3")]:
        (sys_block / entry / "dm").mkdir(parents=True)
        (sys_block / entry / "dm" / "uuid").write_text(uuid + "\n")
        (sys_block / entry / "dm" / "name").write_text(name + "\n")
        (sys_block / entry / "dev").write_text(dev + "\n")
    monkeypatch.setattr(lvm, "MARKER_DIR", str(markers))
    monkeypatch.setattr(lvm, "SYS_BLOCK", str(sys_block))
    text = lvm.device_filter()
    assert text.startswith("devices/global_filter=[") and '"r|^/dev/mapper/xenblock-|"' in text
    dynamic = [p for p in text.split('"') if p.startswith("r|^/dev/(")]
    assert len(dynamic) == 1
    names = set(dynamic[0][len("r|^/dev/("):-len(")$|")].split("|"))
    assert names == {"loop3", "block/7:3", "dm-1", "block/254:1", "dm-2", "block/254:2"}


def fake_lvs(tmp_path, monkeypatch, script):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "lvs").write_text("#!/bin/sh\necho \"$@\" > " + str(tmp_path / "argv") + "\n" + script)
    os.chmod(bin_dir / "lvs", 0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(lvm, "MARKER_DIR", str(tmp_path / "none"))


def test_lvs_runs_with_the_filter_and_its_json_is_read(tmp_path, monkeypatch):
    report = json.dumps({"report": [{"lv": [ROW]}]})
    fake_lvs(tmp_path, monkeypatch, f"echo '{report}'\n")
    (found,) = lvm.volumes("vg0", Deadline.after(10))
    assert found == volume()
    argv = (tmp_path / "argv").read_text()
    assert argv.startswith("--config devices/global_filter=[") and argv.endswith(" vg0\n")
    assert "--reportformat json" in argv


def test_a_missing_volume_group_is_named(tmp_path, monkeypatch):
    fake_lvs(tmp_path, monkeypatch, "echo '  Volume group \"vgx\" not found' >&2; exit 5\n")
    with pytest.raises(HotplugError, match="^volume group vgx not found"):
        lvm.volumes("vgx", Deadline.after(10))


def test_fill_levels_find_a_classic_snapshot_s_device_by_lvm_s_name(monkeypatch):
    from xenblock import dm, fill
    monkeypatch.setattr(fill, "_devices", lambda: [dm.Listed("vg--0-xenblock--g--xvda", "LVM-abc", None),
                                                   dm.Listed("vg--0-orig", "LVM-def", None)])
    uuid_of = fill._SnapshotUuids()
    step = {"undo": "lvsnap", "vg": "vg-0", "lv": "xenblock-g-xvda", "thin": False}
    assert uuid_of(step) == "LVM-abc"
    assert uuid_of({**step, "thin": True}) is None  # its pool fills, not it
    assert uuid_of({**step, "lv": "xenblock-h-xvda"}).startswith("LVM-gone:")
    assert uuid_of({"undo": "dm", "uuid": "XENBLOCK-x"}) == "XENBLOCK-x"
    assert uuid_of({"undo": "loop"}) is None
