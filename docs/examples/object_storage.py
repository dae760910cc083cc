"""A run that checkpoints to S3, against a local S3 server: no network, no account.

It starts moto's S3 server on 127.0.0.1 (``pip install 'moto[server]'``), points a
manager at a bucket there through s3fs, saves a few checkpoints as a loop would, and
reads them back as a restarted job would. Swap the endpoint for your store's (or drop
``storage_options`` and let s3fs read the environment) and it is a real run.

Run it with ``python docs/examples/object_storage.py``; the documentation's test suite
runs it too (tests/test_doc_examples.py).
"""

from __future__ import annotations

# --8<-- [start:run]
import logging

import boto3
from moto.server import ThreadedMotoServer

from ckpt import CheckpointManager

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server logs every request
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
endpoint = f"http://{host}:{port}"
boto3.client(
    "s3",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="demo",
    aws_secret_access_key="demo",
).create_bucket(Bucket="training")

config = {
    "checkpoint_dir": "s3://training/runs/grpo-1",
    "storage_options": {  # passed to s3fs.S3FileSystem
        "key": "demo",
        "secret": "demo",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    },
    "metric_name": "reward",
    "keep_top_k": 2,
}
with CheckpointManager(config) as manager:
    for step, reward in [(100, 0.31), (200, 0.52), (300, 0.47), (400, 0.40)]:
        path = manager.init_tmp_checkpoint(step, {"reward": reward})  # a UPath
        with (path / "policy.bin").open("wb") as f:  # a multipart upload
            f.write(b"weights at step %d" % step)
        manager.finalize_checkpoint(path)  # the manifest is written last: committed

# A restarted job: the lease is free (the writer closed), the catalog makes it quick.
with CheckpointManager(config) as manager:
    steps = [record.step for record in manager.list_checkpoints()]
    print(steps, manager.get_best_checkpoint_path())  # s3://training/runs/grpo-1/step_200.<id>
    assert steps == [200, 300, 400]  # top 2 by reward, and the latest
    best = manager.overview().best  # a record: its path is a UPath, ready to open
    assert best is not None
    assert (best.path / "policy.bin").read_bytes() == b"weights at step 200"
server.stop()
# --8<-- [end:run]
