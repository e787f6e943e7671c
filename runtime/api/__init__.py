"""The runtime's HTTP surface, in match order: Ollama's ``/api`` and the OpenAI-compatible ``/v1``."""

from __future__ import annotations

from starlette.routing import Route

from runtime.api import create, ollama, openai

routes = [
    Route("/", ollama.root, methods=["GET", "HEAD"]),
    Route("/api/version", ollama.version, methods=["GET", "HEAD"]),
    Route("/api/status", ollama.status, methods=["GET"]),
    Route("/api/generate", ollama.generate, methods=["POST"]),
    Route("/api/chat", ollama.chat, methods=["POST"]),
    Route("/api/embed", ollama.embed, methods=["POST"]),
    Route("/api/embeddings", ollama.embeddings, methods=["POST"]),
    Route("/api/tags", ollama.tags, methods=["GET", "HEAD"]),
    Route("/api/show", ollama.show, methods=["POST"]),
    Route("/api/ps", ollama.ps, methods=["GET"]),
    Route("/api/copy", ollama.copy, methods=["POST"]),
    Route("/api/delete", ollama.delete, methods=["DELETE"]),
    Route("/api/pull", ollama.pull, methods=["POST"]),
    Route("/api/push", ollama.push, methods=["POST"]),
    Route("/api/create", create.create_model, methods=["POST"]),
    Route("/api/blobs/{digest}", create.blob_head, methods=["HEAD"]),
    Route("/api/blobs/{digest}", create.blob_upload, methods=["POST"]),
    Route("/v1/chat/completions", openai.chat_completions, methods=["POST"]),
    Route("/v1/completions", openai.completions, methods=["POST"]),
    Route("/v1/embeddings", openai.embeddings, methods=["POST"]),
    Route("/v1/models", openai.list_models, methods=["GET"]),
    Route("/v1/models/{model}", openai.retrieve_model, methods=["GET"]),
]
