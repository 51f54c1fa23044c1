#!/usr/bin/env bash
# Start, stop or check the HINT TorchServe service (config.properties, model_store/hint.mar).
#
#   scripts/serve.sh start    start TorchServe and wait until model "hint" has a READY worker
#   scripts/serve.sh stop     stop THIS clone's TorchServe and wait until it has exited
#   scripts/serve.sh status   this clone's TorchServe: pid and the model's workers; exit 1 when not running
#
#   scripts/serve.sh ports    the TCP ports of TS_CONFIG, as NAME=PORT (what start checks are free)
#
# Several servers run side by side on one host (docs/api.md, "Several servers on one host"): each
# clone's TorchServe keeps its state in build/torchserve: the launcher's pid file (TorchServe puts it in
# $TMPDIR, machine-wide /tmp by default) and java.io.tmpdir (set through $TEMP), where the frontend and
# its workers make their Unix sockets .ts.sock.<worker port> (in /tmp by default, where two servers'
# workers would take each other's sockets) and unpack the archives. Every TCP port is explicit in the
# config, gRPC's too (TorchServe 0.12 always starts gRPC, on 7070/7071 by default, and exits when it
# cannot bind them); start refuses in one line, naming the process, when one of them is taken.
# stop and status trust a pid only when that process is a TorchServe frontend started from this
# clone's directory.
#
# Token authorization is on: TorchServe writes key_file.json into the directory it starts from (the
# repo root here). Predictions need its inference key, the management API its management key:
#   curl -H "Authorization: Bearer $(jq -r .inference.key key_file.json)" --data-binary @img.jpg \
#        -H 'Content-Type: image/jpeg' http://127.0.0.1:8080/predictions/hint
# Environment: VENV (.venv), TS_CONFIG (config.properties), LOG_LOCATION (logs), MODEL (hint),
# START_TIMEOUT seconds (240).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
VENV="${VENV:-.venv}"
export PATH="$ROOT/$VENV/bin:$PATH"
TS_CONFIG="$(realpath "${TS_CONFIG:-config.properties}")"
export LOG_LOCATION="${LOG_LOCATION:-$ROOT/logs}"
export METRICS_LOCATION="${METRICS_LOCATION:-$LOG_LOCATION}"
MODEL="${MODEL:-hint}"
START_TIMEOUT="${START_TIMEOUT:-240}"
KEY_FILE="$ROOT/key_file.json"
PY="$ROOT/$VENV/bin/python"
STATE="$ROOT/build/torchserve"  # this clone's TMPDIR for TorchServe: its pid file .model_server.pid
PID_FILE="$STATE/.model_server.pid"
# java.io.tmpdir: the workers' Unix sockets. A socket path has at most 107 bytes: a clone too deep for
# "$STATE/.ts.sock.NNNNN" gets a folder of its own under /tmp instead.
SOCK_DIR="$STATE"
if [ $((${#STATE} + 16)) -gt 107 ]; then
    SOCK_DIR="${XDG_RUNTIME_DIR:-/tmp}/hint-ts-$(printf %s "$ROOT" | sha1sum | cut -c1-16)"
fi

prop() {  # prop NAME DEFAULT: a value of config.properties
    local v
    v="$(sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$TS_CONFIG" | tail -n 1)"
    echo "${v:-$2}"
}
INFERENCE="$(prop inference_address http://127.0.0.1:8080)"
MANAGEMENT="$(prop management_address http://127.0.0.1:8081)"
METRICS="$(prop metrics_address http://127.0.0.1:8082)"

port_of() {  # port_of URL: its port (80 or 443 when it has none)
    local hostport="${1#*://}"
    hostport="${hostport%%/*}"
    case "$hostport" in
        *:*) echo "${hostport##*:}" ;;
        *) case "$1" in https:*) echo 443 ;; *) echo 80 ;; esac ;;
    esac
}

ports() {  # every TCP port this server binds, as NAME=PORT (TorchServe 0.12's gRPC defaults: 7070, 7071)
    echo "inference=$(port_of "$INFERENCE") management=$(port_of "$MANAGEMENT") metrics=$(port_of "$METRICS")" \
        "grpc_inference=$(prop grpc_inference_port 7070) grpc_management=$(prop grpc_management_port 7071)"
}

key() {  # key management|inference: from key_file.json ("" when there is none)
    [ -f "$KEY_FILE" ] || { echo ""; return; }
    "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["key"])' "$KEY_FILE" "$1" 2>/dev/null || echo ""
}

ts() {  # the torchserve command with this clone's pid file and socket folder
    mkdir -p "$STATE" "$SOCK_DIR"
    TMPDIR="$STATE" TEMP="$SOCK_DIR" torchserve "$@"
}

api() {  # api URL: "BODY STATUS" of a management API GET with the management key (STATUS 000: no answer)
    local k auth=()
    k="$(key management)"
    [ -n "$k" ] && auth=(-H "Authorization: Bearer $k")
    curl -s --max-time 5 "${auth[@]}" -w ' %{http_code}' "$1" 2>/dev/null || true
}

workers() {  # the model's worker statuses, e.g. "READY READY"; fails unless the management API answers 200
    local out
    out="$(api "$MANAGEMENT/models/$MODEL")"
    [ "${out##* }" = "200" ] || return 1
    "$PY" -c 'import json, sys; print(" ".join(w["status"] for m in json.loads(sys.argv[1]) for w in m.get("workers", [])))' \
        "${out% *}" 2>/dev/null
}

pid() {  # pid of THIS clone's TorchServe frontend; fails when it is not running
    local p
    [ -f "$PID_FILE" ] || return 1
    p="$(tr -dc 0-9 <"$PID_FILE")"
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
    if [ -d "/proc/$p" ]; then  # a recycled pid, or another program: not ours
        tr '\0' ' ' <"/proc/$p/cmdline" | grep -q "org.pytorch.serve.ModelServer" || return 1
        [ "$(readlink "/proc/$p/cwd")" = "$ROOT" ] || return 1
    fi
    echo "$p"
}

logs_tail() {
    for f in "$LOG_LOCATION/model_log.log" "$LOG_LOCATION/ts_log.log"; do
        [ -f "$f" ] && { echo "---- last lines of $f" >&2; tail -n 25 "$f" >&2; }
    done
    return 0
}

start() {
    [ -f "model_store/$MODEL.mar" ] || { echo "no model_store/$MODEL.mar: run make archive" >&2; exit 1; }
    command -v java >/dev/null || { echo "java not found: TorchServe 0.12 needs Java 17 (make apt-java)" >&2; exit 1; }
    local running
    if running="$(pid)"; then
        echo "TorchServe of this clone is already running (pid $running); scripts/serve.sh stop first" >&2
        exit 1
    fi
    # shellcheck disable=SC2046  # NAME=PORT words
    "$PY" "$ROOT/scripts/ports.py" $(ports) || exit 1
    mkdir -p "$LOG_LOCATION"
    rm -f "$KEY_FILE"
    local model_log="$LOG_LOCATION/model_log.log" seen=0 fatal=""
    [ -f "$model_log" ] && seen="$(wc -l <"$model_log")"
    ts --start --ncs --ts-config "$TS_CONFIG" --log-config "$ROOT/log4j2.xml" >"$LOG_LOCATION/torchserve.out" 2>&1 || {
        cat "$LOG_LOCATION/torchserve.out" >&2; exit 1; }
    local t0=$SECONDS status=""
    while [ $((SECONDS - t0)) -lt "$START_TIMEOUT" ]; do
        status="$(workers 2>/dev/null || true)"
        case " $status " in *" READY "*) break ;; esac
        # a handler that cannot start (bad bank, ...) says so in one line: stop at once, no retries
        fatal="$(tail -n +"$((seen + 1))" "$model_log" 2>/dev/null | grep -m 1 -o "HINT handler cannot start: .*" || true)"
        if [ -n "$fatal" ]; then
            echo "$fatal" >&2
            stop >/dev/null 2>&1 || true
            exit 1
        fi
        if [ $((SECONDS - t0)) -gt 10 ] && ! pid >/dev/null; then
            echo "TorchServe exited during start-up" >&2
            logs_tail
            exit 1
        fi
        sleep 1
    done
    case " $status " in
        *" READY "*) ;;
        *)
            echo "model $MODEL has no READY worker after ${START_TIMEOUT}s (workers: ${status:-none})" >&2
            logs_tail
            stop >/dev/null 2>&1 || true
            exit 1
            ;;
    esac
    echo "TorchServe is up after $((SECONDS - t0))s (pid $(pid)): $INFERENCE/predictions/$MODEL (workers: $status)"
    echo "token: inference key in $KEY_FILE (.inference.key), management key in .management.key"
    echo "e.g.  curl -H \"Authorization: Bearer \$($PY -c 'import json;print(json.load(open(\"$KEY_FILE\"))[\"inference\"][\"key\"])')\" \\"
    echo "        -H 'Content-Type: image/jpeg' --data-binary @img.jpg $INFERENCE/predictions/$MODEL"
    echo "logs in $LOG_LOCATION; stop with: scripts/serve.sh stop (or make stop)"
}

stop() {
    local p
    if ! p="$(pid)"; then
        echo "TorchServe of this clone is not running"
        rm -f "$PID_FILE"
        return 0
    fi
    kill -TERM "$p"  # what torchserve --stop does, for this pid only
    for _ in $(seq 60); do
        if ! kill -0 "$p" 2>/dev/null; then
            rm -f "$PID_FILE" "$KEY_FILE"
            [ "$SOCK_DIR" = "$STATE" ] || rm -rf "$SOCK_DIR"
            echo "stopped"
            return 0
        fi
        sleep 1
    done
    echo "TorchServe (pid $p) did not stop within 60 s" >&2
    exit 1
}

status() {
    local p s code
    if ! p="$(pid)"; then
        code="$(curl -s -o /dev/null --max-time 3 -w '%{http_code}' "$INFERENCE/ping" 2>/dev/null || true)"
        if [ -n "$code" ] && [ "$code" != "000" ]; then
            echo "TorchServe of this clone is not running; another server answers on $INFERENCE (another clone's?)" >&2
        else
            echo "TorchServe of this clone is not running" >&2
        fi
        exit 1
    fi
    if s="$(workers)"; then
        echo "TorchServe is running (pid $p): model $MODEL at $INFERENCE/predictions/$MODEL, workers: ${s:-none}"
        return 0
    fi
    code="$(api "$MANAGEMENT/models/$MODEL")"
    case "${code##* }" in
        000) echo "TorchServe is running (pid $p) but $MANAGEMENT does not answer yet (starting?)" >&2 ;;
        400 | 401) echo "TorchServe is running (pid $p); $MANAGEMENT refuses the management key of $KEY_FILE" >&2 ;;
        404) echo "TorchServe is running (pid $p) without model $MODEL" >&2 ;;
        *) echo "TorchServe is running (pid $p); $MANAGEMENT/models/$MODEL answers HTTP ${code##* }" >&2 ;;
    esac
    exit 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    ports) ports ;;
    *) echo "usage: $0 start|stop|status|ports" >&2; exit 2 ;;
esac
