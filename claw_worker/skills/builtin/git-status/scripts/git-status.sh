#!/bin/sh
# Summarise a git checkout: branch, upstream, changes, stashes, recent commits. Read-only.
# Usage: git-status.sh [PATH]  (relative to $CLAW_WORKSPACE, or absolute; default: the workspace)
set -u
given="${1:-.}"
case "$given" in
    /*) target="$given" ;;
    *) target="${CLAW_WORKSPACE:-.}/$given" ;;
esac
if ! cd "$target" 2>/dev/null; then
    echo "not a directory: $given" >&2
    exit 2
fi
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "not inside a git work tree: $given" >&2
    exit 2
fi
echo "repository: $(git rev-parse --show-toplevel)"
branch=$(git symbolic-ref --quiet --short HEAD 2>/dev/null) ||
    branch="(detached at $(git rev-parse --short HEAD 2>/dev/null || echo 'no commit'))"
echo "branch: $branch"
if upstream=$(git rev-parse --abbrev-ref --symbolic-full-name '@{upstream}' 2>/dev/null); then
    # shellcheck disable=SC2046 # two numbers: ahead, behind
    set -- $(git rev-list --left-right --count 'HEAD...@{upstream}' 2>/dev/null)
    echo "upstream: $upstream (ahead ${1:-?}, behind ${2:-?}; as of the last fetch)"
else
    echo "upstream: none"
fi
echo
echo "changes:"
total=$(git status --porcelain 2>/dev/null | wc -l)
if [ "$total" -eq 0 ]; then
    echo "  (clean)"
else
    git status --short 2>/dev/null | head -n 200
    [ "$total" -gt 200 ] && echo "  ... $total in all"
fi
echo
echo "stashes: $(git stash list 2>/dev/null | wc -l)"
echo
echo "last commits:"
git log --oneline --decorate -n 10 2>/dev/null || echo "  (no commits yet)"
