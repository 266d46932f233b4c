"""What the Gradio UI adds on top of the service, how live its progress is, and how fast Interrupt acts.

Builds the real UI (``webui.ui.build_ui``) over a ``WebUIService`` with the given models.yaml (the tiny
random-weight test model by default, built on the fly), serves it on loopback and drives it with
``gradio_client`` (the same queue, SSE stream and endpoints a browser uses). Measures:

1. one txt2img image through ``/txt2img`` vs ``service.run`` on the same request (median of ``--repeats``):
   the UI's overhead (queue, polling, gallery PNG with infotext, SSE);
2. progress updates the client receives per second of sampling on a long run (live preview + step/ETA);
3. Interrupt latency: from calling ``/txt2img_interrupt`` to the final result arriving, and how many sampling
   steps ran after the call.

Usage: ``OMP_NUM_THREADS=1 python -m bench.bench_ui [--models models.yaml] [--steps 4] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="models.yaml (default: the tiny test model)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long-steps", type=int, default=60, help="steps of the progress/interrupt run")
    parser.add_argument("--size", type=int, default=None, help="image side (default: the model's native size)")
    args = parser.parse_args()

    from gradio_client import Client

    from tests.support.tiny_model import write_tiny_model
    from webui.pipeline.requests import GenerationRequest
    from webui.service import WebUIService
    from webui.ui import build_ui

    with tempfile.TemporaryDirectory() as tmp:
        models = args.models or write_tiny_model(Path(tmp)).models_yaml
        service = WebUIService(models, device="cpu", outputs_dir=None)
        model = service.registry.default
        size = args.size or (model.width or 512)
        demo = build_ui(service)
        _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, ssr_mode=False, server_name="127.0.0.1")
        try:
            client = Client(url, verbose=False)
            ui_args = dict(
                model_name=model.name,
                prompt="a cat",
                negative_prompt="",
                sampler_name="Euler",
                scheduler="Automatic",
                steps=args.steps,
                cfg_scale=7,
                width=size,
                height=size,
                seed=1,
                n_iter=1,
                batch_size=1,
            )
            request = GenerationRequest(
                prompt="a cat", sampler_name="Euler", steps=args.steps, width=size, height=size, seed=1
            )
            service.run(request, model.name)  # load the model and warm up
            direct, through_ui = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                service.run(request, model.name)
                direct.append(time.perf_counter() - start)
                start = time.perf_counter()
                client.predict(**ui_args, api_name="/txt2img")
                through_ui.append(time.perf_counter() - start)
            d, u = statistics.median(direct), statistics.median(through_ui)
            print(f"model {model.name}, {size}x{size}, {args.steps} steps, median of {args.repeats}")
            print(f"  service.run        {d * 1000:8.1f} ms")
            print(f"  UI /txt2img        {u * 1000:8.1f} ms   (overhead {(u - d) * 1000:+.1f} ms)")

            # Progress stream of a long run, then Interrupt from the same client (its own job).
            job = client.submit(**(ui_args | {"steps": args.long_steps}), api_name="/txt2img")
            started = time.perf_counter()
            while not any("Step" in str(out[2]) for out in job.outputs()):
                time.sleep(0.01)
            time.sleep(max(1.0, 0.3 * (time.perf_counter() - started)))
            running = [out[2] for out in job.outputs() if 'data-state="running"' in str(out[2])]
            steps_seen = [int(m.group(1)) for s in running if (m := re.search(r"Step (\d+)/", s))]
            sampling_time = time.perf_counter() - started
            step_at_call = service.progress().step
            clicked = time.perf_counter()
            client.predict(api_name="/txt2img_interrupt")
            final = job.result(timeout=600)
            latency = time.perf_counter() - clicked
            stopped = int(m.group(1)) if (m := re.search(r"at step (\d+)/", final[2])) else -1
            print(
                f"  progress updates   {len(running)} in {sampling_time:.1f} s "
                f"({len(running) / sampling_time:.1f}/s; steps {steps_seen[:1]}..{steps_seen[-1:]})"
            )
            print(
                f"  interrupt          {latency * 1000:8.1f} ms to the final result; "
                f"stopped at step {stopped} (step {step_at_call} when called)"
            )
        finally:
            demo.close(verbose=False)
            service.close()


if __name__ == "__main__":
    main()
