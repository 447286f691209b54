"""What the demo, the end-to-end tests and the load benchmark share: a small user client for the tower's
HTTP API (both dialects, receipts checked against the tower id) and helpers that run ``teos-regtest`` and
``teosd`` as subprocesses on free loopback ports.

The client builds its requests with ``common`` (the same wire formats the tower checks), speaks plain
``http.client`` over one keep-alive connection, and identifies itself the way each family does: python-teos
clients send a python-requests User-Agent, the rust-teos plugin (reqwest) sends none.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from common import crypto, receipts
from common.appointment import Appointment
from common.dialects import locator_from_txid
from common.types import Dialect, Locator, Txid, UserId

T = TypeVar("T")


class TowerError(Exception):
    """The tower answered with an unexpected HTTP status."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class ReceiptError(Exception):
    """A receipt's signature does not verify against the tower id."""


class WaitTimedOut(TimeoutError):
    """``wait_until``'s condition did not come true in time."""


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Polls ``predicate`` until it returns something truthy; raises WaitTimedOut naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimedOut(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the user client ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentAppointment:
    locator: Locator
    signature: str  # the user's
    response: dict[str, Any]


class TowerClient:
    """One user of the tower, in one dialect, over one keep-alive HTTP connection."""

    def __init__(self, host: str, port: int, dialect: Dialect, secret_key: bytes | None = None) -> None:
        self.host = host
        self.port = port
        self.dialect = dialect
        self.secret_key = secret_key or crypto.generate_secret_key()
        self.user_id: UserId = crypto.public_key(self.secret_key)
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One request; returns (status, parsed JSON or None for an empty body)."""
        headers = {"Content-Type": "application/json"}
        if self.dialect is Dialect.PYTHON:
            headers["User-Agent"] = "python-requests/2.31.0"
        data = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):  # a keep-alive connection the server closed is re-opened once
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self._conn.request(method, path, body=data, headers=headers)
                response = self._conn.getresponse()
                raw = response.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest):
                self.close()
                if attempt == 2:
                    raise
        return response.status, (json.loads(raw) if raw else None)

    def _ok(self, status: int, body: Any) -> dict[str, Any]:
        if status != 200 or not isinstance(body, dict):
            raise TowerError(status, body)
        return body

    def ping(self) -> int:
        return self.request("GET", "/ping")[0]

    def register(self) -> dict[str, Any]:
        field = "public_key" if self.dialect is Dialect.PYTHON else "user_id"
        return self._ok(*self.request("POST", "/register", {field: self.user_id.hex()}))

    def add_appointment(
        self, dispute_txid: Txid, penalty_raw: bytes, to_self_delay: int = 20
    ) -> SentAppointment:
        """Encrypts ``penalty_raw`` under ``dispute_txid`` the dialect's way, signs and sends it."""
        locator = locator_from_txid(dispute_txid, self.dialect)
        blob = crypto.encrypt(penalty_raw, dispute_txid, self.dialect)
        appointment = Appointment(locator, blob, to_self_delay)
        signature = crypto.sign(appointment.serialize(), self.secret_key)
        body = {
            "appointment": {
                "locator": locator.hex(),
                "encrypted_blob": blob.hex(),
                "to_self_delay": to_self_delay,
            },
            "signature": signature,
        }
        return SentAppointment(locator, signature, self._ok(*self.request("POST", "/add_appointment", body)))

    def get_appointment(self, locator: Locator) -> tuple[int, Any]:
        signature = crypto.sign(f"get appointment {locator.hex()}".encode(), self.secret_key)
        return self.request("POST", "/get_appointment", {"locator": locator.hex(), "signature": signature})

    def get_subscription_info(self) -> dict[str, Any]:
        signature = crypto.sign(b"get subscription info", self.secret_key)
        return self._ok(*self.request("POST", "/get_subscription_info", {"signature": signature}))

    # -- receipts --------------------------------------------------------------------------------

    def check_registration(self, response: dict[str, Any], tower_id: UserId) -> None:
        """Raises ReceiptError unless the registration receipt is signed by ``tower_id``."""
        receipt = receipts.registration_receipt(
            self.dialect,
            self.user_id,
            response["available_slots"],
            response.get("subscription_start", 0),
            response["subscription_expiry"],
        )
        if not crypto.verify(receipt, response["subscription_signature"], tower_id):
            raise ReceiptError("registration receipt is not signed by the tower")

    def check_appointment(self, sent: SentAppointment, tower_id: UserId) -> None:
        """Raises ReceiptError unless the appointment receipt is signed by ``tower_id``."""
        receipt = receipts.appointment_receipt(self.dialect, sent.signature, sent.response["start_block"])
        if not crypto.verify(receipt, sent.response["signature"], tower_id):
            raise ReceiptError("appointment receipt is not signed by the tower")


# -- processes ------------------------------------------------------------------------------------


class Process:
    """A subprocess in its own session, logging to a file; ``stop`` sends SIGTERM and waits."""

    def __init__(
        self, name: str, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env if self.env is not None else clean_env(),
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with status {self.proc.returncode}; last lines of its log:\n"
                + self.tail()
            )

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.running and self.proc is not None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait; SIGKILL if it hangs. Returns the exit status."""
        status = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            status = self.proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return status


def clean_env() -> dict[str, str]:
    """This environment without TEOS_* variables (a subprocess teosd gets its settings as flags)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TEOS_")}


class Regtest(Process):
    """``teos-regtest``, the bundled bitcoind simulator, on free loopback ports."""

    def __init__(self, datadir: Path, user: str = "teos", password: str = "teos-demo") -> None:
        self.datadir = datadir
        self.rpc_port = free_port()
        self.zmq_port = free_port()
        self.user = user
        self.password = password
        super().__init__(
            "teos-regtest",
            [
                sys.executable,
                "-m",
                "teos.regtest",
                "--datadir",
                str(datadir),
                "--rpcport",
                str(self.rpc_port),
                "--zmqport",
                str(self.zmq_port),
                "--rpcuser",
                user,
                "--rpcpassword",
                password,
            ],
            datadir / "regtest.log",
        )

    @property
    def zmq_url(self) -> str:
        return f"tcp://127.0.0.1:{self.zmq_port}"

    def rpc(self, method: str, *params: Any, timeout: float = 30.0) -> Any:
        import base64

        auth = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        conn = http.client.HTTPConnection("127.0.0.1", self.rpc_port, timeout=timeout)
        try:
            conn.request(
                "POST",
                "/",
                json.dumps({"jsonrpc": "1.0", "id": "demo", "method": method, "params": list(params)}),
                {"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
            )
            reply = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        if reply.get("error"):
            raise RuntimeError(f"bitcoind {method}: {reply['error']}")
        return reply["result"]

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            self.check_alive()
            try:
                self.rpc("getblockcount", timeout=5)
                return True
            except (OSError, RuntimeError, ValueError, http.client.HTTPException):
                return False

        wait_until(ready, timeout, "teos-regtest to answer RPC")


def teosd_args(
    datadir: Path,
    api_port: int,
    rpc_host: str,
    rpc_port: int,
    rpc_user: str,
    rpc_password: str,
    zmq_url: str = "",
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of a regtest teosd against the given bitcoind."""
    return [
        sys.executable,
        "-m",
        "teos",
        "--datadir",
        str(datadir),
        "--btcnetwork",
        "regtest",
        "--apibind",
        "127.0.0.1",
        "--apiport",
        str(api_port),
        "--rpcport",
        str(free_port()),
        "--btcrpcconnect",
        rpc_host,
        "--btcrpcport",
        str(rpc_port),
        "--btcrpcuser",
        rpc_user,
        "--btcrpcpassword",
        rpc_password,
        "--zmqhashblock",
        zmq_url,
        *extra,
    ]


class Teosd(Process):
    """``teosd`` as a subprocess; ``wait_ready`` waits until its API answers ``/ping``."""

    def __init__(
        self, datadir: Path, args: Sequence[str], api_port: int, extra_env: dict[str, str] | None = None
    ) -> None:
        self.datadir = datadir
        self.api_port = api_port
        super().__init__("teosd", args, datadir / "teosd.log", {**clean_env(), **(extra_env or {})})

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            self.check_alive()
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=2)
                try:
                    conn.request("GET", "/ping")
                    return conn.getresponse().status == 200
                finally:
                    conn.close()
            return False

        wait_until(ready, timeout, "teosd's API to answer")

    def tower_id(self) -> UserId:
        """The tower id teosd logged at start."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "tower id=" in line:
                return UserId.from_hex(line.split("tower id=")[1].split()[0])
        raise RuntimeError("teosd has not logged its tower id")


# -- the demo --------------------------------------------------------------------------------------


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def _pair_parts(pair: Any) -> tuple[bytes, Txid, bytes, Txid]:
    """(commitment raw, commitment txid, penalty raw, penalty txid) of a ``Wallet.breach_pair()`` result."""
    return pair.commitment.raw, pair.commitment.txid, pair.penalty.raw, pair.penalty.txid


def run_demo(workdir: Path) -> None:
    """The tower's main job, step by step, against the bundled simulator (raises on any failure)."""
    from teos.regtest.wallet import Wallet

    regtest = Regtest(workdir / "bitcoind")
    api_port = free_port()
    teosd = Teosd(
        workdir / "teos",
        teosd_args(
            workdir / "teos",
            api_port,
            "127.0.0.1",
            regtest.rpc_port,
            regtest.user,
            regtest.password,
            regtest.zmq_url,
            ["--pollinterval", "5"],
        ),
        api_port,
    )
    try:
        _say(
            f"starting teos-regtest, the bundled bitcoind simulator (RPC 127.0.0.1:{regtest.rpc_port}, "
            f"ZMQ {regtest.zmq_url})"
        )
        regtest.start()
        regtest.wait_ready()
        wallet = Wallet(regtest.rpc, seed=b"teos-demo")
        _say("funding a wallet on the simulator (mining blocks to it)")
        wallet.fund()

        _say(f"starting teosd (API http://127.0.0.1:{api_port}, datadir {teosd.datadir})")
        teosd.start()
        teosd.wait_ready()
        tower_id = teosd.tower_id()
        _say(f"teosd is up at height {regtest.rpc('getblockcount')}; tower id {tower_id.hex()}")

        user = TowerClient("127.0.0.1", api_port, Dialect.RUST)
        _say(f"registering user {user.user_id.hex()} (rust-teos dialect)")
        registration = user.register()
        user.check_registration(registration, tower_id)
        _say(
            f"registered: {registration['available_slots']} slots until block "
            f"{registration['subscription_expiry']}; receipt signature verified against the tower id"
        )

        commitment_raw, commitment_txid, penalty_raw, penalty_txid = _pair_parts(wallet.breach_pair())
        _say(f"built a channel state: revoked commitment {commitment_txid.hex()}")
        _say(f"                       and the penalty spending it {penalty_txid.hex()}")
        sent = user.add_appointment(commitment_txid, penalty_raw)
        user.check_appointment(sent, tower_id)
        _say(
            f"appointment sent: locator {sent.locator.hex()}, penalty encrypted under the commitment txid; "
            f"accepted at block {sent.response['start_block']}, receipt signature verified"
        )
        status, body = user.get_appointment(sent.locator)
        _say(f"get_appointment -> HTTP {status}, status {body['status']}")

        _say("the cheating party broadcasts the revoked commitment; mining a block with it")
        regtest.rpc("sendrawtransaction", commitment_raw.hex())
        breach_block = regtest.rpc("generatetoaddress", 1, wallet.address())[0]
        started = time.monotonic()
        wait_until(
            lambda: penalty_txid.hex() in regtest.rpc("getrawmempool"), 30, "the penalty in the mempool"
        )
        _say(
            f"breach seen in block {breach_block[:16]}...: the tower broadcast the penalty "
            f"{penalty_txid.hex()} {time.monotonic() - started:.2f}s later"
        )

        def responded() -> Any:
            status, body = user.get_appointment(sent.locator)
            return body if status == 200 and body.get("status") == "dispute_responded" else None

        body = wait_until(responded, 15, "get_appointment to show dispute_responded")
        _say(
            f"get_appointment -> status {body['status']}, penalty_txid {body['appointment']['penalty_txid']}"
        )

        first = regtest.rpc("generatetoaddress", 1, wallet.address())[0]
        if penalty_txid.hex() not in regtest.rpc("getblock", first)["tx"]:
            raise RuntimeError("the penalty was not mined in the next block")
        height = regtest.rpc("getblock", first)["height"]
        _say(f"penalty mined in block {height} (1 confirmation)")
        regtest.rpc("generatetoaddress", 5, wallet.address())
        confirmations = regtest.rpc("getblockcount") - height + 1
        _say(
            f"mined 5 more blocks: the penalty has {confirmations} confirmations; the tower follows it "
            "until it is irrevocably resolved"
        )
        _say("stopping teosd (SIGTERM)")
        status_code = teosd.stop()
        if status_code != 0:
            raise RuntimeError(f"teosd exited with status {status_code}")
        _say("teosd stopped cleanly (exit 0)")
    except Exception:
        for process in (teosd, regtest):
            if process.proc is not None:
                print(
                    f"--- last lines of {process.name}'s log ({process.log_path}):\n{process.tail()}",
                    file=sys.stderr,
                )
        raise
    finally:
        teosd.stop()
        regtest.stop()


def main() -> None:
    import argparse
    import shutil
    import tempfile

    parser = argparse.ArgumentParser(description="Shows the tower's main job against the bundled simulator.")
    parser.add_argument("--keep", action="store_true", help="keep the temporary datadirs (logs) afterwards")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="teos-demo-"))
    try:
        run_demo(workdir)
    except Exception as e:
        print(f"[demo] FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        print(f"[demo] logs kept in {workdir}", file=sys.stderr)
        sys.exit(1)
    if args.keep:
        _say(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    _say("done")


if __name__ == "__main__":
    main()
