"""Login throttling that holds under concurrency: an attempt is counted *before* its password
is checked, in one atomic Redis step shared by every server process.

Counting after the check (as a failure) lets a burst of concurrent guesses all be evaluated
before the first one is counted. Here each attempt first reserves a slot, per account and per
remote address, in a Lua script (atomic in Redis); a password is only hashed with a slot.

Each budget allows `budget` attempts at once; after that, the next attempt is allowed only
after a delay that doubles with every further attempt (1 s, 2 s, 4 s, ... up to `max_delay_s`),
and the refusal says how long to wait (`retry_after`). That is a progressive delay, not a
lock-out: five wrong passwords cost the real user a one-second wait, not five minutes, and a
guesser sustaining the attack gets one guess per `max_delay_s` per account (OWASP
Authentication Cheat Sheet, "login throttling"). An address has its own, larger budget (a
station may sit behind one NAT address) so that one source cannot spread guesses over many
accounts either.

A success clears the account's count and gives back the address's slot (a valid login is not
a failure); a failure keeps its slot. State expires `window_s` after the last counted attempt.
Times are Redis's own clock (TIME), so processes with skewed clocks agree.
"""

from __future__ import annotations

import math

import redis.asyncio as aioredis

from ptt_server.identity.tokens import AuthError

# KEYS: account, address. ARGV: account budget, address budget, base delay ms, max delay ms,
# window ms. Returns 0 when a slot was taken, else the wait in ms.
_ATTEMPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local budgets = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local base, cap, window = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local state = {}
local wait = 0
for i = 1, 2 do
  local v = redis.call('HMGET', KEYS[i], 'n', 'next')
  local n, nxt = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  state[i] = n
  if n >= budgets[i] and now < nxt then wait = math.max(wait, nxt - now) end
end
if wait > 0 then return wait end
for i = 1, 2 do
  local n = state[i] + 1
  if n >= budgets[i] then
    local k = math.min(n - budgets[i], 30)
    redis.call('HSET', KEYS[i], 'n', n, 'next', now + math.min(cap, base * 2 ^ k))
  else
    redis.call('HSET', KEYS[i], 'n', n)
  end
  redis.call('PEXPIRE', KEYS[i], window)
end
return 0
"""

# KEYS: account, address. The account starts afresh; the address gets its slot back.
_SUCCEEDED = """
redis.call('DEL', KEYS[1])
local n = tonumber(redis.call('HGET', KEYS[2], 'n'))
if n and n > 0 then redis.call('HINCRBY', KEYS[2], 'n', -1) end
return 0
"""


class LoginLimiter:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        account_budget: int = 5,
        address_budget: int = 20,
        base_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        window_s: float = 900.0,
        prefix: str = "ptt",
    ) -> None:
        if account_budget < 1 or address_budget < 1:
            raise ValueError("budgets must be positive")
        if not 0 < base_delay_s <= max_delay_s <= window_s:
            raise ValueError("need 0 < base_delay_s <= max_delay_s <= window_s")
        self.redis = redis
        self.account_budget = account_budget
        self.address_budget = address_budget
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.window_s = window_s
        self.prefix = prefix
        self._attempt = redis.register_script(_ATTEMPT)
        self._succeeded = redis.register_script(_SUCCEEDED)

    def _keys(self, username: str, remote: str | None) -> list[str]:
        # Bounded key sizes whatever a client sends.
        return [
            f"{self.prefix}:login:acct:{username[:128]}",
            f"{self.prefix}:login:addr:{(remote or 'unknown')[:64]}",
        ]

    async def attempt(self, username: str, remote: str | None) -> None:
        """Take a slot for one password check, or raise AuthError("login_rate_limited")
        with `retry_after` in whole seconds."""
        wait_ms = int(await self._attempt(
            keys=self._keys(username, remote),
            args=[self.account_budget, self.address_budget, int(self.base_delay_s * 1000),
                  int(self.max_delay_s * 1000), int(self.window_s * 1000)],
        ))
        if wait_ms > 0:
            retry_after = max(1, math.ceil(wait_ms / 1000))
            raise AuthError(
                "login_rate_limited", "too many failed logins; try again later",
                retry_after=retry_after,
            )

    async def succeeded(self, username: str, remote: str | None) -> None:
        await self._succeeded(keys=self._keys(username, remote), args=[])
