"""The campaign over HTTP: schemathesis fuzzes a real ingress from its own /openapi.json.

Every operation gets generated valid requests (positive) and invalid ones (negative: wrong
types, missing fields, values out of range) over real HTTP, with the token. Each answer must
be no 5xx (but the documented 504 of a wait shorter than the reply), a status the
document declares, the declared content type and body schema, and
an invalid request must be refused (4xx). A worker and the scripted LLM answer, so a
request that waits for a reply gets one. The figures go to the campaign, per route group.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.campaign import record

TOKEN = "gw-token-schemathesis-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES_PER_MODE = 30
# A waiting request's timeout, capped: each reply takes about a second, but the generated
# requests share sessions (most use the default one), so a wait may queue behind ~30 others.
WAIT_CAP_SEC = 60.0
# Any 4xx refuses bad input: schemathesis' default list lacks 413 (a body over
# gateway.max_body_bytes), which is the right answer to an oversized field.
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": ["4XX"]}}}
)
# The server errors are checked by the test (waited_too_little), not not_a_server_error.
CHECKS = [status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]  # fmt: skip


def group_of(path: str) -> str:
    for prefix in ("/api", "/v1", "/nodes", "/webhooks"):
        if path.startswith(prefix + "/"):
            return prefix
    return "/health, /metrics, /openapi.json"


def cap_the_wait(case: Any) -> None:
    """A generated ``timeout`` up to an hour would hold the test that long if the reply were
    lost; the cap keeps a lost reply a quick 504 (a failure here) instead."""
    body = case.body
    if case.operation.path == "/api/message" and isinstance(body, dict):
        timeout = body.get("timeout")
        valid = isinstance(timeout, int | float) and not isinstance(timeout, bool)
        if valid and WAIT_CAP_SEC < timeout <= 3600:  # above: invalid, refused at once
            body["timeout"] = WAIT_CAP_SEC


def waited_too_little(response: Any) -> bool:
    """The documented 504 of a wait shorter than the reply (a generated ``timeout`` of
    5e-324 s): the message is queued and answered later, nothing failed."""
    if response.status_code != 504:
        return False
    body = response.json()
    error = body.get("error")
    return body.get("status") == "timeout" or (isinstance(error, dict)
                                               and error.get("code") == "timeout")  # fmt: skip


def test_every_route_survives_schemathesis(fleet_factory):
    # Rate limits off: ~500 requests a minute from one address would be answered 429 and
    # fuzz nothing (tests/test_ingress_hardening.py and the rate limit tests cover them).
    fleet = fleet_factory(gateway__token=TOKEN,
                          gateway__rate_limit={"per_ip_per_min": 0, "per_sender_per_min": 0})  # fmt: skip
    fleet.start_worker()
    fleet.start_ingress()
    assert httpx.get(f"{fleet.base_url}/openapi.json").status_code == 401  # behind the token
    schema = schemathesis.openapi.from_url(f"{fleet.base_url}/openapi.json", headers=AUTH,
                                           config=CONFIG)  # fmt: skip
    operations = [result.ok() for result in schema.get_all_operations()]
    # Every route of app.py but the document itself (schemathesis leaves out its own URL).
    assert {op.path for op in operations} >= {
        "/health", "/metrics", "/api/message", "/api/messages/{message_id}",
        "/api/sessions/{session}/stop", "/v1/chat/completions", "/v1/models",
        "/nodes/register", "/nodes/heartbeat", "/webhooks/{channel}",
    }  # fmt: skip

    tally: dict[str, Counter[str]] = {}
    problems: list[str] = []
    for operation in operations:
        counts = tally.setdefault(group_of(operation.path), Counter())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not (
                operation.body or operation.path_parameters
            ):
                continue  # nothing to make invalid but the token, which the test always sends
            fuzz(operation, mode, fleet.base_url, counts, problems)

    for group, counts in sorted(tally.items()):
        record(f"http: schemathesis {group}", tried=counts["tried"], rejected=counts["rejected"],
               escapes=counts["escapes"], server_errors=counts["server_errors"])  # fmt: skip
    assert not problems, "\n\n".join(problems[:8]) + "\n" + fleet.output("w1")[-6000:]
    assert "Traceback" not in fleet.output("ingress")


def fuzz(operation: Any, mode: GenerationMode, base_url: str, counts: Counter[str],
         problems: list[str]) -> None:  # fmt: skip
    """``EXAMPLES_PER_MODE`` generated requests to ``operation``, counted in ``counts``; each
    check that fails is a line in ``problems`` (with the curl command to replay it)."""
    headers = {**AUTH, "X-Claw-Timeout": str(WAIT_CAP_SEC)}  # /v1/chat/completions' wait

    @settings(max_examples=EXAMPLES_PER_MODE, deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case: Any) -> None:
        cap_the_wait(case)
        response = case.call(base_url=base_url, headers=headers, timeout=60)
        counts["tried"] += 1
        counts["rejected"] += 400 <= response.status_code < 500
        server_error = response.status_code >= 500 and not waited_too_little(response)
        counts["server_errors"] += server_error
        if server_error:
            problems.append(f"{operation.label} [{mode.value}] {response.status_code}: "
                            f"{response.text[:500]}")  # fmt: skip
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (AssertionError, BaseExceptionGroup) as exc:
            counts["escapes"] += 1  # accepted bad input, or broke the schema
            problems.append(f"{operation.label} [{mode.value}] {response.status_code}: "
                            f"{str(exc)[:1500]}")  # fmt: skip

    one()
