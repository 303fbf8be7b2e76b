"""Running untrusted generated code: one short-lived, fenced-in process per sample.

Each sample runs in a fresh `python -I -S` (isolated mode, no site-packages) with:
- an empty temporary working directory, removed afterwards, and a scrubbed environment (no secrets);
- resource limits: CPU seconds, address space, file size, open files, and (as an unprivileged user)
  the number of processes;
- a wall-clock timeout, after which the whole process group is killed;
- when started as root, the unprivileged `nobody` user, so the sample can read and write almost
  nothing outside its directory;
- a Python audit hook, installed before the sample runs and impossible to remove, that refuses new
  processes (fork, exec, spawn, subprocess, os.system), network connections, loading native code
  (ctypes), and opening files for writing outside the working directory.
The outcome is kept apart: passed, failed (an assertion or other exception), timeout, or crashed (the
process died: out of memory, a signal, a resource limit).

This is defence in depth for code from a small model in an evaluation, not a boundary against a
determined attacker: for that, run the harness inside a container or VM as well.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

__all__ = ["SandboxLimits", "SandboxResult", "run_sandboxed", "run_many"]

STATUSES = ("passed", "failed", "timeout", "crashed")


@dataclass(frozen=True)
class SandboxLimits:
    timeout: float = 5.0              # wall-clock seconds
    cpu_seconds: int = 5
    memory_mb: int = 512              # address space
    file_mb: int = 1                  # the largest file the sample may write
    open_files: int = 64
    processes: int = 0                # extra processes the sample may start (enforced by rlimit as non-root)


@dataclass(frozen=True)
class SandboxResult:
    status: str                       # passed | failed | timeout | crashed
    detail: str                       # the exception, signal or limit, one line
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# The program the sandboxed interpreter runs: it reads the sample from stdin, installs the audit hook,
# then executes the sample and reports the outcome as one JSON line on fd 3... kept simple: stdout's last line.
_RUNNER = r'''
import sys, json, os
source = sys.stdin.read()
home = os.getcwd()
BLOCKED = {"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "subprocess.Popen",
           "os.kill", "os.killpg", "socket.connect", "socket.bind", "socket.sendto", "ctypes.dlopen",
           "ctypes.dlsym", "ctypes.cdata", "os.putenv", "os.chdir", "sys.addaudithook", "os.setuid"}
WRITE_EVENTS = {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.symlink", "os.link", "os.truncate",
                "os.chmod", "os.chown", "shutil.rmtree", "os.utime"}
def inside(path):
    try:
        real = os.path.realpath(os.fsdecode(path) if not isinstance(path, int) else home)
    except Exception:
        return False
    return real == home or real.startswith(home + os.sep)
BLOCKED_MODULES = {"ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_multiprocessing", "socket",
                   "_socket", "pty", "signal"}
def hook(event, args):
    if event == "import" and args and str(args[0]).split(".")[0] in BLOCKED_MODULES:
        raise ImportError(f"sandbox: importing {args[0]} is not allowed")
    if event in BLOCKED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open" and args:
        path, mode = args[0], args[1] if len(args) > 1 else "r"
        flags = args[2] if len(args) > 2 else 0
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & 3)
        if writing and not isinstance(path, int) and not inside(path):
            raise PermissionError(f"sandbox: writing outside the working directory ({path}) is not allowed")
    if event in WRITE_EVENTS and args and not isinstance(args[0], int) and not inside(args[0]):
        raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")
import traceback
sys.addaudithook(hook)
del hook
out = sys.__stdout__
try:
    exec(compile(source, "<sample>", "exec"), {"__name__": "__main__"})
except BaseException as error:
    line = traceback.format_exception_only(type(error), error)[-1].strip()
    print("\n@@GENLOOM-SANDBOX@@" + json.dumps({"status": "failed", "detail": line[:300]}), file=out, flush=True)
    os._exit(0)
print("\n@@GENLOOM-SANDBOX@@" + json.dumps({"status": "passed", "detail": ""}), file=out, flush=True)
os._exit(0)
'''
_MARK = "@@GENLOOM-SANDBOX@@"


def _world_usable(path: str) -> bool:
    """Whether a user with no rights of its own can reach and run the interpreter at `path`."""
    import stat

    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for i in range(2, len(parts)):
        folder = os.sep.join(parts[:i]) or os.sep
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(real).st_mode & stat.S_IXOTH)


def _nobody() -> tuple[int, int] | None:
    """The `nobody` user's (uid, gid) when running as root and that user can run this interpreter."""
    if os.geteuid() != 0 or not _world_usable(sys.executable) or not _world_usable(os.__file__):
        return None
    try:
        import pwd
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return None


def _limit(limits: SandboxLimits, user: tuple[int, int] | None):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        memory = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        size = limits.file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if user is not None:
            os.setgroups([])
            os.setgid(user[1])
            os.setuid(user[0])
            # Counted per user: nobody's processes, this one included. (Root ignores this limit, and as any
            # other user it would count all of that user's processes; there the audit hook does the work.)
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes + 1, limits.processes + 1))
    return apply


def run_sandboxed(program: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run the Python source `program` in a fresh sandboxed interpreter; passed means it ran to the end."""
    user = _nobody()
    folder = tempfile.mkdtemp(prefix="genloom-sandbox-")
    if user is not None:
        os.chown(folder, *user)
    env = {"PATH": "/usr/bin:/bin", "HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
    start = time.perf_counter()
    try:
        process = subprocess.Popen([sys.executable, "-I", "-S", "-c", _RUNNER], cwd=folder, env=env,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   preexec_fn=_limit(limits, user), start_new_session=True)
        try:
            stdout, _ = process.communicate(program.encode(), timeout=limits.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.communicate()
            return SandboxResult("timeout", f"still running after {limits.timeout:g} s", time.perf_counter() - start)
        finally:
            _kill_group(process)              # whatever it started goes with it
        seconds = time.perf_counter() - start
        text = stdout.decode("utf-8", "replace")
        if _MARK in text:
            report = json.loads(text.rsplit(_MARK, 1)[1].strip().splitlines()[0])
            return SandboxResult(report["status"], report["detail"], seconds)
        code = process.returncode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            detail = {"SIGXCPU": "CPU time limit", "SIGKILL": "killed (memory or CPU limit)",
                      "SIGXFSZ": "file size limit", "SIGSEGV": "segmentation fault"}.get(name, name)
            if name == "SIGXCPU":
                return SandboxResult("timeout", detail, seconds)
            return SandboxResult("crashed", detail, seconds)
        return SandboxResult("crashed", f"exited with code {code} before finishing", seconds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_many(programs: list[str], limits: SandboxLimits = SandboxLimits(), workers: int | None = None) -> list[SandboxResult]:
    """Run several programs, `workers` at a time (default: the number of CPU cores), in order."""
    workers = workers or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: run_sandboxed(p, limits), programs))
