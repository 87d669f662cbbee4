"""`dsonode mcp` end to end: the `mcp` package's own client (`stdio_client` + `ClientSession`)
launches `python -m dsonode mcp` as a subprocess and talks MCP over its stdio; the server
forwards to a real running node (`NodeProcess`: real encoder, LMDB, Unix socket).

The pure parts (bounds, error wording, the experience block) are tested directly first.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from dsonode.api import jsonrpc
from dsonode.mcp import render
from dsonode.mcp.render import ArgumentError
from dsonode.testnet.process import NodeProcess

REPO = Path(__file__).resolve().parent.parent
#: Bound on one whole MCP session (server start-up ~2 s, each call well under a second).
SESSION_TIMEOUT = 90.0
CALL_TIMEOUT = 60.0

TOOLS = {
    "search_experiences",
    "add_experience",
    "get_experience",
    "submit_rollouts",
    "give_feedback",
    "experience_block",
}

LESSONS = [
    ("math", "When proving a statement for all natural numbers, check the base case first."),
    ("code", "Write a failing unit test before fixing a bug in the parser."),
    ("cooking", "Rest the steak for five minutes after searing so the juices settle."),
]


# ---- the pure parts ---------------------------------------------------------------------------


def test_experience_block_is_training_free_grpo_format():
    block = render.render_experience_block(["Check the base case.", "Factor  first.\n"])
    assert block == (
        "When solving problems, you MUST first carefully read and understand the helpful "
        "instructions and experiences:\n[G0]. Check the base case.\n[G1]. Factor first."
    )
    assert render.render_experience_block([]).endswith("experiences:\nNone")
    prompt = render.render_problem_prompt("Solve x^2 = 4.", ["Check both signs."])
    assert prompt.startswith("Please solve the problem:\nSolve x^2 = 4.\n\nWhen solving problems")
    assert prompt.endswith("\n[G0]. Check both signs.")


def test_argument_checks():
    assert render.check_id("AB" * 32) == "ab" * 32
    for bad in ("ab" * 31, "zz" * 32, "ab" * 32 + "\n", ""):
        with pytest.raises(ArgumentError, match="64 hexadecimal"):
            render.check_id(bad)
    with pytest.raises(ArgumentError, match="'query' is 4098 bytes"):
        render.check_utf8("query", "é" * 2049, render.MAX_QUERY_BYTES)
    with pytest.raises(ArgumentError, match="must not be empty"):
        render.check_utf8("text", "   ", 10)
    assert render.head_bytes("aé" * 3, 4) == "aéa"  # never cuts a character in half
    assert render.feedback_choice(True, None) == {"helpful": True}
    assert render.feedback_choice(None, -0.5) == {"reward_delta": -0.5}
    for helpful, delta in ((None, None), (True, 0.5), (None, 1.5), (None, math.nan)):
        with pytest.raises(ArgumentError):
            render.feedback_choice(helpful, delta)


def test_rpc_errors_are_worded_for_the_agent():
    msg = render.describe_rpc_error("give_feedback", jsonrpc.METHOD_NOT_FOUND, "method not found")
    assert "does not support 'give_feedback'" in msg and "upgrade the node" in msg
    msg = render.describe_rpc_error("search", jsonrpc.INVALID_PARAMS, "invalid params: 'k' ...")
    assert msg == "the node rejected the arguments: invalid params: 'k' ..."


def test_experience_view_spells_out_consensus_and_feedback():
    item = {"id": "ab" * 32, "text": "t", "domain": "math", "confirmed": True, "submissions": 3}
    view = render.experience_view(item)
    assert view["consensus"] == "confirmed" and view["feedback"] is None
    item |= {"confirmed": False, "feedback": {"votes": 2, "median": 0.5}, "score": 0.8}
    view = render.experience_view(item)
    assert view["consensus"] == "unconfirmed" and view["feedback"]["votes"] == 2
    text = render.format_experience(view)
    assert "score 0.800" in text and "feedback +0.50 from 2 vote(s)" in text


# ---- a real MCP session over stdio ------------------------------------------------------------


@contextlib.asynccontextmanager
async def mcp_session(tmp_path: Path, *args: str) -> AsyncIterator[Any]:
    """Launch `python -m dsonode mcp ARGS` with the mcp package's stdio client; initialized."""
    from mcp import ClientSession, StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "dsonode", "mcp", *args],
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        cwd=str(REPO),
    )
    with open(tmp_path / "mcp-stderr.log", "a") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, read_timeout_seconds=CALL_TIMEOUT) as session,
        ):
            await session.initialize()
            yield session


def run_session(tmp_path: Path, args: list[str], body: Callable[[Any], Awaitable[None]]) -> None:
    async def main() -> None:
        with anyio.fail_after(SESSION_TIMEOUT):
            async with mcp_session(tmp_path, *args) as session:
                await body(session)

    anyio.run(main)


def text_of(result: Any) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", None) == "text")


async def call_ok(session: Any, name: str, arguments: dict[str, Any]) -> Any:
    result = await session.call_tool(name, arguments)
    assert not result.is_error, f"{name} failed: {text_of(result)}"
    return result


async def call_error(session: Any, name: str, arguments: dict[str, Any]) -> str:
    result = await session.call_tool(name, arguments)
    assert result.is_error, f"{name}({arguments}) should have failed: {text_of(result)}"
    return text_of(result)


def test_without_a_node_every_call_is_a_clear_tool_error(tmp_path):
    """No node on the socket: tools report it, and the server keeps serving."""

    async def body(session):
        listed = await session.list_tools()
        assert {t.name for t in listed.tools} == TOOLS
        message = await call_error(session, "search_experiences", {"query": "anything"})
        assert "not reachable" in message and "no node is running" in message
        message = await call_error(session, "get_experience", {"id": "00" * 32})
        assert "not reachable" in message
        assert (await session.send_ping()) is not None  # still alive after the errors

    run_session(tmp_path, ["--data-dir", str(tmp_path / "empty")], body)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    proc = NodeProcess(tmp_path_factory.mktemp("mcp-node"))
    try:
        proc.start()
        with proc.client() as c:
            proc.seeded = [c.add_experience(text, domain) for domain, text in LESSONS]
        yield proc
    finally:
        proc.stop()


def node_args(node: NodeProcess) -> list[str]:
    return ["--data-dir", str(node.data_dir)]


@pytest.mark.slow
def test_tools_list_describes_every_tool_with_an_input_schema(node, tmp_path):
    async def body(session):
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert set(tools) == TOOLS
        for tool in tools.values():
            assert tool.description and len(tool.description) > 40
            assert tool.input_schema["type"] == "object"
        search = tools["search_experiences"].input_schema
        assert search["required"] == ["query"]
        assert search["properties"]["k"]["minimum"] == 1
        assert search["properties"]["k"]["maximum"] == 50
        assert tools["get_experience"].input_schema["properties"]["id"]["pattern"]
        assert set(tools["give_feedback"].input_schema["properties"]) == {
            "id",
            "helpful",
            "reward_delta",
        }
        assert "rollouts" in tools["submit_rollouts"].input_schema["required"]

    run_session(tmp_path, node_args(node), body)


@pytest.mark.slow
def test_add_search_get_end_to_end(node, tmp_path):
    text = "Taste the sauce before adding more salt."

    async def body(session):
        added = await call_ok(
            session,
            "add_experience",
            {"text": text, "domain": "cooking", "tags": ["salt", "sauce"]},
        )
        exp = added.structured_content
        assert exp["new"] is True and exp["text"] == text and exp["tags"] == ["salt", "sauce"]
        assert len(exp["id"]) == 64 and exp["id"] in text_of(added)

        again = await call_ok(session, "add_experience", {"text": text, "domain": "cooking"})
        assert again.structured_content["id"] == exp["id"]
        assert again.structured_content["new"] is False

        found = await call_ok(
            session, "search_experiences", {"query": "too much salt in the sauce", "k": 3}
        )
        results = found.structured_content["results"]
        assert 1 <= len(results) <= 3
        top = results[0]
        assert top["id"] == exp["id"] and top["text"] == text
        assert top["domain"] == "cooking" and isinstance(top["score"], float)
        assert top["consensus"] in ("confirmed", "unconfirmed")
        assert top["submissions"] >= 1 and "feedback" in top
        assert text in text_of(found) and exp["id"] in text_of(found)

        only_math = await call_ok(
            session, "search_experiences", {"query": "salt", "k": 5, "domain": "math"}
        )
        assert {r["domain"] for r in only_math.structured_content["results"]} <= {"math"}

        got = await call_ok(session, "get_experience", {"id": exp["id"].upper()})
        assert got.structured_content["id"] == exp["id"]
        assert got.structured_content["text"] == text and text in text_of(got)

        missing = await call_error(session, "get_experience", {"id": "00" * 32})
        assert "not found" in missing

    run_session(tmp_path, node_args(node), body)


@pytest.mark.slow
def test_experience_block_tool_and_prompt(node, tmp_path):
    induction = LESSONS[0][1]

    async def body(session):
        result = await call_ok(
            session,
            "experience_block",
            {"task": "Prove that 1 + 2 + ... + n = n(n+1)/2 by induction.", "k": 2},
        )
        block = text_of(result)
        lines = block.splitlines()
        assert lines[0] == render.EXPERIENCE_BLOCK_HEADER
        assert lines[1] == f"[G0]. {induction}"
        assert lines[2].startswith("[G1]. ") and len(lines) == 3
        data = result.structured_content
        assert data["block"] == block and data["count"] == 2
        assert [e["label"] for e in data["experiences"]] == ["G0", "G1"]

        prompts = (await session.list_prompts()).prompts
        (prompt,) = [p for p in prompts if p.name == "experience_block"]
        assert {a.name: a.required for a in prompt.arguments} == {
            "task": True,
            "k": False,
            "domain": False,
        }
        task = "Show by induction that 2^n > n for every natural number n."
        got = await session.get_prompt("experience_block", {"task": task, "k": "1"})
        (message,) = got.messages
        assert message.role == "user"
        assert message.content.text == (
            f"Please solve the problem:\n{task}\n\n{render.EXPERIENCE_BLOCK_HEADER}\n"
            f"[G0]. {induction}"
        )
        from mcp import MCPError

        with pytest.raises(MCPError, match=r"'k' must be in 1\.\.50"):
            await session.get_prompt("experience_block", {"task": task, "k": "99"})
        # the domain filter: the one "code" experience, and nothing else, whatever k allows
        got = await session.get_prompt("experience_block", {"task": task, "domain": "code"})
        assert got.messages[0].content.text.endswith(f"experiences:\n[G0]. {LESSONS[1][1]}")

    run_session(tmp_path, node_args(node), body)


@pytest.mark.slow
def test_bad_arguments_are_tool_errors_and_the_session_goes_on(node, tmp_path):
    async def body(session):
        bad_calls = [
            ("search_experiences", {"query": "x", "k": 0}, "k"),
            ("search_experiences", {"query": "x", "k": 51}, "k"),
            ("search_experiences", {"query": "é" * 2049}, "'query' is 4098 bytes"),
            ("search_experiences", {"query": "x", "domain": "Not A Domain"}, "domain"),
            ("search_experiences", {}, "query"),
            ("get_experience", {"id": "abc"}, "id"),
            ("add_experience", {"text": "x" * 1025, "domain": "math"}, "text"),
            ("add_experience", {"text": "é" * 600, "domain": "math"}, "1024"),
            ("give_feedback", {"id": "ab" * 32}, "exactly one"),
            ("give_feedback", {"id": "ab" * 32, "helpful": True, "reward_delta": 1}, "exactly"),
            ("give_feedback", {"id": "ab" * 32, "reward_delta": 2}, "reward_delta"),
            ("submit_rollouts", {"rollouts": []}, "rollouts"),
            ("experience_block", {"task": "t", "k": 100}, "k"),
            ("no_such_tool", {}, "no_such_tool"),
        ]
        for name, arguments, expected in bad_calls:
            message = await call_error(session, name, arguments)
            assert expected in message, (name, arguments, message)
        # the node's own validation comes back as a tool error too (tags bounded by the wire)
        message = await call_error(
            session, "add_experience", {"text": "fine text", "domain": "math", "tags": ["\x01"]}
        )
        assert "rejected the arguments" in message and "tags" in message
        # and the same session still works
        ok = await call_ok(session, "search_experiences", {"query": "unit tests", "k": 1})
        assert ok.structured_content["results"][0]["text"] == LESSONS[1][1]

    run_session(tmp_path, node_args(node), body)


def _group_of_rollouts() -> list[dict[str, Any]]:
    """One task's rollouts from the sample data whose rewards differ (so it carries signal)."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    with open(REPO / "examples" / "rollouts" / "math.jsonl") as f:
        for line in f:
            r = json.loads(line)
            by_task.setdefault(r["task_id"], []).append(r)
    for group in by_task.values():
        if len({r["reward"] for r in group}) > 1 and len(group) <= 8:
            return group
    raise AssertionError("no group with differing rewards in examples/rollouts/math.jsonl")


@pytest.mark.slow
def test_submit_rollouts_and_give_feedback(node, tmp_path):
    """End to end where the node has the methods (engineers D and E); where the tree does not
    have them yet, the node answers "method not found" and the tool says so clearly."""
    has_rollouts = "submit_rollouts" in jsonrpc.METHODS
    has_feedback = "give_feedback" in jsonrpc.METHODS
    exp_id = node.seeded[0]["id"]

    async def body(session):
        args = {"rollouts": _group_of_rollouts(), "dry_run": False}
        if has_rollouts:
            result = await call_ok(session, "submit_rollouts", args)
            data = result.structured_content
            assert data["groups"] == 1 and data["bad_rollouts"] == []
            assert len(data["added"]) + data["merged"] + data["existing"] >= 1
            assert "groups: 1" in text_of(result)
        else:
            message = await call_error(session, "submit_rollouts", args)
            assert "does not support 'submit_rollouts'" in message
            assert "method not found" in message

        if has_feedback:
            result = await call_ok(session, "give_feedback", {"id": exp_id, "helpful": True})
            assert result.structured_content["feedback"]["votes"] >= 1
            result = await call_ok(session, "give_feedback", {"id": exp_id, "reward_delta": 0.5})
            assert result.structured_content["id"] == exp_id
            found = await call_ok(session, "search_experiences", {"query": LESSONS[0][1], "k": 1})
            top = found.structured_content["results"][0]
            assert top["id"] == exp_id and top["feedback"]["votes"] >= 1
        else:
            message = await call_error(session, "give_feedback", {"id": exp_id, "helpful": True})
            assert "does not support 'give_feedback'" in message

    run_session(tmp_path, node_args(node), body)


@pytest.mark.slow
def test_method_not_found_from_a_real_node_is_a_clear_tool_error(node):
    """A node older than a tool answers "method not found": the bridge says what that means."""
    from mcp.server.mcpserver.exceptions import ToolError

    from dsonode.mcp.server import NodeBridge

    bridge = NodeBridge(node.socket_path, timeout=30)
    with pytest.raises(ToolError, match=r"does not support 'no_such_method'.*upgrade the node"):
        bridge.call_sync("no_such_method", {})
    assert bridge.call_sync("health")["status"] == "ok"


def test_registering_the_command_does_not_import_mcp():
    code = (
        "import sys\n"
        "from dsonode.cli import build_parser\n"
        "p = build_parser()\n"
        "assert 'mcp' in p._subparsers._group_actions[0].choices\n"
        "print('mcp' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
