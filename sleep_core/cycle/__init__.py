"""The cycle: wake injection off the chat path, audit, sleep."""
