#!/usr/bin/env bash
# Start, stop or check the HINT TorchServe service (config.properties, model_store/hint.mar).
#
#   scripts/serve.sh start    start TorchServe and wait until model "hint" has a READY worker
#   scripts/serve.sh stop     stop it (torchserve --stop) and wait until the ports are free
#   scripts/serve.sh status   print the model's workers (management API), exit 1 when not running
#
# Token authorization is on: TorchServe writes key_file.json into the directory it starts from (the
# repo root here). Predictions need its inference key, the management API its management key:
#   curl -H "Authorization: Bearer $(jq -r .inference.key key_file.json)" --data-binary @img.jpg \
#        -H 'Content-Type: image/jpeg' http://127.0.0.1:8080/predictions/hint
# Environment: VENV (.venv), TS_CONFIG (config.properties), LOG_LOCATION (logs), MODEL (hint),
# START_TIMEOUT seconds (240).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-.venv}"
export PATH="$ROOT/$VENV/bin:$PATH"
TS_CONFIG="${TS_CONFIG:-config.properties}"
export LOG_LOCATION="${LOG_LOCATION:-$ROOT/logs}"
export METRICS_LOCATION="${METRICS_LOCATION:-$LOG_LOCATION}"
MODEL="${MODEL:-hint}"
START_TIMEOUT="${START_TIMEOUT:-240}"
KEY_FILE="$ROOT/key_file.json"
PY="$ROOT/$VENV/bin/python"

prop() {  # prop NAME DEFAULT: a value of config.properties
    local v
    v="$(sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$TS_CONFIG" | tail -n 1)"
    echo "${v:-$2}"
}
INFERENCE="$(prop inference_address http://127.0.0.1:8080)"
MANAGEMENT="$(prop management_address http://127.0.0.1:8081)"

key() {  # key management|inference: from key_file.json ("" when there is none)
    [ -f "$KEY_FILE" ] || { echo ""; return; }
    "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["key"])' "$KEY_FILE" "$1" 2>/dev/null || echo ""
}

workers() {  # the model's worker statuses, e.g. "READY READY"; fails when the API does not answer
    local auth=()
    local k
    k="$(key management)"
    [ -n "$k" ] && auth=(-H "Authorization: Bearer $k")
    curl -sf --max-time 5 "${auth[@]}" "$MANAGEMENT/models/$MODEL" |
        "$PY" -c 'import json, sys; print(" ".join(w["status"] for m in json.load(sys.stdin) for w in m.get("workers", [])))' 2>/dev/null
}

pid() {  # pid of the running TorchServe frontend, from TorchServe's own pid file
    local f
    f="$("$PY" -c 'import os, tempfile; print(os.path.join(tempfile.gettempdir(), ".model_server.pid"))')"
    [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
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
    if [ -n "$(pid)" ]; then
        echo "TorchServe is already running (pid $(pid)); scripts/serve.sh stop first" >&2
        exit 1
    fi
    mkdir -p "$LOG_LOCATION"
    rm -f "$KEY_FILE"
    local model_log="$LOG_LOCATION/model_log.log" seen=0 fatal=""
    [ -f "$model_log" ] && seen="$(wc -l <"$model_log")"
    torchserve --start --ncs --ts-config "$TS_CONFIG" >"$LOG_LOCATION/torchserve.out" 2>&1 || {
        cat "$LOG_LOCATION/torchserve.out" >&2; exit 1; }
    local t0=$SECONDS status=""
    while [ $((SECONDS - t0)) -lt "$START_TIMEOUT" ]; do
        status="$(workers 2>/dev/null || true)"
        case " $status " in *" READY "*) break ;; esac
        # a handler that cannot start (bad bank, ...) says so in one line: stop at once, no retries
        fatal="$(tail -n +"$((seen + 1))" "$model_log" 2>/dev/null | grep -m 1 -o "HINT handler cannot start: .*" || true)"
        if [ -n "$fatal" ]; then
            echo "$fatal" >&2
            torchserve --stop >/dev/null 2>&1 || true
            exit 1
        fi
        if [ $((SECONDS - t0)) -gt 10 ] && [ -z "$(pid)" ]; then
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
            torchserve --stop >/dev/null 2>&1 || true
            exit 1
            ;;
    esac
    echo "TorchServe is up after $((SECONDS - t0))s: $INFERENCE/predictions/$MODEL (workers: $status)"
    echo "token: inference key in $KEY_FILE (.inference.key), management key in .management.key"
    echo "e.g.  curl -H \"Authorization: Bearer \$(python3 -c 'import json;print(json.load(open(\"$KEY_FILE\"))[\"inference\"][\"key\"])')\" \\"
    echo "        -H 'Content-Type: image/jpeg' --data-binary @img.jpg $INFERENCE/predictions/$MODEL"
    echo "logs in $LOG_LOCATION; stop with: scripts/serve.sh stop (or make stop)"
}

stop() {
    if [ -z "$(pid)" ]; then
        echo "TorchServe is not running"
        return 0
    fi
    local p
    p="$(pid)"
    torchserve --stop
    for _ in $(seq 60); do
        kill -0 "$p" 2>/dev/null || { echo "stopped"; return 0; }
        sleep 1
    done
    echo "TorchServe (pid $p) did not stop within 60 s" >&2
    exit 1
}

status() {
    local s
    if s="$(workers)"; then
        echo "model $MODEL at $INFERENCE/predictions/$MODEL, workers: ${s:-none}"
    else
        echo "TorchServe is not answering on $MANAGEMENT (pid: $(pid || echo none))" >&2
        exit 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
