"""One signed-in client: its session, messages in and out, its peer connection."""
