"""The ``tools`` and ``skills`` sections: what the agent's tools may do (the workspace, exec's
sandbox and limits, web search and fetch, skill installs; docs/security.md)."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from claw_worker.config.fields import Section, check_url, secret


class ExecToolConfig(Section):
    enabled: bool = True
    timeout_sec: int = Field(60, ge=1, le=3600)
    max_output_chars: int = Field(16000, ge=100)
    # Where exec and skill_exec run (claw_worker/tools/sandbox.py). "bwrap": under
    # bubblewrap (own PID namespace, no network, the system read-only, CLAW_HOME hidden,
    # only the workspace writable); refused with a clear error if bwrap is missing.
    # "auto": bwrap when it is installed and works, else "none" with one warning per
    # process. "none": straight on the host (resource limits and the deny list still apply).
    sandbox: Literal["auto", "bwrap", "none"] = "auto"
    # Under bwrap, a command has no network (no Redis, no metadata service) unless this is on.
    allow_network: bool = False
    # Resource limits set in every command's processes (claw_worker/tools/exec_limits.py),
    # sandbox or not: CPU seconds per process, memory per process (RLIMIT_DATA), processes at
    # once (RLIMIT_NPROC per uid; as root, a pids cgroup per call where the kernel offers
    # one), and the largest file one may write.
    cpu_sec: int = Field(60, ge=1, le=86400)
    memory_mb: int = Field(1024, ge=128, le=1024 * 1024)  # the reaper (Python) needs ~64
    max_processes: int = Field(256, ge=8, le=65536)
    max_file_mb: int = Field(256, ge=1, le=1024 * 1024)
    # Under bwrap, /tmp, /run and the hidden directories are tmpfs, which live in memory:
    # each is capped at this, so what a command writes there cannot eat the host's RAM.
    tmpfs_mb: int = Field(256, ge=1, le=64 * 1024)
    # The host's disk: a command is not started while the filesystem holding the workspace
    # has less free than this, and is stopped if it falls below while the command runs (a
    # fast writer can outrun the check by about half a second: a guard for the host, not a
    # quota). 0: off.
    min_free_disk_mb: int = Field(512, ge=0, le=1024 * 1024)
    deny_patterns: list[str] = [
        r"\brm\s+-[a-z]*r[a-z]*f?\s+/(\s|$)", r"\bmkfs\b", r"\bdd\s+if=", r":\(\)\s*\{",
        r"\bshutdown\b", r"\breboot\b", r"\bpoweroff\b",
    ]  # fmt: skip

    @field_validator("deny_patterns")
    @classmethod
    def _check_patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression ({exc})") from None
            if re.search(pattern, ""):  # "", "x*", "^": found in every command
                raise ValueError(f"{pattern!r} matches the empty text, so every command")
        return patterns


class WebSearchConfig(Section):
    # "" picks Brave when brave_api_key is set, else SearXNG when searxng_url is set.
    provider: Literal["", "brave", "searxng"] = ""
    brave_api_key: str = secret()
    brave_api_base: str = "https://api.search.brave.com"
    searxng_url: str = ""  # e.g. http://127.0.0.1:8888 (the instance must allow format=json)
    max_results: int = Field(5, ge=1, le=20)
    timeout_sec: float = Field(15.0, gt=0, le=600)

    @field_validator("brave_api_base", "searxng_url")
    @classmethod
    def _check_urls(cls, value: str) -> str:
        return check_url(value)


class WebFetchConfig(Section):
    max_chars: int = Field(50000, ge=100)
    max_bytes: int = Field(2 * 1024 * 1024, ge=1024)  # downloaded before conversion
    timeout_sec: float = Field(20.0, gt=0, le=600)
    # Loopback, private and link-local addresses are refused (see tools/url_guard.py),
    # except these hosts: names, addresses or networks ("wiki.lan", "10.0.0.0/8").
    block_private_addresses: bool = True
    allowed_hosts: list[str] = []

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not host.strip() or any(c.isspace() for c in host.strip()):
                raise ValueError(f"{host!r} is not a host name, address or network")
            if "/" in host:
                try:
                    ipaddress.ip_network(host.strip(), strict=False)
                except ValueError as exc:
                    raise ValueError(f"{host!r} is not a network like 10.0.0.0/8 ({exc})") from None
        return hosts


class ToolsConfig(Section):
    restrict_to_workspace: bool = True
    max_output_chars: int = Field(16000, ge=100)
    # Wall-clock limit of one find_files/grep_files/list_files walk; the result then says
    # it is partial.
    search_timeout_sec: float = Field(10.0, gt=0, le=600)
    exec: ExecToolConfig = ExecToolConfig()
    web_search: WebSearchConfig = WebSearchConfig()
    web_fetch: WebFetchConfig = WebFetchConfig()


class SkillsConfig(Section):
    """``clawctl skills install owner/repo/path[@ref]`` (claw_worker/skills/): where GitHub
    archives come from and how much of one is accepted."""

    # GitHub's archive host; a mirror (or a test server) speaking the same URL shape:
    # <archive_base>/<owner>/<repo>/tar.gz/<ref>.
    archive_base: str = "https://codeload.github.com"
    timeout_sec: float = Field(60.0, gt=0, le=3600)
    max_archive_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # downloaded (gzip-compressed)
    max_archive_entries: int = Field(50_000, ge=10)  # entries read in the whole archive
    max_unpacked_bytes: int = Field(1024 * 1024 * 1024, ge=1024)  # decompressed, whole archive
    max_skill_bytes: int = Field(16 * 1024 * 1024, ge=1024)  # the files of the skill itself
    # SSRF (tools/url_guard.py): every hop of a download, redirects included, must resolve
    # to public addresses, except archive_base's own host (chosen by whoever wrote the
    # config) and these: names, addresses or networks ("mirror.lan", "10.0.0.0/8").
    block_private_addresses: bool = True
    allowed_hosts: list[str] = []

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, hosts: list[str]) -> list[str]:
        return WebFetchConfig._check_hosts(hosts)

    @field_validator("archive_base")
    @classmethod
    def _check_base(cls, base: str) -> str:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{base!r} is not an http(s) URL like https://codeload.github.com")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"{base!r} must have no query, fragment or credentials")
        return base.rstrip("/")
