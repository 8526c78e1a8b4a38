"""Cold-load download: S3Store.get_file (parallel ranged GETs) vs one GET, against moto's HTTP server.

A script, not a test: prints one JSON line per strategy.  SIZE_MB=256 python bench/bench_s3_get.py
moto serves from one Python process, so absolute MB/s says little about real S3/R2; the ratio says whether
parallel ranges pay off over loopback HTTP at all.
"""
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from moto.server import ThreadedMotoServer

from loaders.storage.store import S3Store

SIZE = int(os.environ.get("SIZE_MB", "256")) << 20
RUNS = int(os.environ.get("RUNS", "3"))


def main():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")
    client.create_bucket(Bucket="bench")
    store = S3Store("bench", client=client)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "src.bin")
        src.write_bytes(os.urandom(SIZE))
        store.put_file("ckpt.safetensors", src)
        strategies = {
            "ranged_parallel_32MBx16": store.transfer,
            "ranged_parallel_8MBx16": TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20,
                                                     max_concurrency=16),
            "ranged_parallel_64MBx4": TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20,
                                                     max_concurrency=4),
            "single_get": TransferConfig(multipart_threshold=1 << 40, max_concurrency=1, use_threads=False),
        }
        for name, cfg in strategies.items():
            store.transfer = cfg
            times = []
            for i in range(RUNS):
                dst = Path(tmp, f"{name}-{i}.bin")
                t0 = time.perf_counter()
                store.get_file("ckpt.safetensors", dst)
                times.append(time.perf_counter() - t0)
                assert dst.stat().st_size == SIZE
                dst.unlink()
            med = statistics.median(times)
            print(json.dumps({"case": name, "size_mb": SIZE >> 20, "median_s": round(med, 3),
                              "mb_per_s": round((SIZE >> 20) / med, 1)}), flush=True)
    server.stop()


if __name__ == "__main__":
    main()
