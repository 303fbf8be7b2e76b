"""Running untrusted generated code: one short-lived process per sample, fenced in by the operating system.

Each sample runs in a fresh `python -I -S` (isolated mode, no site-packages) inside a bubblewrap (`bwrap`)
sandbox, and the walls come from the kernel, not from the sample's own interpreter:

- new PID, network, mount, IPC and UTS namespaces (and a user namespace when genloom is not root): the sample
  sees only its own processes, has no network but an unconnected loopback, and no host folder but a
  read-only view of the system's `/usr` (and `/lib*`, `/bin`, `/sbin`) and of the interpreter's prefix, with
  site-packages hidden;
- its only writable place is a private, size-limited tmpfs at `/tmp` (its working directory), which
  disappears with the sandbox;
- it runs as an unprivileged user with no capabilities and `no_new_privs`: as root, a per-run uid from an
  unused range (`UID_BASE`, no passwd entry, owning nothing on the host), dropped to by `setpriv` before the
  interpreter starts; otherwise the caller's own uid, inside a user namespace;
- a seccomp filter (x86-64): no new namespaces, mounts, ptrace, keyrings, bpf, io_uring, modules, 32-bit calls;
- resource limits: CPU seconds, address space, file size, open files, processes (threads count), no core;
- a wall-clock timeout, after which the namespace's init is killed and with it every process in the sandbox
  (also on a normal exit: nothing the sample started outlives it);
- a scrubbed environment; stdout and stderr go to one pipe that the parent drains and caps (only the last
  `OUTPUT_KEPT` bytes are kept), so a flood costs CPU time, never the evaluator's memory;
- the outcome is reported on a separate pipe (never stdout), as a line that starts with a per-run random
  nonce; a sample that prints or guesses a verdict, writes garbage or exits early never becomes "passed"
  (an early exit or no verdict is "crashed") and never raises in the evaluator. (One that digs the nonce out
  of its own interpreter's memory can still claim "passed" for itself, and only for itself.)
A Python audit hook (refusing new processes, sockets, ctypes, signals and writes outside the folder) is
kept as a second layer inside the interpreter; nothing above depends on it.

Where this isolation is not available (not Linux, no bubblewrap, namespaces switched off), running is refused
with `SandboxUnavailable` unless the caller passes `unsafe_sandbox=True`; then samples run with the resource
limits, the audit hook and (as root, when the interpreter is reachable) an unprivileged uid only, and a
warning says what is missing. `docs/security.md` says what is and is not guaranteed and which test checks it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..core.errors import GenloomError

__all__ = ["SandboxLimits", "SandboxResult", "SandboxUnavailable", "Isolation", "isolation", "require_isolation",
           "run_sandboxed", "run_many"]

log = logging.getLogger(__name__)

STATUSES = ("passed", "failed", "timeout", "crashed")
UID_BASE = 0x70000000        # as root: sample uids UID_BASE + (pid % 1024) * 64 + slot (unused by passwd, systemd)
SLOTS = 64                   # concurrent samples per process, each with its own uid (per-sample process limit)
OUTPUT_KEPT = 4096           # bytes of a sample's stdout + stderr kept (the end)
_VERDICT_KEPT = 65536


class SandboxUnavailable(GenloomError):
    """Generated code cannot be isolated here, and the caller did not allow running it without isolation."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout: float = 5.0              # wall-clock seconds
    cpu_seconds: int = 5
    memory_mb: int = 512              # address space, per process
    file_mb: int = 1                  # the largest file the sample may write
    disk_mb: int = 16                 # the size of its private /tmp
    open_files: int = 64
    processes: int = 0                # extra processes (or threads) the sample may start
    audit_hook: bool = True           # the in-interpreter second layer (off only to test the OS layer alone)


@dataclass(frozen=True)
class SandboxResult:
    status: str                       # passed | failed | timeout | crashed
    detail: str                       # the exception, signal or limit, one line
    seconds: float
    output: str = ""                  # the end of what the sample printed (at most OUTPUT_KEPT bytes)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Isolation:
    """What fences samples in on this machine (`how`), or what is missing for it (`missing`)."""
    available: bool
    how: str = ""
    missing: str = ""
    mode: str = ""                    # "root" (bwrap as root, samples as a per-run uid) | "user" (user namespace)


# -- the program the sandboxed interpreter runs -----------------------------------------------------------
# It reads one header line (verdict fd, nonce, hook on/off, rlimits) and the sample from stdin, sets the limits, installs the audit hook, replaces
# __main__, runs the sample, and writes "\n<nonce> passed|failed <detail>\n" to the verdict fd, then _exits.
# (The marker comment lets tests find leftover processes by their command line.)
_RUNNER = r'''# genloom-sandbox-runner
import sys, os


def _genloom_hook(home):
    from os import fsdecode, sep
    from os.path import realpath
    blocked = frozenset({
        "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "subprocess.Popen",
        "os.kill", "os.killpg", "socket.__new__", "socket.connect", "socket.bind", "socket.sendto",
        "socket.sendmsg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
        "os.putenv", "os.unsetenv", "os.chdir", "os.chroot", "sys.addaudithook", "os.setuid", "gc.get_objects",
        "gc.get_referrers", "gc.get_referents", "sys._current_frames", "sys.setprofile", "sys.settrace",
        "mmap.__new__", "os.add_dll_directory"})
    modules = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "subprocess", "multiprocessing",
                         "_multiprocessing", "socket", "_socket", "pty", "signal", "_signal", "faulthandler",
                         "resource", "fcntl", "mmap", "_xxsubinterpreters"})
    # event -> (positions of paths it changes, positions of its dir_fd arguments)
    changes = {"os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
               "os.rename": ((0, 1), (2, 3)), "os.link": ((0, 1), (2, 3)), "os.symlink": ((0, 1), (2,)),
               "os.truncate": ((0,), ()), "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)),
               "os.utime": ((0,), (3,)), "shutil.rmtree": ((0,), (1,)), "os.chflags": ((0,), ()),
               "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ())}
    writing_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    home = realpath(home)

    def inside(path):
        try:
            real = realpath(fsdecode(path))
        except Exception:
            return False
        return real == home or real.startswith(home + sep)

    def hook(event, args):
        if event == "import" and args and str(args[0]).split(".")[0] in modules:
            raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        if event in blocked:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open" and args and not isinstance(args[0], int):
            mode = args[1] if len(args) > 1 else "r"
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or flags & writing_flags
            if writing and not inside(args[0]):
                raise PermissionError(f"sandbox: writing outside the working directory ({args[0]}) is not allowed")
            name = fsdecode(args[0]) if isinstance(args[0], (str, bytes)) else ""
            if name.startswith("/proc/") and name.rstrip("/").rsplit("/", 1)[-1] in ("mem", "environ", "maps"):
                raise PermissionError(f"sandbox: reading {name} is not allowed")
        spec = changes.get(event)
        if spec and args:
            paths, dir_fds = spec
            if any(i < len(args) and args[i] not in (None, -1) for i in dir_fds):
                raise PermissionError(f"sandbox: {event} through dir_fd is not allowed")
            for i in paths:
                if i < len(args) and not isinstance(args[i], int) and not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")

    sys.addaudithook(hook)
    sys.modules.pop("_signal", None)       # preloaded: `import _signal` would not raise an import event


def _genloom_sandbox():
    import resource                    # (json, traceback and types would double the start-up time)
    raw = sys.stdin.buffer.read()
    header, _, source = raw.partition(b"\n")
    del raw
    fields = header.decode("ascii").split()
    fd, prefix, hook = int(fields[0]), b"\n" + fields[1].encode("ascii") + b" ", fields[2] == "1"
    os.set_inheritable(fd, False)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for item in fields[3:]:
        name, soft, hard = item.split("=")
        resource.setrlimit(getattr(resource, name), (int(soft), int(hard)))
    del header, fields
    # What the harness needs after the sample ran, bound now (the sample may empty builtins or patch os).
    write, leave, out, err = os.write, os._exit, sys.stdout, sys.stderr
    anything, to_text, kind_of = BaseException, str, type

    def report(status, detail):
        try:
            for stream in (out, err):
                try:
                    stream.flush()
                except anything:
                    pass
            write(fd, prefix + status + b" " + detail.encode("utf-8", "replace") + b"\n")
        finally:
            leave(0)

    if hook:
        _genloom_hook(os.getcwd())
    main = type(sys)("__main__")
    sys.modules["__main__"] = main
    try:
        code = compile(source, "<sample>", "exec")
        del source
        exec(code, main.__dict__)
    except anything as error:
        try:
            kind = kind_of(error)
            name = kind.__qualname__ if kind.__module__ in ("builtins", "__main__") else \
                f"{kind.__module__}.{kind.__qualname__}"
            text = to_text(error)
            line = (f"{name}: {text}" if text else name).replace("\n", " ")[:300]
        except anything:
            line = "an exception that cannot be described"
        report(b"failed", line)
    report(b"passed", "")


_genloom_sandbox()
'''


# -- what is available here ---------------------------------------------------------------------------------
def _find(name: str) -> str | None:
    """A system tool, from the system folders first (not a PATH a user may have pointed elsewhere)."""
    return shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin") or shutil.which(name)


@functools.lru_cache(maxsize=None)
def _bwrap_options() -> frozenset[str]:
    """The options this bwrap knows (--size, --perms and --disable-userns came in 0.5 to 0.8)."""
    try:
        text = subprocess.run([_find("bwrap") or "bwrap", "--help"], capture_output=True, text=True, timeout=10,
                              env={}).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(word for word in text.split() if word.startswith("--"))


def _probe() -> Isolation:
    if not sys.platform.startswith("linux"):
        return Isolation(False, missing=f"Linux namespaces (this is {sys.platform})")
    if _find("bwrap") is None:
        return Isolation(False, missing="bubblewrap (`bwrap`, the Debian/Ubuntu package `bubblewrap`) is not "
                                        "installed")
    if os.geteuid() == 0:
        if _find("setpriv") is None:
            return Isolation(False, missing="`setpriv` (util-linux), which drops root to the sandbox's user, is "
                                            "not installed")
        candidate = Isolation(True, "bubblewrap as root: new PID/network/mount/IPC/UTS namespaces; samples as an "
                                    f"unprivileged uid from {UID_BASE} up, no capabilities", mode="root")
    else:
        candidate = Isolation(True, "bubblewrap: new user/PID/network/mount/IPC/UTS namespaces; samples without "
                                    f"capabilities (uid {os.getuid()} outside)", mode="user")
    # A real run proves it: a kernel, a container or AppArmor can refuse namespaces.
    result = _run("import os\nassert os.getuid() != 0",
                  SandboxLimits(timeout=30, cpu_seconds=10), candidate)
    if result.status != "passed":
        said = (result.output.strip().splitlines() or [""])[-1][:200]
        return Isolation(False, missing=f"bubblewrap could not start a sandbox here ({result.detail}"
                                        + (f": {said}" if said else "") + ")")
    return candidate


@functools.lru_cache(maxsize=None)
def _probed() -> Isolation:
    return _probe()


def isolation() -> Isolation:
    """How samples are isolated on this machine (probed once per process by running one)."""
    return _probed()


def require_isolation(unsafe_sandbox: bool = False) -> Isolation:
    """The isolation in use; raises `SandboxUnavailable` where there is none, unless `unsafe_sandbox` (then
    it logs a warning naming what is missing, once)."""
    found = isolation()
    if found.available:
        return found
    if not unsafe_sandbox:
        raise SandboxUnavailable(f"cannot isolate generated code: {found.missing}; install bubblewrap (apt-get "
                                 "install bubblewrap) or pass --unsafe-sandbox (unsafe_sandbox=True) to run it "
                                 "with in-process limits only")
    _warn_unsafe(found.missing)
    return found


@functools.lru_cache(maxsize=None)
def _warn_unsafe(missing: str) -> None:
    as_root = os.geteuid() == 0 and not (_world_usable(sys.executable) and _world_usable(os.__file__))
    log.warning("running generated code WITHOUT isolation (%s): only resource limits%s and an in-process audit "
                "hook stand between the samples and this machine, and a hostile sample can defeat the hook%s",
                missing, "" if as_root or os.geteuid() != 0 else ", an unprivileged uid",
                "; samples run AS ROOT (an unprivileged user cannot reach this interpreter)" if as_root else "")


# -- per-run users (as root) --------------------------------------------------------------------------------
_slots_lock = threading.Condition()
_slots_used: set[int] = set()


@functools.lru_cache(maxsize=None)
def _taken_ids() -> frozenset[int]:
    import grp
    import pwd
    return frozenset(e.pw_uid for e in pwd.getpwall()) | frozenset(e.gr_gid for e in grp.getgrall())


class _Slot:
    """A uid (= gid) of its own for one running sample, so the process limit counts that sample alone."""

    def __enter__(self) -> int:
        with _slots_lock:
            while len(_slots_used) >= SLOTS:
                _slots_lock.wait()
            self.slot = min(set(range(SLOTS)) - _slots_used)
            _slots_used.add(self.slot)
        uid = UID_BASE + (os.getpid() % 1024) * SLOTS + self.slot
        while uid in _taken_ids():
            uid += 1024 * SLOTS
        return uid

    def __exit__(self, *exc) -> None:
        with _slots_lock:
            _slots_used.discard(self.slot)
            _slots_lock.notify()


def _world_usable(path: str) -> bool:
    """Whether a user with no rights of its own can reach and run (or read) `path`."""
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for i in range(2, len(parts)):
        if not os.stat(os.sep.join(parts[:i])).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(real).st_mode & (stat.S_IXOTH | stat.S_IROTH))


# -- the sandbox's view of the file system --------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _view() -> tuple[str, ...]:
    """bwrap arguments: system folders and the interpreter's prefix read-only, site-packages hidden."""
    args: list[str] = []
    roots = []
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
            roots.append(top)
    if os.path.isfile("/etc/ld.so.cache"):
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    python = os.path.realpath(sys.executable)
    made = {"/", *roots}
    for prefix in dict.fromkeys(os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix,
                                                              os.path.dirname(os.path.dirname(python)))):
        if any(prefix == r or prefix.startswith(r + "/") for r in made if r != "/") or not os.path.isdir(prefix):
            continue
        parts = prefix.split("/")
        for i in range(2, len(parts)):               # parents: traversable, whatever they are on the host
            parent = "/".join(parts[:i])
            if parent not in made:
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += ["--ro-bind", prefix, prefix]
        made.add(prefix)
    hidden = {sysconfig.get_path(k, vars={"base": p, "platbase": p}) for k in ("purelib", "platlib")
              for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    hidden |= {"/usr/lib/python3/dist-packages", f"/usr/local/lib/python{version}/dist-packages",
               f"/usr/lib/python{version}/site-packages", f"/usr/local/lib/python{version}/site-packages"}
    for folder in sorted(h for h in hidden if h and os.path.isdir(h)):
        folder = os.path.realpath(folder)
        if any(folder.startswith(r + "/") for r in made if r != "/"):
            args += ["--tmpfs", folder, "--remount-ro", folder]
    return tuple(args)


# A seccomp filter (x86-64 only; elsewhere this layer is absent): EPERM for the system calls a sample has no
# use for and that widen the kernel's attack surface: new namespaces (unshare, setns, clone with CLONE_NEW*;
# clone3 says ENOSYS so that glibc falls back to clone), mounts, ptrace and other processes' memory, keyrings,
# bpf, perf, userfaultfd, io_uring, kernel modules and kexec, handles to files by inode; and every 32-bit or
# x32 call (their numbers differ).
_X86_64_BLOCKED = (
    272, 308,                          # unshare, setns
    165, 166, 155, 161,                # mount, umount2, pivot_root, chroot
    428, 429, 430, 431, 432, 433, 442,  # open_tree, move_mount, fsopen, fsconfig, fsmount, fspick, mount_setattr
    101, 310, 311,                     # ptrace, process_vm_readv, process_vm_writev
    248, 249, 250,                     # add_key, request_key, keyctl
    321, 298, 323,                     # bpf, perf_event_open, userfaultfd
    425, 426, 427,                     # io_uring_setup, io_uring_enter, io_uring_register
    175, 313, 176, 246, 320,           # init_module, finit_module, delete_module, kexec_load, kexec_file_load
    303, 304,                          # name_to_handle_at, open_by_handle_at
    172, 173, 169, 167, 168,           # iopl, ioperm, reboot, swapon, swapoff
)
_CLONE_NEW = 0x7E020000                # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET


@functools.lru_cache(maxsize=None)
def _seccomp_program() -> bytes | None:
    import platform
    import struct

    if platform.machine() != "x86_64":
        return None
    ld, jeq, jset, jge, ret = 0x20, 0x15, 0x45, 0x35, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    code: list[tuple[int, int, int, int]] = [(ld, 0, 0, 4), (jeq, 1, 0, 0xC000003E), (ret, 0, 0, eperm),
                                             (ld, 0, 0, 0), (jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]
    for number in _X86_64_BLOCKED:
        code += [(jeq, 0, 1, number), (ret, 0, 0, eperm)]
    code += [(jeq, 0, 1, 435), (ret, 0, 0, enosys),                                      # clone3
             (jeq, 0, 3, 56), (ld, 0, 0, 16), (jset, 0, 1, _CLONE_NEW), (ret, 0, 0, eperm),  # clone's flags
             (ret, 0, 0, allow)]
    return b"".join(struct.pack("<HBBI", *instruction) for instruction in code)


def _bwrap_command(found: Isolation, uid: int | None, limits: SandboxLimits, info_fd: int,
                   seccomp_fd: int) -> list[str]:
    known = _bwrap_options()
    # (No --new-session: bwrap itself starts in a new session, without a controlling terminal, and so does
    # everything inside; a second setsid would cost a scheduler autogroup per sample.)
    args = [_find("bwrap") or "bwrap", "--die-with-parent", "--unshare-pid", "--unshare-net",
            "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--info-fd", str(info_fd)]
    if seccomp_fd >= 0:
        args += ["--seccomp", str(seccomp_fd)]
    if found.mode == "user":
        args += ["--unshare-user", "--uid", "65534", "--gid", "65534"]
        if "--disable-userns" in known:
            args += ["--disable-userns"]
    else:
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add",
                 "CAP_SETPCAP"]
    args += _view()
    args += ["--proc", "/proc", "--dev", "/dev"]
    if "--size" in known:
        args += ["--size", str(limits.disk_mb * 1024 * 1024)]
    if "--perms" in known:
        args += ["--perms", "1777"]
    args += ["--tmpfs", "/tmp", "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
    for key, value in _environment("/tmp").items():
        args += ["--setenv", key, value]
    if found.mode == "root":
        args += [_find("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return args + [os.path.realpath(sys.executable), "-I", "-S", "-c", _RUNNER]


def _environment(home: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}


def _rlimits(limits: SandboxLimits, processes: int | None) -> dict[str, tuple[int, int]]:
    memory, size = limits.memory_mb * 1024 * 1024, limits.file_mb * 1024 * 1024
    chosen = {"RLIMIT_CPU": (limits.cpu_seconds, limits.cpu_seconds + 1), "RLIMIT_AS": (memory, memory),
              "RLIMIT_FSIZE": (size, size), "RLIMIT_NOFILE": (limits.open_files, limits.open_files),
              "RLIMIT_CORE": (0, 0)}
    if processes is not None:
        chosen["RLIMIT_NPROC"] = (processes, processes)
    return chosen


# -- running one sample -----------------------------------------------------------------------------------------
def run_sandboxed(program: str, limits: SandboxLimits = SandboxLimits(), unsafe_sandbox: bool = False) -> SandboxResult:
    """Run the Python source `program` in a fresh sandboxed interpreter; passed means it ran to the end.

    Raises `SandboxUnavailable` where the operating system cannot isolate it, unless `unsafe_sandbox`."""
    return _run(program, limits, require_isolation(unsafe_sandbox))


def _run(program: str, limits: SandboxLimits, found: Isolation) -> SandboxResult:
    if found.mode == "root" or (not found.available and os.geteuid() == 0):
        with _Slot() as uid:
            return _run_as(program, limits, found, uid)
    return _run_as(program, limits, found, None)


def _run_as(program: str, limits: SandboxLimits, found: Isolation, uid: int | None) -> SandboxResult:
    nonce = secrets.token_hex(16)
    out_r, out_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    info_r, info_w = os.pipe() if found.available else (-1, -1)
    seccomp_r, program_filter = -1, _seccomp_program() if found.available else None
    if program_filter is not None:
        seccomp_r, seccomp_w = os.pipe()
        os.write(seccomp_w, program_filter)          # (a few hundred bytes: fits the pipe)
        os.close(seccomp_w)
    folder = None
    start = time.perf_counter()
    try:
        if found.available:
            # the processes the sample's uid may hold: itself, its extras, and (user namespace) bwrap's init
            nproc = limits.processes + (1 if found.mode == "root" else 2)
            command, cwd, env, user = _bwrap_command(found, uid, limits, info_w, seccomp_r), None, {}, None
        else:
            folder = tempfile.mkdtemp(prefix="genloom-sandbox-")
            user = uid if uid is not None and _world_usable(sys.executable) and _world_usable(os.__file__) else None
            if user is not None:
                os.chown(folder, user, user)
            nproc = limits.processes + 1 if user is not None else None     # a shared uid: the hook does it
            command, cwd, env = [sys.executable, "-I", "-S", "-c", _RUNNER], folder, _environment(folder)
        header = " ".join([str(verdict_w), nonce, "1" if limits.audit_hook else "0"]
                           + [f"{k}={soft}={hard}" for k, (soft, hard) in _rlimits(limits, nproc).items()])
        payload = header.encode("ascii") + b"\n" + program.encode("utf-8", "surrogatepass")
        extra = {"user": user, "group": user, "extra_groups": []} if user is not None else {}
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=out_w, stderr=out_w,
                                   pass_fds=[fd for fd in (verdict_w, info_w, seccomp_r) if fd >= 0],
                                   start_new_session=True,
                                   **extra)
        for fd in (out_w, verdict_w, info_w, seccomp_r):
            if fd >= 0:
                os.close(fd)
        out_w = verdict_w = info_w = seccomp_r = -1
        try:
            output, verdict, timed_out = _watch(process, payload, out_r, verdict_r, info_r, limits.timeout)
        finally:
            if not found.available or process.poll() is None:
                _kill_group(process)   # without a namespace: whatever it started goes with it
            process.wait()
        seconds = time.perf_counter() - start
        kept = output.decode("utf-8", "replace")
        if timed_out:
            return SandboxResult("timeout", f"still running after {limits.timeout:g} s", seconds, kept)
        return _outcome(verdict, nonce, process.returncode, found.available, seconds, kept)
    finally:
        for fd in (out_r, out_w, verdict_r, verdict_w, info_r, info_w, seccomp_r):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _watch(process: subprocess.Popen, payload: bytes, out_r: int, verdict_r: int, info_r: int,
           timeout: float) -> tuple[bytes, bytes, bool]:
    """Feed stdin, drain the output (keeping its end), the verdict and bwrap's info until the sandbox is gone
    or the deadline passes (then kill it all). Memory stays bounded whatever the sample writes."""
    deadline = time.monotonic() + timeout
    output, verdict, info = bytearray(), bytearray(), bytearray()
    init_pidfd = None                  # bwrap's child: the PID namespace's init (killing it empties the namespace)
    timed_out = False
    selector = selectors.DefaultSelector()
    stdin = process.stdin
    assert stdin is not None
    os.set_blocking(stdin.fileno(), False)
    selector.register(stdin.fileno(), selectors.EVENT_WRITE, "stdin")
    for fd, name in ((out_r, "out"), (verdict_r, "verdict"), (info_r, "info")):
        if fd >= 0:
            selector.register(fd, selectors.EVENT_READ, name)
    try:
        exit_fd = os.pidfd_open(process.pid)
        selector.register(exit_fd, selectors.EVENT_READ, "exit")
    except (AttributeError, OSError):
        exit_fd = None
    sent = 0
    exited_at = None
    try:
        while True:
            now = time.monotonic()
            if exited_at is None and process.poll() is not None:
                exited_at = now
            readers = [k for k in selector.get_map().values() if k.data in ("out", "verdict", "info")]
            if exited_at is not None and (not readers or now > exited_at + 0.5):
                break                  # gone, and its pipes are closed (or held by nothing we wait for)
            if now >= deadline and not timed_out:
                timed_out = True
                _kill_namespace(process, init_pidfd)
                deadline = now + 5.0   # time for the kernel to empty the namespace
            elif timed_out and now >= deadline:
                break
            wait = max(0.0, min(deadline, exited_at + 0.5 if exited_at is not None else deadline) - now)
            if exit_fd is None:
                wait = min(wait, 0.005)
            for key, _ in selector.select(wait):
                if key.data == "exit":
                    selector.unregister(key.fd)
                    continue
                if key.data == "stdin":
                    try:
                        sent += os.write(key.fd, payload[sent:sent + 65536])
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:    # the sandbox is gone without reading its program
                        sent = len(payload)
                    if sent >= len(payload):
                        selector.unregister(key.fd)
                        stdin.close()
                    continue
                try:
                    chunk = os.read(key.fd, 65536)
                except (BlockingIOError, InterruptedError):
                    continue
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                if key.data == "out":
                    output += chunk
                    if len(output) > 2 * OUTPUT_KEPT:
                        del output[:-OUTPUT_KEPT]
                elif key.data == "verdict":
                    verdict += chunk
                    if len(verdict) > 2 * _VERDICT_KEPT:
                        del verdict[:-_VERDICT_KEPT]
                elif len(info) < 65536:
                    info += chunk
                    if init_pidfd is None:
                        init_pidfd = _init_pidfd(bytes(info))
    finally:
        selector.close()
        if not stdin.closed:
            try:
                stdin.close()
            except OSError:
                pass
        if timed_out or process.poll() is None:
            _kill_namespace(process, init_pidfd)
        for fd in (exit_fd, init_pidfd):
            if fd is not None:
                os.close(fd)
    return bytes(output[-OUTPUT_KEPT:]), bytes(verdict), timed_out


def _init_pidfd(info: bytes) -> int | None:
    try:
        pid = int(json.loads(info.decode())["child-pid"])
        return os.pidfd_open(pid)
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        return None                    # incomplete yet (or no pidfd_open): the group kill below still works


def _kill_namespace(process: subprocess.Popen, init_pidfd: int | None) -> None:
    """SIGKILL the PID namespace's init (the kernel then kills everything in it) and bwrap's process group; the
    bwrap process exits only once its child is reaped, so after `process.wait()` the namespace is empty."""
    if init_pidfd is not None:
        try:
            signal.pidfd_send_signal(init_pidfd, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if init_pidfd is None:
        _kill_group(process)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_SIGNALS = {"SIGXCPU": "CPU time limit", "SIGKILL": "killed (memory or CPU limit)", "SIGXFSZ": "file size limit",
            "SIGSEGV": "segmentation fault"}


def _outcome(verdict: bytes, nonce: str, code: int | None, bwrap: bool, seconds: float, output: str) -> SandboxResult:
    """The verdict line the harness wrote (the last one that carries the nonce), else what the exit says."""
    mark = nonce.encode() + b" "
    lines = [line[len(mark):] for line in verdict.split(b"\n") if line.startswith(mark)]
    if lines:
        status, _, detail = lines[-1].partition(b" ")
        if status in (b"passed", b"failed"):
            return SandboxResult(status.decode(), detail.decode("utf-8", "replace")[:300], seconds, output)
        return SandboxResult("crashed", "a malformed verdict", seconds, output)
    garbage = " (and garbage on the verdict channel)" if verdict.strip() else ""
    number = None
    if code is not None and code < 0:
        number = -code
    elif bwrap and code is not None and 128 < code < 128 + 65:
        number = code - 128            # bwrap's init passes a signal on as 128 + its number
    if number is not None:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        status = "timeout" if name == "SIGXCPU" else "crashed"
        return SandboxResult(status, _SIGNALS.get(name, name) + garbage, seconds, output)
    if bwrap and code == 1 and output.lstrip().startswith("bwrap:"):
        return SandboxResult("crashed", "the sandbox did not start: " + output.strip().splitlines()[0][:200],
                             seconds, output)
    return SandboxResult("crashed", f"exited with code {code} before finishing{garbage}", seconds, output)


def run_many(programs: list[str], limits: SandboxLimits = SandboxLimits(), workers: int | None = None,
             unsafe_sandbox: bool = False) -> list[SandboxResult]:
    """Run several programs, `workers` at a time (default: the number of CPU cores), in order.

    Raises `SandboxUnavailable` before running any where the operating system cannot isolate them, unless
    `unsafe_sandbox`."""
    found = require_isolation(unsafe_sandbox)
    workers = workers or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    with ThreadPoolExecutor(min(workers, SLOTS)) as pool:
        return list(pool.map(lambda p: _run(p, limits, found), programs))
