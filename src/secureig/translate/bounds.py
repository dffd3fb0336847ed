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
    if isinstance(tools, list) and len(tools) > bounds.tools:
        raise TranslationError(
            f"too many tools: {len(tools)}, at most {bounds.tools} (SECUREIG_MAX_TOOLS)", "tools"
        )
    for field in ("messages", "input"):
        messages = body.get(field)
        if not isinstance(messages, list):
            continue
        if len(messages) > bounds.messages:
            raise TranslationError(
                f"too many {field}: {len(messages)}, at most {bounds.messages}"
                " (SECUREIG_MAX_MESSAGES)",
                field,
            )
        blocks = _blocks(body.get("system"))
        for message in messages:
            blocks += _blocks(message)
            if blocks > bounds.content_blocks:
                raise TranslationError(
                    f"too many content blocks in {field}: more than {bounds.content_blocks}"
                    " (SECUREIG_MAX_CONTENT_BLOCKS)",
                    field,
                )


def _blocks(container: Any, depth: int = 2) -> int:
    """The blocks a message (or a system prompt) holds, and those its blocks hold in turn."""
    if depth == 0:
        return 0
    if isinstance(container, list):
        return len(container) + sum(_blocks(block, depth - 1) for block in container)
    if not isinstance(container, dict):
        return 0
    count = 0
    for key in _BLOCK_LISTS:
        value = container.get(key)
        if isinstance(value, list):
            count += _blocks(value, depth)
    return count
