"""``nodes``: the user's remote devices (phones, laptops, boards running ``claw-node``).

``status`` lists the registered nodes (online or not, how they can be reached);
``describe`` gives one node's (or every node's) capability matrix; the other actions are
sent to a node (``claw_worker/nodes/dispatch.py``) and answered with the one envelope
(``ok``, ``code``, ``error``, ``payload``, ``meta``). An inline image in a node's answer
is saved under ``<workspace>/media/nodes/`` and the envelope points at it (``storage``
``path``): the model gets a path, not kilobytes of base64.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from typing import Any, Literal

from pydantic import Field, model_validator

from claw_worker.fsutil import write_atomic
from claw_worker.nodes.dispatch import Request, dispatch
from claw_worker.nodes.envelope import ACTIONS
from claw_worker.nodes.registry import get_node, list_nodes
from claw_worker.tools.base import Tool, ToolContext, ToolError, ToolParams

MAX_PARAMS_BYTES = 64 * 1024
MAX_IMAGE_BYTES = 20 * 1024 * 1024
IMAGE_TYPES = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif"}
# The shortcuts, and the actions they belong to.
SHORTCUTS = {
    "command": ("run", "invoke"),
    "facing": ("camera_snap",),
    "duration_ms": ("screen_record", "camera_snap"),
    "task": ("agent_task",),
}


class NodesParams(ToolParams):
    action: Literal[
        "status", "describe", "run", "invoke", "camera_snap", "screen_record", "location_get",
        "agent_task",
    ]  # fmt: skip
    node: str | None = Field(
        None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="The node's id (see action=status); every action but status needs it.",
    )  # fmt: skip
    mode: Literal["auto", "p2p", "relay"] = Field(
        "auto", description="auto: the node's URL first, the gateway's relay if unreachable."
    )
    command: str | None = Field(
        None, min_length=1, max_length=16_000,
        description="run: the shell command; invoke: the name of the node function to call.",
    )  # fmt: skip
    facing: Literal["front", "back"] | None = Field(None, description="camera_snap: the camera.")
    duration_ms: int | None = Field(
        None, ge=1, le=600_000, description="screen_record (or a camera clip): how long."
    )
    task: str | None = Field(
        None, min_length=1, max_length=20_000,
        description="agent_task: what the node's own model should do; its answer comes back.",
    )  # fmt: skip
    params: dict[str, Any] | None = Field(
        None, description="More arguments for the node (invoke: the function's arguments)."
    )
    timeout_sec: float | None = Field(
        None, gt=0, description="How long to wait for the node (capped by nodes.max_timeout_sec)."
    )

    @model_validator(mode="after")
    def _check(self) -> NodesParams:
        if self.action != "status" and self.action != "describe" and not self.node:
            raise ValueError(f"{self.action} needs node (the node's id; see action=status)")
        for name, actions in SHORTCUTS.items():
            if getattr(self, name) is not None and self.action not in actions:
                raise ValueError(f"{name} goes with action {' or '.join(actions)}")
            if getattr(self, name) is not None and name in (self.params or {}):
                raise ValueError(f"give {name} once: as a parameter or in params, not both")
        if self.action in ("run", "invoke") and self.command is None:
            raise ValueError(f"{self.action} needs command")
        if self.action == "agent_task" and self.task is None:
            raise ValueError("agent_task needs task")
        if self.params is not None:
            size = len(json.dumps(self.params, ensure_ascii=False).encode())
            if size > MAX_PARAMS_BYTES:
                raise ValueError(f"params is {size} bytes as JSON; at most {MAX_PARAMS_BYTES}")
        return self


class NodesTool(Tool[NodesParams]):
    name = "nodes"
    description = (
        "The user's remote devices (nodes). action=status lists them (online, capabilities, "
        "how reachable); describe shows which actions a node supports; run (command: a shell "
        "command), invoke (command: a function name, params: its arguments), camera_snap "
        "(facing), screen_record (duration_ms), location_get and agent_task (task: for the "
        "node's own model) are sent to a node. mode: auto (default), p2p or relay. Answers "
        "are JSON: ok, code (ok, unsupported_action, transport_error, timeout, ...), error, "
        "payload."
    )
    Params = NodesParams

    def execute(self, params: NodesParams, ctx: ToolContext) -> str:
        if ctx.redis is None:
            raise ToolError("nodes needs the fleet (no Redis connection in this run)")
        if params.action == "status":
            nodes = [n.public() for n in list_nodes(ctx.redis)]
            return _dump({"nodes": nodes} if nodes else {"nodes": [], "hint": _NO_NODES})
        if params.action == "describe":
            return self._describe(params, ctx)
        cfg = ctx.config.nodes
        timeout = min(params.timeout_sec or cfg.timeout_sec, cfg.max_timeout_sec)
        args = dict(params.params or {})
        for name in SHORTCUTS:
            if getattr(params, name) is not None:
                args[name] = getattr(params, name)
        assert params.node is not None
        request = Request(
            node=params.node, action=params.action, args=args, mode=params.mode,
            timeout=timeout, session=ctx.session_key, message_id=ctx.message_id,
        )  # fmt: skip
        answer = dispatch(ctx.redis, ctx.config, ctx.workspace, request,
                          should_stop=ctx.should_stop)  # fmt: skip
        _keep_image(answer, ctx, params.node)
        return _dump(answer)

    def _describe(self, params: NodesParams, ctx: ToolContext) -> str:
        assert ctx.redis is not None
        if params.node:
            node = get_node(ctx.redis, params.node)
            if node is None:
                raise ToolError(f"no node {params.node!r} is registered (action=status)")
            nodes = [node]
        else:
            nodes = list_nodes(ctx.redis)
        shown = [
            {**n.public(), "actions": {action: n.supports(action) for action in ACTIONS}}
            for n in nodes
        ]
        return _dump({"nodes": shown} if shown else {"nodes": [], "hint": _NO_NODES})


_NO_NODES = "no node is registered: run claw-node on a device (see clawctl nodes list)"


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False)


def _keep_image(answer: dict[str, Any], ctx: ToolContext, node: str) -> None:
    """An inline base64 image becomes a file in the workspace, and the payload its path."""
    payload = answer.get("payload")
    if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
        return
    ext = IMAGE_TYPES.get(str(payload.get("media_type")), "bin")
    encoded = payload.pop("image")
    try:
        if len(encoded) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise ValueError("too large")
        data = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        payload["storage"] = "none"
        payload.setdefault("meta", {})["image_error"] = "not kept: not base64, or too large"
        return
    folder = ctx.workspace / "media" / "nodes"
    name = f"{node}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.{ext}"
    path = folder / name.replace("/", "_")
    try:  # never through a link the agent made of media/ (it could lead out)
        write_atomic(path, data, ctx.workspace.resolve())
    except OSError as exc:
        payload["storage"] = "none"
        payload.setdefault("meta", {})["image_error"] = f"not kept: {exc}"
        return
    payload["storage"] = "path"
    payload["path"] = str(path.relative_to(ctx.workspace))
