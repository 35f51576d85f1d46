"""Sleeping LLM for text-generation-webui: the extension's hooks, its memory tab and a standalone chat app."""
