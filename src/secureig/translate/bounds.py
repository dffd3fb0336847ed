"""How much a request body may ask of the gateway's translations: its messages (or Responses
input items), their content blocks, and its tools, counted in one walk before any translation
runs. Every translation is linear in its input; the bounds keep that input itself in proportion
to what a conversation needs (settings `max_messages`, `max_content_blocks`, `max_tools`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from secureig.translate._common import TranslationError

# Where a message or an item keeps lists of blocks, and where a block keeps its own (a
# tool_result's content, a function_call_output's output).
_BLOCK_LISTS = ("content", "summary", "output")


@dataclass(frozen=True, slots=True)
class RequestBounds:
    messages: int
    content_blocks: int
    tools: int


def check_bounds(body: object, bounds: RequestBounds) -> None:
    """Raise TranslationError (a 400 in the surface's shape) when the body carries more than the
    bounds allow; anything it does not recognise is left to the translation to judge."""
    if not isinstance(body, dict):
        return
    tools = body.get("tools")
    if type(tools) is list and len(tools) > bounds.tools:
        raise TranslationError(
            f"too many tools: {len(tools)}, at most {bounds.tools} (SECUREIG_MAX_TOOLS)", "tools"
        )
    field = "messages"
    messages = body.get(field)
    if type(messages) is not list:
        field = "input"
        messages = body.get(field)
        if type(messages) is not list:
            return
    if len(messages) > bounds.messages:
        raise TranslationError(
            f"too many {field}: {len(messages)}, at most {bounds.messages} (SECUREIG_MAX_MESSAGES)",
            field,
        )
    system = body.get("system")
    blocks = _blocks(system, 2) if type(system) is list else 0
    for message in messages:
        if type(message) is dict:
            content = message.get("content")
            # Most messages hold a string; only lists of blocks count, and what they hold.
            if type(content) is list:
                blocks += _blocks(content, 2)
            if field == "input":
                blocks += _blocks(message.get("summary"), 2) + _blocks(message.get("output"), 2)
            if blocks > bounds.content_blocks:
                raise TranslationError(
                    f"too many content blocks in {field}: more than {bounds.content_blocks}"
                    " (SECUREIG_MAX_CONTENT_BLOCKS)",
                    field,
                )


def _blocks(container: Any, depth: int) -> int:
    """The blocks a list holds, and (to `depth`) the blocks they hold in turn under the keys
    blocks keep them in (a tool_result's content, a function_call_output's output)."""
    if depth == 0 or type(container) is not list:
        return 0
    count = len(container)
    if depth > 1:
        for block in container:
            if type(block) is dict:
                for key in _BLOCK_LISTS:
                    nested = block.get(key)
                    if type(nested) is list:
                        count += len(nested)
    return count
