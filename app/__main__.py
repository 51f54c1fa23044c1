"""``python -m app [--host 127.0.0.1] [--port 7860] [--endpoint URL] [--token-file PATH | --token KEY]``.

Environment: HINT_ENDPOINT, HINT_TOKEN, HINT_TOKEN_FILE (the flags win). Without a token the
inference key is read, at every request, from ``key_file.json`` in the current directory
(TorchServe writes it where it starts), so a restarted TorchServe's new key is picked up.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m app",
        description="The HINT Gradio app: explore an image's concepts, boxes and neurons through the "
        "TorchServe endpoint POST /predictions/hint (it never loads the model itself).",
    )
    p.add_argument(
        "--host",
        default=os.environ.get("HINT_APP_HOST", "127.0.0.1"),
        help="address to bind (default 127.0.0.1: this machine only)",
    )
    p.add_argument(
        "--port", type=int, default=int(os.environ.get("HINT_APP_PORT", "7860")), help="default 7860"
    )
    p.add_argument(
        "--endpoint",
        default=os.environ.get("HINT_ENDPOINT", "http://127.0.0.1:8080"),
        help="TorchServe inference address (default http://127.0.0.1:8080, env HINT_ENDPOINT)",
    )
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--token", default=None, help="inference key (env HINT_TOKEN)")
    auth.add_argument(
        "--token-file",
        default=None,
        help="TorchServe key_file.json to read the inference key from at each request "
        "(env HINT_TOKEN_FILE; default ./key_file.json)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("HINT_TIMEOUT", "60")),
        help="seconds to wait for an answer (default 60)",
    )
    p.add_argument("--quiet", action="store_true", help="less logging")
    return p.parse_args(argv)


def make_client(args: argparse.Namespace):
    """The endpoint client: --token, else --token-file, else HINT_TOKEN, else HINT_TOKEN_FILE, else
    ./key_file.json (read at each request, so it may appear or change later)."""
    from .client import HintClient

    token = args.token or (None if args.token_file else os.environ.get("HINT_TOKEN") or None)
    token_file = None
    if not token:
        token_file = os.path.abspath(args.token_file or os.environ.get("HINT_TOKEN_FILE") or "key_file.json")
    return HintClient(args.endpoint, token=token, token_file=token_file, timeout=args.timeout)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from .ui import launch

    client = make_client(args)
    print(f"HINT app: endpoint {client.url} ({client.describe_auth()})", flush=True)
    try:
        launch(client, args.host, args.port, quiet=args.quiet)
    except OSError as e:  # port in use, bad address
        print(f"python -m app: cannot serve on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
