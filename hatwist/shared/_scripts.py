# -*- test-case-name: tests.shared.test_redis -*-
"""The server-side Lua scripts that make the shared limits exact.

Each question is one script, so Redis runs it atomically: no other node's start can
slip in between counting a window and adding to it.  Time is Redis's own (``TIME`` in
the script, microseconds), never a node's clock, so nodes whose clocks disagree still
share one window.  Scores are microseconds since the epoch; Lua numbers are doubles,
exact for integers to 2**53 (year 2255 in microseconds).

Replies are integers (Redis truncates Lua numbers), so waits come back in microseconds.
:class:`Script` sends EVALSHA and falls back to EVAL when the server does not know the
script (NOSCRIPT: a restarted or flushed Redis), which also caches it there again.
Blocking: only ever called from the limits' thread pool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis

#: Reply codes of START (its first element).
GRANTED, NO_SLOT, THROTTLED = 0, 1, 2

# KEYS[1] slots zset (lease id -> expiry), KEYS[2] throttle zset (start id -> time).
# ARGV: lease id, max slots, lease ttl (ms), throttle messages (0: none),
#       throttle seconds, start id.
# Reply: {GRANTED, 0} | {NO_SLOT, 0} | {THROTTLED, wait in microseconds}: until the
# oldest start leaves the window, or, when sooner, until a credit there expires (1 ms
# after): it may come back unused.
START = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= max then
  return {1, 0}
end
local n = tonumber(ARGV[4])
local window = tonumber(ARGV[5]) * 1000000
if n > 0 then
  -- the same two rules as hatwist.throttle: a start counts for `window`, and only
  -- the last n starts matter (a reload may have lowered n)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(n + 1))
  if redis.call('ZCARD', KEYS[2]) >= n then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    local wait = tonumber(oldest[2]) + window - now
    -- a credit not expired yet may come back unused: ask again once it has expired
    -- (Lua's own number to text keeps 14 digits: too few for microseconds)
    local after = '(' .. string.format('%.0f', now)
    local ahead = redis.call('ZRANGEBYSCORE', KEYS[2], after, '+inf', 'WITHSCORES',
                             'LIMIT', 0, 1)
    if ahead[2] then
      wait = math.min(wait, tonumber(ahead[2]) - now + 1000)
    end
    return {2, wait}
  end
  redis.call('ZADD', KEYS[2], now, ARGV[6])
  -- the key lives until its newest entry (a credit may lie ahead of now) leaves the window
  local newest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[2],
             math.floor((tonumber(newest[2]) + window) / 1000) + 1000)
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(last[2]) / 1000) + 1000)
return {0, 0}
"""

# KEYS[1] throttle zset.  ARGV: throttle messages, seconds, credits wanted, credit
# lifetime (ms), an id unique in the fleet.
# Reply: the credits granted, as many as asked while the window has room, named
# "<id>+1", "<id>+2"...  Credits (see hatwist.shared._credits) are starts reserved for
# later use on the node.  Each is recorded at its expiry (now + lifetime), the last
# moment the node may use it, so the window counts it over every span in which it may
# have started.
CREDITS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local window = tonumber(ARGV[2]) * 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(n + 1))
local room = math.min(tonumber(ARGV[3]), n - redis.call('ZCARD', KEYS[1]))
if room <= 0 then
  return 0
end
local at = now + tonumber(ARGV[4]) * 1000
local add = {}
for i = 1, room do
  add[2 * i - 1] = at
  add[2 * i] = ARGV[5] .. '+' .. i
end
redis.call('ZADD', KEYS[1], unpack(add))
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.floor((tonumber(newest[2]) + window) / 1000) + 1000)
return room
"""

# KEYS[1] nodes zset (node id -> expiry), KEYS[2..] slots zsets of this node's leases.
# ARGV: node id, node ttl (ms), lease ttl (ms), then one lease id per KEYS[2..].
# Reply: the number of live nodes, this one included.
# A lease is added back even if it had expired (Redis was away, or restarted empty):
# the connection it stands for is real, so the fleet must count it.
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local node_ttl = tonumber(ARGV[2]) * 1000
local ttl = tonumber(ARGV[3]) * 1000
redis.call('ZADD', KEYS[1], now + node_ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 1000)
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[i + 2])
  local last = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[i], math.floor(tonumber(last[2]) / 1000) + 1000)
end
return redis.call('ZCARD', KEYS[1])
"""


# KEYS[1] throttle zset.  ARGV: throttle messages, seconds, then pairs (age in
# microseconds, start id) of this node's starts made while Redis was away.  Each is
# added at Redis's now minus its age, unless Redis already has it (NX: a start Redis
# granted keeps its own time).  Reply: the starts now in the window.
REPLAY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local window = tonumber(ARGV[2]) * 1000000
for i = 3, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], 'NX', now - tonumber(ARGV[i]), ARGV[i + 1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(n + 1))
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] then
  redis.call('PEXPIREAT', KEYS[1], math.floor((tonumber(newest[2]) + window) / 1000) + 1000)
end
return redis.call('ZCARD', KEYS[1])
"""


class Script:
    """One Lua script, sent by its SHA1 and by its text only when Redis lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)
