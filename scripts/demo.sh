#!/usr/bin/env bash
# The main job on the embedded default: TorchServe (model "hint") + the Gradio app, both on 127.0.0.1.
#   scripts/demo.sh [start]   start both (after `make archive`), wait until each answers, print the URLs
#   scripts/demo.sh stop      stop both
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
APP_PORT="${APP_PORT:-7860}"
mkdir -p logs

stop_app() {
    if [ -f logs/app.pid ] && kill -0 "$(cat logs/app.pid)" 2>/dev/null; then
        kill "$(cat logs/app.pid)" && echo "app stopped"
    fi
    rm -f logs/app.pid
}

case "${1:-start}" in
start)
    scripts/serve.sh status >/dev/null 2>&1 || scripts/serve.sh start
    stop_app
    nohup "$PY" -m app --host 127.0.0.1 --port "$APP_PORT" >logs/app.log 2>&1 &
    echo $! >logs/app.pid
    for _ in $(seq 1 240); do
        curl -sf -o /dev/null "http://127.0.0.1:$APP_PORT/" && break
        kill -0 "$(cat logs/app.pid)" 2>/dev/null || { echo "the app exited; see logs/app.log" >&2; tail -20 logs/app.log >&2; exit 1; }
        sleep 0.5
    done
    curl -sf -o /dev/null "http://127.0.0.1:$APP_PORT/" || { echo "the app did not answer; see logs/app.log" >&2; exit 1; }
    cat <<MSG

HINT is running (stop both with: make stop)
  Gradio app          http://127.0.0.1:$APP_PORT/
  TorchServe          http://127.0.0.1:8080/predictions/hint   (token: $ROOT/key_file.json, ["inference"]["key"])
  management API      http://127.0.0.1:8081/models/hint        (token: $ROOT/key_file.json, ["management"]["key"])
  try it:  curl -H 'Content-Type: image/jpeg' -H "Authorization: Bearer \$($PY -c 'import json;print(json.load(open("$ROOT/key_file.json"))["inference"]["key"])')" --data-binary @photo.jpg http://127.0.0.1:8080/predictions/hint
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
