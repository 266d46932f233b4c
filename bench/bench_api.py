"""What the REST API adds on top of the service, and how responsive ``/progress`` stays under load.

Serves the API (uvicorn, loopback) over a ``WebUIService`` with the given models.yaml (the tiny random-weight
test model by default, built on the fly), then measures:

1. one txt2img image through HTTP vs ``service.run`` on the same request (median of ``--repeats``): the API's
   overhead (JSON, base64 PNG with infotext, the worker-thread hand-off);
2. ``--clients`` clients each sending 2 txt2img at once while another polls ``/progress`` every 50 ms: the
   wall time for all images and the poll latency (median, 95th percentile, max).

Usage: ``OMP_NUM_THREADS=1 python -m bench.bench_api [--models models.yaml] [--steps 4] [--clients 8]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from fastapi import FastAPI

from tests.support.api import serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="models.yaml (default: the tiny test model)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    from tests.support.tiny_model import write_tiny_model
    from webui.api import mount_api
    from webui.pipeline.requests import GenerationRequest
    from webui.service import WebUIService

    with tempfile.TemporaryDirectory() as tmp:
        models = args.models or write_tiny_model(Path(tmp)).models_yaml
        service = WebUIService(models)
        app = FastAPI()
        mount_api(app, service)
        body = {"prompt": "a red star", "steps": args.steps, "seed": 1}
        try:
            with serve(app) as url, httpx.Client(base_url=url, timeout=600) as client:
                service.run(GenerationRequest(prompt="warm-up", steps=args.steps), save=False)
                direct, http = [], []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    service.run(GenerationRequest(prompt=body["prompt"], steps=args.steps, seed=1), save=False)
                    direct.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200
                    http.append(time.perf_counter() - started)
                d, h = statistics.median(direct), statistics.median(http)
                print(
                    f"one image, {args.steps} steps: service.run {d * 1000:.0f} ms, "
                    f"POST /sdapi/v1/txt2img {h * 1000:.0f} ms (API overhead {(h - d) * 1000:+.0f} ms)"
                )

                latencies: list[float] = []
                stop = threading.Event()

                def poll() -> None:
                    while not stop.is_set():
                        started = time.perf_counter()
                        client.get("/sdapi/v1/progress")
                        latencies.append(time.perf_counter() - started)
                        time.sleep(0.05)

                def one_client(i: int) -> int:
                    with ThreadPoolExecutor(2) as pool:
                        calls = [
                            pool.submit(client.post, "/sdapi/v1/txt2img", json={**body, "seed": -1}) for _ in range(2)
                        ]
                        return sum(len(c.result().json()["images"]) for c in calls)

                poller = threading.Thread(target=poll)
                poller.start()
                started = time.perf_counter()
                with ThreadPoolExecutor(args.clients) as pool:
                    images = sum(pool.map(one_client, range(args.clients)))
                wall = time.perf_counter() - started
                stop.set()
                poller.join()
                ms = sorted(x * 1000 for x in latencies)
                print(
                    f"{args.clients} clients x 2 requests: {images} images in {wall:.1f} s; /progress while busy: "
                    f"median {statistics.median(ms):.1f} ms, p95 {ms[int(0.95 * (len(ms) - 1))]:.1f} ms, "
                    f"max {ms[-1]:.1f} ms over {len(ms)} polls"
                )
        finally:
            service.close()


if __name__ == "__main__":
    main()
