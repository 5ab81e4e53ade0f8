# Sourced by scripts/test and scripts/fleet: system packages clawfleet uses when present.
# bubblewrap sandboxes the exec tool (tools.exec.sandbox, claw_worker/tools/sandbox.py).
# Installed only where that is plainly wanted and possible (root with apt-get, e.g. a fresh
# CI machine); otherwise one line says so, and the sandbox tests skip. Never fails the caller.
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # Fresh images often have no package lists yet: update once, quietly, if the install fails.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null 2>&1; then
      apt-get update -q >/dev/null 2>&1 || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null 2>&1 || true
    fi
  fi
  if ! command -v bwrap >/dev/null 2>&1; then
    echo "bubblewrap is not installed (apt-get install bubblewrap): exec runs unsandboxed and the sandbox tests will skip" >&2
  fi
fi
