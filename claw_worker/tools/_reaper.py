"""The reaper of the ``exec`` tool: runs one shell command and leaves nothing behind.

Run as a script (``python -I -S _reaper.py <worker pid> <report fd> <limits> <cgroup.procs
or ""> <argv...>``), never imported. The command's process (argv: ``/bin/sh -c ...``, or
bwrap around it) gets the resource limits first (``cpu,memory,nproc,file`` as
``exec_limits.ExecLimits`` writes them) and joins the call's pids cgroup when one is given.
Under bubblewrap it runs twice: outside, with report fd ``-1`` (it reports nothing), limiting
and starting bwrap; inside the sandbox's PID namespace, with worker pid ``0`` (the worker is
not visible there) and no limits (they are inherited), reaping the shell as here: the
namespace dies with the shell, so only a reaper inside it can count the leftovers.
It makes itself a child subreaper (PR_SET_CHILD_SUBREAPER), so every process the
command starts stays its descendant even after ``setsid``, ``nohup`` or a double fork, and
asks to be killed with the worker (PR_SET_PDEATHSIG). When the shell exits, or on SIGTERM
(the deadline, /stop), it SIGKILLs every process descended from it or carrying the call's
``CLAW_EXEC_ID``, writes how many leftovers it killed to the report fd, and exits with the
shell's status (128+N for signal N) once none is left. Standard library only, so ``-I -S``
starts it in ~10 ms.
"""

import contextlib
import ctypes
import os
import resource
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def descendants(me: int, token: bytes) -> set[int]:
    """Live processes descended from ``me`` or carrying ``token`` in their environment
    (zombies are dead already), never ``me``'s own ancestors (inside the sandbox, bwrap's
    init carries the token too)."""
    children: dict[int, list[int]] = {}
    parent_of: dict[int, int] = {}
    found: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                state, ppid = fh.read().rsplit(b")", 1)[1].split()[:2]
            if state == b"Z":
                continue
            children.setdefault(int(ppid), []).append(int(name))
            parent_of[int(name)] = int(ppid)
            with open(f"/proc/{name}/environ", "rb") as fh:
                if token in fh.read().split(b"\0"):
                    found.add(int(name))
        except (OSError, ValueError, IndexError):
            continue
    ancestor = os.getppid()
    while ancestor > 0:
        found.discard(ancestor)
        ancestor = parent_of.get(ancestor, 0)
    todo = [me, *found]
    while todo:
        for pid in children.get(todo.pop(), ()):
            if pid not in found:
                found.add(pid)
                todo.append(pid)
    return found


def kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def limit(limits: str, cgroup_procs: str) -> None:
    """In the command's process, before exec: the resource limits, then the pids cgroup."""
    if not limits:
        return
    cpu, memory, nproc, file_size = (int(n) for n in limits.split(","))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL
    # Data (heap and private writable mappings), not address space: runtimes that reserve
    # large unused ranges (the JVM) still start, and what is really allocated is capped.
    resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cgroup_procs:
        with open(cgroup_procs, "w") as fh:
            fh.write(str(os.getpid()))


def run_shell(argv: list[str], report: int, limits: str, cgroup_procs: str) -> int:
    """Fork the command with default signal handling and its limits; its pid."""
    shell = os.fork()
    if shell == 0:
        for sig in (signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        try:
            if report >= 0:
                os.close(report)
            limit(limits, cgroup_procs)
            os.execv(argv[0], argv)
        except OSError as exc:
            os.write(2, f"exec: could not start the command: {exc}\n".encode())
        finally:
            os._exit(127)
    return shell


def main() -> None:
    parent, report, limits, cgroup_procs = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:5]
    argv = sys.argv[5:]
    token = ("CLAW_EXEC_ID=" + os.environ["CLAW_EXEC_ID"]).encode()
    me = os.getpid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans are re-parented to us
    except (OSError, AttributeError):
        pass
    if parent and os.getppid() != parent:
        sys.exit(125)  # the worker died before we could ask to follow it

    ending = False

    def on_term(signum: int, frame: object) -> None:  # the deadline or /stop
        nonlocal ending
        ending = True
        kill(descendants(me, token))

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGTERM, on_term)
    shell = run_shell(argv, report, limits, cgroup_procs)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    status: int | None = None
    left: set[int] = set()  # background processes still running when the shell ended
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG if status is not None or ending else 0)
        except ChildProcessError:
            break
        if pid == shell:
            status = st
        if status is not None or ending:
            found = descendants(me, token)
            if not ending:
                left |= found
            kill(found)
            if pid == 0:
                time.sleep(0.02)
    deadline = time.monotonic() + 2
    while (found := descendants(me, token)) and time.monotonic() < deadline:
        kill(found)
        time.sleep(0.02)
    if report >= 0:
        os.write(report, b"%d" % len(left))
    code = os.waitstatus_to_exitcode(status) if status is not None else -signal.SIGKILL
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
