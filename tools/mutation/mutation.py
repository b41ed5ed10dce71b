"""Mutation testing of xenblock's hotplug core with cosmic-ray, driven by tools/mutation/run.

cosmic-ray makes the mutants (`cosmic-ray init`), applies each one to the
module's file on disk and runs the test command (its mutate_and_test). The
host tier runs the hotplug scripts as subprocesses, so every mutant is run
against the whole test command, never against in-process coverage.

What this adds around cosmic-ray, and why it does not use `cosmic-ray exec`:
- every mutant is applied in a copy of the checkout (build/mutation/work/wN),
  never in the real tree, so a killed session leaves no mutant behind;
- N workers (N copies) share one session database with no HTTP workers or
  ports; each worker runs its mutants one at a time, each test run in a mount
  namespace of its own (tools/mutation/sandbox-test);
- each mutant's time is recorded, the score written as JSON and text, and
  a session can be interrupted and resumed.

Run it through tools/mutation/run; see README.md there.
"""
import argparse
import concurrent.futures
import datetime
import fcntl
import json
import math
import os
import platform
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MODULES_FILE = HERE / "modules.txt"
PYTHON = Path(sys.executable)
# The host tier, as in the issue; it runs under sandbox-test in a copy.
TEST_ARGS = ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/host"]
MIN_TIMEOUT = 60.0
TIMEOUT_FACTOR = 4.0  # per-mutant timeout: this many baselines, at least MIN_TIMEOUT


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tools/mutation/run", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--count", action="store_true", help="count the mutants of the scope, run nothing")
    mode.add_argument("--resume", action="store_true", help="run the mutants an interrupted session has not run")
    mode.add_argument("--report", action="store_true", help="write score.json and summary.txt from the session again")
    mode.add_argument("--survivors", action="store_true", help="print every surviving mutant as a diff")
    mode.add_argument("--timeouts", action="store_true", help="print every mutant killed by its timeout as a diff")
    parser.add_argument("--modules", nargs="+", metavar="PATH",
                        help=f"mutate these modules instead of those in {MODULES_FILE.relative_to(ROOT)}")
    parser.add_argument("--workers", type=int, default=1, help="copies run at once (default 1; see README)")
    parser.add_argument("--timeout", type=float,
                        help=f"seconds per mutant (default {TIMEOUT_FACTOR:g} x the baseline run, "
                             f"at least {MIN_TIMEOUT:g})")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--rev", default="HEAD", help="the commit to mutate (default HEAD)")
    source.add_argument("--worktree", action="store_true",
                        help="mutate the working tree as it is, uncommitted edits included")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "mutation",
                        help="session directory (default build/mutation)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="run only N of the mutants not yet run, chosen at random (a sample; "
                             "--resume runs the rest)")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()

    if args.survivors or args.timeouts:
        return print_diffs(args.out, "timeout" if args.timeouts else "survived")
    if args.report:
        return report(args.out)
    if args.count:
        return count(args)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return session(args)


# ---------------------------------------------------------------- the session

def session(args):
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / "lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"another session is running in {out}")
    db = out / "session.sqlite"
    meta_path = out / "meta.json"

    if args.resume:
        if not db.exists() or not meta_path.exists():
            sys.exit(f"nothing to resume in {out}")
        meta = json.loads(meta_path.read_text())
        if args.timeout:
            meta["timeout"] = args.timeout
        meta["workers"] = args.workers
        kill_leftovers(out)
        workdirs = make_workdirs(out, args.workers)
    else:
        kill_leftovers(out)
        clean_workdirs(out)
        for stale in ("work", "src"):
            shutil.rmtree(out / stale, ignore_errors=True)
        for stale in ("session.sqlite", "meta.json", "timings.jsonl", "score.json", "summary.txt",
                      "survivors.diff", "progress.log", "cosmic-ray.toml"):
            (out / stale).unlink(missing_ok=True)
        meta = export_source(args, out / "src")
        meta["scope"] = scope(args, out / "src")
        meta["machine"] = machine()
        meta["workers"] = args.workers
        meta["test_command"] = " ".join(["build/venv/bin/python", *TEST_ARGS])
        meta["started"] = now()
        meta["exec_seconds"] = 0.0
        workdirs = make_workdirs(out, args.workers)

        say(out, f"source: {meta['source']} {meta['commit'][:12]}{' (dirty)' if meta['dirty'] else ''}")
        say(out, f"scope: {' '.join(meta['scope'])}")
        say(out, "baseline: the host tier on the unmutated copy ...")
        baseline = run_baseline(workdirs[0])
        meta["baseline_seconds"] = round(baseline, 1)
        meta["timeout"] = args.timeout or max(MIN_TIMEOUT, math.ceil(TIMEOUT_FACTOR * baseline))
        say(out, f"baseline passed in {baseline:.1f} s; timeout per mutant {meta['timeout']:g} s")

        write_config(out / "cosmic-ray.toml", meta)
        init_session(out / "cosmic-ray.toml", db, cwd=out / "src")
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")

    try:
        execute(out, db, meta, workdirs, args.limit)
    finally:
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return report(out)


def export_source(args, dest):
    """The tree to mutate, in dest: a commit (git archive, which reads the
    repository and changes nothing) or the working tree; tools/mutation
    itself always from the working tree."""
    dest.mkdir(parents=True)
    git = ["git", "-C", str(ROOT)]
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # git status must not touch the index
    if args.worktree:
        commit = subprocess.check_output([*git, "rev-parse", "HEAD"], text=True, env=env).strip()
        changed = subprocess.check_output([*git, "status", "--porcelain", "--untracked-files=no"],
                                          text=True, env=env)
        skip = {"build", ".git", "__pycache__", ".pytest_cache"}
        shutil.copytree(ROOT, dest, symlinks=True, dirs_exist_ok=True,
                        ignore=lambda directory, names: [n for n in names if n in skip])
        meta = {"source": "working tree", "commit": commit, "dirty": bool(changed.strip())}
    else:
        commit = subprocess.check_output([*git, "rev-parse", "--verify", args.rev + "^{commit}"],
                                         text=True, env=env).strip()
        archive = subprocess.Popen([*git, "archive", "--format=tar", commit], stdout=subprocess.PIPE, env=env)
        with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
            tar.extractall(dest, filter="tar")
        if archive.wait() != 0:
            sys.exit(f"git archive {commit} failed")
        meta = {"source": f"commit ({args.rev})", "commit": commit, "dirty": False}
    harness = dest / "tools" / "mutation"
    shutil.rmtree(harness, ignore_errors=True)
    shutil.copytree(HERE, harness, ignore=shutil.ignore_patterns("__pycache__"))
    return meta


def scope(args, src):
    if args.modules:
        modules = args.modules
    else:
        lines = (src / MODULES_FILE.relative_to(ROOT)).read_text().splitlines()
        modules = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    missing = [m for m in modules if not (src / m).is_file()]
    if missing:
        sys.exit(f"not in the tree to mutate: {' '.join(missing)}")
    return modules


def clean_workdirs(out):
    """What the copies' test runs left outside them: loop devices, TMPDIRs."""
    for sandbox in sorted((out / "work").glob("w*/tools/mutation/sandbox-test")):
        subprocess.run([str(sandbox), "--clean"], check=False)


def make_workdirs(out, workers):
    """One fresh copy of src per worker (a mutant left in an old copy by a
    killed session goes with it)."""
    clean_workdirs(out)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    workdirs = []
    for number in range(1, workers + 1):
        workdir = work / f"w{number}"
        shutil.copytree(out / "src", workdir, symlinks=True)
        workdirs.append(workdir)
    return workdirs


def test_command():
    return " ".join(shlex.quote(word) for word in ["tools/mutation/sandbox-test", str(PYTHON), *TEST_ARGS])


def run_baseline(workdir):
    started = time.monotonic()
    result = subprocess.run(shlex.split(test_command()), cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    took = time.monotonic() - started
    if result.returncode != 0:
        sys.stdout.write(result.stdout[-6000:])
        sys.exit(f"baseline failed (exit {result.returncode}): the unmutated tree does not pass the host tier")
    return took


def write_config(path, meta):
    import toml
    config = {"cosmic-ray": {
        "module-path": meta["scope"],
        "timeout": float(meta["timeout"]),
        "excluded-modules": [],
        "test-command": test_command(),
        "distributor": {"name": "local"},
    }}
    path.write_text("# Written by tools/mutation/mutation.py; mutants run through its own executor.\n"
                    + toml.dumps(config))


def init_session(config, db, cwd):
    """cosmic-ray init, in the pristine copy (module paths are relative)."""
    subprocess.run([str(PYTHON.parent / "cosmic-ray"), "init", str(config), str(db)], cwd=cwd, check=True)


# ------------------------------------------------------------- the executor

class Interrupted(Exception):
    pass


def execute(out, db_path, meta, workdirs, limit=None):
    from cosmic_ray.work_db import WorkDB, use_db

    timeout = float(meta["timeout"])
    command = test_command()
    free = queue.Queue()
    for workdir in workdirs:
        free.put(workdir)
    running = {}  # workdir -> Popen of its `_one`
    stopping = threading.Event()

    def run_one(item):
        workdir = free.get()
        try:
            if stopping.is_set():
                return item, None, 0.0
            request = {"mutations": [{"module_path": str(m.module_path), "operator_name": m.operator_name,
                                      "operator_args": m.operator_args, "occurrence": m.occurrence,
                                      "start_pos": list(m.start_pos), "end_pos": list(m.end_pos)}
                                     for m in item.mutations],
                       "test_command": command, "timeout": timeout}
            started = time.monotonic()
            proc = subprocess.Popen([str(PYTHON), str(HERE / "mutation.py"), "_one"], cwd=workdir,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
            running[workdir] = proc
            stdout, stderr = proc.communicate(json.dumps(request))
            took = time.monotonic() - started
            del running[workdir]
            if stopping.is_set():
                return item, None, took
            try:
                result = json.loads(stdout)
            except ValueError:
                result = {"worker_outcome": "abnormal", "test_outcome": None, "diff": None,
                          "output": f"mutation.py _one exited {proc.returncode}:\n{stderr[-4000:]}"}
            restore_if_mutated(out, workdir, item)
            return item, result, took
        finally:
            free.put(workdir)

    def stop(signum, frame):
        raise Interrupted()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    started = time.monotonic()
    with use_db(str(db_path), mode=WorkDB.Mode.open) as db:
        pending = list(db.pending_work_items)
        total, done = db.num_work_items, db.num_results
        if limit is not None:
            pending = pending[:limit]
        say(out, f"{len(pending)} mutants to run of {total}, {len(workdirs)} worker(s), "
                 f"timeout {timeout:g} s each")
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(workdirs))
        ran_now = 0
        try:
            futures = [pool.submit(run_one, item) for item in pending]
            for future in concurrent.futures.as_completed(futures):
                item, result, took = future.result()
                if result is None:
                    continue
                db.set_result(item.job_id, to_work_result(result))
                done += 1
                outcome = outcome_of(result)
                with open(out / "timings.jsonl", "a") as f:
                    f.write(json.dumps({"job_id": item.job_id, "mutant": describe(item), "outcome": outcome,
                                        "seconds": round(took, 2)}) + "\n")
                ran_now += 1
                elapsed = time.monotonic() - started
                left = elapsed / ran_now * (len(pending) - ran_now)  # pending is in random order
                say(out, f"[{done}/{total}] {outcome:<9} {took:6.1f} s  {describe(item)}"
                         f"  ({elapsed / 60:.1f} min, about {left / 60:.0f} min to go)")
        except Interrupted:
            stopping.set()
            for workdir, proc in list(running.items()):
                kill_group(proc.pid)
            kill_leftovers(out)
            say(out, "interrupted: the tests under way were stopped")
            pool.shutdown(wait=True, cancel_futures=True)
            for workdir in workdirs:  # the mutants under way were left in the copies
                for module in meta["scope"]:
                    shutil.copy2(out / "src" / module, workdir / module)
            meta["exec_seconds"] = round(meta.get("exec_seconds", 0) + time.monotonic() - started, 1)
            say(out, f"results so far are kept; tools/mutation/run --resume{' --out ' + str(out) if out != ROOT / 'build' / 'mutation' else ''} goes on")
            sys.exit(130)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            clean_workdirs(out)
        pool.shutdown(wait=True)
    meta["exec_seconds"] = round(meta.get("exec_seconds", 0) + time.monotonic() - started, 1)
    meta["finished"] = now()


def restore_if_mutated(out, workdir, item):
    """cosmic-ray puts the module back after each run; if anything stopped it
    from doing so, the copy is put right from the pristine source."""
    for mutation in item.mutations:
        copy, pristine = workdir / mutation.module_path, out / "src" / mutation.module_path
        if copy.read_bytes() != pristine.read_bytes():
            say(out, f"warning: {copy} was left mutated; restored")
            shutil.copy2(pristine, copy)


def kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_leftovers(out):
    """Test runs of an earlier, killed session still running in its copies:
    sandbox-test wrote its process group to wN.pid; it is killed only if that
    process still runs in that copy."""
    for pid_file in (out / "work").glob("w*.pid"):
        workdir = pid_file.with_suffix("")
        try:
            pid = int(pid_file.read_text())
            if os.readlink(f"/proc/{pid}/cwd") == str(workdir):
                kill_group(pid)
        except (ValueError, OSError):
            pass


def to_work_result(result):
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult
    return WorkResult(worker_outcome=WorkerOutcome(result["worker_outcome"]), output=result.get("output"),
                      test_outcome=TestOutcome(result["test_outcome"]) if result.get("test_outcome") else None,
                      diff=result.get("diff"))


def one():
    """One mutant, in the current directory (a worker's copy): cosmic-ray's
    mutate_and_test, which writes the mutant to the file, runs the test
    command with the timeout, and puts the file back."""
    from cosmic_ray.mutating import mutate_and_test
    from cosmic_ray.work_item import MutationSpec
    request = json.load(sys.stdin)
    mutations = [MutationSpec(module_path=Path(m["module_path"]), operator_name=m["operator_name"],
                              occurrence=m["occurrence"], start_pos=tuple(m["start_pos"]),
                              end_pos=tuple(m["end_pos"]), operator_args=m.get("operator_args") or {})
                 for m in request["mutations"]]
    result = mutate_and_test(mutations, request["test_command"], request["timeout"])
    json.dump({"worker_outcome": result.worker_outcome.value,
               "test_outcome": result.test_outcome.value if result.test_outcome is not None else None,
               "output": result.output, "diff": result.diff}, sys.stdout)
    return 0


# ----------------------------------------------------------------- results

def outcome_of(result):
    """killed, timeout (killed by its timeout), survived, error (the mutant
    could not be run), or no-test."""
    worker = result["worker_outcome"]
    worker = getattr(worker, "value", worker)
    test = result["test_outcome"]
    test = getattr(test, "value", test)
    if worker == "normal":
        if test == "killed":
            return "timeout" if result["output"] == "timeout" else "killed"
        if test == "survived":
            return "survived"
    if worker in ("no-test", "skipped"):
        return worker
    return "error"


def describe(item):
    m = item.mutations[0]
    return f"{m.module_path}:{m.start_pos[0]}:{m.start_pos[1]} {m.operator_name} #{m.occurrence}"


def results(out):
    from cosmic_ray.work_db import WorkDB, use_db
    with use_db(str(out / "session.sqlite"), mode=WorkDB.Mode.open) as db:
        completed = list(db.completed_work_items)
        total = db.num_work_items
    rows = []
    for item, result in completed:
        row = {"worker_outcome": result.worker_outcome, "test_outcome": result.test_outcome,
               "output": result.output}
        rows.append((item, result, outcome_of(row)))
    rows.sort(key=lambda r: (str(r[0].mutations[0].module_path), r[0].mutations[0].start_pos,
                             r[0].mutations[0].operator_name, r[0].mutations[0].occurrence))
    return total, rows


def report(out):
    if not (out / "session.sqlite").exists():
        sys.exit(f"no session in {out}")
    meta = json.loads((out / "meta.json").read_text())
    total, rows = results(out)
    counts = {name: 0 for name in ("killed", "timeout", "survived", "error", "no-test", "skipped")}
    for _, _, outcome in rows:
        counts[outcome] += 1
    killed = counts["killed"] + counts["timeout"]
    ran = killed + counts["survived"] + counts["error"]
    timings = []
    if (out / "timings.jsonl").exists():
        timings = [json.loads(line) for line in (out / "timings.jsonl").read_text().splitlines() if line]
    per_mutant = sum(t["seconds"] for t in timings) / len(timings) if timings else None

    def entry(item, result):
        m = item.mutations[0]
        return {"module": str(m.module_path), "line": m.start_pos[0], "column": m.start_pos[1],
                "operator": m.operator_name, "occurrence": m.occurrence,
                "definition": m.definition_name, "job_id": item.job_id,
                "diff": strip_diff(result.diff)}

    score = {
        "date": meta.get("finished") or meta.get("started"), "started": meta.get("started"),
        "commit": meta["commit"], "source": meta["source"], "dirty": meta["dirty"],
        "machine": meta["machine"], "scope": meta["scope"], "test_command": meta["test_command"],
        "tool": f"cosmic-ray {cosmic_ray_version()}", "workers": meta["workers"],
        "timeout_seconds": meta["timeout"], "baseline_seconds": meta.get("baseline_seconds"),
        "mutants": total, "run": ran, "pending": total - len(rows),
        "killed": killed, "killed_by_timeout": counts["timeout"], "survived": counts["survived"],
        "errors": counts["error"], "no_test": counts["no-test"] + counts["skipped"],
        "score": round(killed / ran, 4) if ran else None,
        "wall_seconds": meta.get("exec_seconds"),
        "seconds_per_mutant": round(per_mutant, 1) if per_mutant else None,
        "per_module": per_module(rows),
        "survivors": [entry(i, r) for i, r, o in rows if o == "survived"],
        "timeouts": [entry(i, r) for i, r, o in rows if o == "timeout"],
        "errors_list": [{**entry(i, r), "output": (r.output or "")[-2000:]} for i, r, o in rows if o == "error"],
    }
    (out / "score.json").write_text(json.dumps(score, indent=1) + "\n")
    (out / "survivors.diff").write_text(diffs_text(rows, "survived"))
    text = summary(score)
    (out / "summary.txt").write_text(text)
    sys.stdout.write(text)
    return 0


def per_module(rows):
    table = {}
    for item, _, outcome in rows:
        counts = table.setdefault(str(item.mutations[0].module_path),
                                  {"mutants": 0, "killed": 0, "survived": 0, "timeout": 0, "error": 0})
        counts["mutants"] += 1
        if outcome in ("killed", "timeout"):
            counts["killed"] += 1
        if outcome in counts and outcome != "killed":
            counts[outcome] += 1
    return table


def summary(score):
    lines = [f"mutation testing of {' '.join(score['scope'])}",
             f"  {score['source']} {score['commit'][:12]}{' + uncommitted edits' if score['dirty'] else ''}, "
             f"{score['tool']}, {score['workers']} worker(s), timeout {score['timeout_seconds']:g} s per mutant",
             f"  test command: {score['test_command']} (in a private copy and mount namespace)",
             ""]
    if score["run"]:
        lines.append(f"score: {score['killed']} killed / {score['run']} mutants run = {100 * score['score']:.1f} %"
                     f" ({score['killed_by_timeout']} of the killed by the timeout)")
    lines.append(f"survived: {score['survived']}   errors: {score['errors']}   "
                 f"not run: {score['pending']} pending, {score['no_test']} no-test   total mutants: {score['mutants']}")
    if score["wall_seconds"] and score["run"]:
        lines.append(f"time: {score['wall_seconds'] / 60:.1f} min wall, {score['seconds_per_mutant']} s per mutant run"
                     f" (one worker's), baseline {score['baseline_seconds']} s")
    lines.append("")
    lines.append(f"{'module':28} {'mutants':>7} {'killed':>7} {'survived':>8} {'timeout':>7} {'error':>5}")
    for module, c in sorted(score["per_module"].items()):
        lines.append(f"{module:28} {c['mutants']:7} {c['killed']:7} {c['survived']:8} {c['timeout']:7} {c['error']:5}")
    if score["survivors"]:
        lines.append("")
        lines.append("survivors (diffs: tools/mutation/run --survivors, or survivors.diff):")
        for s in score["survivors"]:
            changed = [l[1:].strip() for l in s["diff"].splitlines() if l.startswith("+") and not l.startswith("+++")]
            lines.append(f"  {s['module']}:{s['line']} {s['operator'].removeprefix('core/')} #{s['occurrence']}"
                         f"  -> {changed[0] if changed else '?'}")
    if score["errors_list"]:
        lines.append("")
        lines.append("errors (the mutant could not be run; see score.json):")
        for e in score["errors_list"]:
            lines.append(f"  {e['module']}:{e['line']} {e['operator']} #{e['occurrence']}")
    return "\n".join(lines) + "\n"


def strip_diff(diff):
    return "\n".join(line for line in (diff or "").splitlines() if line != "--- mutation diff ---")


def diffs_text(rows, wanted):
    chunks = []
    for item, result, outcome in rows:
        if outcome != wanted:
            continue
        m = item.mutations[0]
        chunks.append(f"### {outcome}: {m.module_path}:{m.start_pos[0]}:{m.start_pos[1]} in {m.definition_name}"
                      f"  {m.operator_name} #{m.occurrence}  (job {item.job_id})\n{strip_diff(result.diff)}\n")
    return "\n".join(chunks)


def print_diffs(out, wanted):
    if not (out / "session.sqlite").exists():
        sys.exit(f"no session in {out}")
    _, rows = results(out)
    text = diffs_text(rows, wanted)
    sys.stdout.write(text or f"no mutant {wanted}\n")
    return 0


def count(args):
    """cosmic-ray init into a scratch session: the number of mutants per module."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="xenblock-mutation-count.") as scratch:
        scratch = Path(scratch)
        meta = export_source(args, scratch / "src")
        meta["scope"] = scope(args, scratch / "src")
        meta["timeout"] = args.timeout or MIN_TIMEOUT
        write_config(scratch / "cosmic-ray.toml", meta)
        init_session(scratch / "cosmic-ray.toml", scratch / "session.sqlite", cwd=scratch / "src")
        from cosmic_ray.work_db import WorkDB, use_db
        per = {}
        with use_db(str(scratch / "session.sqlite"), mode=WorkDB.Mode.open) as db:
            for item in db.work_items:
                module = str(item.mutations[0].module_path)
                per[module] = per.get(module, 0) + 1
    print(f"{meta['source']} {meta['commit'][:12]}{' (dirty)' if meta['dirty'] else ''}")
    for module in meta["scope"]:
        print(f"{module:28} {per.get(module, 0):6}")
    print(f"{'total':28} {sum(per.values()):6}")
    return 0


# ------------------------------------------------------------------ helpers

def cosmic_ray_version():
    from importlib.metadata import version
    return version("cosmic-ray")


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        memory_kib = int(f.readline().split()[1])
    return {"host": platform.node(), "cpu": model, "cores": os.cpu_count(),
            "memory_gib": round(memory_kib / 2**20, 1), "kernel": platform.release(),
            "python": platform.python_version()}


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def say(out, message):
    line = f"{datetime.datetime.now().strftime('%H:%M:%S')} {message}"
    with open(out / "progress.log", "a") as f:
        f.write(line + "\n")
    try:
        print(line, flush=True)
    except OSError:  # stdout was a pipe whose reader is gone (Ctrl-C on `run | tee`)
        pass


if __name__ == "__main__":
    if sys.argv[1:2] == ["_one"]:
        sys.exit(one())
    sys.exit(main())
