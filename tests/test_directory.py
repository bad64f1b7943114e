"""The SQLite directory: users, talkgroups, password hashing, sharing between processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ptt_server.core.model import ROLE_PRIORITY, Role, TalkgroupInfo, TalkgroupKind, User
from ptt_server.identity.directory import FILENAME, Directory, DirectoryError
from ptt_server.identity.passwords import check_password, hash_password


@pytest.fixture
def directory(data_dir: Path) -> Directory:
    d = Directory(data_dir / FILENAME)
    d.add_talkgroup("north", "North Patrol")
    d.add_talkgroup("south")
    d.add_talkgroup("cmd", "Command", kind=TalkgroupKind.COMMAND, max_duration_s=30)
    return d


def code_of(exc: pytest.ExceptionInfo[DirectoryError]) -> str:
    return exc.value.code


def test_talkgroups_round_trip(directory: Directory) -> None:
    assert directory.get_talkgroup("north") == TalkgroupInfo(
        "north", "North Patrol", TalkgroupKind.NORMAL, None
    )
    assert directory.get_talkgroup("south") == TalkgroupInfo(
        "south", "south", TalkgroupKind.NORMAL, None
    )
    assert directory.get_talkgroup("cmd") == TalkgroupInfo(
        "cmd", "Command", TalkgroupKind.COMMAND, 30.0
    )
    assert directory.get_talkgroup("nope") is None
    assert [t.id for t in directory.list_talkgroups()] == ["cmd", "north", "south"]


def test_talkgroup_kind_accepts_strings(directory: Directory) -> None:
    assert directory.add_talkgroup("ops", kind="command").kind is TalkgroupKind.COMMAND


def test_talkgroup_exists_and_replace(directory: Directory) -> None:
    with pytest.raises(DirectoryError) as e:
        directory.add_talkgroup("north")
    assert code_of(e) == "exists"
    directory.add_talkgroup("north", "Renamed", max_duration_s=12.5, replace=True)
    info = directory.get_talkgroup("north")
    assert info is not None and info.name == "Renamed" and info.max_duration_s == 12.5


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"id": "bad id"}, "invalid_name"),
        ({"id": ""}, "invalid_name"),
        ({"id": "x" * 65}, "invalid_name"),
        ({"id": "a/b"}, "invalid_name"),
        ({"id": "ok", "kind": "secret"}, "invalid_kind"),
        ({"id": "ok", "max_duration_s": 0}, "invalid_duration"),
        ({"id": "ok", "max_duration_s": -1.0}, "invalid_duration"),
        ({"id": "ok", "max_duration_s": float("nan")}, "invalid_duration"),
        ({"id": "ok", "name": "  "}, "invalid_name"),
        ({"id": "ok", "name": "bell\x07"}, "invalid_name"),
    ],
)
def test_talkgroup_validation(directory: Directory, kwargs: dict[str, object], code: str) -> None:
    with pytest.raises(DirectoryError) as e:
        directory.add_talkgroup(**kwargs)  # type: ignore[arg-type]
    assert code_of(e) == code
    assert directory.get_talkgroup("ok") is None


def test_id_limits_accepted(directory: Directory) -> None:
    directory.add_talkgroup("x" * 64)
    directory.add_talkgroup("A-z_0.9")
    assert directory.get_talkgroup("x" * 64) is not None


def test_add_user_defaults(directory: Directory) -> None:
    user = directory.add_user("u12", Role.OFFICER, ["north", "south"], "pw-12")
    assert user == User("u12", Role.OFFICER, ("north", "south"), "u12", ROLE_PRIORITY[Role.OFFICER])
    assert directory.get_user("u12") == user


def test_add_user_explicit(directory: Directory) -> None:
    user = directory.add_user(
        "sgt.ray", "supervisor", ["south", "cmd", "south"], "pw", alias="Sergeant Ray",
        priority=200,
    )
    assert user.role is Role.SUPERVISOR
    assert user.talkgroups == ("south", "cmd")  # order kept, duplicate dropped
    assert directory.get_user("sgt.ray") == user


def test_auditor_without_talkgroups(directory: Directory) -> None:
    user = directory.add_user("aud", Role.AUDITOR, [], "pw")
    assert user.talkgroups == () and user.priority == 0
    assert directory.get_user("aud") == user


def test_unknown_talkgroups_are_named(directory: Directory) -> None:
    with pytest.raises(DirectoryError) as e:
        directory.add_user("u1", Role.OFFICER, ["north", "east", "west"], "pw")
    assert code_of(e) == "unknown_talkgroup"
    assert "east" in str(e.value) and "west" in str(e.value) and "north" not in str(e.value)
    assert directory.get_user("u1") is None


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"name": "has space"}, "invalid_name"),
        ({"name": "x" * 65}, "invalid_name"),
        ({"name": ""}, "invalid_name"),
        ({"role": "chief"}, "invalid_role"),
        ({"priority": 256}, "invalid_priority"),
        ({"priority": -1}, "invalid_priority"),
        ({"priority": True}, "invalid_priority"),
        ({"password": ""}, "invalid_password"),
        ({"alias": ""}, "invalid_alias"),
        ({"alias": "x" * 65}, "invalid_alias"),
        ({"talkgroups": "north"}, "invalid_talkgroups"),
    ],
)
def test_user_validation(directory: Directory, kwargs: dict[str, object], code: str) -> None:
    args: dict[str, object] = {
        "name": "u1", "role": Role.OFFICER, "talkgroups": ["north"], "password": "pw",
    }
    args.update(kwargs)
    with pytest.raises(DirectoryError) as e:
        directory.add_user(**args)  # type: ignore[arg-type]
    assert code_of(e) == code
    assert directory.list_users() == []


def test_priority_limits_accepted(directory: Directory) -> None:
    assert directory.add_user("a", Role.OFFICER, [], "pw", priority=0).priority == 0
    assert directory.add_user("b", Role.OFFICER, [], "pw", priority=255).priority == 255


def test_re_add_requires_replace(directory: Directory) -> None:
    directory.add_user("u1", Role.OFFICER, ["north"], "old")
    with pytest.raises(DirectoryError) as e:
        directory.add_user("u1", Role.SUPERVISOR, ["south"], "new")
    assert code_of(e) == "exists"
    assert directory.verify_password("u1", "old") is not None
    replaced = directory.add_user("u1", Role.SUPERVISOR, ["south"], "new", replace=True)
    assert directory.get_user("u1") == replaced
    assert replaced.talkgroups == ("south",) and replaced.role is Role.SUPERVISOR
    assert directory.verify_password("u1", "old") is None
    assert directory.verify_password("u1", "new") == replaced


def test_list_and_remove_users(directory: Directory) -> None:
    directory.add_user("zed", Role.OFFICER, ["north"], "pw")
    directory.add_user("amy", Role.DISPATCHER, ["south", "north"], "pw")
    users = directory.list_users()
    assert [u.name for u in users] == ["amy", "zed"]
    assert users[0].talkgroups == ("south", "north")
    directory.remove_user("zed")
    assert directory.get_user("zed") is None
    with pytest.raises(DirectoryError) as e:
        directory.remove_user("zed")
    assert code_of(e) == "not_found"


def test_passwords(directory: Directory) -> None:
    directory.add_user("u1", Role.OFFICER, ["north"], "correct horse")
    assert directory.verify_password("u1", "correct horse") == directory.get_user("u1")
    assert directory.verify_password("u1", "correct horsE") is None
    assert directory.verify_password("u1", "") is None
    assert directory.verify_password("nobody", "correct horse") is None
    directory.set_password("u1", "battery staple")
    assert directory.verify_password("u1", "correct horse") is None
    assert directory.verify_password("u1", "battery staple") is not None
    with pytest.raises(DirectoryError) as e:
        directory.set_password("nobody", "x")
    assert code_of(e) == "not_found"
    with pytest.raises(DirectoryError) as e:
        directory.set_password("u1", "")
    assert code_of(e) == "invalid_password"


def test_password_never_stored_in_clear(directory: Directory) -> None:
    directory.add_user("u1", Role.OFFICER, ["north"], "s3cret-P4ss")
    directory.close()
    raw = b"".join(p.read_bytes() for p in directory.path.parent.iterdir() if p.is_file())
    assert b"s3cret-P4ss" not in raw
    conn = sqlite3.connect(directory.path)
    (stored,) = conn.execute("SELECT password_hash FROM users").fetchone()
    conn.close()
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**15), "8", "1")
    assert len(salt) == 24 and len(digest) == 44  # 16 and 32 bytes, base64


def test_hash_format_and_tampering() -> None:
    stored = hash_password("pw")
    assert stored != hash_password("pw")  # salted
    assert check_password("pw", stored)
    assert not check_password("pw", stored.replace("scrypt", "plain"))
    assert not check_password("pw", "garbage")
    assert not check_password("pw", "scrypt$3$8$1$AAAA$AAAA")  # n not a power of two
    assert not check_password("pw", f"scrypt${2**30}$8$1$AAAA$AAAA")  # absurd cost refused


def test_unknown_user_costs_as_much_as_wrong_password(
    directory: Directory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No timing oracle: an unknown name runs the same full-cost scrypt as a wrong password.
    Checked by observing the hash calls (their parameters), not by timing, which a loaded
    machine makes meaningless."""
    import hashlib

    directory.add_user("u1", Role.OFFICER, ["north"], "pw")
    calls: list[tuple[int, int, int]] = []
    real = hashlib.scrypt

    def observed(password: bytes, *, salt: bytes, n: int, r: int, p: int,
                 maxmem: int = 0, dklen: int = 64) -> bytes:
        calls.append((n, r, p))
        return real(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen)

    monkeypatch.setattr(hashlib, "scrypt", observed)
    assert directory.verify_password("u1", "wrong") is None
    known = list(calls)
    calls.clear()
    assert directory.verify_password("nobody", "wrong") is None
    assert calls == known == [(2**15, 8, 1)]


def test_remove_talkgroup_in_use(directory: Directory) -> None:
    directory.add_user("u1", Role.OFFICER, ["north", "south"], "pw")
    with pytest.raises(DirectoryError) as e:
        directory.remove_talkgroup("north")
    assert code_of(e) == "in_use" and "u1" in str(e.value)
    directory.remove_talkgroup("north", force=True)
    assert directory.get_talkgroup("north") is None
    user = directory.get_user("u1")
    assert user is not None and user.talkgroups == ("south",)
    with pytest.raises(DirectoryError) as e:
        directory.remove_talkgroup("north")
    assert code_of(e) == "not_found"


def test_data_dir_path_accepted(data_dir: Path) -> None:
    d = Directory(data_dir)
    d.add_talkgroup("t")
    assert d.path == data_dir / FILENAME
    assert Directory(data_dir / FILENAME).get_talkgroup("t") is not None


def test_wal_mode(directory: Directory) -> None:
    conn = sqlite3.connect(directory.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_changes_visible_to_other_instances_without_restart(directory: Directory) -> None:
    other = Directory(directory.path)
    assert other.get_talkgroup("north") is not None
    other.add_talkgroup("east")
    assert directory.get_talkgroup("east") is not None
    directory.add_user("u1", Role.OFFICER, ["east"], "pw")
    assert other.get_user("u1") is not None


def test_changes_from_another_process(directory: Directory) -> None:
    script = (
        "import sys; from pathlib import Path\n"
        "from ptt_server.identity.directory import Directory\n"
        "d = Directory(Path(sys.argv[1]))\n"
        "d.add_talkgroup('from-child')\n"
        "d.add_user('child', 'officer', ['from-child', 'north'], 'pw')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(directory.path)], check=True)
    user = directory.get_user("child")
    assert user is not None and user.talkgroups == ("from-child", "north")


def test_concurrent_writers_from_threads(directory: Directory) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(10):
                directory.add_talkgroup(f"t{i}-{j}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(directory.list_talkgroups()) == 3 + 40
