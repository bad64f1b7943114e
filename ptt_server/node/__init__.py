"""One server process: local sessions, routers, transmissions, background loops."""
