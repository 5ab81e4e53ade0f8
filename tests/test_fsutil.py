"""Atomic writes never widen file modes anywhere in the process.

The old writer read the umask by setting it to 0 for a moment; in a worker with hundreds of
threads, a file another thread created in that moment came out world-accessible. This runs
writes and plain file creations side by side in threads (with a tiny switch interval, so
the threads interleave often) and counts creations that got a wider mode than the umask.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

RACE = r"""
import os, sys, threading, time
from pathlib import Path
from claw_worker.fsutil import atomic_write_bytes
d = Path(sys.argv[1])
os.umask(0o077)
sys.setswitchinterval(1e-6)
stop = threading.Event()
def writer():
    i = 0
    while not stop.is_set():
        atomic_write_bytes(d / f"w{i}", b"x")
        os.unlink(d / f"w{i}")
        i += 1
thread = threading.Thread(target=writer)
thread.start()
wide = created = 0
deadline = time.monotonic() + 2.0
while time.monotonic() < deadline:
    path = d / f"c{created}"
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o666))
    wide += bool(os.stat(path).st_mode & 0o077)
    os.unlink(path)
    created += 1
stop.set()
thread.join()
print(wide, created)
"""


def test_atomic_writes_never_widen_modes_of_files_other_threads_create(tmp_path: Path) -> None:
    shm = Path("/dev/shm")  # fast fsync, so the writer loops often
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else tmp_path) as where:
        out = subprocess.run([sys.executable, "-c", RACE, where], capture_output=True,
                             text=True, timeout=60, check=True)  # fmt: skip
    wide, created = map(int, out.stdout.split())
    assert created > 1000
    assert wide == 0, f"{wide} of {created} files were created world-accessible"


def test_new_files_follow_the_umask_and_old_files_keep_their_mode(tmp_path: Path) -> None:
    code = (
        "import os, sys; from pathlib import Path; from claw_worker.fsutil import "
        "atomic_write_bytes as w; os.umask(0o027); d = Path(sys.argv[1]);"
        "w(d / 'new', b'1'); (d / 'old').write_bytes(b'0'); os.chmod(d / 'old', 0o640);"
        "w(d / 'old', b'2'); w(d / 'given', b'3', 0o600);"
        "print(*(oct(os.stat(d / n).st_mode & 0o777) for n in ('new', 'old', 'given')))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.split() == ["0o640", "0o640", "0o600"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["given", "new", "old"]
