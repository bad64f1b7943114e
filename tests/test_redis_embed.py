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


def test_secure_embedded_redis_needs_its_password(tmp_path: Path) -> None:
    """`serve`'s own redis-server: a generated password on every connection, a 0700 socket
    directory, the password file 0600; a local process without the password is refused."""
    import stat

    server = EmbeddedRedis(tmp_path / "redis", persist=False, secure=True)
    server.start()
    try:
        assert stat.S_IMODE((tmp_path / "redis").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "redis" / "password").stat().st_mode) == 0o600
        assert server.password and server.password not in server.public_url
        ok = syncredis.Redis.from_url(server.url)
        assert ok.ping()
        ok.close()
        intruder = syncredis.Redis(host="127.0.0.1", port=server.port)
        try:
            intruder.publish("ptt:alerts", "forged")
            raise AssertionError("an unauthenticated client was served")
        except syncredis.AuthenticationError:
            pass
        except syncredis.ResponseError as exc:
            assert "NOAUTH" in str(exc)
        finally:
            intruder.close()
    finally:
        server.stop()
    # The same password next time: every worker and restart agrees on it.
    again = EmbeddedRedis(tmp_path / "redis", persist=False, secure=True)
    assert again._load_password() == server.password
