#!/usr/bin/env bash
# The Metaflow UI on one machine, without Docker: PostgreSQL, metaflow-service's metadata service and UI
# backend, and the metaflow-ui front end (served by the UI backend itself, as upstream's ui_service image does).
#
#   scripts/metaflow_ui.sh up       fetch + build what is missing, start what is not running (idempotent)
#   scripts/metaflow_ui.sh down     stop what `up` started (only the pids it recorded)
#   scripts/metaflow_ui.sh status   what runs where
#   scripts/metaflow_ui.sh env      the exports a flow run needs (eval "$(scripts/metaflow_ui.sh env)")
#
# Everything binds 127.0.0.1. Everything it writes (clones, venv, UI build, postgres data, logs, pids) is under
# MF_UI_ROOT. Settings (environment variables, defaults in brackets):
#   MF_UI_ROOT            [<repo>/.metaflow-ui]
#   MF_UI_SERVICE_SRC     [https://github.com/Netflix/metaflow-service.git]  a git URL or a local clone
#   MF_UI_SERVICE_REF     [pinned commit below]
#   MF_UI_FRONTEND_SRC    [https://github.com/Netflix/metaflow-ui.git]       a git URL or a local clone
#   MF_UI_FRONTEND_REF    [pinned commit below]
#   MF_UI_PG_PORT [5433]  MF_UI_METADATA_PORT [8080]  MF_UI_PORT [8083] (UI backend + front end)
#   MF_UI_DATASTORE_ROOT  [<repo>]  the folder holding .metaflow (the flow pins its local datastore there)
#   MF_UI_PG_USER         [postgres]  the OS user that runs postgres when this script runs as root
#   MF_UI_METAFLOW_VERSION [the project venv's, else 2.19.39]  metaflow in the service's venv: the same version
#                         as the one that writes the datastore (the service's requirements only say >=2.11.4)
#   MF_UI_ARTIFACT_MAX_KB [64]  artifacts up to this size are shown by value (upstream default 4)
#
# Two upstream bugs are patched here (see patch_service, patch_metaflow): with a local datastore the UI backend's
# log action moved the task's log files out of .metaflow into its cache, and metaflow's client cache stored an
# empty artifact index for a task once its log size was read, after which every artifact value of that task failed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${MF_UI_ROOT:-$REPO/.metaflow-ui}"
SERVICE_SRC="${MF_UI_SERVICE_SRC:-https://github.com/Netflix/metaflow-service.git}"
SERVICE_REF="${MF_UI_SERVICE_REF:-91e44f0108cba3159db97e91fb159629e1448db1}"    # master, 2026-07-23 (v2.5.1+)
FRONTEND_SRC="${MF_UI_FRONTEND_SRC:-https://github.com/Netflix/metaflow-ui.git}"
FRONTEND_REF="${MF_UI_FRONTEND_REF:-15e8f04286a1e54993dc64a56f2d4b731a538c25}"  # master, 2026-01-06 (v1.3.14+)
PG_PORT="${MF_UI_PG_PORT:-5433}"           # not 5432: leave the distribution's own cluster alone
METADATA_PORT="${MF_UI_METADATA_PORT:-8080}"
UI_PORT="${MF_UI_PORT:-8083}"
DATASTORE_ROOT="${MF_UI_DATASTORE_ROOT:-$REPO}"
PG_USER="${MF_UI_PG_USER:-postgres}"
ARTIFACT_MAX_KB="${MF_UI_ARTIFACT_MAX_KB:-64}"
if [ -z "${MF_UI_METAFLOW_VERSION:-}" ]; then
    MF_UI_METAFLOW_VERSION="$("$REPO/.venv/bin/python" -c 'import importlib.metadata as m; print(m.version("metaflow"))' 2>/dev/null || echo 2.19.39)"
fi
MF_VERSION="$MF_UI_METAFLOW_VERSION"
HOST=127.0.0.1
DB=metaflow
DB_USER=metaflow

SRC="$ROOT/src"; SVC="$SRC/metaflow-service"; UI="$SRC/metaflow-ui"
PGDATA="$ROOT/pg/data"; PWFILE="$ROOT/pg/password"; RUN="$ROOT/run"; LOG="$ROOT/log"

die() { echo "metaflow_ui: $*" >&2; exit 1; }
say() { echo "metaflow_ui: $*"; }

pg_bin() {  # Debian installs the server outside PATH, under /usr/lib/postgresql/<major>/bin
    local b
    b="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    [ -n "$b" ] || b="$(dirname "$(command -v initdb)")" || die "postgres not installed: apt-get install -y postgresql"
    echo "$b"
}

as_pg() {  # postgres refuses to run as root
    if [ "$(id -u)" = 0 ]; then
        id "$PG_USER" >/dev/null 2>&1 || die "user $PG_USER missing (apt-get install -y postgresql creates it)"
        runuser -u "$PG_USER" -- "$@"
    else
        "$@"
    fi
}

checkout() {  # checkout <src> <ref> <dir>: clone once, then move to the pinned commit
    local src="$1" ref="$2" dir="$3"
    [ -d "$dir/.git" ] || git clone -q "$src" "$dir" || die "cannot clone $src"
    if [ "$(git -C "$dir" rev-parse HEAD)" != "$(git -C "$dir" rev-parse -q --verify "$ref^{commit}" || true)" ]; then
        git -C "$dir" cat-file -e "$ref^{commit}" 2>/dev/null || git -C "$dir" fetch -q origin || true
        # -f: our own clone; it drops what patch_service changed in tracked files (reapplied after)
        git -C "$dir" checkout -q -f --detach "$ref" || die "commit $ref not in $src"
    fi
}

replace_once() {  # replace_once <file> <old> <new>: exactly one <old> becomes <new>; nothing if <new> is there
    OLD="$2" NEW="$3" python3 - "$1" <<'PY' || die "cannot patch $1 (upstream changed? see its log)"
import os, sys
path, old, new = sys.argv[1], os.environ["OLD"], os.environ["NEW"]
text = open(path).read()
if new in text:
    sys.exit(0)
if text.count(old) != 1:
    sys.exit(f"{path}: expected the text to patch once, found it {text.count(old)} times")
open(path, "w").write(text.replace(old, new))
PY
}

patch_service() {  # get_log_file_action.py, fetch_logs: the storage's load_bytes yields, for the local datastore,
    # the datastore's own file (S3 and the others: a temporary download), and the action shutil.move'd it into
    # cache_data/log: the first view of a task's log deleted it from .metaflow (then "No logs" for good).
    replace_once "$SVC/services/ui_backend_service/data/cache/get_log_file_action.py" \
        "shutil.move(path, log_paths[name])" \
        "shutil.copyfile(path, log_paths[name])  # metaflow_ui.sh: never move a local datastore's file"
}

patch_metaflow() {  # metaflow/datastore/flow_datastore.py, FlowDataStore.get_task_datastore: FileCache.get_log_size
    # (Task log sizes, which the UI backend reads for every log view) passes data_metadata={"objects": {},
    # "info": {}} with an attempt, and the datastore then stored that empty index as the task's metadata in the
    # on-disk client cache (METAFLOW_CLIENT_CACHE_PATH, by default /tmp/metaflow_client, shared by every process).
    # DataArtifact.size read it back: TaskDataStore.get_artifact_sizes -> info None -> TypeError, "Artifact not
    # currently displayable". Store only what was read from the datastore, and never an empty index.
    local f
    f="$("$ROOT/venv/bin/python" -c 'import metaflow.datastore.flow_datastore as m; print(m.__file__)')"
    replace_once "$f" "            not cache_hit
            and self._metadata_cache is not None" "            data_metadata is None  # metaflow_ui.sh: not a caller's (empty) index
            and task_datastore.ds_metadata[\"objects\"]
            and self._metadata_cache is not None"
}

build_service() {  # its own venv: the service pins versions (click, pyee, ...) the project's venv must not get
    local stamp="$ROOT/venv/.built-$SERVICE_REF-metaflow-$MF_VERSION"
    patch_service
    [ -f "$stamp" ] && return
    say "installing metaflow-service's requirements and metaflow==$MF_VERSION into $ROOT/venv"
    python3 -m venv "$ROOT/venv"
    rm -f "$ROOT"/venv/.built-*
    "$ROOT/venv/bin/pip" install -q --disable-pip-version-check -r "$SVC/requirements.txt" "metaflow==$MF_VERSION" \
        > "$LOG/pip.log" 2>&1 || die "pip install failed, see $LOG/pip.log"
    patch_metaflow
    touch "$stamp"
}

build_frontend() {  # upstream builds with yarn 1 from its yarn.lock; npx fetches that yarn from the npm registry
    local stamp="$UI/build/.built-$FRONTEND_REF"
    if [ ! -f "$stamp" ]; then
        command -v node >/dev/null || die "node not installed (Node 20: apt-get install -y nodejs npm)"
        [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ] || die "metaflow-ui needs Node >= 20, have $(node -v)"
        say "building metaflow-ui (yarn install + craco build, a few minutes)"
        # CYPRESS_INSTALL_BINARY=0: the test runner's binary is a separate download the build does not need.
        (cd "$UI" && CYPRESS_INSTALL_BINARY=0 npx --yes yarn@1.22.22 install --frozen-lockfile --non-interactive \
            --network-timeout 600000 && npx --yes yarn@1.22.22 build) > "$LOG/frontend-build.log" 2>&1 \
            || die "metaflow-ui build failed, see $LOG/frontend-build.log"
        touch "$stamp"
    fi
    # The UI backend serves the bundle found in services/ui_backend_service/ui (upstream's download_ui.sh puts
    # the release zip there), injecting window.METAFLOW_SERVICE into index.html.
    local dest="$SVC/services/ui_backend_service/ui"
    if [ ! -f "$dest/.built-$FRONTEND_REF" ]; then rm -rf "$dest"; cp -r "$UI/build" "$dest"; fi
}

psql_() { PGPASSWORD="$(cat "$PWFILE")" PGOPTIONS="-c client_min_messages=warning" "$(pg_bin)/psql" -X -q -v ON_ERROR_STOP=1 -h $HOST -p "$PG_PORT" -U $DB_USER "$@"; }

start_postgres() {
    local bin; bin="$(pg_bin)"
    if [ ! -f "$PGDATA/PG_VERSION" ]; then
        say "initialising postgres in $PGDATA"
        mkdir -p "$PGDATA"
        (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$PWFILE")
        if [ "$(id -u)" = 0 ]; then chown -R "$PG_USER" "$ROOT/pg"; fi
        as_pg "$bin/initdb" -D "$PGDATA" -U $DB_USER --pwfile="$PWFILE" --auth=scram-sha-256 > "$LOG/initdb.log" 2>&1 \
            || die "initdb failed, see $LOG/initdb.log"
    fi
    if ! as_pg "$bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then touch "$LOG/postgres.log"; chown "$PG_USER" "$LOG/postgres.log"; fi
        # TCP on 127.0.0.1 only, and no unix socket: nothing outside this folder is touched.
        as_pg "$bin/pg_ctl" -D "$PGDATA" -l "$LOG/postgres.log" -w -t 60 \
            -o "-c listen_addresses=$HOST -p $PG_PORT -c unix_socket_directories=''" start > /dev/null \
            || die "postgres did not start, see $LOG/postgres.log"
    fi
    head -1 "$PGDATA/postmaster.pid" > "$RUN/postgres.pid"
    psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" | grep -q 1 || psql_ -d postgres -c "CREATE DATABASE $DB"
}

migrate() {  # goose's Up sections, in version order, recorded in goose's own table so its tool agrees
    psql_ -d $DB -c "CREATE TABLE IF NOT EXISTS goose_db_version (id serial PRIMARY KEY, version_id bigint NOT NULL,
        is_applied boolean NOT NULL, tstamp timestamp DEFAULT now())"
    local dir="$SVC/services/migration_service/migration_files" f v n=0
    for f in $(cd "$dir" && ls -- *.sql | sort -t_ -k1,1n); do  # goose's order: the numeric version prefix
        v="${f%%_*}"; f="$dir/$f"
        [ -n "$(psql_ -d $DB -tAc "SELECT 1 FROM goose_db_version WHERE version_id=$v AND is_applied")" ] && continue
        # "NO TRANSACTION" files hold CREATE INDEX CONCURRENTLY, which cannot run inside one transaction.
        local single=-1; grep -q '^-- +goose NO TRANSACTION' "$f" && single=""
        awk '/^-- \+goose Up/{up=1; next} /^-- \+goose Down/{up=0} up' "$f" | psql_ -d $DB $single -f - > /dev/null \
            || die "migration $(basename "$f") failed"
        psql_ -d $DB -c "INSERT INTO goose_db_version (version_id, is_applied) VALUES ($v, true)"
        n=$((n + 1))
    done
    [ $n = 0 ] || say "applied $n migrations"
}

alive() {  # alive <name>: the recorded pid still runs the process we started
    local pid; pid="$(cat "$RUN/$1.pid" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -e "$2"
}

start_service() {  # start_service <name> <module> <port>: own process group, so `down` stops it with its workers
    # Artifacts and logs are read from the paths the run recorded; cards from one card root, else the first
    # .metaflow above the service's folder: hence METAFLOW_CARD_LOCALROOT (only read here, never written).
    local name="$1" module="$2" port="$3"
    if ! alive "$name" "$module"; then
        # A fresh cache per start (the UI backend's and metaflow's client cache): results are kept forever,
        # errors included. Metaflow's client cache is the backend's own, not the machine's /tmp/metaflow_client.
        rm -rf "$SVC/cache_data" "$ROOT/cache/client"
        # cwd: the UI backend's cache workers import `services` from the current folder and keep cache_data/ there.
        # Prefetch off: it would read every new run's artifacts in the background (CPU on a shared machine).
        # set -m: the job gets a process group of its own, led by $! (setsid would fork and hide the pid).
        (set -m; cd "$SVC"
         export MF_METADATA_DB_HOST=$HOST MF_METADATA_DB_PORT="$PG_PORT" MF_METADATA_DB_USER=$DB_USER \
            MF_METADATA_DB_PSWD="$(cat "$PWFILE")" MF_METADATA_DB_NAME=$DB \
            MF_METADATA_HOST=$HOST MF_METADATA_PORT="$METADATA_PORT" MF_UI_METADATA_HOST=$HOST MF_UI_METADATA_PORT="$UI_PORT" \
            METAFLOW_SERVICE_URL="http://$HOST:$METADATA_PORT/" METAFLOW_DEFAULT_METADATA=service \
            METAFLOW_DEFAULT_DATASTORE=local METAFLOW_DATASTORE_SYSROOT_LOCAL="$DATASTORE_ROOT" USERNAME=metaflow-ui \
            METAFLOW_CARD_LOCALROOT="$DATASTORE_ROOT/.metaflow/mf.cards" \
            CARD_CACHE_STORAGE_PATH="$ROOT/cache/cards" UI_ENABLED=1 METAFLOW_CLIENT_CACHE_PATH="$ROOT/cache/client" \
            MAX_PROCESSABLE_S3_ARTIFACT_SIZE_KB="$ARTIFACT_MAX_KB" \
            FEATURE_ARTIFACT_TABLE=1 FEATURE_PREFETCH_DISABLE=1 \
            CACHE_ARTIFACT_MAX_ACTIONS=4 CACHE_DAG_MAX_ACTIONS=4 CACHE_LOG_MAX_ACTIONS=4  # defaults: 16+16+8 worker processes
         nohup "$ROOT/venv/bin/python" -m "$module" > "$LOG/$name.log" 2>&1 < /dev/null &
         echo $! > "$RUN/$name.pid")
    fi
    local i
    for i in $(seq 120); do
        curl -sf "http://$HOST:$port/ping" > /dev/null && return
        alive "$name" "$module" || die "$name exited, see $LOG/$name.log"
        sleep 0.5
    done
    die "$name not answering on $HOST:$port, see $LOG/$name.log"
}

up() {
    command -v git >/dev/null || die "git not installed"
    command -v curl >/dev/null || die "curl not installed: apt-get install -y curl"
    pg_bin > /dev/null
    mkdir -p "$SRC" "$RUN" "$LOG" "$ROOT/cache/cards"
    checkout "$SERVICE_SRC" "$SERVICE_REF" "$SVC"
    checkout "$FRONTEND_SRC" "$FRONTEND_REF" "$UI"
    build_service
    build_frontend
    start_postgres
    migrate
    start_service metadata services.metadata_service.server "$METADATA_PORT"
    start_service ui_backend services.ui_backend_service.ui_server "$UI_PORT"
    status
}

stop_group() {  # stop_group <name> <module>: TERM, then KILL, the process group the pid leads (service + workers)
    local pid i
    alive "$1" "$2" || { rm -f "$RUN/$1.pid"; return; }
    pid="$(cat "$RUN/$1.pid")"
    kill -TERM -- "-$pid" 2>/dev/null || true
    for i in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true   # the UI backend only logs SIGTERM
    rm -f "$RUN/$1.pid"; say "stopped $1 (pid $pid)"
}

down() {
    stop_group ui_backend services.ui_backend_service.ui_server
    stop_group metadata services.metadata_service.server
    if [ -f "$PGDATA/PG_VERSION" ] && as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
        as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" -m fast -w stop > /dev/null && say "stopped postgres"
    fi
    rm -f "$RUN/postgres.pid"
}

status() {
    state() { alive "$1" "$2" && echo "running (pid $(cat "$RUN/$1.pid"))" || echo "stopped"; }
    echo "postgres        $HOST:$PG_PORT   $(state postgres postgres)   data $PGDATA"
    echo "metadata        $HOST:$METADATA_PORT   $(state metadata metadata_service)   METAFLOW_SERVICE_URL=http://$HOST:$METADATA_PORT/"
    echo "ui backend + UI $HOST:$UI_PORT   $(state ui_backend ui_server)   open http://$HOST:$UI_PORT/"
    echo "datastore       $DATASTORE_ROOT/.metaflow   logs $LOG"
}

env_() {
    echo "export METAFLOW_SERVICE_URL=http://$HOST:$METADATA_PORT/ METAFLOW_DEFAULT_METADATA=service"
    echo "export METAFLOW_UI_URL=http://$HOST:$UI_PORT/"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    env) env_ ;;
    *) die "usage: $0 up|down|status|env" ;;
esac
