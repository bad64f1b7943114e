"""Wiring and process: create_app, lifecycle, serve, command line, data directory."""
