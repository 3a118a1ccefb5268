"""A real S3 endpoint on loopback for the tests: moto's server, with credentials that are checked.

moto accepts any credentials until told otherwise, so the server is started open, an IAM user with
an S3-only policy and an access key is made, and then moto's auth is switched on: from there,
a wrong key or secret is refused as AWS would refuse it. ``scripts/bench_stores.py`` reuses
``start_moto`` outside pytest.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REGION = "us-east-1"


@dataclass
class S3Server:
    """A running moto server: its endpoint, the environment that reaches it, and fresh buckets."""

    endpoint: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] = field(repr=False)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def new_bucket(self) -> str:
        """A new empty bucket with a valid, unique name."""
        name = f"convpipe-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def moto_command() -> list[str] | None:
    """How to start moto's server from this interpreter, or None when moto[server] is not installed."""
    script = Path(sys.executable).parent / "moto_server"
    if script.is_file():
        return [str(script)]
    found = shutil.which("moto_server")
    if found:
        return [found]
    try:
        import flask  # noqa: F401  (moto's server needs moto[server])
        import moto.server  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "moto.server"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(endpoint: str, process: subprocess.Popen[bytes], seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # it answered
        except OSError:
            time.sleep(0.1)
    return False


def _checked_credentials(endpoint: str) -> tuple[str, str]:
    """Make an IAM user allowed s3:* and its key, then switch moto's auth on; returns (key id, secret)."""
    import boto3

    anyone = {"aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap"}
    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, **anyone)
    iam.create_user(UserName="convpipe-test")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="convpipe-test", PolicyName="s3-all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="convpipe-test")["AccessKey"]
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=10):
        pass
    return key["AccessKeyId"], key["SecretAccessKey"]


def start_moto(log: Path | None = None) -> S3Server:
    """Start moto's server on a free loopback port with checked credentials (RuntimeError if it cannot)."""
    command = moto_command()
    if command is None:
        raise RuntimeError("moto[server] is not installed (pip install 'moto[server]')")
    for _attempt in range(3):  # a free port can be taken between the probe and the bind
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        output = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "INITIAL_NO_AUTH_ACTION_COUNT"}
        process = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(port)], stdout=output, stderr=output, env=env
        )
        if output is not subprocess.DEVNULL:
            output.close()
        server = S3Server(endpoint=endpoint, env={}, process=process)
        if not _wait_until_up(endpoint, process):
            server.stop()
            continue
        try:
            key_id, secret = _checked_credentials(endpoint)
        except Exception:
            server.stop()
            raise
        server.env = {
            "AWS_ACCESS_KEY_ID": key_id,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": endpoint,
        }
        return server
    raise RuntimeError(f"moto's server did not start ({' '.join(command)})")


@contextlib.contextmanager
def running_moto(log: Path | None = None) -> Iterator[S3Server]:
    server = start_moto(log)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server for the whole session; skips the test when moto[server] is not installed."""
    if moto_command() is None:
        pytest.skip("moto[server] is not installed: the S3 tests need it (pip install -e '.[test]')")
    with running_moto() as server:
        yield server


# Variables that would point convpipe somewhere other than the test server.
_FOREIGN_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT")


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """The test server's credentials and endpoint in the environment, with no cached store from before."""
    from convpipe.io.stores import open_store

    for name in _FOREIGN_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    open_store.cache_clear()
    yield s3_server
    open_store.cache_clear()
