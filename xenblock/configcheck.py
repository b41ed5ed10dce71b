"""`xenblock check-config` and `migrate-config`: the disk= entries of xl
domU config files, checked as xl will read them and rewritten to the form
xl takes.

Three kinds of finding, worst first:
  refused     xl refuses the file (a syntax error, an entry xl cannot read:
              above all xend's prefixes that named a script, `cow:`,
              `lvsnap:`, `tap:vmdk:`, which xl does not know);
  fails       xl reads it, but the guest's start fails (a script that is not
              installed, a target its xenblock script cannot parse, a file
              that does not exist);
  deprecated  works, in a form xl keeps for old configs (`phy:`, `file:`,
              `tap:aio:`, `tap:qcow2:`, `iscsi:`, positional parameters).
"""
import os
from collections import namedtuple

from . import diskspec, xlconfig
from .errors import HotplugError

SCRIPT_DIR = "/etc/xen/scripts"  # libxl's: a script= without a slash is looked up here
SEVERITIES = ("refused", "fails", "deprecated")

# replacement: the entry in the form xl takes, or None.
Finding = namedtuple("Finding", "path line severity spec message replacement")


def check_file(path, script_dir=SCRIPT_DIR):
    """The findings of one config file, in file order."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            data = f.read()
    except OSError as e:
        return [Finding(path, 0, "refused", None, f"cannot read: {e.strerror}", None)]
    return _findings(path, data, script_dir)[0]


def _findings(path, data, script_dir):
    """(findings, [(String, replacement, severity)]) of config text data."""
    settings, problems = xlconfig.read(data)
    findings = [Finding(path, p.line, "refused", None, p.message, None) for p in problems]
    entries = []
    for setting in settings:
        if setting.name != "disk":
            continue
        if not isinstance(setting.value, xlconfig.List):
            findings.append(Finding(path, setting.line, "refused", None, "disk must be a list [ ... ]", None))
            continue
        for literal in xlconfig.strings(setting.value):
            finding = _check_entry(literal.text, script_dir)
            if finding is not None:
                severity, message, replacement = finding
                findings.append(Finding(path, literal.line, severity, literal.text, message, replacement))
                entries.append((literal, replacement, severity))
    findings.sort(key=lambda finding: finding.line)
    return findings, entries


def _check_entry(spec, script_dir):
    """(severity, message, replacement) for one entry, or None if it is fine."""
    disk = diskspec.parse(spec)
    xend = diskspec.xend_script(spec)
    if disk.errors:
        if xend is not None and not xend[1].errors:
            script, old = xend
            return ("refused", f"xl cannot read xend's {old.prefixes[0]}: prefix ({disk.errors[0]}); "
                               f"it named the script {script}", diskspec.modern(old, script))
        return "refused", f"xl cannot read it: {'; '.join(disk.errors)}", None
    failure = _start_failure(disk, script_dir)
    replacement = None if diskspec.is_modern(disk) else diskspec.modern(disk)
    if failure is not None:
        return "fails", failure, replacement
    if replacement is not None:
        old = ", ".join(f"{prefix}:" for prefix in disk.prefixes) or "positional parameters"
        return "deprecated", f"xl still reads {old}, kept for old configs", replacement
    return None


def _start_failure(disk, script_dir):
    """Why the guest's start would fail with this disk, or None."""
    if disk.script:
        script = disk.script if "/" in disk.script else os.path.join(script_dir, disk.script)
        if not os.access(script, os.X_OK):
            return f"the hotplug script {script} is not installed (or not executable)"
        return _xenblock_target_failure(disk)
    if disk.target and disk.format != "empty" and disk.backendtype != "qdisk" and not os.path.exists(disk.target):
        return f"{disk.target}: no such file or block device"
    return None


def _xenblock_target_failure(disk):
    from . import types
    name = os.path.basename(disk.script)
    if not name.startswith("block-") or name.removeprefix("block-") not in types.NAMES:
        return None  # not ours: its target is its own business
    module = types.module(name.removeprefix("block-"))
    try:
        spec = module.parse(disk.target or "")
    except HotplugError as e:
        return f"{name} cannot use target {disk.target!r}: {e}"
    missing = [path for path in getattr(module, "named_paths", lambda _: [])(spec) if not os.path.exists(path)]
    if missing:
        return f"{name}: {', '.join(missing)}: no such file or directory"
    return None


def migrate_file(path, everything=False, script_dir=SCRIPT_DIR):
    """Rewrite the entries xl refuses for an xend prefix (and, with
    everything, the deprecated ones) to the form xl takes, every other byte
    as it was; the original is kept as a backup. Returns (backup or None,
    [(line, old, new)])."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        data = f.read()
    _, entries = _findings(path, data, script_dir)
    wanted = {"refused", "fails", "deprecated"} if everything else {"refused"}
    changes = [(literal, new) for literal, new, severity in entries if new is not None and severity in wanted]
    if not changes:
        return None, []
    for literal, new in sorted(changes, key=lambda change: change[0].start, reverse=True):
        data = data[:literal.start] + xlconfig.quoted(new, literal.quote) + data[literal.end:]
    backup = _backup(path)
    _replace(path, data)
    return backup, [(literal.line, literal.text, new) for literal, new in changes]


def _backup(path):
    """A copy of path beside it, under a name not yet taken."""
    import shutil
    backup, n = f"{path}.bak", 1
    while os.path.lexists(backup):
        backup, n = f"{path}.bak.{n}", n + 1
    shutil.copy2(path, backup)
    return backup


def _replace(path, data):
    """path's content replaced at once (a crash leaves the old file or the
    new one), its mode and owner kept."""
    st = os.stat(path)
    temporary = f"{path}.xenblock-new"
    with open(temporary, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(temporary, st.st_mode & 0o7777)
    os.chown(temporary, st.st_uid, st.st_gid)
    os.replace(temporary, path)
