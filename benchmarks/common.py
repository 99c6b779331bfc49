"""Shared helpers for the benchmarks: process groups with per-process peak RSS, CPU and idle time,
timed commands, virtual environments, JSON results and tables.

Only the standard library is needed to launch and measure processes, so this module also runs as a
small launcher inside a network namespace::

    unshare -n sh -c 'ip link set lo up; exec python3 -m benchmarks.common launch SPEC.json OUT.json'

where SPEC.json is ``{"procs": [ProcSpec...], "timeout": seconds}`` and OUT.json receives a
``GroupResult`` as JSON.

How processes are measured
--------------------------
* Every process starts in its own session (``start_new_session``) so that it and everything it
  spawns can be killed as one group.
* A sampler thread reads ``/proc`` every ``sample_interval`` seconds. For each launched process it
  finds its whole tree (children, grandchildren, ...) and records, per pid, the largest ``VmHWM``
  (the kernel's peak resident set) and the latest ``utime + stime``.
* When a launched process exits it is reaped with :func:`os.wait4`, whose ``ru_maxrss`` is the
  exact peak RSS of that process and whose CPU times include the descendants it waited for.
* *Idle time* of a process tree is the time, between its first and last busy sample, during
  which the tree was running or runnable (``/proc/<pid>/task/*/schedstat``: on a CPU or waiting
  on a run queue) for less than ``IDLE_CPU_FRACTION`` of the interval: time spent blocked on the
  network or on a sleep. Waiting for a CPU because other work loads the machine is not idle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
ENVS_DIR = BENCH_DIR / ".envs"
WORK_DIR = BENCH_DIR / "results" / "work"
MNIST_DIR = Path(os.environ.get("BENCH_MNIST_DIR", "/work/shared/data/mnist"))
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
MIB = 1 << 20
#: A tree running or runnable for less than this fraction of a sample interval counts as idle.
IDLE_CPU_FRACTION = 0.10
#: Environment that pins every numeric library to one thread (one thread per collaborator).
ONE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}


# --------------------------------------------------------------------------------------------
# timing


def now() -> float:
    """Monotonic seconds (``time.perf_counter``)."""
    return time.perf_counter()


@contextlib.contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as sw: ...`` then ``sw["s"]`` holds the elapsed seconds."""
    box = {"s": 0.0}
    t0 = now()
    try:
        yield box
    finally:
        box["s"] = now() - t0


def median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# --------------------------------------------------------------------------------------------
# /proc reading


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime clock ticks) of ``pid`` from ``/proc/<pid>/stat``, None if gone."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    rest = text[text.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state); ppid is field 4, utime 14, stime 15
    try:
        return int(rest[1]), int(rest[11]) + int(rest[12])
    except (IndexError, ValueError):
        return None


def proc_mem_kib(pid: int) -> tuple[int, int] | None:
    """(VmHWM, VmRSS) in KiB of ``pid``, None if gone (or a zombie without memory)."""
    text = _read(f"/proc/{pid}/status")
    if not text:
        return None
    hwm = rss = None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
        elif line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    if hwm is None or rss is None:
        return None
    return hwm, rss


def proc_activity_ns(pid: int) -> int | None:
    """Nanoseconds the process's threads spent running *or waiting to run* (runnable on a run
    queue), summed over ``/proc/<pid>/task/*/schedstat``. A process starved by other load on the
    machine is still "active" by this measure, so it does not look idle."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for tid in tids:
        text = _read(f"/proc/{pid}/task/{tid}/schedstat")
        if text:
            parts = text.split()
            with contextlib.suppress(IndexError, ValueError):
                total += int(parts[0]) + int(parts[1])
    return total


def proc_cmdline(pid: int) -> str:
    text = _read(f"/proc/{pid}/cmdline")
    return " ".join(text.split("\0")).strip() if text else ""


def children_map() -> dict[int, list[int]]:
    """ppid -> [pid] for every process on the machine (one pass over /proc)."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = proc_stat(int(entry))
        if st is not None:
            kids.setdefault(st[0], []).append(int(entry))
    return kids


def tree_pids(root: int, kids: Mapping[int, list[int]]) -> list[int]:
    out, todo, seen = [], [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


# --------------------------------------------------------------------------------------------
# process groups


@dataclasses.dataclass
class ProcSpec:
    """One process to launch. ``env`` is added to (not replacing) the inherited environment."""

    name: str
    argv: list[str]
    cwd: str | None = None
    env: dict[str, str | None] = dataclasses.field(default_factory=dict)  # None unsets
    log: str | None = None  # stdout+stderr go here (else discarded)
    role: str = ""  # "aggregator", "collaborator", ... (free text, reported back)
    delay_s: float = 0.0  # start this long after the group starts


@dataclasses.dataclass
class ProcResult:
    name: str
    role: str
    argv: list[str]
    pid: int
    returncode: int | None
    start_s: float  # relative to the group start
    exit_s: float | None
    wall_s: float | None
    cpu_user_s: float | None  # wait4: the process and descendants it waited for
    cpu_sys_s: float | None
    cpu_s: float | None  # max(wait4 total, sampled tree total)
    peak_rss_mib: float | None  # of the process itself (wait4 ru_maxrss, else sampled VmHWM)
    tree_peak_rss_mib: float | None  # largest sum of VmRSS over the tree at one sample
    tree_max_member_rss_mib: float | None  # largest VmHWM of any process in the tree
    tree_pids: int
    idle_s: float | None
    busy_window_s: float | None
    idle_periods: list[list[float]]  # [start (s after group start), seconds], longest first
    killed: bool
    log: str | None
    descendants: list[dict[str, Any]]
    #: fedrun only (``fedrun_runner.split_idle``): idle spent waiting for a slower peer, and the rest
    peer_wait_s: float | None = None
    idle_excl_peer_wait_s: float | None = None


@dataclasses.dataclass
class GroupResult:
    wall_s: float  # first launch -> last exit
    timed_out: bool
    procs: list[ProcResult]
    started_at: str
    #: ``time.time()`` at the group's start: turns log timestamps into group-relative seconds
    started_epoch: float | None = None

    def by_role(self, role: str) -> list[ProcResult]:
        return [p for p in self.procs if p.role == role]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> GroupResult:
        procs = [ProcResult(**p) for p in data["procs"]]
        return GroupResult(
            data["wall_s"], data["timed_out"], procs, data["started_at"], data.get("started_epoch")
        )


class _Tracker:
    """Sampled state of one launched process tree."""

    def __init__(self, spec: ProcSpec, popen: subprocess.Popen[bytes], t_start: float) -> None:
        self.spec = spec
        self.popen = popen
        self.pid = popen.pid
        self.t_start = t_start
        self.t_exit: float | None = None
        self.rusage: Any = None
        self.returncode: int | None = None
        self.killed = False
        self.hwm_kib: dict[int, int] = {}
        self.ticks: dict[int, int] = {}
        self.cmd: dict[int, str] = {}
        self.tree_rss_peak_kib = 0
        self.activity: dict[int, int] = {}  # pid -> run + run-queue wait ns (schedstat)
        self.series: list[tuple[float, int]] = []  # (time, total tree activity ns)
        self.idle_periods: list[tuple[float, float]] = []

    def sample(self, t: float, kids: Mapping[int, list[int]]) -> None:
        if self.t_exit is not None:
            return
        rss_sum = 0
        for pid in tree_pids(self.pid, kids):
            st = proc_stat(pid)
            mem = proc_mem_kib(pid)
            if st is not None:
                self.ticks[pid] = max(self.ticks.get(pid, 0), st[1])
            if mem is not None:
                self.hwm_kib[pid] = max(self.hwm_kib.get(pid, 0), mem[0])
                rss_sum += mem[1]
            act = proc_activity_ns(pid)
            if act is not None:
                self.activity[pid] = max(self.activity.get(pid, 0), act)
            if pid not in self.cmd:
                self.cmd[pid] = proc_cmdline(pid)[:300]
        self.tree_rss_peak_kib = max(self.tree_rss_peak_kib, rss_sum)
        self.series.append((t, sum(self.activity.values())))

    def idle(self, interval: float) -> tuple[float | None, float | None]:
        """(idle seconds, busy window seconds) from the CPU series."""
        s = self.series
        if len(s) < 3:
            return None, None
        rates = []
        for (t0, c0), (t1, c1) in zip(s, s[1:], strict=False):
            dt = t1 - t0
            if dt <= 0:
                continue
            rates.append((t0, t1, (c1 - c0) / 1e9 / dt))
        busy = [i for i, r in enumerate(rates) if r[2] >= IDLE_CPU_FRACTION]
        if not busy:
            return 0.0, 0.0
        first, last = busy[0], busy[-1]
        idle = sum(r[1] - r[0] for r in rates[first : last + 1] if r[2] < IDLE_CPU_FRACTION)
        # contiguous idle stretches (start, seconds), to see where the waiting happens
        self.idle_periods = []
        run_start: float | None = None
        for t0, t1, rate in rates[first : last + 1]:
            if rate < IDLE_CPU_FRACTION:
                run_start = t0 if run_start is None else run_start
                end = t1
            elif run_start is not None:
                self.idle_periods.append((run_start, end - run_start))
                run_start = None
        return idle, rates[last][1] - rates[first][0]

    def result(self, interval: float, t_group: float = 0.0) -> ProcResult:
        ru = self.rusage
        cpu_u = ru.ru_utime if ru else None
        cpu_s = ru.ru_stime if ru else None
        sampled_cpu = sum(self.ticks.values()) / CLK_TCK if self.ticks else None
        total = None
        if ru is not None:
            total = ru.ru_utime + ru.ru_stime
        if sampled_cpu is not None:
            total = max(total or 0.0, sampled_cpu)
        own_peak = None
        if ru is not None and ru.ru_maxrss > 0:
            own_peak = ru.ru_maxrss / 1024  # KiB -> MiB on Linux
        elif self.pid in self.hwm_kib:
            own_peak = self.hwm_kib[self.pid] / 1024
        idle, window = self.idle(interval)
        desc = [
            {
                "pid": pid,
                "cmd": self.cmd.get(pid, ""),
                "peak_rss_mib": round(self.hwm_kib.get(pid, 0) / 1024, 1),
                "cpu_s": round(self.ticks.get(pid, 0) / CLK_TCK, 2),
            }
            for pid in sorted(set(self.hwm_kib) | set(self.ticks))
        ]
        return ProcResult(
            name=self.spec.name,
            role=self.spec.role,
            argv=self.spec.argv,
            pid=self.pid,
            returncode=self.returncode,
            start_s=0.0,
            exit_s=None,
            wall_s=(self.t_exit - self.t_start) if self.t_exit is not None else None,
            cpu_user_s=cpu_u,
            cpu_sys_s=cpu_s,
            cpu_s=total,
            peak_rss_mib=own_peak,
            tree_peak_rss_mib=self.tree_rss_peak_kib / 1024 if self.tree_rss_peak_kib else None,
            tree_max_member_rss_mib=max(self.hwm_kib.values()) / 1024 if self.hwm_kib else None,
            tree_pids=len(desc),
            idle_s=idle,
            busy_window_s=window,
            idle_periods=[
                [round(a - t_group, 3), round(d, 3)]
                for a, d in sorted(self.idle_periods, key=lambda p: -p[1])[:20]
            ],
            killed=self.killed,
            log=self.spec.log,
            descendants=desc,
        )


def _kill_tree(tr: _Tracker, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(tr.pid, sig)  # the process was started as its own session/group leader
    # descendants that made their own session are not in the group: signal them by pid
    for pid in tr.ticks:
        if pid != tr.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def launch_group(
    specs: Sequence[ProcSpec],
    timeout: float,
    sample_interval: float = 0.1,
    wait_for: Sequence[str] | None = None,
) -> GroupResult:
    """Start every spec, measure until all exit (or ``timeout``), kill leftovers, and report.

    ``wait_for`` names the processes whose exit ends the run (default: all of them); the others
    (e.g. a server that never exits by itself) are then stopped with SIGTERM, then SIGKILL.
    """
    started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    started_epoch = time.time()
    t0 = now()
    trackers: list[_Tracker] = []
    pending = sorted(specs, key=lambda s: s.delay_s)
    lock = threading.Lock()
    stop = threading.Event()

    def start(spec: ProcSpec) -> None:
        env = dict(os.environ)
        for key, value in spec.env.items():
            if value is None:  # None removes an inherited variable
                env.pop(key, None)
            else:
                env[key] = value
        out: Any = subprocess.DEVNULL
        if spec.log:
            Path(spec.log).parent.mkdir(parents=True, exist_ok=True)
            out = open(spec.log, "ab")  # noqa: SIM115 - closed below, child keeps its copy
        try:
            p = subprocess.Popen(
                spec.argv,
                cwd=spec.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        with lock:
            trackers.append(_Tracker(spec, p, now()))

    def sampler() -> None:
        while not stop.is_set():
            t = now()
            kids = children_map()
            with lock:
                live = list(trackers)
            for tr in live:
                tr.sample(t, kids)
            stop.wait(max(0.0, sample_interval - (now() - t)))

    thread = threading.Thread(target=sampler, name="bench-sampler", daemon=True)
    thread.start()
    timed_out = False
    names = set(wait_for) if wait_for else {s.name for s in specs}
    try:
        deadline = t0 + timeout
        while True:
            t = now()
            while pending and t - t0 >= pending[0].delay_s:
                start(pending.pop(0))
            with lock:
                live = [tr for tr in trackers if tr.t_exit is None]
            for tr in live:
                pid, status, ru = os.wait4(tr.pid, os.WNOHANG)
                if pid == tr.pid:
                    tr.t_exit = now()
                    tr.rusage = ru
                    tr.returncode = os.waitstatus_to_exitcode(status)
                    tr.popen.returncode = tr.returncode
            with lock:
                waiting = [tr for tr in trackers if tr.spec.name in names and tr.t_exit is None]
                started = {tr.spec.name for tr in trackers}
            if not pending and not waiting and names <= started:
                break
            if t > deadline:
                timed_out = True
                break
            time.sleep(0.02)
    finally:
        # stop whatever is still running: SIGTERM, 10 s grace, then SIGKILL
        with lock:
            live = [tr for tr in trackers if tr.t_exit is None]
        for tr in live:
            tr.killed = True
            _kill_tree(tr, signal.SIGTERM)
        grace = now() + 10.0
        while live and now() < grace:
            for tr in live:
                pid, status, ru = os.wait4(tr.pid, os.WNOHANG)
                if pid == tr.pid:
                    tr.t_exit, tr.rusage = now(), ru
                    tr.returncode = os.waitstatus_to_exitcode(status)
                    tr.popen.returncode = tr.returncode
            live = [tr for tr in live if tr.t_exit is None]
            time.sleep(0.05)
        for tr in live:
            _kill_tree(tr, signal.SIGKILL)
            _, status, ru = os.wait4(tr.pid, 0)
            tr.t_exit, tr.rusage = now(), ru
            tr.returncode = os.waitstatus_to_exitcode(status)
        # grandchildren in their own sessions may survive their parent: end them too
        for tr in trackers:
            for pid in tr.ticks:
                if pid != tr.pid and proc_stat(pid) is not None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
        stop.set()
        thread.join(timeout=5)
    waited = [tr for tr in trackers if tr.spec.name in names] or trackers
    wall = max(tr.t_exit for tr in waited if tr.t_exit is not None) - t0
    results = []
    for tr in trackers:
        r = tr.result(sample_interval, t0)
        r.start_s = tr.t_start - t0
        r.exit_s = (tr.t_exit - t0) if tr.t_exit is not None else None
        results.append(r)
    return GroupResult(
        wall_s=wall,
        timed_out=timed_out,
        procs=results,
        started_at=started_at,
        started_epoch=started_epoch,
    )


def launch_group_in_netns(
    specs: Sequence[ProcSpec],
    timeout: float,
    work: Path,
    python: str = sys.executable,
    sample_interval: float = 0.1,
    wait_for: Sequence[str] | None = None,
) -> GroupResult:
    """Run :func:`launch_group` inside a fresh network namespace that has only loopback (up).

    Needs root (``unshare -n``). Nothing started inside can reach any other address.
    """
    work.mkdir(parents=True, exist_ok=True)
    spec_file = work / "group-spec.json"
    out_file = work / "group-result.json"
    out_file.unlink(missing_ok=True)
    spec_file.write_text(
        json.dumps(
            {
                "procs": [dataclasses.asdict(s) for s in specs],
                "timeout": timeout,
                "sample_interval": sample_interval,
                "wait_for": list(wait_for) if wait_for else None,
            }
        )
    )
    inner = "ip link set lo up && exec " + shlex.join(
        [python, "-m", "benchmarks.common", "launch", str(spec_file), str(out_file)]
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_DIR) + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run(
        ["unshare", "-n", "sh", "-c", inner],
        cwd=REPO_DIR,
        env=env,
        check=True,
        timeout=timeout + 60,
    )
    return GroupResult.from_json(json.loads(out_file.read_text()))


# --------------------------------------------------------------------------------------------
# single timed commands


@dataclasses.dataclass
class CommandResult:
    argv: list[str]
    returncode: int
    seconds: float
    stdout: str
    stderr: str

    def check(self) -> CommandResult:
        if self.returncode != 0:
            raise RuntimeError(
                f"command failed ({self.returncode}): {shlex.join(self.argv)}\n"
                f"--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}"
            )
        return self


def run_timed(
    argv: Sequence[str],
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    input_text: str | None = None,
    check: bool = True,
) -> CommandResult:
    """Run one command to completion, timing it (wall seconds from spawn to exit)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    t0 = now()
    p = subprocess.run(
        list(argv),
        cwd=cwd,
        env=full_env,
        input=input_text,
        stdin=None if input_text is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    res = CommandResult(list(argv), p.returncode, now() - t0, p.stdout, p.stderr)
    return res.check() if check else res


def time_command(argv: Sequence[str], repeats: int = 3, **kw: Any) -> dict[str, Any]:
    """Median and all wall times of ``repeats`` runs of a command (e.g. ``fx --help``)."""
    times = [run_timed(argv, **kw).seconds for _ in range(max(1, repeats))]
    return {"median_s": statistics.median(times), "runs_s": times}


# --------------------------------------------------------------------------------------------
# virtual environments


def venv_python(name: str) -> Path:
    return ENVS_DIR / name / "bin" / "python"


def venv_bin(name: str, tool: str) -> Path:
    return ENVS_DIR / name / "bin" / tool


def ensure_venv(name: str, requirements: Sequence[str], python: str = "python3") -> Path:
    """Create ``benchmarks/.envs/<name>`` and pip-install ``requirements`` there (once).

    A marker file records what was installed; a different requirement list reinstalls. The
    machine's pip configuration applies (e.g. ``/etc/xdg/pip`` caps torch at 2.14.1).
    """
    env_dir = ENVS_DIR / name
    marker = env_dir / ".bench-requirements.json"
    wanted = json.dumps(sorted(requirements))
    if marker.exists() and marker.read_text() == wanted and venv_python(name).exists():
        return env_dir
    ENVS_DIR.mkdir(parents=True, exist_ok=True)
    log = ENVS_DIR / f"{name}.log"
    if not venv_python(name).exists():
        run_timed([python, "-m", "venv", str(env_dir)], timeout=300)
    print(f"[bench] installing into {env_dir}: {' '.join(requirements)} (log: {log})", flush=True)
    res = run_timed(
        [str(venv_python(name)), "-m", "pip", "install", *requirements],
        timeout=3600,
        check=False,
    )
    log.write_text(res.stdout + "\n" + res.stderr)
    res.check()
    marker.write_text(wanted)
    return env_dir


def pip_versions(name: str, packages: Sequence[str]) -> dict[str, str | None]:
    """Installed versions of ``packages`` in venv ``name``."""
    code = (
        "import json,sys\nfrom importlib import metadata as m\nout={}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p]=m.version(p)\n"
        "    except m.PackageNotFoundError: out[p]=None\n"
        "print(json.dumps(out))"
    )
    res = run_timed([str(venv_python(name)), "-c", code, *packages], timeout=120)
    return json.loads(res.stdout)


# --------------------------------------------------------------------------------------------
# data


def mnist_raw_into(dest: Path) -> Path:
    """Gunzip the four MNIST IDX files into ``dest`` (torchvision's ``<root>/MNIST/raw``)."""
    import gzip
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        out = dest / name
        if out.exists() and out.stat().st_size > 0:
            continue
        tmp = out.with_suffix(".tmp")
        with gzip.open(MNIST_DIR / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, out)
    return dest


def score_model(python: str, npz: Path) -> dict[str, Any]:
    """Accuracy of a saved CNN (.npz) on the full MNIST test set, scored by ``mnist_task.py``
    with ``python`` (any venv with torch); errors are returned, not raised."""
    res = run_timed(
        [python, str(BENCH_DIR / "mnist_task.py"), "score", str(npz)], timeout=600, check=False
    )
    if res.returncode != 0:
        return {"error": res.stderr[-2000:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# certificates (for peers that ship no PKI tool, and for the TLS limit measurement)


def make_tls_files(
    directory: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost", "::1")
) -> dict[str, Path]:
    """A CA (``ca.crt``) and a server certificate and key signed by it (``server.crt/key``)
    valid for ``hosts`` (IP addresses and DNS names), EC P-384, one day. Needs ``cryptography``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    when = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)
    until = when + _dt.timedelta(days=1)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("bench-ca"))
        .issuer_name(name("bench-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(when)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA384())
    )
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(when)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    out = {
        "ca": directory / "ca.crt",
        "cert": directory / "server.crt",
        "key": directory / "server.key",
    }
    out["ca"].write_bytes(ca_cert.public_bytes(pem))
    out["cert"].write_bytes(cert.public_bytes(pem))
    out["key"].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    out["key"].chmod(0o600)
    return out


def make_ssh_ec_keypair(private_path: Path, public_path: Path) -> None:
    """An EC P-384 key pair in OpenSSH format (Flower's SuperNode authentication keys)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )


def wait_port(host: str, port: int, timeout: float = 60.0) -> bool:
    """Poll until a TCP connect to host:port succeeds (bounded by ``timeout``)."""
    import socket

    deadline = now() + timeout
    while now() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------------------------
# results and tables


def machine_info() -> dict[str, Any]:
    cpu = ""
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "mem_gib": round(mem_kib / (1 << 20), 1),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "note": "shared machine: other developers may be running tests at the same time",
    }


def write_results(name: str, data: Mapping[str, Any]) -> Path:
    """Write ``results/<name>-<UTC time>.json`` and ``results/<name>-latest.json``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    text = json.dumps(data, indent=2, default=_json_default)
    path.write_text(text)
    (RESULTS_DIR / f"{name}-latest.json").write_text(text)
    return path


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)!r}")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a table with rich when available, else as aligned plain text."""
    cells = [[fmt(c) for c in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(c)) for c in col) for col in zip(columns, *cells, strict=True)]
        print(f"\n{title}")
        print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)))
        for row in cells:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        return
    table = Table(title=title, show_lines=False)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in cells:
        table.add_row(*row)
    Console(width=200).print(table)


def new_work_dir(tag: str) -> Path:
    """A fresh folder under ``results/work`` (git-ignored) for one run's files."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = WORK_DIR / f"{tag}-{stamp}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def drop_large_files(folder: Path, min_bytes: int = 16 << 20) -> int:
    """Delete files of at least ``min_bytes`` under ``folder`` (models, spools, datasets copied
    for a run), keeping logs and small files; returns bytes freed. Cells of a model-size sweep
    would otherwise leave tens of gigabytes behind."""
    freed = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_size >= min_bytes:
                freed += path.stat().st_size
                path.unlink()
        except OSError:
            continue
    return freed


def proc_summary(r: ProcResult) -> dict[str, Any]:
    """The fields of one process worth a table cell, rounded."""
    return {
        "name": r.name,
        "role": r.role,
        "rc": r.returncode,
        "wall_s": _round(r.wall_s),
        "cpu_s": _round(r.cpu_s),
        "peak_rss_mib": _round(r.peak_rss_mib, 1),
        "tree_peak_rss_mib": _round(r.tree_peak_rss_mib, 1),
        "idle_s": _round(r.idle_s),
    }


def _round(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


# --------------------------------------------------------------------------------------------
# command line: the launcher used inside network namespaces


def _main(argv: Sequence[str]) -> int:
    if len(argv) >= 5 and argv[0] == "waitport" and argv[4] == "--":
        # waitport HOST PORT TIMEOUT -- ARGV...: wait for a listener, then exec ARGV
        if not wait_port(argv[1], int(argv[2]), float(argv[3])):
            print(f"nothing listening on {argv[1]}:{argv[2]}", file=sys.stderr)
            return 3
        os.execvp(argv[5], list(argv[5:]))
    if len(argv) != 3 or argv[0] != "launch":
        print("usage: python -m benchmarks.common launch SPEC.json OUT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    procs = [ProcSpec(**p) for p in spec["procs"]]
    res = launch_group(
        procs,
        timeout=float(spec["timeout"]),
        sample_interval=float(spec.get("sample_interval") or 0.1),
        wait_for=spec.get("wait_for"),
    )
    tmp = Path(argv[2]).with_suffix(".tmp")
    tmp.write_text(json.dumps(res.to_json(), indent=1))
    os.replace(tmp, argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


def report_run(name: str, res: dict[str, Any]) -> int:
    """Write a single-system run's JSON, print it and one line per process; exit status."""
    path = write_results(name, {"machine": machine_info(), "result": res})
    print(json.dumps({k: v for k, v in res.items() if k != "group"}, indent=1, default=str))
    for p in res["group"]["procs"]:
        print(
            p["name"],
            p["returncode"],
            round(p["wall_s"] or 0, 1),
            "s cpu",
            round(p["cpu_s"] or 0, 1),
            "rss",
            round(p["peak_rss_mib"] or 0),
            "idle",
            p["idle_s"],
        )
    print("written", path)
    return 0 if res["ok"] else 1


def thread_env(env: dict[str, str | None], threads: str) -> dict[str, str | None]:
    """Pin BLAS/OpenMP threads to ``threads``, or unset them for ``"default"``."""
    value = None if threads == "default" else threads
    env.update({k: value for k in ONE_THREAD_ENV})
    return env


def certify_collaborator(call: Callable[..., Any], name: str, data_path: str) -> None:
    """The collaborator half of the ``fx`` PKI flow (OpenFL's and fedrun's CLIs agree here):
    create it, make its request, sign it on the aggregator side, import the signed package."""
    call("collaborator", "create", "-n", name, "-d", data_path, "--silent")
    call("collaborator", "generate-cert-request", "-n", name, "--silent")
    call(
        "collaborator",
        "certify",
        "--request-pkg",
        f"col_{name}_to_agg_cert_request.zip",
        "--silent",
    )
    call("collaborator", "certify", "--import", f"agg_to_col_{name}_signed_cert.zip")


def fx_federation_specs(
    fx_exe: str, workspace: Path, collaborators: list[str], env: dict[str, str | None], logs: Path
) -> list[ProcSpec]:
    """The processes of an ``fx``-driven federation (OpenFL's and fedrun's CLIs agree here)."""
    specs = [
        ProcSpec(
            "aggregator",
            [fx_exe, "aggregator", "start"],
            str(workspace),
            env,
            str(logs / "aggregator.log"),
            "aggregator",
        )
    ]
    for name in collaborators:
        specs.append(
            ProcSpec(
                name,
                [fx_exe, "collaborator", "start", "-n", name],
                str(workspace),
                env,
                str(logs / f"{name}.log"),
                "collaborator",
            )
        )
    return specs
