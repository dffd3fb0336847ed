"""Translations between client-facing API shapes and the native Ollama API."""

from secureig.translate._common import requested_model
from secureig.translate.anthropic import (
    MessagesPlan,
    MessagesStream,
    message_response,
    messages_request,
)
from secureig.translate.anthropic import error_body as anthropic_error
from secureig.translate.bounds import RequestBounds, check_bounds
from secureig.translate.openai import (
    SSE_DONE,
    ChatPlan,
    ChatStream,
    CompletionPlan,
    CompletionStream,
    EmbeddingsPlan,
    TranslationError,
    chat_request,
    chat_response,
    completion_request,
    completion_response,
    embeddings_request,
    embeddings_response,
    error_body,
    model_object,
    models_list,
    new_id,
    sse,
)
from secureig.translate.responses import (
    ResponsesPlan,
    ResponsesStream,
    response_object,
    responses_request,
)

__all__ = [
    "SSE_DONE",
    "ChatPlan",
    "ChatStream",
    "CompletionPlan",
    "CompletionStream",
    "EmbeddingsPlan",
    "MessagesPlan",
    "MessagesStream",
    "RequestBounds",
    "ResponsesPlan",
    "ResponsesStream",
    "TranslationError",
    "anthropic_error",
    "chat_request",
    "chat_response",
    "check_bounds",
    "completion_request",
    "completion_response",
    "embeddings_request",
    "embeddings_response",
    "error_body",
    "message_response",
    "messages_request",
    "model_object",
    "models_list",
    "new_id",
    "requested_model",
    "response_object",
    "responses_request",
    "sse",
]
