"""Queue throughput and overhead (issue #20), on the tiny random-weight model.

1. Jobs per minute with 1 and 2 workers: two CPU "devices" in one process (``devices=["cpu", "cpu"]``), and with
   ``--ray`` also 1 and 2 Ray actors on a local Ray cluster started here.
2. What the durable queue adds per job (SQLite on disk, WAL): the time from ``submit`` to the result for jobs
   whose worker returns at once (only queue work: encode, 3 committed writes, dispatch, wake-up), and for real
   tiny-model jobs the queued time minus a direct ``generate()`` of the same request. Target: under 50 ms.

Run: ``python -m bench.bench_queue [--jobs 12] [--steps 4] [--ray]`` (heavy on a shared machine: flock it).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

TARGET_MS = 50.0


def _request(seed: int, steps: int):  # -> GenerationRequest
    from webui.pipeline import GenerationRequest

    return GenerationRequest(prompt="a cat", steps=steps, seed=seed, sampler_name="Euler", width=64, height=64)


def jobs_per_minute(service, jobs: int, steps: int) -> float:  # service: WebUIService
    warm = [service.submit(_request(0, steps)) for _ in service.queue.workers]  # one job each: every model loaded
    for job in warm:
        job.result(600)
    started = time.perf_counter()
    submitted = [service.submit(_request(seed, steps)) for seed in range(jobs)]
    for job in submitted:
        job.result(600)
    return jobs / (time.perf_counter() - started) * 60


def queue_only_overhead_ms(db: Path, jobs: int) -> list[float]:
    from webui.jobs import Job, JobQueue
    from webui.pipeline import GenerationResult, resolve_request
    from webui.queue.store import QueueStore
    from webui.sampling import create_sampler_registry

    resolved = resolve_request(_request(1, 4), create_sampler_registry(), (64, 64))
    queue = JobQueue(lambda job: GenerationResult(seeds=[1], request=job.request), store=QueueStore.open(db))
    times = []
    for _ in range(jobs):
        started = time.perf_counter()
        queue.submit(Job(resolved)).result(60)
        times.append((time.perf_counter() - started) * 1000)
    queue.close()
    return times


def real_job_overhead_ms(models: Path, db: Path, jobs: int, steps: int) -> tuple[float, float]:
    """(median queued ms, median direct generate() ms) for the same tiny-model requests, alternating."""
    from webui.pipeline import generate, resolve_request
    from webui.service import WebUIService

    service = WebUIService(models, outputs_dir=None, queue_db=db)
    try:
        service.submit(_request(0, steps)).result(600)  # load the model, fit the preview map
        model = service.models.get(None)
        queued, direct = [], []
        for seed in range(jobs):
            started = time.perf_counter()
            service.submit(_request(seed, steps)).result(600)
            queued.append((time.perf_counter() - started) * 1000)
            resolved = resolve_request(_request(seed, steps), service.samplers, (64, 64))
            started = time.perf_counter()
            generate(model, resolved, previewer=service.previewer(model), model_name=model.name)
            direct.append((time.perf_counter() - started) * 1000)
        return statistics.median(queued), statistics.median(direct)
    finally:
        service.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--ray", action="store_true", help="also measure 1 and 2 Ray actors (local Ray, 2 CPUs)")
    args = parser.parse_args()

    from tests.support.tiny_model import write_tiny_model
    from webui.service import WebUIService

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = write_tiny_model(folder / "model").models_yaml
        print(f"tiny model, 64x64, {args.steps} Euler steps, {args.jobs} jobs per run")
        print(f"{'workers':<28}{'jobs/min':>10}")
        for label, devices in (("1 CPU worker", []), ("2 CPU workers (one process)", ["cpu", "cpu"])):
            service = WebUIService(
                models, outputs_dir=None, queue_db=folder / f"{len(devices)}.sqlite3", devices=devices
            )
            try:
                print(f"{label:<28}{jobs_per_minute(service, args.jobs, args.steps):>10.1f}")
            finally:
                service.close()
        if args.ray:
            import ray

            ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
            try:
                for count in (1, 2):
                    service = WebUIService(
                        models, outputs_dir=None, queue_db=folder / f"ray{count}.sqlite3", cluster="auto",
                        cluster_workers=count,
                    )  # fmt: skip
                    try:
                        label = f"{count} Ray actor{'s' if count > 1 else ''}"
                        print(f"{label:<28}{jobs_per_minute(service, args.jobs, args.steps):>10.1f}")
                    finally:
                        service.close()
            finally:
                ray.shutdown()

        only = queue_only_overhead_ms(folder / "overhead.sqlite3", 200)
        print(
            f"\nqueue only (worker returns at once, SQLite on disk): median {statistics.median(only):.2f} ms, "
            f"p95 {sorted(only)[int(len(only) * 0.95)]:.2f} ms per job (target < {TARGET_MS:g} ms)"
        )
        queued, direct = real_job_overhead_ms(models, folder / "real.sqlite3", args.jobs, args.steps)
        print(
            f"tiny-model job: queued {queued:.1f} ms vs direct generate() {direct:.1f} ms -> "
            f"queue adds {queued - direct:.1f} ms (target < {TARGET_MS:g} ms)"
        )


if __name__ == "__main__":
    main()
