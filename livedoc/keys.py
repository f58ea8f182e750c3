"""Names of the Redis keys livedoc owns (RQ's own keys stay RQ's)."""

PREFIX = "livedoc:"
FLAGS = PREFIX + "flags:realtime"          # hash: mode, push, websocket — the runtime override
STATS_HOSTS = PREFIX + "stats:host:"       # + host id: JSON snapshot of one web process, short TTL
STATS_INDEX = PREFIX + "stats:hosts"       # zset of host ids scored by when their snapshot expires
OPEN_STREAMS = PREFIX + "streams:user:"    # + user id: zset of open stream ids scored by expiry
MISSING_JOB = PREFIX + "missing:"          # + job id: when readers first found the job's record gone
