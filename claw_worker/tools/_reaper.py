"""The reaper of the ``exec`` tool: runs one shell command and leaves nothing behind.

Run as a script (``python -I -S _reaper.py <worker pid> <command> <report fd>``), never
imported: it makes itself a child subreaper (PR_SET_CHILD_SUBREAPER), so every process the
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
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def descendants(me: int, token: bytes) -> set[int]:
    """Live processes descended from ``me`` or carrying ``token`` in their environment
    (zombies are dead already)."""
    children: dict[int, list[int]] = {}
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
            with open(f"/proc/{name}/environ", "rb") as fh:
                if token in fh.read().split(b"\0"):
                    found.add(int(name))
        except (OSError, ValueError, IndexError):
            continue
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


def run_shell(command: str, report: int) -> int:
    """Fork the shell with default signal handling; its pid."""
    shell = os.fork()
    if shell == 0:
        for sig in (signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        try:
            os.close(report)
            os.execv("/bin/sh", ["/bin/sh", "-c", command])
        finally:
            os._exit(127)
    return shell


def main() -> None:
    parent, command, report = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    token = ("CLAW_EXEC_ID=" + os.environ["CLAW_EXEC_ID"]).encode()
    me = os.getpid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans are re-parented to us
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        sys.exit(125)  # the worker died before we could ask to follow it

    ending = False

    def on_term(signum: int, frame: object) -> None:  # the deadline or /stop
        nonlocal ending
        ending = True
        kill(descendants(me, token))

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGTERM, on_term)
    shell = run_shell(command, report)
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
    os.write(report, b"%d" % len(left))
    code = os.waitstatus_to_exitcode(status) if status is not None else -signal.SIGKILL
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
