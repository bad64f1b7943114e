"""Server configuration: one frozen value built from the command line (and environment)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ExternalIssuer:
    """A trusted external token issuer (e.g. a police single-sign-on), RFC 8725 section 3.1:
    its algorithms are pinned to asymmetric ones and its key is a public key, never a secret."""

    issuer: str
    public_key_pem: str
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    audience: str | None = None  # defaults to the server's own audience
    # Its users' names become "ext:<name>:<sub>": never the same as a local user's (local
    # names cannot contain ':'), so an SSO account cannot pass for a local one.
    name: str = "sso"
    # Header `typ` values accepted (RFC 8725 section 3.11; RFC 9068 section 2.1 says at+jwt).
    # An identity provider that does not type its access tokens needs ("at+jwt", "JWT").
    token_types: tuple[str, ...] = ("at+jwt",)


@dataclass(frozen=True)
class Webhook:
    """A system told of emergencies, acknowledgements, clears and failed recordings: each
    event is POSTed to `url`, signed with HMAC-SHA256 under `secret` (docs/integration.md)."""

    url: str
    secret: str = field(repr=False)
    events: tuple[str, ...] = ()  # empty: every event


@dataclass(frozen=True)
class Config:
    data_dir: Path
    host: str = "0.0.0.0"
    port: int = 8443
    http: bool = False  # plain HTTP: loopback tests, or behind a TLS-terminating proxy
    redis_url: str | None = None  # None (and no sentinels): an embedded redis-server
    # Redis Sentinel: HOST:PORT of each sentinel and the name of the primary they watch.
    redis_sentinels: tuple[str, ...] = ()
    redis_master: str = "ptt"
    node_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    # With several workers (app/serve.py): this worker's index and every worker's Unix socket,
    # over which a resume that reached the wrong worker is carried to the right one
    # (service/ws_relay.py). One worker: none.
    worker_index: int = -1
    worker_sockets: tuple[Path, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # ICE: addresses this server gathers and announces as host candidates. Empty means all
    # non-loopback interface addresses (aioice's default); tests pass ("127.0.0.1",).
    ice_addresses: tuple[str, ...] = ()
    # Remote ICE candidates outside these networks are dropped. Lets an operator keep media on
    # a police VPN, and keeps test traffic on loopback. Empty: any address except the
    # special-purpose ones (loopback, link-local, multicast, ...: media/sdp.py), so an offer
    # cannot make the server send STUN to its own host or to a cloud metadata address.
    ice_remote_networks: tuple[str, ...] = ()
    # STUN/TURN URLs handed to aiortc; empty means none at all (a public server needs none).
    ice_servers: tuple[str, ...] = ()
    # TURN (RFC 8656) for clients behind firewalls that pass no UDP to us: these URLs, with
    # time-limited credentials minted per session from the shared secret (the TURN REST API of
    # draft-uberti-behave-turn-rest, coturn's use-auth-secret), handed out at /api/ice-servers.
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = field(default=None, repr=False)
    turn_ttl_s: int = 12 * 3600  # as long as a sign-in lasts without use (token_ttl_s)
    # The server's own ICE gathers relayed candidates too (a server that clients cannot reach
    # directly); off by default, a reachable server relays nothing through TURN itself.
    turn_for_server: bool = False
    # Every media UDP socket binds to a port in this inclusive range (one firewall rule); None:
    # ports the kernel picks.
    media_ports: tuple[int, int] | None = None
    # Every client's media on one shared UDP socket per address (media/icemux.py): one port
    # per worker in the range above, or one the kernel picks. False: a socket per client.
    ice_mux: bool = True
    # /metrics (Prometheus): on the main listener only with this bearer token, and on its own
    # (HOST, PORT) when given. Neither: not served.
    metrics_token: str | None = field(default=None, repr=False)
    metrics_listen: tuple[str, int] | None = None
    jwt_issuer: str = "ptt-server"
    jwt_audience: str = "ptt"
    # How long a sign-in lasts without use (the refresh token's sliding lifetime), and the
    # default lifetime of `ptt-server token`.
    token_ttl_s: int = 12 * 3600
    # A login's access token: short, renewed with the refresh token (POST /api/refresh).
    access_token_ttl_s: int = 600
    # A sign-in ends this long after the password was given, however often it is refreshed.
    refresh_absolute_s: int = 7 * 86400
    # Signed media URLs (audio players cannot send an Authorization header).
    media_url_ttl_s: int = 60
    external_issuer: ExternalIssuer | None = None
    # Fan-out through the direct RTP writer (sfu/direct.py) rather than aiortc's sender loop.
    direct_send: bool = True
    floor_max_duration_s: float = 60.0  # per-talkgroup override in the directory
    floor_emergency_max_duration_s: float = 180.0  # an emergency talker may say more
    floor_warning_s: float = 5.0  # warn the talker this long before the transmit limit
    floor_queue_timeout_s: float = 30.0  # a queued request expires after this
    # A private call (signaling/private_call.py) ends after this, and rings at most ring_s.
    private_call_max_s: float = 300.0
    private_call_ring_s: float = 30.0
    # A holder whose node stops refreshing loses the floor after this (a crashed node's floor
    # goes free then). It is also how long a node cut off from Redis may keep forwarding its
    # own talker (less a safety margin, node/loops.py): another node may grant the floor once
    # the lease lapses, so the two must never overlap. 3.5 s lets a talker ride out a 2-2.5 s
    # Redis stall or restart; a shorter lease trades that for a faster recovery of a crash.
    floor_lease_s: float = 3.5
    presence_ttl_s: float = 10.0
    # SIGTERM to exit: tell clients, release floors, finish recordings, close Redis. A second
    # signal ends the process at once.
    shutdown_timeout_s: float = 10.0
    # A session whose connection drops (a dead spot, a network change) is kept this long for
    # its client to resume it; its floor is released at once.
    resume_grace_s: float = 30.0
    # /healthz turns `degraded` (and supervisors get a system_alert) below this much free space
    # in the data directory: early enough to act before recording fails.
    disk_min_free_mb: int = 1024
    retention_days: int = 365
    # Signed event notifications (`--webhook URL SECRET_FILE`, and webhooks.json in the data
    # directory); a failed delivery is retried after this, then twice as long each time.
    webhooks: tuple[Webhook, ...] = ()
    webhook_retry_s: float = 1.0
    log_format: str = "json"
    client_web_dir: Path | None = None  # None: the client_web/ directory beside the package
    # -- the command centre (the console's unit map, emergencies) ------------------------------
    # Map tiles for the console, an XYZ URL template ("https://tiles.example/{z}/{x}/{y}.png")
    # of a tile server the operator runs or trusts. None: no tiles, the map is a plain grid
    # (a police network often reaches no tile server at all, and that must still work).
    map_tiles: str | None = None
    map_attribution: str | None = None  # shown on the map, as the tiles' licence requires
    # Officers who opt in share their position this often (the page asks for no more).
    location_interval_s: float = 15.0
    # An emergency nobody has acknowledged is sent again to every supervisor this often.
    emergency_repeat_s: float = 10.0
    # -- limits on what one client, one user or one address can hold (service/ws.py) ---------
    # WebSocket origins allowed besides the page's own (the Host header's): browsers send
    # Origin, so a page elsewhere cannot drive a signed-in officer's browser (cross-site
    # WebSocket hijacking). "null" is never allowed. Entries: "https://console.example:8443".
    ws_allowed_origins: tuple[str, ...] = ()
    # Connections not yet signed in (they hold a socket for up to 10 s): per address (an IPv6
    # /64 counts as one) and in total.
    max_unauthenticated_per_address: int = 20
    max_unauthenticated: int = 256
    max_sessions_per_user: int = 4  # a phone, a console, a spare; each has one peer connection
    max_sessions: int = 0  # 0: derived from the open-file limit (each session holds sockets)
    # Messages per user, over all the user's connections (a token bucket).
    message_rate_per_s: float = 50.0
    message_burst: float = 100.0
    # Offers and answers, per user: each makes aiortc parse and build transceivers, a first
    # offer a whole peer connection (a key pair and a certificate).
    offer_rate_per_s: float = 1.0
    offer_burst: float = 10.0

    @property
    def scheme(self) -> str:
        return "http" if self.http else "https"
