/*
 * qmgr_cluster_lua.c - the Lua scripts the cluster runs in Redis: each
 *                      decision on shared state is one atomic script call
 *
 * Times are Redis's own clock (TIME, microseconds), so the hosts' clocks
 * never have to agree. Fractions of microseconds (a data volume rate's cost
 * per byte) are kept as decimal strings; Lua numbers are doubles, exact for
 * microsecond timestamps.
 *
 * Owns: the scripts' text (qmgr_cluster_int.h describes the keys).
 * SECURITY: every argument is a separate Redis bulk string (no quoting);
 * node names and key prefixes are checked by conf/ (letters, digits, ._:-{}).
 */
#include "config.h"

#include "qmgr_cluster_int.h"

/*
 * RATE: KEYS[1] the TAT; ARGV: unit cost T (us), burst (the limit's count:
 * at most one period's worth at once), units wanted, horizon (us: slots are
 * reserved at most that far ahead), TAT floor (us; a late send), units to
 * charge (sent beyond the slots granted), permit ("1": data volume, one
 * conformant batch of any size, charged afterwards), key life (ms).
 * GCRA as the local backend's: while TAT is due, 1 + (now - TAT) / T units
 * (at most burst) may go now, and TAT moves to now plus their cost; then
 * future slots, T apart from TAT, are reserved up to now + horizon.
 * Returns {units now, slots later, first slot, now, TAT} (times as strings).
 */
static const char rate_script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local T, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local horizon, floor, charge = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])\n"
    "local tat = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
    "if tat < floor then tat = floor end\n"
    "if charge > 0 then tat = math.max(tat, now) + charge * T end\n"
    "local now_n, later, first = 0, 0, tat\n"
    "if want > 0 and ARGV[7] == '1' then\n"
    "  if tat <= now then now_n = 1 end\n"
    "elseif want > 0 then\n"
    "  if tat <= now then\n"
    "    now_n = math.min(want, burst, 1 + math.floor((now - tat) / T))\n"
    "    tat = now + now_n * T\n"
    "  end\n"
    "  first = tat\n"
    "  if want > now_n and tat <= now + horizon then\n"
    "    later = math.min(want - now_n, math.floor((now + horizon - tat) / T) + 1)\n"
    "    tat = tat + later * T\n"
    "  end\n"
    "end\n"
    "redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX',\n"
    "           math.floor(math.max(tat - now, 0) / 1000) + tonumber(ARGV[8]))\n"
    "return {now_n, later, string.format('%.3f', first), string.format('%.0f', now),\n"
    "        string.format('%.3f', tat)}\n";

/*
 * LEASE: KEYS[1] the holders (node -> leases), KEYS[2] this node's set of
 * lease hashes; ARGV: node, "acquire" | "release" | "set", the limit (acquire)
 * or a count, the heartbeat key prefix, the hash's life (ms). A holder
 * whose heartbeat expired is dropped before counting: its leases die with
 * it. Returns {granted (1/0), leases held in the cluster (acquire)}.
 */
static const char lease_script[] =
    "local node, op, n = ARGV[1], ARGV[2], tonumber(ARGV[3])\n"
    "if op == 'acquire' then\n"
    "  local all = redis.call('HGETALL', KEYS[1])\n"
    "  local total = 0\n"
    "  for i = 1, #all, 2 do\n"
    "    if all[i] ~= node and redis.call('EXISTS', ARGV[4] .. all[i]) == 0 then\n"
    "      redis.call('HDEL', KEYS[1], all[i])\n"
    "    else\n"
    "      total = total + tonumber(all[i + 1])\n"
    "    end\n"
    "  end\n"
    "  local granted = 0\n"
    "  if total < n then\n"
    "    redis.call('HINCRBY', KEYS[1], node, 1)\n"
    "    redis.call('SADD', KEYS[2], KEYS[1])\n"
    "    granted, total = 1, total + 1\n"
    "  end\n"
    "  redis.call('PEXPIRE', KEYS[1], ARGV[5])\n"
    "  return {granted, total}\n"
    "elseif op == 'release' then\n"
    "  local left = redis.call('HINCRBY', KEYS[1], node, -n)\n"
    "  if left <= 0 then redis.call('HDEL', KEYS[1], node) end\n"
    "  return {1, left}\n"
    "end\n"
    "if n > 0 then\n"
    "  redis.call('HSET', KEYS[1], node, n)\n"
    "  redis.call('SADD', KEYS[2], KEYS[1])\n"
    "  redis.call('PEXPIRE', KEYS[1], ARGV[5])\n"
    "else\n"
    "  redis.call('HDEL', KEYS[1], node)\n"
    "end\n"
    "return {1, n}\n";

/*
 * QUOTA: KEYS[1] the units used in this window; ARGV: the limit, units
 * wanted, the key's life (ms), units given back (granted, never used),
 * units to charge (used beyond a grant). Returns {granted, used}.
 */
static const char quota_script[] =
    "local used = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
    "used = math.max(0, used - tonumber(ARGV[4])) + tonumber(ARGV[5])\n"
    "local grant = math.max(0, math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) - used))\n"
    "used = used + grant\n"
    "redis.call('SET', KEYS[1], used, 'PX', ARGV[3])\n"
    "return {grant, used}\n";

/*
 * HEARTBEAT: KEYS[1] this node's heartbeat, KEYS[2] every node seen; ARGV:
 * node, its facts (JSON), lease-time (ms), the heartbeat key prefix. Nodes
 * not seen for a day are forgotten. Returns {now (ms), {name, last seen
 * (ms), facts ("" when its heartbeat expired), ...}}.
 */
static const char heartbeat_script[] =
    "local t = redis.call('TIME')\n"
    "local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])\n"
    "redis.call('HSET', KEYS[2], ARGV[1], ms)\n"
    "local out, all = {}, redis.call('HGETALL', KEYS[2])\n"
    "for i = 1, #all, 2 do\n"
    "  if ms - tonumber(all[i + 1]) > 86400000 then\n"
    "    redis.call('HDEL', KEYS[2], all[i])\n"
    "  else\n"
    "    out[#out + 1] = all[i]\n"
    "    out[#out + 1] = all[i + 1]\n"
    "    out[#out + 1] = redis.call('GET', ARGV[4] .. all[i]) or ''\n"
    "  end\n"
    "end\n"
    "return {tostring(ms), out}\n";

/* NODE_UP / NODE_DOWN: KEYS[1] this node's set of lease hashes, KEYS[2] its heartbeat;
   ARGV[1] node, ARGV[2] "down" to drop the heartbeat too */
static const char node_script[] = "for _, k in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
                                  "  redis.call('HDEL', k, ARGV[1])\n"
                                  "end\n"
                                  "redis.call('DEL', KEYS[1])\n"
                                  "if ARGV[2] == 'down' then redis.call('DEL', KEYS[2]) end\n"
                                  "return 1\n";

/* STATE: KEYS[1] a hash; ARGV: field, value ("" removes it), channel, message to publish */
static const char state_script[] = "if ARGV[2] == '' then\n"
                                   "  redis.call('HDEL', KEYS[1], ARGV[1])\n"
                                   "else\n"
                                   "  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
                                   "end\n"
                                   "redis.call('PUBLISH', ARGV[3], ARGV[4])\n"
                                   "return 1\n";

const char *const cl_script_text[CL_SCRIPTS] = {
    [CL_SCRIPT_RATE] = rate_script,    [CL_SCRIPT_LEASE] = lease_script,
    [CL_SCRIPT_QUOTA] = quota_script,  [CL_SCRIPT_HEARTBEAT] = heartbeat_script,
    [CL_SCRIPT_NODE_UP] = node_script, [CL_SCRIPT_NODE_DOWN] = node_script,
    [CL_SCRIPT_STATE] = state_script,
};
