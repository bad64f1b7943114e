"""The data directory: one type that knows its layout, and the one place that validates it.

Every command works on a data directory (`--data-dir`, else `$PTT_DATA_DIR`, else `./data`).
Two ways to open one, because the commands want opposite things from a path that is not there:

- `DataDir.create`: admin commands and `serve` may be the first thing run on a machine, so a
  missing directory is created (private: it holds the token signing key, password hashes and
  recordings). A path that exists but is a file is refused rather than used as a database.
- `DataDir.existing`: `audit` reads evidence; a mistyped path must fail loudly, not produce an
  empty store that then verifies "OK: 0 entries". Nothing is created.

A relative path is made absolute once, here: the server's children (redis-server changes into
its own directory) and later log lines then all name the same place.

The file names are the ones the lower layers define (they may not import the app layer, see
tests/test_layout.py), so existing data directories keep working unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ptt_server.app.tls import TLS_DIR
from ptt_server.identity.auth import SIGNING_KEY_FILE
from ptt_server.identity.directory import FILENAME as DIRECTORY_FILENAME
from ptt_server.recording import layout

REDIS_DIR = "redis"
MODE = 0o700
_HINT = "pass --data-dir DIR (or set PTT_DATA_DIR)"


class DataDirError(Exception):
    """A data directory that cannot be used; the message is one line for the operator."""


def _absolute(path: Path | str) -> Path:
    # resolve(), not absolute(): "data/../data" and a symlinked directory then print as the
    # one place they are, and redis-server gets a path that survives its chdir.
    return Path(path).expanduser().resolve()


@dataclass(frozen=True)
class DataDir:
    root: Path  # absolute; use the constructors below rather than DataDir(...) directly

    @classmethod
    def create(cls, path: Path | str) -> DataDir:
        """The data directory at `path`, created (mode 0700, with missing parents) if absent.
        For admin commands and `serve`."""
        root = _absolute(path)
        try:
            # Only the directory itself is made private: parents such as /srv keep the
            # default mode. An existing directory's mode is the operator's choice: left alone.
            root.mkdir(mode=MODE, parents=True, exist_ok=True)
        except FileExistsError:
            raise DataDirError(f"data directory {root} exists and is not a directory") from None
        except OSError as exc:
            raise DataDirError(
                f"cannot create data directory {root}: {exc.strerror or exc}"
            ) from None
        return cls(root)

    @classmethod
    def existing(cls, path: Path | str) -> DataDir:
        """The data directory at `path`, which a server or an admin command already used
        (it has a directory database or a ledger). Creates nothing. For `audit` commands."""
        root = _absolute(path)
        if not root.exists():
            raise DataDirError(f"no data directory at {root}; {_HINT}")
        if not root.is_dir():
            raise DataDirError(f"data directory {root} exists and is not a directory; {_HINT}")
        data = cls(root)
        if not (data.directory_db.is_file() or data.ledger.is_file()):
            raise DataDirError(
                f"{root} is not a ptt-server data directory (it has no {DIRECTORY_FILENAME} "
                f"and no {data.ledger.relative_to(root)}); {_HINT}"
            )
        return data

    def __str__(self) -> str:
        return str(self.root)

    # -- the layout ----------------------------------------------------------------------------
    @property
    def directory_db(self) -> Path:
        """Users and talkgroups (SQLite, see identity/directory.py)."""
        return self.root / DIRECTORY_FILENAME

    @property
    def signing_key(self) -> Path:
        """The HS256 secret for our tokens (see identity/auth.py)."""
        return self.root / SIGNING_KEY_FILE

    @property
    def tls_dir(self) -> Path:
        """The development CA and server certificate (see app/tls.py)."""
        return self.root / TLS_DIR

    @property
    def dev_ca_cert(self) -> Path:
        """The certificate phones and browsers are told to trust (made by make-dev-cert.sh)."""
        return self.tls_dir / "ca.crt"

    @property
    def redis_dir(self) -> Path:
        """The embedded redis-server's data, log and pid file (see app/redis_embed.py)."""
        return self.root / REDIS_DIR

    @property
    def recordings_dir(self) -> Path:
        return layout.recordings_root(self.root)

    @property
    def ledger(self) -> Path:
        """The hash-chained audit ledger (see recording/ledger.py)."""
        return layout.ledger_path(self.root)

    @property
    def index(self) -> Path:
        """The recordings search index, rebuilt from the ledger (see recording/store.py)."""
        return layout.index_path(self.root)
