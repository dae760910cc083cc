"""Every test run uses a random hypothesis seed that it prints, so a failure replays.

Hypothesis draws a fresh seed per test by default and prints none for an ordinary
failure (its example blob replays it, but only where the same code runs). We draw one
seed per run instead, show it in the header, and repeat it under a failure, so CI's
`derandomize=False` runs can be replayed with ``pytest --hypothesis-seed=N``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Before hypothesis' own pytest_configure, which reads the option.
    if config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(random.SystemRandom().getrandbits(32))


def pytest_report_header(config: pytest.Config) -> str:
    return f"hypothesis seed: {config.option.hypothesis_seed}"


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    if exitstatus != 0:
        seed = config.option.hypothesis_seed
        terminalreporter.write_line(
            f"hypothesis seed was {seed}: rerun with `pytest --hypothesis-seed={seed}`"
        )


class S3Server:
    """A real S3 server (moto's) on 127.0.0.1, reached over HTTP as a user's code would."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer  # noqa: PLC0415 - only S3 tests need it

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self._buckets = 0

    def options(self) -> dict[str, object]:
        """The ``storage_options`` that reach this server through s3fs."""
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
        }

    def env(self) -> dict[str, str]:
        """The environment that points s3fs (botocore) at this server, for subprocesses."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> object:
        """A boto3 client of this server, to look at the bucket without ckpt or s3fs."""
        import boto3  # noqa: PLC0415 - only S3 tests need it

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def new_bucket(self) -> str:
        """A fresh, empty bucket's name."""
        self._buckets += 1
        name = f"bucket-{self._buckets}"
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name

    def keys(self, bucket: str) -> dict[str, bytes]:
        """Every object of ``bucket``, read with boto3 (not through ckpt or s3fs)."""
        client: Any = self.client()
        out: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                out[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return out

    def stop(self) -> None:
        """Stop the server."""
        self._server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the session; each test takes a bucket of its own."""
    server = S3Server()
    yield server
    server.stop()
