"""Taking one skill out of a GitHub tar.gz archive, refusing anything that could write
outside its target.

The archive is read in one streaming pass (``tarfile`` mode ``r|`` over a gzip reader of
our own) and nothing is handed to ``tarfile.extract``: every entry is checked and written
here. Refused, for the whole archive: an absolute name or one with ``..``; entries outside
one top directory (GitHub's ``<repo>-<ref>/``); a name seen twice; more than
``max_entries`` entries or more than ``max_unpacked_bytes`` decompressed (a decompression
bomb, counted on the gzip stream below tarfile, which reads pax headers whole); and inside
the skill: devices, FIFOs, a symlink that leads out of the skill, a hard link to anything
but a file of the skill, more than ``MAX_SKILL_FILES`` files or ``max_skill_bytes`` of
content, a symlink that leads out through another one. Entries outside the requested path
are skipped. Files are created with ``O_EXCL | O_NOFOLLOW``
and modes 0644/0755 (no setuid, no archive owners); symlinks are made last, in
directories that are not symlinks themselves.
"""

from __future__ import annotations

import os
import posixpath
import re
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from claw_worker.skills.skillfile import SkillError

MAX_SKILL_FILES = 2000
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Limits:
    max_entries: int
    max_unpacked_bytes: int
    max_skill_bytes: int


class _Extraction:
    def __init__(self, dest: Path, subpath: Sequence[str], limits: Limits) -> None:
        self.dest = dest
        self.subpath = tuple(subpath)
        self.limits = limits
        self.top: str | None = None
        self.entries = 0
        self.unpacked = 0
        self.skill_bytes = 0
        self.files: dict[tuple[str, ...], Path] = {}  # written, for hard links
        self.links: list[tuple[tuple[str, ...], str]] = []
        self.seen: set[tuple[str, ...]] = set()
        self.found = False

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise SkillError(
                f"the archive has more than {self.limits.max_entries} entries "
                "(skills.max_archive_entries)"
            )
        self.unpacked += max(member.size, 0)
        if self.unpacked > self.limits.max_unpacked_bytes:
            raise SkillError(
                f"the archive unpacks to more than {self.limits.max_unpacked_bytes} bytes "
                "(skills.max_unpacked_bytes)"
            )
        parts = member_parts(member.name)
        if parts in self.seen:
            raise SkillError(f"the archive holds '{_show(member.name)}' twice")
        self.seen.add(parts)
        if self.top is None:
            self.top = parts[0]
        elif parts[0] != self.top:
            raise SkillError(
                f"the archive is not a GitHub archive: '{_show(member.name)}' is outside its top "
                f"directory '{_show(self.top)}'"
            )
        inner = self._inner(parts)
        if inner is None:
            return
        self.found = True
        if not inner:
            if member.isdir():
                return
            if self.subpath:
                raise SkillError(f"{'/'.join(self.subpath)} in the archive is not a directory")
            raise SkillError(
                f"the archive's first entry '{_show(member.name)}' is not a directory: a "
                "GitHub archive holds everything in one top directory"
            )
        shown = _show("/".join(inner))
        if member.isdir():
            (self.dest.joinpath(*inner)).mkdir(mode=0o755, parents=True, exist_ok=True)
        elif member.isfile():
            self._file(tar, member, inner)
        elif member.issym():
            target = member.linkname
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(shown), target))
            if not target or target.startswith("/") or resolved.split("/")[0] == "..":
                raise SkillError(f"the symlink {shown} -> {_show(target)} points outside the skill")
            self.links.append((inner, target))
        elif member.islnk():
            source = self._inner(member_parts(member.linkname))
            if not source or source not in self.files:
                raise SkillError(
                    f"the hard link {shown} -> {_show(member.linkname)} leads outside the skill's files"
                )
            with open(self.files[source], "rb") as fh:
                self._write(fh, inner, self.files[source].stat().st_mode & 0o111 != 0)
        else:
            raise SkillError(f"{shown} in the archive is a device or FIFO, not a file")

    def _inner(self, parts: tuple[str, ...]) -> tuple[str, ...] | None:
        """The path inside the skill, or None for an entry outside it."""
        rest = parts[1:]
        if rest[: len(self.subpath)] != self.subpath:
            return None
        return rest[len(self.subpath) :]

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, inner: tuple[str, ...]) -> None:
        data = tar.extractfile(member)
        if data is None:  # pragma: no cover - isfile() members always have data
            raise SkillError(f"cannot read {_show('/'.join(inner))} in the archive")
        with data:
            self._write(data, inner, member.mode & 0o111 != 0)

    def _write(self, data: BinaryIO, inner: tuple[str, ...], executable: bool) -> None:
        if len(self.files) >= MAX_SKILL_FILES:
            raise SkillError(f"the skill has more than {MAX_SKILL_FILES} files")
        path = self.dest.joinpath(*inner)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        os.fchmod(fd, 0o755 if executable else 0o644)  # exactly, whatever the umask
        with os.fdopen(fd, "wb") as out:
            while chunk := data.read(_CHUNK):
                self.skill_bytes += len(chunk)
                if self.skill_bytes > self.limits.max_skill_bytes:
                    raise SkillError(
                        f"the skill's files add up to more than {self.limits.max_skill_bytes} "
                        "bytes (skills.max_skill_bytes)"
                    )
                out.write(chunk)
        self.files[inner] = path

    def finish(self) -> None:
        for inner, target in self.links:
            # Its folders made one at a time, none through a link: a link made before could
            # lead out (through another one), and mkdir(parents=True) would follow it.
            parent = self.dest
            for name in inner[:-1]:
                parent = parent / name
                if parent.is_symlink():
                    raise SkillError(
                        f"the symlink {_show('/'.join(inner))} sits under another symlink"
                    )
                parent.mkdir(mode=0o755, exist_ok=True)
            path = parent / inner[-1]
            try:
                os.symlink(target, path)
            except FileExistsError:
                raise SkillError(f"the archive holds {_show('/'.join(inner))} twice") from None
        # Each target was checked alone; through one another, links can still lead out
        # (``up -> ../..`` at the skill's root, then ``esc -> up/../../etc/passwd``).
        for inner, target in self.links:
            try:
                inside = _stays_inside(self.dest, inner[:-1], target)
            except _TooManyLinks:
                raise SkillError(
                    f"the symlink {_show('/'.join(inner))} -> {_show(target)} needs more than "
                    f"{_MAX_LINK_HOPS} symlinks to resolve"
                ) from None
            if not inside:
                raise SkillError(
                    f"the symlink {_show('/'.join(inner))} -> {_show(target)} leads outside the skill "
                    "through another symlink"
                )


_MAX_LINK_HOPS = 40  # links followed in one resolution, as the kernel's ELOOP


class _TooManyLinks(Exception):
    pass


def _stays_inside(root: Path, where: tuple[str, ...], target: str) -> bool:
    """Whether following ``target`` from the directory ``where`` (inside ``root``) never
    leaves ``root`` at any step, links met on the way followed the same way. Every link
    followed counts against one budget for the whole resolution (not per level: links that
    each name the one before several times would take exponential time), and past it the
    skill is refused, as the kernel would refuse to open it."""
    hops = [0]

    def inside(where: tuple[str, ...], target: str) -> bool:
        if target.startswith("/"):
            return False
        current = list(where)
        for name in target.split("/"):
            if name in ("", "."):
                continue
            if name == "..":
                if not current:
                    return False
                current.pop()
                continue
            path = root.joinpath(*current, name)
            if path.is_symlink():
                hops[0] += 1
                if hops[0] > _MAX_LINK_HOPS:
                    raise _TooManyLinks
                if not inside(tuple(current), os.readlink(path)):
                    return False
                # Where the link leads is inside: continue from there, as the kernel does.
                real = Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
                current = list(real.parts)
            else:
                current.append(name)
        return True

    return inside(where, target)


_SHOWN_MAX = 160
# C0, DEL, C1 (terminal control) and lone surrogates (a name that was not UTF-8)
_UNSHOWABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _show(text: str) -> str:
    """A name or link target from the archive, for a message a terminal prints: control
    characters escaped (an archive could name a file ESC ] 52 ... to write the clipboard),
    and bounded (a path of 3,000 levels)."""
    shown = _UNSHOWABLE.sub(lambda m: ascii(m.group())[1:-1], text)
    return shown if len(shown) <= _SHOWN_MAX else shown[: _SHOWN_MAX - 3] + "..."


def member_parts(name: str) -> tuple[str, ...]:
    """The parts of an archive entry's name; refuses absolute names and ``..``."""
    if name.startswith("/") or "\0" in name:
        raise SkillError(f"the archive holds an absolute path: '{_show(name)}'")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise SkillError(f"the archive holds a path that escapes with '..': '{_show(name)}'")
    if not parts:
        raise SkillError(f"the archive holds an entry with an empty name: '{_show(name)}'")
    return parts


class _Gunzip:
    """A gzip stream decompressed on read, failing past ``cap`` bytes of output: tarfile
    reads pax and GNU long-name headers whole into memory, so the bound must sit below it."""

    def __init__(self, fileobj: BinaryIO, cap: int) -> None:
        self.fileobj = fileobj
        self.cap = cap
        self.total = 0
        self.zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing

    def read(self, size: int = -1) -> bytes:
        size = _CHUNK if size is None or size < 0 else size
        out = b""
        while not out and not self.zlib.eof:
            data = self.zlib.unconsumed_tail or self.fileobj.read(_CHUNK)
            out = self.zlib.decompress(data, size)  # b"": what zlib still holds
            if not data and not out and not self.zlib.eof:
                raise EOFError("the archive ends before its gzip stream does")
        self.total += len(out)
        if self.total > self.cap:
            raise SkillError(
                f"the archive unpacks to more than {self.cap} bytes (skills.max_unpacked_bytes)"
            )
        return out


def extract_skill(fileobj: BinaryIO, subpath: Sequence[str], dest: Path, limits: Limits) -> str:
    """Write the directory ``subpath`` (under the archive's top directory) into ``dest``, an
    existing empty directory; the commit the archive names (GitHub's pax comment) or ""."""
    job = _Extraction(dest, subpath, limits)
    stream = _Gunzip(fileobj, limits.max_unpacked_bytes)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[arg-type]
            for member in tar:
                try:
                    job.member(tar, member)
                except OSError as exc:  # a file where a directory must go, and the like
                    raise SkillError(
                        f"cannot unpack '{_show(member.name)}': {exc.strerror or exc}"
                    ) from None
            commit = str(tar.pax_headers.get("comment", ""))
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise SkillError(f"the download is not a readable tar.gz archive ({exc})") from None
    if job.top is None:
        raise SkillError("the archive is empty")
    if not job.found:
        where = "/".join(job.subpath) or "its top directory"
        raise SkillError(f"the archive has no {where}")
    try:
        job.finish()
    except OSError as exc:
        raise SkillError(f"cannot make the skill's symlinks: {exc.strerror or exc}") from None
    return commit if len(commit) <= 64 and commit.isalnum() else ""
