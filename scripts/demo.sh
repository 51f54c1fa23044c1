#!/usr/bin/env bash
# The main job on the embedded default: TorchServe (model "hint") + the Gradio app, both on 127.0.0.1.
#   scripts/demo.sh [start]   start both (after `make archive`), wait until each answers, print the URLs
#   scripts/demo.sh stop      stop both (this clone's only)
# Environment: APP_PORT (7860), TS_CONFIG (config.properties: TorchServe's ports).
#
# Before starting anything, start checks that every port it needs is free (TorchServe's five of
# `scripts/serve.sh ports` and the app's); when one is taken, e.g. by another clone's demo, it refuses
# in one line naming the process that holds it and starts nothing. It never moves to other ports by
# itself: the URLs it prints, the README and the browser tab at :7860 would then show the other clone's
# demo without a word. Other ports are a choice: docs/api.md, "Several servers on one host".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
APP_PORT="${APP_PORT:-7860}"
mkdir -p logs

app_pid() {  # pid of THIS clone's app (logs/app.pid, a `python -m app` started here); fails otherwise
    local p
    [ -f logs/app.pid ] || return 1
    p="$(tr -dc 0-9 <logs/app.pid)"
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$p/cmdline" | grep -q -- "-m app" || return 1
    [ "$(readlink "/proc/$p/cwd")" = "$ROOT" ] || return 1
    echo "$p"
}

stop_app() {
    local p
    if p="$(app_pid)"; then
        kill "$p" && echo "app stopped"
        for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -f logs/app.pid
}

port() {  # port NAME: TorchServe's port NAME (inference, management, ...) from `serve.sh ports`
    local kv
    for kv in $(scripts/serve.sh ports); do
        [ "${kv%%=*}" = "$1" ] && { echo "${kv#*=}"; return; }
    done
}

case "${1:-start}" in
start)
    stop_app
    ts_started=""
    if scripts/serve.sh status >/dev/null 2>&1; then
        "$PY" scripts/ports.py "app=$APP_PORT" || exit 1
    else
        # shellcheck disable=SC2046  # NAME=PORT words
        "$PY" scripts/ports.py $(scripts/serve.sh ports) "app=$APP_PORT" || exit 1
        scripts/serve.sh start
        ts_started=1
    fi
    INFERENCE="http://127.0.0.1:$(port inference)"
    MANAGEMENT="http://127.0.0.1:$(port management)"
    failed() {  # the app did not come up: say so, and stop the TorchServe started here (never half started)
        echo "$1; see logs/app.log" >&2
        tail -20 logs/app.log >&2
        stop_app >/dev/null
        [ -z "$ts_started" ] || scripts/serve.sh stop >/dev/null 2>&1 || true
        exit 1
    }
    nohup "$PY" -m app --host 127.0.0.1 --port "$APP_PORT" --endpoint "$INFERENCE" >logs/app.log 2>&1 &
    echo $! >logs/app.pid
    for _ in $(seq 1 240); do
        curl -sf -o /dev/null "http://127.0.0.1:$APP_PORT/" && break
        kill -0 "$(cat logs/app.pid)" 2>/dev/null || failed "the app exited"
        sleep 0.5
    done
    curl -sf -o /dev/null "http://127.0.0.1:$APP_PORT/" || failed "the app did not answer"
    cat <<MSG

HINT is running (stop both with: make stop)
  Gradio app          http://127.0.0.1:$APP_PORT/
  TorchServe          $INFERENCE/predictions/hint   (token: $ROOT/key_file.json, ["inference"]["key"])
  management API      $MANAGEMENT/models/hint        (token: $ROOT/key_file.json, ["management"]["key"])
  try it:  curl -H 'Content-Type: image/jpeg' -H "Authorization: Bearer \$($PY -c 'import json;print(json.load(open("$ROOT/key_file.json"))["inference"]["key"])')" --data-binary @photo.jpg $INFERENCE/predictions/hint
MSG
    ;;
stop)
    stop_app
    scripts/serve.sh stop || true
    ;;
*)
    echo "usage: scripts/demo.sh [start|stop]" >&2
    exit 2
    ;;
esac
