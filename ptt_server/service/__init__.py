"""The aiohttp-facing layer: app keys, the WebSocket entry and the HTTP APIs."""
