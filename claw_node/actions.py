"""What ``claw-node`` can do, each action answering with the envelope
(``claw_worker/nodes/envelope.py``).

- ``run``: a shell command (``shell.py``); ``payload.text`` is its output, ``meta.exit_code``
  its status (a non-zero status is still ``ok``: the command ran).
- ``invoke``: a function of :data:`FUNCTIONS` by name (``args.command``): ``echo`` (its
  arguments back), ``time`` (the node's clock), ``info`` (id, platform, capabilities).
- ``location_get``: the fixed ``--location`` / ``$CLAW_NODE_LOCATION``.
- ``agent_task``: ``args.task`` for the model at ``--model-base`` (OpenAI chat
  completions); its answer in ``payload.text``.
- Anything else, or an action the node cannot do (no camera here; no location set), is
  ``unsupported_action``: advertising a capability does not make the device have it.
"""

from __future__ import annotations

import platform
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx

from claw_node.settings import Settings
from claw_node.shell import denied_by, run_command
from claw_worker.nodes.envelope import (
    BAD_REQUEST,
    DENIED,
    NODE_ERROR,
    OK,
    TIMEOUT,
    UNSUPPORTED,
    envelope,
    json_payload,
    text_payload,
)

MAX_TASK_CHARS = 20_000


class Actions:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.handlers: dict[str, Callable[[dict[str, Any], float], dict[str, Any]]] = {}
        if settings.run:
            self.handlers["run"] = self.run
        self.handlers["invoke"] = self.invoke
        if settings.location is not None:
            self.handlers["location_get"] = self.location_get
        if settings.model_base:
            self.handlers["agent_task"] = self.agent_task

    def handle(self, action: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        handler = self.handlers.get(action)
        if handler is None:
            can = ", ".join(sorted(self.handlers))
            return envelope(UNSUPPORTED, error=f"node {self.settings.node_id} cannot do "
                            f"{action} (it can: {can})")  # fmt: skip
        return handler(args, timeout)

    def run(self, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        command = args.get("command")
        if not isinstance(command, str) or not command.strip() or "\0" in command:
            return envelope(BAD_REQUEST, error="run needs command: a shell command")
        pattern = denied_by(command, self.settings.deny_patterns)
        if pattern is not None:
            return envelope(
                DENIED, error=f"command refused: it matches the deny pattern {pattern!r}"
            )
        limit = min(self.settings.run_timeout_sec, timeout)
        try:
            result = run_command(command, cwd=self.settings.workdir, timeout=limit,
                                 max_chars=self.settings.max_output_chars)  # fmt: skip
        except OSError as exc:
            return envelope(NODE_ERROR, error=f"could not start the command: {exc.strerror or exc}")
        payload = text_payload(result.output, exit_code=result.exit_code,
                               truncated=result.truncated)  # fmt: skip
        if result.timed_out:
            return envelope(TIMEOUT, error=f"command timed out after {limit:g}s and was killed",
                            payload=payload)  # fmt: skip
        return envelope(OK, payload=payload)

    def invoke(self, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        name = args.get("command")
        function = FUNCTIONS.get(name) if isinstance(name, str) else None
        if function is None:
            return envelope(UNSUPPORTED, error=f"no function {str(name)[:64]!r} on this node "
                            f"(it has: {', '.join(sorted(FUNCTIONS))})")  # fmt: skip
        rest = {key: value for key, value in args.items() if key != "command"}
        return envelope(OK, payload=json_payload(function(self.settings, rest), function=name))

    def location_get(self, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.settings.location is not None
        lat, lon, *accuracy = self.settings.location
        data: dict[str, Any] = {"lat": lat, "lon": lon}
        if accuracy:
            data["accuracy_m"] = accuracy[0]
        return envelope(OK, payload=json_payload(data, source="configured"))

    def agent_task(self, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        task = args.get("task")
        if not isinstance(task, str) or not task.strip() or len(task) > MAX_TASK_CHARS:
            return envelope(BAD_REQUEST, error=f"agent_task needs task: 1 to {MAX_TASK_CHARS} "
                            "characters")  # fmt: skip
        s = self.settings
        headers = {"Authorization": f"Bearer {s.model_key}"} if s.model_key else {}
        body = {
            "model": s.model,
            "messages": [
                {"role": "system", "content": f"You are the assistant on the device "
                 f"{s.name}. Do the task you are given and answer with the result."},
                {"role": "user", "content": task},
            ],
        }  # fmt: skip
        try:
            response = httpx.post(f"{s.model_base}/chat/completions", json=body, headers=headers,
                                  timeout=timeout, trust_env=False)  # fmt: skip
        except httpx.TimeoutException:
            return envelope(TIMEOUT, error=f"the node's model did not answer within {timeout:g}s")
        except httpx.HTTPError as exc:
            return envelope(NODE_ERROR, error=f"the node's model is unreachable: {exc}")
        try:
            response.raise_for_status()
            answer = response.json()["choices"][0]["message"]["content"]
            if not isinstance(answer, str):
                raise TypeError("content is not text")
        except (httpx.HTTPStatusError, ValueError, KeyError, IndexError, TypeError) as exc:
            return envelope(NODE_ERROR, error=f"the node's model failed: {str(exc)[:300]}")
        return envelope(OK, payload=text_payload(answer, model=s.model))


def _echo(settings: Settings, args: dict[str, Any]) -> Any:
    return args


def _time(settings: Settings, args: dict[str, Any]) -> Any:
    now = time.time()
    return {"epoch": round(now, 3), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "timezone": time.strftime("%z")}  # fmt: skip


def _info(settings: Settings, args: dict[str, Any]) -> Any:
    return {
        "id": settings.node_id,
        "name": settings.name,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "capabilities": list(settings.capabilities),
    }


# invoke's functions, by name: each takes the settings and the call's arguments.
FUNCTIONS: dict[str, Callable[[Settings, dict[str, Any]], Any]] = {
    "echo": _echo,
    "time": _time,
    "info": _info,
}
