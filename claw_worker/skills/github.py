"""``owner/repo/path[@ref]``: which skill of which GitHub repository, and downloading its
repository's archive from codeload (``<archive_base>/<owner>/<repo>/tar.gz/<ref>``).

Every part is checked before any request: GitHub's own rules for owner and repository
names, path segments of letters, digits, ``.``, ``_`` and ``-`` (never ``.`` or ``..``), a
ref without spaces or ``..``. The download streams into a file with a size cap, asks for no
content encoding (a gzip layer on top would be a second decompression to bound), and
follows redirects only to https or to ``skills.archive_base``'s own origin. Every hop must
resolve to public addresses (SSRF: a redirect to https://169.254.169.254/ or a LAN host is
refused) unless it is archive_base's own origin (scheme, host and port: whoever wrote the
config chose it) or its host is in ``skills.allowed_hosts``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import SplitResult, quote, urljoin, urlsplit

import httpx

from claw_worker.config.schema import SkillsConfig
from claw_worker.skills.skillfile import CONTROL_RE, SkillError
from claw_worker.tools.base import ToolError
from claw_worker.tools.url_guard import UrlGuard

OWNER_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
REPO_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]{1,255}")
REF_RE = re.compile(r"[A-Za-z0-9._/+-]{1,200}")
DEFAULT_REF = "HEAD"  # codeload serves the default branch under HEAD
MAX_REDIRECTS = 5
USAGE = "use owner/repo/path/to/skill[@ref], e.g. openclaw/skills/skills/weather@main"


@dataclass(frozen=True)
class SkillSpec:
    owner: str
    repo: str
    path: tuple[str, ...]
    ref: str = DEFAULT_REF

    def __str__(self) -> str:
        return "/".join((self.owner, self.repo, *self.path)) + f"@{self.ref}"

    def url(self, base: str) -> str:
        return f"{base}/{self.owner}/{self.repo}/tar.gz/{quote(self.ref, safe='/')}"


def parse_spec(text: str) -> SkillSpec:
    """``owner/repo[/path...][@ref]``, each part checked; ``SkillError`` says which is wrong."""
    spec, at, ref = text.strip().partition("@")
    if at and not ref:
        raise SkillError(f"{text!r} has an empty ref after '@'; {USAGE}")
    ref = ref or DEFAULT_REF
    parts = spec.rstrip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise SkillError(f"{text!r} is not owner/repo/path; {USAGE}")
    owner, repo, *path = parts
    if not OWNER_RE.fullmatch(owner):
        raise SkillError(f"{owner!r} is not a GitHub owner name (letters, digits and '-')")
    if not REPO_RE.fullmatch(repo) or repo in (".", ".."):
        raise SkillError(f"{repo!r} is not a GitHub repository name")
    for segment in path:
        if not SEGMENT_RE.fullmatch(segment) or segment in (".", ".."):
            raise SkillError(
                f"{segment!r} is not a path segment (letters, digits, '.', '_', '-'; "
                "never '.' or '..')"
            )
    if (
        not REF_RE.fullmatch(ref)
        or ".." in ref
        or "//" in ref
        or ref.startswith(("-", "/"))
        or ref.endswith("/")
    ):
        raise SkillError(f"{ref!r} is not a branch, tag or commit")
    return SkillSpec(owner, repo, tuple(path), ref)


def download(spec: SkillSpec, config: SkillsConfig, out: BinaryIO) -> None:
    """Write the repository archive into ``out``; ``SkillError`` on any failure."""
    url = spec.url(config.archive_base)
    base = urlsplit(config.archive_base)
    headers = {"Accept-Encoding": "identity", "User-Agent": "clawfleet-skills"}
    guard = UrlGuard(config.allowed_hosts, block_private=config.block_private_addresses,
                     setting="skills.allowed_hosts")  # fmt: skip
    try:
        with httpx.Client(timeout=config.timeout_sec, follow_redirects=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                _check_host(guard, url, base)
                with client.stream("GET", url, headers=headers) as response:
                    if response.is_redirect:
                        url = _redirect(url, response.headers.get("location", ""), base)
                        continue
                    _check(response, spec, url, config.max_archive_bytes)
                    _copy(response, out, config.max_archive_bytes)
                    return
    except httpx.TimeoutException:
        raise SkillError(
            f"downloading {url} timed out after {config.timeout_sec:g}s (skills.timeout_sec)"
        ) from None
    except httpx.HTTPError as exc:
        raise SkillError(f"could not download {url}: {exc}") from None
    except (httpx.InvalidURL, UnicodeError) as exc:
        # Not HTTPErrors: httpx parses a redirect's Location (bad punycode, control
        # characters) even when it does not follow it.
        raise SkillError(
            f"could not download {url}: a URL in its answer is unusable: {exc}"
        ) from None
    raise SkillError(f"{url} redirected more than {MAX_REDIRECTS} times")


def _check_host(guard: UrlGuard, url: str, base: SplitResult) -> None:
    parts = urlsplit(url)
    if (parts.scheme, parts.netloc) == (base.scheme, base.netloc):
        return  # archive_base's origin: trusted as configured
    try:
        guard.check(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    except (ToolError, ValueError) as exc:  # ValueError: a port out of range
        raise SkillError(f"not downloading {url}: {exc}") from None


def _redirect(url: str, location: str, base: SplitResult) -> str:
    if CONTROL_RE.search(location):  # never followed, nor printed: a terminal would act on it
        raise SkillError(f"{url} redirects to a URL holding control characters; not followed")
    target = urljoin(url, location)
    parts = urlsplit(target)
    same_origin = (parts.scheme, parts.netloc) == (base.scheme, base.netloc)
    if not location or not (parts.scheme == "https" or same_origin):
        raise SkillError(
            f"{url} redirects to {target or '(nowhere)'}: only https or skills.archive_base "
            "is followed"
        )
    return target


def _check(response: httpx.Response, spec: SkillSpec, url: str, cap: int) -> None:
    if response.status_code == 404:
        raise SkillError(
            f"{url} was not found (404): check the owner, repository and ref of {spec}"
        )
    if response.status_code != 200:
        raise SkillError(f"{url} answered HTTP {response.status_code}")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise SkillError(f"{url} answered with content encoding {encoding!r}; expected none")
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        raise SkillError(
            f"the archive is {int(length)} bytes, more than skills.max_archive_bytes ({cap})"
        )


def _copy(response: httpx.Response, out: BinaryIO, cap: int) -> None:
    total = 0
    for chunk in response.iter_raw():
        total += len(chunk)
        if total > cap:
            raise SkillError(f"the archive is larger than skills.max_archive_bytes ({cap} bytes)")
        out.write(chunk)
