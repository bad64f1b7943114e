"""The Lua scripts behind control/floor_store.py, each with the contract of its KEYS and ARGV.

Each runs atomically in Redis: a floor written, its outputs published and its deadline filed
in one step, checked against the floor's version and the Redis epoch (see floor_store.py for
what the results mean and who calls what).
"""

# KEYS: epoch hash. ARGV: new epoch id, now, fence seconds for a re-created epoch ('' = none),
# the fence's kind ('reset' or 'start'). Returns {id, not_before, created, kind}. The epoch says
# "this Redis's floor state began here": a node that knew another epoch (or finds none) knows
# every floor it saw is gone.
EPOCH = """
local id = redis.call('HGET', KEYS[1], 'id')
if id then
  local e = redis.call('HMGET', KEYS[1], 'not_before', 'kind')
  return {id, e[1], 0, e[2] or 'reset'}
end
local not_before = ARGV[2]
if ARGV[3] ~= '' then not_before = tostring(tonumber(ARGV[2]) + tonumber(ARGV[3])) end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'not_before', not_before, 'kind', ARGV[4])
return {ARGV[1], not_before, 1, ARGV[4]}
"""

# KEYS: floor key, deadlines zset, patch_of hash, patch member set (unused for a plain floor),
#       epoch hash
# ARGV: floor id, talkgroup it was resolved from ('' for a deadline tick), expected version,
#       new floor JSON ('' = unchanged), new version, outputs JSON array ('' = none),
#       deadline ('' = none), channel prefix, expected epoch id, sealed frame of the outputs
#       ('' = publish them as plain JSON)
CAS = """
if redis.call('HGET', KEYS[5], 'id') ~= ARGV[9] then return -2 end
local floor_id, tg = ARGV[1], ARGV[2]
local members
local pid = string.match(floor_id, '^patch:(.+)$')
if pid then
  members = redis.call('SMEMBERS', KEYS[4])
  if #members == 0 then return -1 end
  if tg ~= '' and redis.call('HGET', KEYS[3], tg) ~= pid then return -1 end
else
  if redis.call('HEXISTS', KEYS[3], floor_id) == 1 then return -1 end
  members = {floor_id}
end
local raw = redis.call('GET', KEYS[1])
local version = 0
if raw then version = tonumber(cjson.decode(raw)['version']) end
if version ~= tonumber(ARGV[3]) then return 0 end
if ARGV[4] ~= '' then redis.call('SET', KEYS[1], ARGV[4]) end
if ARGV[7] == '' then
  redis.call('ZREM', KEYS[2], floor_id)
else
  redis.call('ZADD', KEYS[2], ARGV[7], floor_id)
end
if ARGV[10] ~= '' then
  -- Sealed by the node that stepped the floor (core/sealing.py): published as it is.
  for _, m in ipairs(members) do redis.call('PUBLISH', ARGV[8] .. m, ARGV[10]) end
elseif ARGV[6] ~= '' then
  for _, m in ipairs(members) do
    redis.call('PUBLISH', ARGV[8] .. m, '{"talkgroup":' .. cjson.encode(m) ..
      ',"version":' .. ARGV[5] .. ',"outputs":' .. ARGV[6] .. '}')
  end
end
return 1
"""

# KEYS: patch_of hash, patch member set, then each talkgroup's own floor key
# ARGV: patch id, then the talkgroups (same order as their floor keys)
PATCH = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {'conflict', ARGV[1]} end
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then return {'conflict', ARGV[i]} end
  local raw = redis.call('GET', KEYS[i + 1])
  if raw and cjson.decode(raw)['state'] ~= 'idle' then return {'busy', ARGV[i]} end
end
for i = 2, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[1])
  redis.call('SADD', KEYS[2], ARGV[i])
end
return {'ok', ''}
"""

# KEYS: patch_of hash, patch member set, patch floor key, deadlines zset
# ARGV: floor id, expected version, reset floor JSON
# The patch floor is reset, not deleted, so its version keeps counting up: a writer that read
# it before the unpatch can never mistake a later patch of the same id for the floor it read.
UNPATCH = """
local members = redis.call('SMEMBERS', KEYS[2])
if #members == 0 then return 'unknown' end
local raw = redis.call('GET', KEYS[3])
local version = 0
if raw then
  local doc = cjson.decode(raw)
  if doc['state'] ~= 'idle' then return 'busy' end
  version = tonumber(doc['version'])
end
if version ~= tonumber(ARGV[2]) then return 'moved' end
for _, m in ipairs(members) do redis.call('HDEL', KEYS[1], m) end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[3], ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[1])
return 'ok'
"""
