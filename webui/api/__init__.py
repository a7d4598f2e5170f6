"""The HTTP face: OpenAI-compatible routes, auth, request types, JSON-schema grammars."""
