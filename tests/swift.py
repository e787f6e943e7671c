"""A real S3 implementation for the tests: OpenStack Swift with its s3api and memcached, on 127.0.0.1.

One proxy, object, container and account server (Debian's swift packages; scripts/setup.sh installs
them) in a temporary directory, with tempauth's ``test:tester`` / ``testing`` as the S3 credentials:
Swift checks SigV4 signatures, so a wrong secret fails (mocks such as moto accept anything).
memcached is mandatory: without it every S3 call is a 500 "Memcache required".
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.servers import free_port, wait_until

ACCESS_KEY = "test:tester"
SECRET_KEY = "testing"
REGION = "us-east-1"

_PROXY_CONF = """[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = root
swift_dir = {etc}
log_level = WARNING
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo
  versioned_writes proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin
[filter:s3api]
use = egg:swift#s3api
location = us-east-1
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached}
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
"""

_BACKEND_CONF = """[DEFAULT]
devices = {srv}
mount_check = false
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = root
swift_dir = {etc}
log_level = WARNING
[pipeline:main]
pipeline = {kind}-server
[app:{kind}-server]
use = egg:swift#{kind}
"""


class SwiftS3:
    """Swift + s3api + memcached in a temporary directory; ``endpoint`` is the S3 URL."""

    def __init__(self) -> None:
        if shutil.which("swift-proxy-server") is None or shutil.which("memcached") is None:
            raise RuntimeError("Swift is not installed: run scripts/setup.sh (it installs swift and memcached)")
        self.dir = Path(tempfile.mkdtemp(prefix="hangar-swift-"))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        etc, srv, run = self.dir / "etc", self.dir / "srv", self.dir / "run"
        for d in (etc, srv / "d1", run):
            d.mkdir(parents=True)
        memcached = free_port()
        for kind in ("object", "container", "account"):
            port = free_port()
            (etc / f"{kind}-server.conf").write_text(_BACKEND_CONF.format(srv=srv, port=port, etc=etc, kind=kind))
            builder = str(etc / f"{kind}.builder")
            for args in (["create", "6", "1", "1"], ["add", f"r1z1-127.0.0.1:{port}/d1", "1"], ["rebalance"]):
                subprocess.run(["swift-ring-builder", builder, *args], check=True, capture_output=True)
        (etc / "proxy-server.conf").write_text(_PROXY_CONF.format(port=self.port, etc=etc, memcached=memcached))
        try:
            mc = ("memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(memcached), "-m", "64")
            self._spawn(run / "memcached.log", *mc)
            for kind in ("object", "container", "account", "proxy"):
                self._spawn(run / f"{kind}.log", f"swift-{kind}-server", str(etc / f"{kind}-server.conf"), "-v")
            wait_until(self._healthy, 60, "Swift to start")
            # The proxy's healthcheck does not ask the account and container servers: a bucket
            # made before they listen is a 503 "Please reduce your request rate".
            wait_until(self._can_create_buckets, 60, "Swift's account and container servers")
        except BaseException:
            self.stop()
            raise

    def _spawn(self, log_path: Path, *cmd: str) -> None:
        with open(log_path, "ab") as log:
            self.procs.append(
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True)
            )

    def _healthy(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                logs = "\n".join(f.read_text()[-2000:] for f in (self.dir / "run").glob("*.log"))
                raise RuntimeError(f"{p.args!r} exited with {p.returncode}:\n{logs}")
        try:
            return httpx.get(f"{self.endpoint}/healthcheck", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def _can_create_buckets(self) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client().create_bucket(Bucket="hangar-ready")
            return True
        except ClientError as e:
            if e.response["Error"]["Code"] in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return True
            time.sleep(0.2)
            return False

    def env(self, secret: str = SECRET_KEY) -> dict[str, str]:
        """The standard AWS variables that point boto3 (and so the registry) at this Swift."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            # No shared config or credentials files of the machine's may interfere.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def client(self, secret: str = SECRET_KEY) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
