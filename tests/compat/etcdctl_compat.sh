#!/usr/bin/env bash
# etcd compatibility test: runs the same script of real `etcdctl` (v3 API) commands against a
# fresh single-node etcd and a fresh single-node Aspen, records each command's output and exit
# code, masks what legitimately differs between two servers (ids, hashes, sizes, versions,
# raft terms and indexes, timings, ports, temp paths), and diffs the two transcripts.
# A second, shorter round runs both servers with TLS (https, --client-cert-auth, certificates
# from a CA made here with openssl) and etcdctl with --cacert/--cert/--key, refusals included.
# A third round runs both with JWT auth tokens (--auth-token jwt,..., ES256 keys made here).
#
#   tests/compat/etcdctl_compat.sh target/debug/aspen
#
# Environment: ETCD (default: etcd on PATH), ETCDCTL (default: etcdctl on PATH),
# COMPAT_KEEP=1 keeps the work dir (raw and masked transcripts) for inspection.
#
# Revisions, counts, keys, values and error texts are never masked: they must match exactly.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 path/to/aspen" >&2
  exit 2
fi
ASPEN_BIN=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
ETCD_BIN=${ETCD:-$(command -v etcd || true)}
ETCDCTL_BIN=${ETCDCTL:-$(command -v etcdctl || true)}
for tool in "$ASPEN_BIN" "$ETCD_BIN" "$ETCDCTL_BIN"; do
  if [ -z "$tool" ] || [ ! -x "$tool" ]; then
    echo "etcdctl compat: missing executable '${tool}' (need etcd, etcdctl and aspen)" >&2
    exit 2
  fi
done
command -v python3 >/dev/null || { echo "etcdctl compat: python3 is required" >&2; exit 2; }
command -v curl >/dev/null || { echo "etcdctl compat: curl is required for the JWT round" >&2; exit 2; }
command -v openssl >/dev/null || { echo "etcdctl compat: openssl (the CLI) is required for the TLS round" >&2; exit 2; }

export ETCDCTL_API=3
# No TTY in CI; keep etcdctl from reading the caller's stdin unless a command feeds it.
exec </dev/null

WORK=$(mktemp -d "${TMPDIR:-/tmp}/etcdctl-compat.XXXXXX")
SERVER_PID=""
BG_PIDS=()
# The TLS round sets these: etcdctl's TLS flags, the servers' TLS flags, the client scheme.
TLS_FLAGS=()
SERVER_TLS=()
SCHEME=http
ROUND=plain

stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}

cleanup() {
  local pid
  for pid in "${BG_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true # timeout(1) passes it on to its etcdctl
  done
  stop_server
  if [ "${COMPAT_KEEP:-0}" = 1 ]; then
    echo "etcdctl compat: work dir kept at $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports, chosen by the kernel and held until all are picked (no fixed ranges).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# ---------------------------------------------------------------------------------------------
# Transcript recording. Each check is one file, NNN-label, holding the command line (with the
# run's ports and paths), its combined stdout+stderr and its exit code.

OUT=""      # directory of the current server's check files
SEQ=0
LAST=""     # output of the last recorded command (unmasked), for extracting ids

record() { # label, output, rc
  SEQ=$((SEQ + 1))
  local file
  file=$(printf '%s/%03d-%s' "$OUT" "$SEQ" "$1")
  printf '%s\n[exit %s]\n' "$2" "$3" >"$file"
}

# A server that exited or a suite over its time budget skips the remaining commands (each
# recorded as not run), so a broken server fails fast instead of timing out command by command.
SUITE_BUDGET_S=90
SUITE_START=0
SKIP_REASON=""

server_ok() {
  if [ -z "$SKIP_REASON" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
    SKIP_REASON="$SERVER exited"
  fi
  if [ -z "$SKIP_REASON" ] && [ $(($(date +%s) - SUITE_START)) -gt "$SUITE_BUDGET_S" ]; then
    SKIP_REASON="time budget of ${SUITE_BUDGET_S}s exceeded on $SERVER"
  fi
  [ -z "$SKIP_REASON" ]
}

# run_ctl LABEL DISPLAY STDIN COMMAND...: run COMMAND with stdin from STDIN; record DISPLAY
# (the command as the transcript shows it), its stdout+stderr and its exit code.
run_ctl() {
  local label=$1 display=$2 stdin=$3
  shift 3
  local out rc=0
  if ! server_ok; then
    LAST=""
    record "$label" "$display"$'\n'"(not run: $SKIP_REASON)" "-"
    return 0
  fi
  out=$("$@" <"$stdin" 2>&1) || rc=$?
  LAST=$out
  record "$label" "$display"$'\n'"$out" "$rc"
}

# ec LABEL ARGS...: etcdctl ARGS against the current server.
ec() {
  local label=$1
  shift
  run_ctl "$label" "\$ etcdctl $*" /dev/null \
    "$ETCDCTL_BIN" --endpoints="$EP" "${TLS_FLAGS[@]}" --command-timeout=5s "$@"
}

# ec_in LABEL ARGS... <input: as ec, with stdin given by the caller, byte for byte.
ec_in() {
  local label=$1
  shift
  local input="$WORK/$SERVER/stdin"
  cat >"$input"
  run_ctl "$label" "\$ etcdctl $* <<EOF"$'\n'"$(cat "$input")"$'\n'"EOF" "$input" \
    "$ETCDCTL_BIN" --endpoints="$EP" --command-timeout=5s "$@"
}

# ec_file LABEL FILE ARGS...: as ec, with stdin from FILE (recorded by name and size only).
ec_file() {
  local label=$1 file=$2
  shift 2
  run_ctl "$label" "\$ etcdctl $* <$(basename "$file") ($(wc -c <"$file") bytes)" "$file" \
    "$ETCDCTL_BIN" --endpoints="$EP" --command-timeout=5s "$@"
}

# ec_timeout LABEL SECONDS SIGNAL ARGS...: a command that blocks (watch, elect), stopped after
# SECONDS by SIGNAL.
ec_timeout() {
  local label=$1 secs=$2 sig=$3
  shift 3
  run_ctl "$label" "\$ timeout -s $sig $secs etcdctl $*" /dev/null \
    timeout -s "$sig" "$secs" "$ETCDCTL_BIN" --endpoints="$EP" "$@"
}

# note LABEL TEXT: a check computed by the script itself.
note() {
  record "$1" "$2" 0
}

# Current revision, read without recording anything; 0 if the server does not answer (the
# checks that use it then differ and say so).
current_rev() {
  local json
  json=$("$ETCDCTL_BIN" --endpoints="$EP" --command-timeout=5s get compat-probe -w json 2>/dev/null) || true
  if [[ $json =~ \"revision\":([0-9]+) ]]; then
    echo "${BASH_REMATCH[1]}"
  else
    echo 0
  fi
}

wait_healthy() { # name, log
  local i
  for i in $(seq 1 100); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "etcdctl compat: $1 exited during startup; its log:" >&2
      tail -n 40 "$2" >&2 || true
      exit 1
    fi
    # Ready as etcd is once it serves clients: healthy, and its client URL published in the
    # member list (Aspen publishes it through Raft just after it starts serving).
    if "$ETCDCTL_BIN" --endpoints="$EP" "${TLS_FLAGS[@]}" --dial-timeout=1s --command-timeout=1s \
      endpoint health >/dev/null 2>&1 &&
      "$ETCDCTL_BIN" --endpoints="$EP" "${TLS_FLAGS[@]}" --dial-timeout=1s --command-timeout=1s \
        member list 2>/dev/null | grep -q "://$EP"; then
      return 0
    fi
    sleep 0.2
  done
  echo "etcdctl compat: $1 not ready (healthy, client URL published) after 20 s; its log:" >&2
  tail -n 40 "$2" >&2 || true
  exit 1
}

# ---------------------------------------------------------------------------------------------
# The command script. Everything here runs identically against both servers; only ids the
# server hands out (lease and member ids) are read back from earlier output.

run_suite() {
  local d="$WORK/$SERVER/scratch" rev i
  mkdir -p "$d"

  # --- KV: put / get ---
  ec put-foo put foo bar
  ec put-prev-kv put foo baz --prev-kv
  ec put-prev-kv-new-key put a/1 one --prev-kv
  ec put-a2 put a/2 two
  ec put-a3 put a/3 three
  ec put-b put b bee
  ec get-foo get foo
  ec get-missing get nosuchkey
  ec get-prefix get --prefix a/
  ec get-from-key get --from-key a/2
  ec get-limit get --prefix a/ --limit=2
  ec get-limit-json get --prefix a/ --limit=2 -w json
  ec get-range get a/1 a/3
  ec get-rev get foo --rev=2
  ec get-rev-before-key get a/1 --rev=3
  # Paging a range at a past revision (what Kubernetes' lists do): limit, then the rest from
  # the last key returned; counts and keys alone at that revision.
  ec get-limit-range-past-rev get a/1 a/4 --limit=1 --rev=5 -w json
  ec get-continue-past-rev get a/2 a/4 --limit=1 --rev=5 -w json
  ec get-count-only-past-rev get --prefix a/ --count-only --rev=5 -w json
  ec get-keys-only-past-rev get --prefix a/ --keys-only --rev=5 -w json
  ec get-keys-only-limit-past-rev get --prefix a/ --keys-only --limit=1 --rev=5 -w json
  ec get-sort-modify-desc get --prefix a/ --sort-by=MODIFY --order=DESCEND
  ec get-sort-key-desc get --prefix a/ --sort-by=KEY --order=DESCEND
  ec get-sort-value get --prefix a/ --sort-by=VALUE
  ec get-json get foo -w json
  ec get-json-prefix get --prefix a/ -w json
  ec get-keys-only get --prefix a/ --keys-only
  ec get-keys-only-json get --prefix a/ --keys-only -w json
  ec get-print-value-only get foo --print-value-only
  ec get-serializable get foo --consistency=s
  ec get-hex get foo --hex
  ec put-fields put foo qux -w fields
  ec get-fields get foo -w fields
  ec put-ignore-value-missing put nosuchkey --ignore-value
  ec put-ignore-value put foo --ignore-value
  ec get-after-ignore-value get foo -w json
  ec put-ignore-value-with-value put foo v --ignore-value
  ec put-empty-key put "" v
  ec get-empty-key get ""
  ec del-empty-key del ""

  # --- KV: delete ---
  ec del-missing del nosuchkey
  ec del-one del b
  ec put-c put c1 x
  ec del-prev-kv del c1 --prev-kv
  ec put-d1 put d/1 x
  ec put-d2 put d/2 y
  ec del-prefix del --prefix d/ --prev-kv
  ec get-after-del get --prefix d/ -w json
  ec put-z put z/1 z
  ec del-range-json del z/ z/2 -w json
  ec get-deleted-at-old-rev get z/1 --rev=16

  # --- Txn (etcdctl reads compares, success ops, failure ops; each ends at a blank line) ---
  ec put-t1 put t1 v1
  ec_in txn-success txn <<'EOF'
value("t1") = "v1"
version("t1") = "1"
mod("t1") > "0"
create("t1") > "0"

put t1 v2
get t1
del nosuchkey

put t1 failed

EOF
  ec_in txn-failure txn <<'EOF'
value("t1") = "v1"

put t1 v3

get t1
put t2 fromfailure

EOF
  ec_in txn-json txn -w json <<'EOF'
version("t2") = "1"

get t2
del t2 --prev-kv


EOF
  ec_in txn-duplicate-key txn <<'EOF'

put dup a
put dup b


EOF
  ec_in txn-put-deleted-key txn <<'EOF'

del dup
put dup x


EOF
  ec_in txn-compare-missing-key txn <<'EOF'
create("never") = "0"

put created-by-txn yes


EOF
  ec_in txn-compare-range txn <<'EOF'
mod("a/1") < "100"

get --prefix a/ --limit=1


EOF
  { echo; for i in $(seq 1 129); do echo "put many/$i v"; done; echo; echo; } >"$d/many"
  ec_file txn-too-many-ops "$d/many" txn

  # --- Compaction and revisions ---
  ec revision-before-compact get nosuchkey -w json
  ec compact compact 10
  ec get-compacted-rev get foo --rev=5
  ec get-at-compacted-rev get foo --rev=10
  ec compact-again compact 5
  ec compact-same compact 10
  ec compact-future compact 100000
  ec get-future-rev get foo --rev=100000
  ec get-rev-after-compact get --prefix a/ --rev=11
  ec compact-physical compact 12 --physical

  # --- Request size ---
  head -c $((1536 * 1024 + 1024)) /dev/zero | tr '\0' 'x' >"$d/big"
  ec_file put-too-large "$d/big" put bigkey
  ec get-too-large get bigkey -w json
  head -c $((1024 * 1024)) /dev/zero | tr '\0' 'y' >"$d/onemib"
  ec_file put-one-mib "$d/onemib" put onemib
  local mib_len
  mib_len=$({ "$ETCDCTL_BIN" --endpoints="$EP" --command-timeout=5s get onemib --print-value-only || true; } | tr -d '\n' | wc -c)
  note get-one-mib-length "value length: $mib_len"
  ec del-one-mib del onemib

  # --- Watch ---
  # The background watch starts at the next revision (--rev), so its output does not depend
  # on whether it registered before the first put.
  rev=$(current_rev)
  local watch_out="$d/watch.out" watch_rc=0 wpid
  timeout 4 "$ETCDCTL_BIN" --endpoints="$EP" watch --prefix w/ --prev-kv --rev=$((rev + 1)) \
    >"$watch_out" 2>&1 &
  wpid=$!
  BG_PIDS+=("$wpid")
  ec watch-put-1 put w/1 a
  ec watch-put-2 put w/2 b
  ec watch-put-1-again put w/1 c
  ec watch-del-1 del w/1
  ec watch-put-other put x/1 not-watched
  ec watch-del-prefix del --prefix w/
  wait "$wpid" || watch_rc=$?
  BG_PIDS=()
  record watch-prefix-prev-kv "\$ timeout 4 etcdctl watch --prefix w/ --prev-kv --rev=<next>"$'\n'"$(cat "$watch_out")" "$watch_rc"
  ec_timeout watch-history 2 TERM watch w/1 --rev=$((rev + 1))
  ec_timeout watch-history-prefix 2 TERM watch --prefix w/ --rev=$((rev + 3))
  ec_timeout watch-history-range 2 TERM watch w/ w/2 --rev=$((rev + 1))
  ec_timeout watch-compacted 2 TERM watch foo --rev=3
  ec_timeout watch-future 2 TERM watch foo --rev=$((rev + 1000))

  # --- Lease ---
  ec lease-grant lease grant 60
  local lease
  lease=$(sed -nE 's/^lease ([0-9a-f]+) granted.*/\1/p' <<<"$LAST")
  ec put-with-lease put lk lv --lease="$lease"
  ec put-with-lease-2 put lk2 lv2 --lease="$lease"
  ec lease-timetolive lease timetolive "$lease"
  ec lease-timetolive-keys lease timetolive --keys "$lease"
  ec lease-list lease list
  ec lease-keep-alive-once lease keep-alive --once "$lease"
  ec put-ignore-lease put lk lv-new --ignore-lease
  ec get-leased get lk -w json
  ec lease-revoke lease revoke "$lease"
  ec get-after-revoke get --prefix lk -w json
  ec lease-timetolive-revoked lease timetolive "$lease"
  ec lease-keep-alive-revoked lease keep-alive --once "$lease"
  ec lease-revoke-missing lease revoke 1234abcd
  ec put-missing-lease put k v --lease=1234abcd
  ec put-ignore-lease-no-key put nokey --ignore-lease
  ec lease-keep-alive-missing lease keep-alive --once 1234abcd
  ec lease-list-empty lease list
  ec lease-grant-too-large lease grant 9000000001

  # --- Lock and election (both hold a session lease; lock runs a command under the lock) ---
  ec_timeout lock 5 TERM lock mylock echo locked
  ec get-lock-released get --prefix mylock/ -w json
  local elect_out="$d/elect.out" elect_rc=0 epid
  timeout -s INT 4 "$ETCDCTL_BIN" --endpoints="$EP" elect myelection proposal1 \
    >"$elect_out" 2>&1 &
  epid=$!
  BG_PIDS+=("$epid")
  for i in $(seq 1 30); do
    grep -q proposal1 "$elect_out" 2>/dev/null && break
    sleep 0.1
  done
  ec_timeout elect-listen 1.5 INT elect --listen myelection
  ec get-election get --prefix myelection/ --print-value-only
  wait "$epid" || elect_rc=$?
  BG_PIDS=()
  record elect-campaign "\$ timeout -s INT 4 etcdctl elect myelection proposal1"$'\n'"$(cat "$elect_out")" "$elect_rc"
  # On SIGINT the leader resigns (deletes its key) and revokes its session lease.
  ec get-election-after get --prefix myelection/ -w json

  # --- Cluster ---
  ec member-list member list
  ec member-list-json member list -w json
  ec member-add-learner member add learner1 --learner --peer-urls="http://127.0.0.1:$LEARNER_PORT"
  local learner
  learner=$(sed -nE 's/^Member +([0-9a-f]+) added.*/\1/p' <<<"$LAST")
  ec member-list-with-learner member list
  ec member-add-existing-url member add learner2 --learner --peer-urls="http://127.0.0.1:$PEER_PORT"
  ec member-add-bad-url member add learner3 --learner --peer-urls=not-a-url
  ec member-promote-unstarted member promote "$learner"
  local self_id
  self_id=$({ "$ETCDCTL_BIN" --endpoints="$EP" --command-timeout=5s member list || true; } |
    sed -nE 's/^([0-9a-f]+), started, compat1,.*/\1/p')
  ec member-promote-voter member promote "$self_id"
  ec member-remove-learner member remove "$learner"
  ec member-remove-again member remove "$learner"
  ec member-promote-missing member promote 1234abcd
  ec member-list-after member list
  ec get-after-membership get foo -w json

  # --- Maintenance ---
  # Endpoints are given scheme-less (etcdctl's default form). etcdctl 3.4 dials each endpoint
  # of `endpoint status|hashkv` and `defrag` on its own connection and sends the endpoint as
  # written as the HTTP/2 :authority; an `http://` form there is malformed HTTP/2, which Go's
  # server tolerates and Rust's h2 refuses (a documented difference, see README).
  ec endpoint-status endpoint status -w table
  ec endpoint-health endpoint health
  ec endpoint-hashkv endpoint hashkv
  ec alarm-list alarm list
  ec alarm-disarm alarm disarm
  ec defrag defrag
  ec snapshot-save snapshot save "$d/snap.db"
  if [ -s "$d/snap.db" ]; then
    note snapshot-file "snapshot file written, non-empty"
  else
    note snapshot-file "snapshot file missing or empty"
  fi

  # --- Auth: users, roles, permissions on keys, ranges and prefixes; etcd 3.4's messages ---
  # Every call with --user authenticates first (a wrong password must fail the same way for a
  # user that does not exist). Ends with auth disabled and no users, so the final state is
  # the key-value one.
  ec auth-enable-no-root auth enable
  ec user-add-root user add root:rootpw
  ec auth-enable auth enable
  ec auth-put-no-user put authk v
  ec auth-wrong-password --user root:wrong get authk
  ec auth-unknown-user --user nobody:wrong get authk
  ec role-add --user root:rootpw role add app
  ec role-add-again --user root:rootpw role add app
  ec role-add-empty --user root:rootpw role add ""
  ec role-grant-prefix --user root:rootpw role grant-permission app readwrite --prefix app/
  ec role-grant-key --user root:rootpw role grant-permission app read shared
  ec role-grant-range --user root:rootpw role grant-permission app write k1 k5
  ec role-get --user root:rootpw role get app
  ec role-list --user root:rootpw role list
  ec user-add-alice --user root:rootpw user add alice:alicepw
  ec user-add-again --user root:rootpw user add alice:other
  ec user-grant --user root:rootpw user grant-role alice app
  ec user-grant-again --user root:rootpw user grant-role alice app
  ec user-grant-missing-role --user root:rootpw user grant-role alice nosuch
  ec user-grant-missing-user --user root:rootpw user grant-role nobody app
  ec user-get --user root:rootpw user get alice
  ec user-get-missing --user root:rootpw user get nobody
  ec user-list --user root:rootpw user list
  ec auth-put-in --user alice:alicepw put app/1 v1
  ec auth-get-in --user alice:alicepw get app/ --prefix
  ec auth-put-range --user alice:alicepw put k2 w
  ec auth-get-range-write-only --user alice:alicepw get k2
  ec auth-put-read-only --user alice:alicepw put shared x
  ec auth-get-out --user alice:alicepw get foo
  ec auth-range-wider --user alice:alicepw get app --prefix
  ec auth-del-out --user alice:alicepw del foo
  ec_in auth-txn-compare-out --user alice:alicepw txn <<'EOF'
value("foo") = "x"

put app/2 v

EOF
  ec_in auth-txn-failure-op-out --user alice:alicepw txn <<'EOF'
value("app/1") = "nope"

put app/2 v

put foo x

EOF
  ec_in auth-txn-in --user alice:alicepw txn <<'EOF'
value("app/1") = "v1"

put app/2 v2

EOF
  ec auth-user-list-denied --user alice:alicepw user list
  ec auth-user-get-self --user alice:alicepw user get alice
  ec auth-user-get-other --user alice:alicepw user get root
  ec auth-role-get-own --user alice:alicepw role get app
  ec auth-role-get-other --user alice:alicepw role get root
  ec auth-disable-denied --user alice:alicepw auth disable
  ec auth-defrag-denied --user alice:alicepw defrag
  ec auth-hashkv-denied --user alice:alicepw endpoint hashkv
  ec auth-user-delete-root --user root:rootpw user delete root
  ec auth-role-delete-root --user root:rootpw role delete root
  ec auth-revoke-root-role --user root:rootpw user revoke-role root root
  ec auth-revoke-perm-missing --user root:rootpw role revoke-permission app nosuch
  ec auth-revoke-perm-key --user root:rootpw role revoke-permission app shared
  ec auth-revoke-perm-range --user root:rootpw role revoke-permission app k1 k5
  ec auth-role-get-after --user root:rootpw role get app
  ec_in auth-passwd --user root:rootpw user passwd alice --interactive=false <<'EOF'
newpw
EOF
  ec auth-old-password --user alice:alicepw get app/1
  ec auth-new-password --user alice:newpw get app/1
  ec auth-revoke-role-missing --user root:rootpw user revoke-role alice nosuch
  ec auth-revoke-role --user root:rootpw user revoke-role alice app
  ec auth-get-after-revoke --user alice:newpw get app/1
  ec auth-user-delete --user root:rootpw user delete alice
  ec auth-user-delete-again --user root:rootpw user delete alice
  ec auth-role-delete --user root:rootpw role delete app
  ec auth-role-delete-again --user root:rootpw role delete app
  ec auth-disable --user root:rootpw auth disable
  ec auth-open-again get app/ --prefix
  ec auth-delete-root-user user delete root
  ec auth-delete-root-role role delete root
  ec auth-user-list-empty user list

  # --- Final state: every key left, with its revisions ---
  ec final-get-all get "" --from-key -w json --keys-only
}

# ---------------------------------------------------------------------------------------------
# Masking: applied to both transcripts, each with its own ports and paths. Only values that
# differ between any two servers (or any two runs of one) are masked; each rule says why.

mask_dir() { # dir
  python3 - "$1" "$WORK/$SERVER" "$CLIENT_PORT" "$PEER_PORT" "$LEARNER_PORT" "$METRICS_PORT" <<'PY'
import os, re, sys

directory, work, client, peer, learner, metrics = sys.argv[1:]
PORTS = {client: "<CLIENT>", peer: "<PEER>", learner: "<LEARNER>", metrics: "<METRICS>"}

RULES = [
    # Ports are picked at runtime; the scratch dir is a fresh temp dir.
    (re.compile(r"127\.0\.0\.1:(\d+)\b"),
     lambda m: "127.0.0.1:" + PORTS.get(m.group(1), m.group(1))),
    (re.compile(re.escape(work)), lambda m: "<WORK>"),
    # Timings.
    (re.compile(r"took = [0-9.]+[a-zµ]+"), lambda m: "took = <T>"),
    # Cluster and member ids (random in etcd, hashes in Aspen), Raft terms (etcd's single
    # node campaigns into term 2, openraft's into term 1), hashes: JSON (decimal) ...
    (re.compile(r'"(cluster_id|member_id|raft_term|hash|ID)":\d+'), lambda m: f'"{m.group(1)}":<N>'),
    # ... -w fields ...
    (re.compile(r'^"(ClusterID|MemberID|RaftTerm)" : \d+$'), lambda m: f'"{m.group(1)}" : <N>'),
    # ... and hex, which etcdctl pads to 16 columns with spaces.
    (re.compile(r"^Member +[0-9a-f]+ (added to|removed from|promoted in) cluster +[0-9a-f]+$"),
     lambda m: f"Member <ID> {m.group(1)} cluster <ID>"),
    (re.compile(r"^[0-9a-f]+, (started|unstarted), "), lambda m: f"<ID>, {m.group(1)}, "),
    (re.compile(r"^(\$ etcdctl member (promote|remove)) [0-9a-f]+$"), lambda m: m.group(1) + " <ID>"),
    # Lease ids: the server picks them (etcd randomly); the commands that used one too.
    (re.compile(r"^(\$ etcdctl .*--lease=)[0-9a-f]+"), lambda m: m.group(1) + "<LEASE>"),
    (re.compile(r"^(\$ etcdctl lease (timetolive|revoke|keep-alive)( --keys| --once)?) [0-9a-f]+$"),
     lambda m: m.group(1) + " <LEASE>"),
    (re.compile(r"^lease [0-9a-f]+ "), lambda m: "lease <LEASE> "),
    (re.compile(r'"lease":\d+'), lambda m: '"lease":<LEASE>'),
    # Lock and election keys are "<name>/<lease id in hex>".
    (re.compile(r"^(mylock|myelection)/[0-9a-f]+$"), lambda m: m.group(1) + "/<LEASE>"),
    # A lease's remaining TTL depends on when the command ran.
    (re.compile(r"remaining\(\d+s\)"), lambda m: "remaining(<S>)"),
    # etcd lists a lease's keys in Go map order (random from run to run); compare them sorted.
    (re.compile(r"attached keys\(\[([^\]]*)\]\)"),
     lambda m: "attached keys([" + " ".join(sorted(m.group(1).split())) + "])"),
    # endpoint hashkv: the hash covers the backends' own encodings.
    (re.compile(r"^((http://)?127\.0\.0\.1:<CLIENT>), \d+$"), lambda m: m.group(1) + ", <HASH>"),
]

# endpoint status -w table columns that differ by construction: ID (random), VERSION (Aspen
# reports the etcd API version it implements, 3.5.0, where etcd 3.4 reports its release), DB
# SIZE (different storage engines), RAFT TERM / RAFT INDEX / RAFT APPLIED INDEX (openraft and
# etcd/raft append different bookkeeping entries: elections, membership, blank entries).
TABLE_MASKED = {"ID", "VERSION", "DB SIZE", "RAFT TERM", "RAFT INDEX", "RAFT APPLIED INDEX"}


def mask_table(lines):
    header, out = None, []
    for line in lines:
        if line.startswith("+") and set(line) <= set("+-"):
            out.append("+-+")  # column widths follow the masked values
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            else:
                cells = ["<M>" if i < len(header) and header[i] in TABLE_MASKED else c
                         for i, c in enumerate(cells)]
            out.append("| " + " | ".join(cells) + " |")
        else:
            out.append(line)
    return out


def mask(text):
    lines = text.split("\n")
    if lines[0].startswith("$ etcdctl snapshot save"):
        # etcdctl's zap log lines: times, sizes and durations of the download.
        lines = [l for l in lines if not l.startswith('{"level":')]
    # Any other client log line (a retry warning shows the gRPC code) is kept, minus its
    # timestamp and the client's random connection name.
    lines = [re.sub(r'^(\{"level":"[a-z]+","ts":)("[^"]*"|[0-9.e+]+)', r"\1<TS>", l) for l in lines]
    lines = [re.sub(r"endpoint://client-[0-9a-f-]+/", "endpoint://client-<UUID>/", l) for l in lines]
    for i, line in enumerate(lines):
        for pattern, repl in RULES:
            line = pattern.sub(repl, line)
        lines[i] = line
    command = lines[0]
    body, tail = lines[1:-1], lines[-1:]
    if command.startswith("$ etcdctl member list") and "-w" not in command:
        body.sort()  # etcd lists members by id, and ids are random
    if command.startswith("$ etcdctl lease list"):
        body = [re.sub(r"^[0-9a-f]+$", "<LEASE>", l) for l in body]
    for i, line in enumerate(body):
        m = re.match(r'^ETCD_INITIAL_CLUSTER="(.*)"$', line)
        if m:  # ordered by member id
            body[i] = 'ETCD_INITIAL_CLUSTER="' + ",".join(sorted(m.group(1).split(","))) + '"'
    return "\n".join(mask_table([command] + body + tail))


for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(mask(text))
PY
}

# ---------------------------------------------------------------------------------------------
# Servers.

start_etcd() {
  local dir="$WORK/etcd"
  "$ETCD_BIN" --name compat1 --data-dir "$dir/data-$ROUND" \
    --listen-client-urls "$SCHEME://127.0.0.1:$CLIENT_PORT" \
    --advertise-client-urls "$SCHEME://127.0.0.1:$CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "compat1=http://127.0.0.1:$PEER_PORT" \
    --initial-cluster-state new --initial-cluster-token compat \
    --listen-metrics-urls "http://127.0.0.1:$METRICS_PORT" \
    "${SERVER_TLS[@]}" >"$dir/server-$ROUND.log" 2>&1 &
  SERVER_PID=$!
}

start_aspen() {
  local dir="$WORK/aspen"
  "$ASPEN_BIN" --name compat1 --data-dir "$dir/data-$ROUND" \
    --listen-client-urls "$SCHEME://127.0.0.1:$CLIENT_PORT" \
    --advertise-client-urls "$SCHEME://127.0.0.1:$CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "compat1=http://127.0.0.1:$PEER_PORT" \
    --initial-cluster-state new --initial-cluster-token compat \
    --listen-metrics-urls "http://127.0.0.1:$METRICS_PORT" \
    "${SERVER_TLS[@]}" >"$dir/server-$ROUND.log" 2>&1 &
  SERVER_PID=$!
}

run_against() { # etcd|aspen, suite function
  SERVER=$1
  SEQ=0
  OUT="$WORK/$SERVER/checks-$ROUND"
  mkdir -p "$OUT"
  read -r CLIENT_PORT PEER_PORT METRICS_PORT LEARNER_PORT < <(free_ports 4)
  EP="127.0.0.1:$CLIENT_PORT"
  "start_$SERVER"
  wait_healthy "$SERVER" "$WORK/$SERVER/server-$ROUND.log"
  SUITE_START=$(date +%s)
  SKIP_REASON=""
  "$2"
  stop_server
  mask_dir "$OUT"
}

# ---------------------------------------------------------------------------------------------
# The TLS round: a CA, a server certificate for 127.0.0.1, a client certificate, and one from
# another CA, all made here (nothing is committed); then a short script with refusals.

PKI="$WORK/pki"

make_pki() {
  mkdir -p "$PKI"
  local ca name
  for ca in ca other-ca; do
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
      -subj "/CN=compat $ca" -keyout "$PKI/$ca-key.pem" -out "$PKI/$ca.pem" 2>/dev/null
  done
  for name in server:ca client:ca stranger:other-ca; do
    ca=${name#*:}
    name=${name%%:*}
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$name" \
      -keyout "$PKI/$name-key.pem" -out "$PKI/$name.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.pem" -CAkey "$PKI/$ca-key.pem" \
      -CAcreateserial -days 30 -out "$PKI/$name.pem" 2>/dev/null \
      -extfile <(printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth')
  done
}

# ctl_as LABEL DISPLAY TLS-FLAGS... -- ARGS...: etcdctl with other TLS flags than the round's.
ctl_as() {
  local label=$1 display=$2
  shift 2
  local flags=()
  while [ "$1" != "--" ]; do flags+=("$1"); shift; done
  shift
  run_ctl "$label" "\$ etcdctl $display $*" /dev/null \
    "$ETCDCTL_BIN" --endpoints="$EP" "${flags[@]}" --dial-timeout=2s --command-timeout=3s "$@"
}

run_tls_suite() {
  ec tls-put put tk tv
  ec tls-get get tk
  ec tls-get-json get tk -w json
  ec tls-member-list member list
  ec tls-endpoint-health endpoint health
  ec tls-txn-del del tk --prev-kv
  ec tls-put-again put tk tv2
  # Refusals; the server must stay up.
  ctl_as tls-no-client-cert "--cacert=ca.pem" --cacert="$PKI/ca.pem" -- get tk
  ctl_as tls-unknown-ca "--cacert=ca.pem --cert=stranger.pem --key=stranger-key.pem" \
    --cacert="$PKI/ca.pem" --cert="$PKI/stranger.pem" --key="$PKI/stranger-key.pem" -- get tk
  ctl_as tls-untrusted-server "--cacert=other-ca.pem --cert=client.pem --key=client-key.pem" \
    --cacert="$PKI/other-ca.pem" --cert="$PKI/client.pem" --key="$PKI/client-key.pem" -- get tk
  ctl_as tls-wrong-key "--cacert=ca.pem --cert=client.pem --key=stranger-key.pem" \
    --cacert="$PKI/ca.pem" --cert="$PKI/client.pem" --key="$PKI/stranger-key.pem" -- get tk
  ctl_as tls-plaintext "(no TLS flags)" -- get tk
  ec tls-still-serving get tk --print-value-only
}

# ---------------------------------------------------------------------------------------------
# The JWT round: both servers with --auth-token jwt and the same ES256 key pair (made here;
# openssl writes a SEC1 "EC PRIVATE KEY"). Tokens themselves differ (signatures, exp); what
# etcdctl sees must not. Raw bad tokens go through the JSON gateway's Authorization header.

make_jwt_keys() {
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/jwt.key" 2>/dev/null
  openssl ec -in "$PKI/jwt.key" -pubout -out "$PKI/jwt.pub" 2>/dev/null
}

# gateway_token LABEL TOKEN: a Range through the JSON gateway with TOKEN as the Authorization.
gateway_token() {
  run_ctl "$1" "\$ curl -XPOST /v3/kv/range -H 'Authorization: $2'" /dev/null \
    curl -s -XPOST "http://$EP/v3/kv/range" -H "Authorization: $2" -d '{"key":"aw=="}'
}

run_jwt_suite() {
  ec jwt-user-add-root user add root:rootpw
  ec jwt-auth-enable auth enable
  ec jwt-put-no-user put jk v
  ec jwt-wrong-password --user root:wrong get jk
  ec jwt-put-root --user root:rootpw put jk v
  ec jwt-get-root --user root:rootpw get jk
  ec jwt-role-add --user root:rootpw role add app
  ec jwt-role-grant --user root:rootpw role grant-permission app readwrite --prefix j
  ec jwt-user-add-alice --user root:rootpw user add alice:alicepw
  ec jwt-user-grant --user root:rootpw user grant-role alice app
  ec jwt-alice-put --user alice:alicepw put jk2 v2
  ec jwt-alice-get --user alice:alicepw get j --prefix
  ec jwt-alice-denied --user alice:alicepw put other x
  ec_in jwt-passwd --user root:rootpw user passwd alice --interactive=false <<'EOF'
newpw
EOF
  ec jwt-old-password --user alice:alicepw get jk
  ec jwt-new-password --user alice:newpw get jk
  gateway_token jwt-gateway-garbage a.b.c
  gateway_token jwt-gateway-alg-none \
    eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJleHAiOjQxMDI0NDQ4MDAsInJldmlzaW9uIjo5OSwidXNlcm5hbWUiOiJyb290In0.
  ec jwt-auth-disable --user root:rootpw auth disable
  ec jwt-open-again get jk
}

# The force round: a member restarted with --force-new-cluster keeps its data and serves alone,
# and a voter added to that one-member cluster is accepted at once (etcd's special case for
# growing it back after a lost majority); the cluster then waits for the new member.
run_force_suite() {
  ec force-put put fk fv1
  ec force-put-again put fk fv2
  stop_server
  SERVER_TLS=(--force-new-cluster)
  "start_$SERVER"
  wait_healthy "$SERVER" "$WORK/$SERVER/server-$ROUND.log"
  SERVER_TLS=()
  ec force-get get fk -w json
  ec force-put-after put fk fv3
  ec force-members member list
  ec force-add-voter member add compat2 --peer-urls="http://127.0.0.1:$LEARNER_PORT"
  ec force-members-after-add member list
}

started=$(date +%s)
run_against etcd run_suite
run_against aspen run_suite

make_pki
ROUND=tls
SCHEME=https
TLS_FLAGS=(--cacert="$PKI/ca.pem" --cert="$PKI/client.pem" --key="$PKI/client-key.pem")
SERVER_TLS=(--cert-file="$PKI/server.pem" --key-file="$PKI/server-key.pem"
  --trusted-ca-file="$PKI/ca.pem" --client-cert-auth)
run_against etcd run_tls_suite
run_against aspen run_tls_suite

make_jwt_keys
ROUND=jwt
SCHEME=http
TLS_FLAGS=()
SERVER_TLS=(--auth-token "jwt,pub-key=$PKI/jwt.pub,priv-key=$PKI/jwt.key,sign-method=ES256")
run_against etcd run_jwt_suite
run_against aspen run_jwt_suite

ROUND=force
SERVER_TLS=()
run_against etcd run_force_suite
run_against aspen run_force_suite

# ---------------------------------------------------------------------------------------------
# Compare check by check.

passed=0
failed=0
failures=()
for f in "$WORK"/etcd/checks-*/*; do
  name=$(basename "$(dirname "$f")")/$(basename "$f")
  other="$WORK/aspen/$name"
  if [ ! -f "$other" ]; then
    failed=$((failed + 1))
    failures+=("$name: missing from the aspen transcript")
    continue
  fi
  if cmp -s "$f" "$other"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "---- $name: etcd (-) vs aspen (+)"
    diff -u --label etcd --label aspen "$f" "$other" | tail -n +3 || true
  fi
done
extra=$(comm -13 <(cd "$WORK/etcd" && ls checks-*/*) <(cd "$WORK/aspen" && ls checks-*/*) || true)
if [ -n "$extra" ]; then
  failed=$((failed + 1))
  failures+=("aspen-only checks: $extra")
fi

elapsed=$(($(date +%s) - started))
if [ "$failed" -ne 0 ]; then
  echo
  echo "failed checks:"
  printf '  %s\n' "${failures[@]}"
  echo "etcdctl compat: $passed passed, $failed failed (${elapsed}s)"
  exit 1
fi
echo "etcdctl compat: $passed passed, 0 failed (${elapsed}s)"
