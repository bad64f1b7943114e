from pathlib import Path

import redis as syncredis

from ptt_server.app.redis_embed import EmbeddedRedis


def test_embedded_redis_persists_across_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "r")
    server.start()
    try:
        c = syncredis.Redis.from_url(server.url)
        c.set("k", "v")
        c.close()
    finally:
        server.stop()
    again = EmbeddedRedis(tmp_path / "r", port=server.port)
    again.start()
    try:
        c = syncredis.Redis.from_url(again.url)
        assert c.get("k") == b"v"
        c.close()
    finally:
        again.stop()
