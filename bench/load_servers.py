"""Which WSGI server should teosd use? Serves one probe app with each candidate and loads it.

The probe is a Flask app doing the real work of ``add_appointment`` with none of the tower's logic around
it: JSON parsing, hex decoding, ECDSA public-key recovery, the uuid, a synced LevelDB write through the
Store's group commit, a signed receipt and a JSON answer. Each server runs in its own process (a
subprocess of this script); the load comes from wrk through ``bench/loadgen.py``.

    .venv/bin/python bench/load_servers.py [--seconds 10] [--servers waitress,granian,gunicorn,cheroot]

(cheroot is not a requirement of the project: ``pip install cheroot`` into .venv to include it.)

What chose teosd's serving (``teos/daemon.py``), measured with this probe loaded by wrk on 2 cores: one
Python process tops out near 700 add_appointment/s (the GIL; ~1.4 ms of CPU per request, about half of it
HTTP and Flask); waitress in one process ~1340/s, granian with one worker ~1670/s; two processes: waitress
~2490/s, granian ~3890/s. gunicorn (gthread) measured ~930/s for one process and would put its arbiter
between the signals and the state.
"""

from __future__ import annotations

import argparse
import functools
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import prepare, run_wrk
from common.types import Dialect
from teos.devtools import free_port, wait_until

SERVERS = ("waitress", "granian", "cheroot", "gunicorn", "werkzeug")


def _granian_app(db_path: str, target: str) -> Any:
    """granian's loader in its (spawned) worker: the probe app over its own store."""
    return make_app(db_path)


def make_app(db_path: str) -> Any:
    from flask import Flask, jsonify, request

    from common.appointment import Appointment, compute_uuid
    from common.crypto import generate_secret_key, recover_public_key, sign
    from common.receipts import appointment_receipt
    from common.types import Dialect, Locator, UserId
    from teos.storage import Batch, Store

    store = Store(db_path)
    store.open()
    tower_key = generate_secret_key()
    users: set[UserId] = set()
    app = Flask("probe")

    @app.post("/register")
    def register() -> Any:
        user_id = UserId.from_hex(request.get_json()["user_id"])
        batch = Batch()
        batch.put(b"u" + user_id.raw, b"1")
        store.commit(batch)
        users.add(user_id)
        return jsonify({"user_id": user_id.hex()})

    @app.post("/add_appointment")
    def add_appointment() -> Any:
        data = request.get_json()
        a = data["appointment"]
        appointment = Appointment(Locator.from_hex(a["locator"]), bytes.fromhex(a["encrypted_blob"]),
                                  a["to_self_delay"])
        user_id = recover_public_key(appointment.serialize(), data["signature"])
        if user_id not in users:
            return jsonify({"error": "no subscription"}), 401
        uuid = compute_uuid(appointment.locator, user_id)
        batch = Batch()
        batch.put(b"a" + appointment.locator.raw + uuid.raw, appointment.serialize())
        store.commit(batch)
        receipt = sign(appointment_receipt(Dialect.RUST, data["signature"], 100), tower_key)
        return jsonify({"locator": appointment.locator.hex(), "start_block": 100, "signature": receipt,
                        "available_slots": 1, "subscription_expiry": 5000})

    return app


def serve(kind: str, port: int, db_path: str, threads: int) -> None:
    if kind == "granian":  # one worker: the probe's store allows one process, as teosd's state does
        import functools
        import multiprocessing

        from granian import Granian
        from granian.constants import Interfaces

        multiprocessing.set_start_method("spawn", force=True)
        Granian("probe", address="127.0.0.1", port=port, interface=Interfaces.WSGI, workers=1,
                blocking_threads=threads, log_level="warning").serve(  # type: ignore[arg-type]
            target_loader=functools.partial(_granian_app, db_path))
        return
    app = make_app(db_path)
    if kind == "waitress":
        import waitress

        waitress.serve(app, host="127.0.0.1", port=port, threads=threads, _quiet=True)
    elif kind == "cheroot":
        from cheroot import wsgi

        wsgi.Server(("127.0.0.1", port), app, numthreads=threads).start()
    elif kind == "gunicorn":
        from gunicorn.app.base import BaseApplication

        class _App(BaseApplication):
            def load_config(self) -> None:
                for key, value in {"bind": f"127.0.0.1:{port}", "workers": 1, "threads": threads,
                                   "worker_class": "gthread", "loglevel": "warning"}.items():
                    self.cfg.set(key, value)

            def load(self) -> Any:
                return app

        _App().run()
    elif kind == "werkzeug":
        app.run(host="127.0.0.1", port=port, threaded=True)
    else:
        raise SystemExit(f"unknown server {kind}")


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", default="waitress,granian,gunicorn")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--server-threads", type=int, default=16)
    parser.add_argument("serve", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind, port, db_path = args.serve
        serve(kind, int(port), db_path, args.server_threads)
        return
    summary: dict[str, float] = {}
    for kind in args.servers.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            proc = subprocess.Popen([sys.executable, __file__, "--server-threads", str(args.server_threads),
                                     kind, str(port), tmp + "/db"])
            try:
                wait_until(functools.partial(_listening, port), 20, f"the {kind} server on port {port}")
                url = f"http://127.0.0.1:{port}"
                bodies = prepare(url, Path(tmp) / "bodies.txt", users=args.users,
                                 bodies=int(args.seconds * 5000), blob_size=200, dialect=Dialect.RUST)
                result = run_wrk(url, bodies, connections=args.connections, seconds=args.seconds)
                print(result.line(kind), flush=True)
                summary[kind] = round(result.rate)
            finally:
                proc.terminate()
                proc.wait(20)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
