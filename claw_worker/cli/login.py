"""``clawctl login``: point clawfleet at an LLM endpoint, checked before it is saved.

The check lists the endpoint's models (``GET {api_base}/models``); endpoints without that
route (404) get a one-token chat request instead. The config (``providers.proxy``) is
written only when the check passes, or with ``--no-check``. The key is never printed:
errors from the endpoint are shown with it masked.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import click
import httpx
from pydantic import ValidationError

from claw_worker.cli._common import CliError, current_path
from claw_worker.config.jsontext import is_text, shown
from claw_worker.config.schema import ProxyConfig
from claw_worker.config.store import (
    MASK,
    ConfigError,
    format_validation_error,
    load_config_data,
    resolve_api_key,
    save_config_data,
    set_path,
)

PROTOCOLS = ("chat_completions", "responses", "anthropic")
CHECK_TIMEOUT_SEC = 20.0


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str
    listed: tuple[str, ...] = ()  # model ids the endpoint listed, when it did


def split_models(values: tuple[str, ...]) -> list[str]:
    """``--model a --model b,c`` -> [a, b, c], without blanks or repeats."""
    names = (n.strip() for value in values for n in value.split(","))
    return list(dict.fromkeys(n for n in names if n))


def _headers(proxy: ProxyConfig, key: str) -> dict[str, str]:
    if proxy.protocol == "anthropic":
        return {"x-api-key": key, "anthropic-version": "2023-06-01"} if key else {}
    from claw_worker.providers.openai_compat import auth_headers

    return auth_headers(key, proxy.auth)


def check_endpoint(proxy: ProxyConfig, key: str) -> CheckResult:
    """Whether ``proxy`` answers with these credentials (see the module docstring)."""
    from claw_worker.providers.base import ProviderError, body_preview
    from claw_worker.providers.http import error_detail
    from claw_worker.providers.registry import build_proxy

    url = proxy.api_base.rstrip("/") + "/models"
    try:
        with httpx.Client(timeout=CHECK_TIMEOUT_SEC, headers=_headers(proxy, key)) as client:
            response = client.get(url)
    except httpx.HTTPError as exc:
        return CheckResult(False, f"cannot reach {url}: {exc!r}")
    if response.status_code == 200:
        try:
            data = response.json()
            listed = tuple(str(m["id"]) for m in data["data"] if isinstance(m, dict))
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: too deep
            preview = body_preview(response.text)
            return CheckResult(False, f"{url} answered 200 but not a model list: {preview}")
        return CheckResult(True, f"{url} listed {len(listed)} models", listed)
    if response.status_code != 404:
        detail = error_detail(response)
        return CheckResult(False, f"{url} returned HTTP {response.status_code}: {detail}")
    # No model list here (some gateways): one token of chat proves the key and model.
    provider = build_proxy(proxy.model_copy(update={"api_key": key}))
    assert provider is not None  # api_base is set
    try:
        provider.chat([{"role": "user", "content": "ping"}], None, proxy.models[0], 1, 0.0)
    except ProviderError as exc:
        return CheckResult(False, f"a test chat request failed: {exc}")
    finally:
        provider.close()
    return CheckResult(True, f"a test chat request to {proxy.models[0]} succeeded")


def _url_problem(base: str) -> str | None:
    if base.startswith(("http://", "https://")):
        return None
    return f"the API base must start with http:// or https:// (got {shown(base)})"


def _blank_problem(answer: str) -> str | None:
    return None if answer else "an answer is needed"


def _models_problem(answer: str) -> str | None:
    return None if split_models((answer,)) else "at least one model name is needed"


def _ask(
    value: str | None,
    label: str,
    option: str,
    problem: Callable[[str], str | None] = _blank_problem,
    *,
    hide: bool = False,
    default: str = "",
) -> str:
    """``value`` (from ``option``), or asked for on a terminal until ``problem`` has none.
    ``default`` (the saved value) is what Enter gives; a hidden one is never shown."""
    if value is not None:
        return value.strip()
    if not sys.stdin.isatty():
        raise CliError(f"{option} is required (stdin is not a terminal, so login cannot ask)")
    while True:
        try:
            answer = str(
                click.prompt(label, default=default or None, hide_input=hide, show_default=not hide)
            ).strip()
        except click.Abort:  # Ctrl-C or end of input at the prompt
            if not hide:  # click ends the line itself only after hidden input
                click.echo(err=True)
            raise CliError("login cancelled; nothing was saved") from None
        except UnicodeDecodeError:  # bytes from the terminal that are not UTF-8
            answer = "\udcff"  # stands for the bytes: not text, so refused just below
        message = problem(answer) if is_text(answer) else "that is not UTF-8 text"
        if not message:
            return answer
        click.echo(f"Error: {message}; try again (Ctrl-C to cancel).", err=True)


@click.command()
@click.option("--api-base", help="Endpoint base URL, e.g. https://llm.example.com/v1.")
@click.option("--api-key", help="API key (prompted for, hidden, when missing).")
@click.option("--model", "models", multiple=True, help="Model name; repeat or comma-separate.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), help="Wire protocol of the endpoint.")
@click.option("--no-check", is_flag=True, help="Save without checking the endpoint.")
def login(
    api_base: str | None,
    api_key: str | None,
    models: tuple[str, ...],
    protocol: str | None,
    no_check: bool,
) -> None:
    """Configure the LLM endpoint (providers.proxy), checking it first."""
    if api_base is not None and (problem := _url_problem(api_base.strip())):
        raise CliError(f"--api-base: {problem}")
    path = current_path()
    data = load_config_data(path)
    current = (data.get("providers") or {}).get("proxy") or {}
    # Asked on a terminal, Enter keeps what is saved: changing only the key is quick.
    saved_base = str(current.get("api_base") or "")
    base = _ask(
        api_base, "API base URL (e.g. https://llm.example.com/v1)", "--api-base", _url_problem,
        default=saved_base if not _url_problem(saved_base) else "",
    )  # fmt: skip
    # An empty key is allowed when $CLAW_API_KEY / $OPENAI_API_KEY supplies one.
    env_key = resolve_api_key("")
    saved_key = str(current.get("api_key") or "")
    key = api_key if api_key is not None else ("" if env_key else None)
    key_label = "API key (Enter keeps the saved one)" if saved_key else "API key"
    key = _ask(key, key_label, "--api-key", hide=True, default=saved_key)
    names = split_models(models)
    if models and not names:  # given, but only blanks: asking would hide the mistake
        raise CliError("--model: the model name is empty; give one, e.g. --model gpt-4o-mini")
    if not names:
        saved_models = ", ".join(str(m) for m in current.get("models") or [])
        answer = _ask(
            None, "Model name(s), comma-separated", "--model", _models_problem,
            default=saved_models,
        )  # fmt: skip
        names = split_models((answer,))
    if not names:
        raise CliError("at least one --model is needed")
    chosen = protocol or current.get("protocol") or "chat_completions"
    try:
        proxy = ProxyConfig.model_validate(
            {**current, "api_base": base, "api_key": key, "models": names, "protocol": chosen}
        )
    except ValidationError as exc:
        problems = format_validation_error(exc, "providers.proxy")
        raise CliError(f"invalid provider settings: {problems}") from None

    if not no_check:
        result = check_endpoint(proxy, key or env_key)
        secret = key or env_key
        message = result.message.replace(secret, MASK) if secret else result.message
        if not result.ok:
            raise CliError(f"endpoint check failed, nothing saved: {message}")
        click.echo(f"check ok: {message}")
        missing = [n for n in names if result.listed and n not in result.listed]
        if missing:
            click.echo(f"warning: not listed by the endpoint: {', '.join(missing)}", err=True)
    candidate = data
    for field, value in (("api_base", base), ("api_key", key), ("models", names)):
        candidate = set_path(candidate, f"providers.proxy.{field}", value)
    candidate = set_path(candidate, "providers.proxy.protocol", chosen)
    try:
        save_config_data(path, candidate)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    shown = MASK if key else ("(from the environment)" if env_key else "(none: the endpoint "
                              "must take requests without one)")  # fmt: skip
    click.echo(f"saved {path}: {base} ({chosen}), models {', '.join(names)}, key {shown}")
