#!/usr/bin/env bash
# A throw-away Ceph cluster for the RADOS tests: one monitor, one manager and
# N memstore OSDs (objects kept in RAM), bound to 127.0.0.1 only, everything
# (conf, keyrings, data, logs, pid files, admin sockets) under one directory.
#
#   scripts/ceph-cluster.sh start DIR [--osds N] [--memstore-mib M]
#       start a cluster in DIR (new or empty)
#   scripts/ceph-cluster.sh stop DIR               kill its daemons (pid files) and remove DIR
#   scripts/ceph-cluster.sh run [--osds N] [--memstore-mib M] -- CMD...
#       start a cluster in a mktemp directory, run CMD with CEPH_CONF and
#       IQDB_RADOS_POOL exported, stop the cluster on every exit path (CMD
#       failing, INT, TERM; a watcher process also stops it if this script is
#       SIGKILLed). Exits with CMD's status.
#   --memstore-mib M: each OSD's memstore capacity (memstore_device_bytes),
#       default 1024. Every OSD holds a replica of everything in RAM, taken
#       as objects are written: 3 OSDs of 3072 MiB may use 9 GiB.
#
# After start: `CEPH_CONF=DIR/ceph.conf rados -p iqdb-test ls -` works; the
# pool is DIR/pool (`iqdb-test`), size min(N, 3) (min_size 2 when N >= 3,
# else 1), 8 PGs.
# IQDB_CEPH_TIMEOUT (seconds, default 90) bounds each wait; on a timeout the
# script says what it waited for and prints the tail of every log.
#
# Why here (scripts/) and not under tests/: it is a developer tool as much as a
# test fixture (manual experiments, benchmarks, CI), like scripts/demo.sh.
#
# Debian 12 packages it needs (not in scripts/deps.sh yet):
#   ceph-mon ceph-osd ceph-mgr ceph-common
# (the library component and its tests need librados-dev;
# python3-rados, used below, comes with ceph-common). Installed
# with --no-install-recommends, which leaves out only ceph-base's recommends
# (ceph-mds, chrony | time-daemon | ntp; btrfs-tools does not exist in
# Debian 12): the daemons do not need them.
#
# Runs as root (as CI does): the daemons are started without --setuser, so
# they run as the user who starts them; nothing is written outside DIR (run
# dir, admin sockets, crash dir, logs, pid files all point into it; clients
# using DIR/ceph.conf put their admin sockets in DIR/run too). No systemd.
#
# Measured on the development machine (2 cores shared with other builds, load
# average ~7, Debian 12, Ceph 16.2.15), start to HEALTH_OK with every PG
# active+clean (start prints its own "measured:" line each time):
#   1 OSD:  5.5-11 s, daemons' RSS 236 MiB;  3 OSDs: 8.8-12.4 s, 327 MiB;
#   stop: ~2 s (the times vary with the other builds' load).
# What makes it fast: the monitor commands go through one librados connection
# (python3-rados) instead of a `ceph` process each; the manager loads only the
# modules the monitor expects always on (~0.4 s each; all of them took 12 s);
# paxos_propose_interval 0.01 s; the manager starts with the monitor.
set -euo pipefail

self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
timeout_s=${IQDB_CEPH_TIMEOUT:-90}
pool=iqdb-test
marker=.iqdb-ceph-cluster

die() { echo "ceph-cluster.sh: $*" >&2; exit 1; }
say() { echo "ceph-cluster.sh: $*" >&2; }
now_ms() { date +%s%3N; }

usage() {
  sed -n '2,16p' "$self" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# A TCP port on 127.0.0.1 that is free right now (the caller retries if it is
# taken by the time the daemon binds it).
free_port() {
  /usr/bin/python3 - <<'EOF'
import random, socket
for _ in range(200):
    p = random.randint(20000, 59000)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
else:
    raise SystemExit("no free port found")
EOF
}

# The monitor commands, through librados's Python binding (one connection
# instead of a `ceph` process per command: each costs ~1 s of Python start-up
# on a busy machine). Debian's python3 (python3-rados is a ceph-common dependency).
cluster_py() {
  /usr/bin/python3 - "$@" <<'EOF'
import json, os, sys, time, uuid
import rados

mode, conf, n, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + timeout
t0 = time.monotonic()

def fail(msg):
    print("ceph-cluster.sh: " + msg, file=sys.stderr)
    sys.exit(1)

def connect(mon_pid=None):
    while True:
        if mon_pid is not None:
            try:
                os.kill(mon_pid, 0)
            except OSError:
                fail("the monitor exited")
        c = rados.Rados(conffile=conf, conf={"client_mount_timeout": "5", "rados_mon_op_timeout": "15"})
        try:
            c.connect(timeout=5)
            return c
        except rados.Error as e:
            if time.monotonic() > deadline:
                fail("timed out after %gs connecting to the monitor: %s" % (timeout, e))
            time.sleep(0.2)

def cmd(c, **kw):
    ret, out, err = c.mon_command(json.dumps(kw), b"")
    if ret != 0:
        raise RuntimeError("%s: %s (%d)" % (kw["prefix"], err, ret))
    return json.loads(out) if kw.get("format") == "json" else out

def wait(what, cond):
    last = None
    while True:
        try:
            ok, last = cond()
            if ok:
                return
        except (rados.Error, RuntimeError) as e:
            last = str(e)
        if time.monotonic() > deadline:
            fail("timed out after %gs waiting for %s; last status:\n%s" % (timeout, what, last))
        time.sleep(0.2)

if mode == "osd-new":
    c = connect(int(sys.argv[5]))
    for i in range(n):
        u = str(uuid.uuid4())
        cmd(c, prefix="osd new", uuid=u, id=i)
        print(i, u)
    c.shutdown()
elif mode == "finish":
    pool = sys.argv[5]
    c = connect()
    def osds_up():
        s = cmd(c, prefix="osd stat", format="json")
        return s["num_up_osds"] == n and s["num_in_osds"] == n, s
    wait("%d OSD(s) up and in" % n, osds_up)
    t_up = time.monotonic()
    try:
        cmd(c, prefix="osd pool create", pool=pool, pg_num=8, pgp_num=8, pool_type="replicated")
    except RuntimeError:  # the first map of a new cluster can refuse once
        time.sleep(0.5)
        cmd(c, prefix="osd pool create", pool=pool, pg_num=8, pgp_num=8, pool_type="replicated")
    cmd(c, prefix="osd pool application enable", pool=pool, app="rados")
    t_pool = time.monotonic()
    def healthy():
        s = cmd(c, prefix="status", format="json")
        pgs = s["pgmap"]
        clean = sum(x["count"] for x in pgs.get("pgs_by_state", []) if x["state_name"] == "active+clean")
        ok = s["health"]["status"] == "HEALTH_OK" and pgs["num_pgs"] >= 8 and clean == pgs["num_pgs"]
        return ok, json.dumps({"health": s["health"], "pgmap": pgs}, indent=1)
    wait("HEALTH_OK and every PG active+clean", healthy)
    print("OSDs up +%dms, pool +%dms, healthy +%dms" % ((t_up - t0) * 1000, (t_pool - t0) * 1000,
                                                      (time.monotonic() - t0) * 1000))
    c.shutdown()
EOF
}


tail_logs() {
  local dir=$1 f
  for f in "$dir"/log/*; do
    [ -f "$f" ] || continue
    echo "---- tail of ${f#"$dir"/}" >&2
    tail -n 25 "$f" >&2 || true
  done
}

start_daemon() {  # name, command...
  local name=$1
  shift
  # Own session: a Ctrl-C meant for the caller does not reach the daemons
  # (stop does, in order). Foreground (-f) so that $! is the daemon.
  setsid "$@" -f </dev/null >"$dir/log/$name.out" 2>&1 &
  echo $! >"$dir/pids/$name"
}

daemon_alive() { kill -0 "$(cat "$dir/pids/$1")" 2>/dev/null; }

write_conf() {  # mon_port, osds, memstore MiB
  local port=$1 osds=$2 mib=$3 size min_size
  size=$osds
  min_size=1
  [ "$osds" -ge 3 ] && { size=3; min_size=2; }
  cat >"$dir/ceph.conf" <<EOF
# Written by scripts/ceph-cluster.sh: a throw-away test cluster.
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$port]
mon_initial_members = a
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr1 = false
ms_bind_msgr2 = true
ms_bind_ipv4 = true
ms_bind_ipv6 = false
ms_bind_port_min = $port_base
ms_bind_port_max = $((port_base + 399))
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = $dir/client.admin.keyring
run_dir = $dir/run
# Clients' sockets too (\$cctid: one per librados handle in a process).
admin_socket = $dir/run/\$cluster-\$name.\$pid.\$cctid.asok
pid_file = $dir/run/\$cluster-\$name.pid
crash_dir = $dir/crash
exporter_sock_dir = $dir/run
log_to_stderr = false
err_to_stderr = true
log_to_syslog = false
mon_cluster_log_to_file = true
mon_cluster_log_file = $dir/log/cluster.log
# One host, N OSDs: replicas go to different OSDs, not hosts.
osd_crush_chooseleaf_type = 0
osd_pool_default_size = $size
osd_pool_default_min_size = $min_size
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_warn_on_insecure_global_id_reclaim = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
mon_data_avail_warn = 1
mon_data_avail_crit = 0
# Fast pool creation and map changes (default 1 s between proposals).
paxos_propose_interval = 0.01
paxos_min_wait = 0.01
# Fast OSD failure detection on one host (by default a paused OSD is not
# marked down in useful time): each OSD is its own failure domain.
mon_osd_reporter_subtree_level = osd
mon_osd_min_down_reporters = 1
osd_heartbeat_grace = 5
osd_heartbeat_interval = 1
# Tests pause OSDs on purpose: an OSD marked down more than
# osd_max_markdown_count times (default 5) in 10 minutes shuts itself down.
osd_max_markdown_count = 1000
# Quick stats, so health and PG states are current within a second.
mgr_stats_period = 1
mon_mgr_digest_period = 1
mgr_tick_period = 1
osd_mon_report_interval = 1
osd_pool_default_flag_hashpspool = true
[mon]
mon_data = $dir/mon.\$id
keyring = $dir/daemons.keyring
log_file = $dir/log/\$name.log
[mgr]
mgr_data = $dir/mgr.\$id
# Only the modules the monitor expects always on, minus the slow ones: the
# manager loads every module it finds, ~0.4 s each on this machine.
mgr_module_path = $dir/mgr-modules
mgr_initial_modules =
keyring = $dir/daemons.keyring
log_file = $dir/log/\$name.log
[osd]
osd_data = $dir/osd.\$id
keyring = $dir/daemons.keyring
log_file = $dir/log/\$name.log
osd_objectstore = memstore
memstore_device_bytes = $((mib * 1024 * 1024))
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
EOF
}

do_start() {
  dir=$1
  local osds=$2 mib=$3 t0 t_mon t_ready i uuid key attempt port osd_uuids timings
  [ "$osds" -ge 1 ] 2>/dev/null || die "--osds must be a positive number"
  [ "$mib" -ge 64 ] 2>/dev/null || die "--memstore-mib must be a number of MiB, at least 64"
  [ -x /usr/bin/python3 ] || die "/usr/bin/python3 not found: apt-get install --no-install-recommends ceph-common"
  for tool in ceph ceph-mon ceph-mgr ceph-osd ceph-authtool monmaptool; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install --no-install-recommends ceph-mon ceph-osd ceph-mgr ceph-common"
  done
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then die "$dir is not empty"; fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  touch "$dir/$marker"
  mkdir -p "$dir"/{log,run,pids,crash}
  t0=$(now_ms)
  fsid=$(cat /proc/sys/kernel/random/uuid)

  # Keys: every daemon's and the admin's in one keyring that the monitor
  # imports at mkfs; the admin's alone in the client keyring.
  ceph-authtool --create-keyring "$dir/daemons.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$dir/daemons.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
  ceph-authtool "$dir/daemons.keyring" --gen-key -n mgr.x \
    --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *' >/dev/null
  for ((i = 0; i < osds; i++)); do
    ceph-authtool "$dir/daemons.keyring" --gen-key -n "osd.$i" \
      --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *' >/dev/null
  done
  key=$(ceph-authtool "$dir/daemons.keyring" -n client.admin --print-key)
  printf '[client.admin]\n\tkey = %s\n' "$key" >"$dir/client.admin.keyring"
  echo "$pool" >"$dir/pool"
  local m
  mkdir -p "$dir/mgr-modules"
  for m in /usr/share/ceph/mgr/*.py ${IQDB_CEPH_MGR_MODULES:-balancer crash devicehealth orchestrator pg_autoscaler progress rbd_support status telemetry volumes}; do
    # (A bare name is a module of /usr/share/ceph/mgr, never a path: a file
    # of that name in the caller's directory was linked before, as a
    # dangling link the manager aborted on.)
    case $m in /*) ;; *) m=/usr/share/ceph/mgr/$m ;; esac
    [ -e "$m" ] && ln -s "$m" "$dir/mgr-modules/"
  done

  # The monitor, on a random free port; if something takes the port before
  # the monitor binds it, start over with another.
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    port_base=$(( (RANDOM % 90 + 300) * 100 ))  # OSD/manager ports: 30000..38999, +400
    write_conf "$port" "$osds" "$mib"
    rm -rf "$dir/mon.a" "$dir/monmap"
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$dir/monmap" >/dev/null
    ceph-mon --conf "$dir/ceph.conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/daemons.keyring" \
      >"$dir/log/mon-mkfs.out" 2>&1 || { cat "$dir/log/mon-mkfs.out" >&2; die "ceph-mon --mkfs failed"; }
    start_daemon mon.a ceph-mon --conf "$dir/ceph.conf" -i a
    # The manager spends seconds loading its Python modules before it
    # contacts the monitor: start it at once.
    daemon_alive mgr.x 2>/dev/null || start_daemon mgr.x ceph-mgr --conf "$dir/ceph.conf" -i x
    # Connects as soon as the monitor answers, then registers the OSDs.
    if osd_uuids=$(cluster_py osd-new "$dir/ceph.conf" "$osds" "$timeout_s" "$(cat "$dir/pids/mon.a")"); then
      break
    fi
    kill_daemons
    if ! grep -q -i "address already in use" "$dir"/log/mon.a.* 2>/dev/null || [ "$attempt" = 5 ]; then
      tail_logs "$dir"
      die "the monitor did not start (logs above)"
    fi
    say "port $port was taken; retrying"
  done
  t_mon=$(now_ms)

  while read -r i uuid; do
    mkdir -p "$dir/osd.$i"
    ceph-osd --conf "$dir/ceph.conf" -i "$i" --mkfs --osd-uuid "$uuid" >"$dir/log/osd.$i-mkfs.out" 2>&1 ||
      { cat "$dir/log/osd.$i-mkfs.out" >&2; die "ceph-osd --mkfs failed for osd.$i"; }
    start_daemon "osd.$i" ceph-osd --conf "$dir/ceph.conf" -i "$i"
  done <<<"$osd_uuids"

  # OSDs up and in, the pool, then HEALTH_OK with every PG active+clean.
  if ! timings=$(cluster_py finish "$dir/ceph.conf" "$osds" "$timeout_s" "$pool"); then
    tail_logs "$dir"
    die "the cluster did not become healthy (logs above)"
  fi
  t_ready=$(now_ms)

  local rss=0 p
  for p in "$dir"/pids/*; do
    rss=$((rss + $(awk '/^VmRSS/ {print $2}' "/proc/$(cat "$p")/status" 2>/dev/null || echo 0)))
  done
  say "measured: monitor up and OSDs registered $((t_mon - t0))ms, then $timings; HEALTH_OK + active+clean in $((t_ready - t0))ms, daemons' RSS $((rss / 1024)) MiB ($osds OSD(s))"
  say "cluster up: CEPH_CONF=$dir/ceph.conf, pool $pool"
}

kill_daemons() {  # KILL (the data is thrown away), only the pids recorded in DIR/pids
  local f pid pids=() deadline
  for f in "$dir"/pids/*; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    # Only if it still is one of our daemons (pid reuse).
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$dir/ceph.conf"; then
      kill -KILL "$pid" 2>/dev/null && pids+=("$pid")
    fi
  done
  deadline=$(($(date +%s) + 10))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      [ "$(date +%s)" -lt "$deadline" ] || break
      sleep 0.1
    done
  done
  rm -f "$dir"/pids/*
}

do_stop() {
  dir=$1
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd)
  [ -f "$dir/$marker" ] || die "$dir was not made by this script (no $marker): not touching it"
  kill_daemons
  rm -rf "$dir"
}

do_run() {
  local osds=$1 mib=$2
  shift 2
  [ $# -gt 0 ] || usage
  local d rc=0 cmd_pid="" watcher=""
  d=$(mktemp -d "${TMPDIR:-/tmp}/iqdb-ceph.XXXXXXXX")
  cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM
    if [ -n "$cmd_pid" ]; then kill -TERM "$cmd_pid" 2>/dev/null; wait "$cmd_pid" 2>/dev/null; fi
    if [ -n "$watcher" ]; then kill "$watcher" 2>/dev/null; fi
    "$self" stop "$d"
    exit "$status"
  }
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # If this script is SIGKILLed, its traps never run: a watcher in its own
  # session stops CMD (TERM) and the cluster once this shell is gone.
  setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done
    [ -f "$3/cmd.pid" ] && kill -TERM "$(cat "$3/cmd.pid")"
    "$2" stop "$3"' _ $$ "$self" "$d" </dev/null >/dev/null 2>&1 &
  watcher=$!
  "$self" start "$d" --osds "$osds" --memstore-mib "$mib" || exit 1
  export CEPH_CONF="$d/ceph.conf" IQDB_RADOS_POOL="$pool"
  # In the background so that INT/TERM reach the traps at once (bash runs
  # traps only between foreground commands); stdin passed on explicitly.
  "$@" <&0 &
  cmd_pid=$!
  echo "$cmd_pid" >"$d/cmd.pid"
  wait "$cmd_pid" || rc=$?
  cmd_pid=""
  exit "$rc"
}

cmd=${1:-}
[ -n "$cmd" ] || usage
shift
case "$cmd" in
  start)
    [ $# -ge 1 ] || usage
    target=$1
    shift
    n=1
    mib=1024
    while [ $# -gt 0 ]; do
      case "$1" in
        --osds) n=${2:?}; shift 2 ;;
        --memstore-mib) mib=${2:?}; shift 2 ;;
        *) usage ;;
      esac
    done
    # A start that fails half-way kills what it started (DIR and its logs stay).
    started=0
    trap '[ "$started" = 1 ] || [ ! -d "${dir:-}/pids" ] || kill_daemons' EXIT
    do_start "$target" "$n" "$mib"
    started=1
    ;;
  stop)
    [ $# -eq 1 ] || usage
    do_stop "$1"
    ;;
  run)
    n=1
    mib=1024
    while [ $# -gt 0 ]; do
      case "$1" in
        --osds) n=${2:?}; shift 2 ;;
        --memstore-mib) mib=${2:?}; shift 2 ;;
        --) shift; break ;;
        *) usage ;;
      esac
    done
    do_run "$n" "$mib" "$@"
    ;;
  *) usage ;;
esac
