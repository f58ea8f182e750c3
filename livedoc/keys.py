"""Names of the Redis keys livedoc owns (RQ's own keys stay RQ's)."""

PREFIX = "livedoc:"
FLAGS = PREFIX + "flags:realtime"  # hash: mode, push, websocket — the runtime override
STATS_HOSTS = PREFIX + "stats:host:"  # + host id: JSON snapshot of one web process, short TTL
STATS_INDEX = PREFIX + "stats:hosts"  # zset of host ids scored by when their snapshot expires
RECOVERY_SWEEP = PREFIX + "recovery-sweep"  # held by the web process whose turn it is to sweep
MISSING_JOB = PREFIX + "missing:"  # + job id: when readers first found the job's record gone
PROGRESS_CHANNEL = PREFIX + "progress:"  # + job id: pub/sub channel of the job's saved progress
PROGRESS_PATTERN = PROGRESS_CHANNEL + "*"  # what each web process's hub PSUBSCRIBEs to
DELETED_JOB = PREFIX + "deleted:"  # + job id: the document was deleted; writers must stop
CAN_CONVERT = PREFIX + "can-convert:"  # + kind: some worker can convert it; refreshed with a TTL
CHUNKS = PREFIX + "chunks:"  # + job id + ":" + attempt + part: a chunked conversion's state
QUOTA_LOCK = PREFIX + "quota-lock:"  # + user id: held while a new document or attempt is admitted
LOGIN_FAILURES = PREFIX + "login-fail:"  # + name digest + ":" + client address: failed logins, TTL
LOGIN_NAME_FAILURES = PREFIX + "login-fail-name:"  # + name digest: failed logins from every address, TTL
# + user id: hash of the bytes the user stores, for the storage quota while converting (workers/quota.py):
# QUOTA_SETTLED (what the database says), QUOTA_CONVERTING + doc id (what its conversion wrote so far),
# QUOTA_HD + doc id (its sharper pages, stored after the database counted the document)
QUOTA_USAGE = PREFIX + "quota-usage:"
QUOTA_SETTLED = "settled"
QUOTA_CONVERTING = "doc:"
QUOTA_HD = "hd:"
