"""The agent-scheduler queue API (``/agent-scheduler/v1/*``) over real HTTP (uvicorn + httpx) on the real service
with the tiny model: queue, results (base64 and zip), history, cancel, requeue, move, pause/resume/clear, auth
and per-user visibility."""

from __future__ import annotations

import base64
import io
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from tests.support.api import serve
from webui.api import mount_api
from webui.api.agent_scheduler import mount_agent_scheduler
from webui.api.security import guarded_route_class
from webui.service import WebUIService

TIMEOUT = 120
Q = "/agent-scheduler/v1"


def wait_for(client: httpx.Client, task_id: str, states: tuple[str, ...] = ("done",)) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while True:
        data = client.get(f"{Q}/task/{task_id}").json()["data"]
        if data["status"] in states:
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {data['status']}")
        time.sleep(0.05)


def body(prompt: str = "a cat", **extra: object) -> dict:
    return {"prompt": prompt, "steps": 2, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler", **extra}


def app_for(service: WebUIService, *, auth: list[tuple[str, str]] | None = None, per_user: bool = False) -> FastAPI:
    app = FastAPI()
    sdapi = mount_api(app, service, api_auth=auth)
    mount_agent_scheduler(
        app, service, sdapi, guarded_route_class(auth, sdapi.limits.max_body_bytes), per_user=per_user
    )
    return app


@pytest.fixture
def service(tiny_checkpoint, tmp_path: Path) -> Iterator[WebUIService]:
    svc = WebUIService(tiny_checkpoint.models_yaml, outputs_dir=tmp_path / "outputs", queue_db=tmp_path / "q.sqlite3")
    yield svc
    svc.close()


@pytest.fixture
def client(service: WebUIService) -> Iterator[httpx.Client]:
    with serve(app_for(service)) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


def test_queued_txt2img_answers_at_once_and_its_results_come_as_base64_and_zip(client, service):
    started = time.monotonic()
    r = client.post(f"{Q}/queue/txt2img", json=body(batch_size=2, name="two cats"))
    assert r.status_code == 200 and time.monotonic() - started < 5
    task_id = r.json()["task_id"]
    data = wait_for(client, task_id)
    assert data["type"] == "txt2img" and data["name"] == "two cats" and data["params"]["prompt"] == "a cat"
    assert data["params"]["sampler"] == "Euler" and data["params"]["checkpoint"] is None
    result = client.get(f"{Q}/task/{task_id}/results").json()
    assert result["success"] and len(result["data"]) == 2
    images = [Image.open(io.BytesIO(base64.b64decode(item["image"]))) for item in result["data"]]
    assert [im.size for im in images] == [(64, 64)] * 2
    assert ["Seed: 11," in result["data"][0]["infotext"], "Seed: 12," in result["data"][1]["infotext"]] == [True] * 2
    assert images[1].info["parameters"] == result["data"][1]["infotext"]
    z = client.get(f"{Q}/task/{task_id}/results", params={"zip": "true"})
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(z.content)) as archive:
        assert sorted(archive.read(n) for n in archive.namelist()) == sorted(
            base64.b64decode(item["image"]) for item in result["data"]
        )
    on_disk = sorted(p.name for p in (service.outputs_dir or Path()).rglob("*.png"))
    assert sorted(archive.namelist()) == on_disk
    history = client.get(f"{Q}/history").json()
    assert history["total"] == 1 and history["tasks"][0]["id"] == task_id and history["tasks"][0]["status"] == "done"
    assert client.get(f"{Q}/task/nope").json() == {"success": False, "message": "Task not found"}


def test_pause_list_move_cancel_clear_resume_and_requeue(client):
    assert client.post(f"{Q}/queue/pause").json()["success"]
    ids = [client.post(f"{Q}/queue/txt2img", json=body(f"p{i}")).json()["task_id"] for i in range(4)]
    queue = client.get(f"{Q}/queue").json()
    assert queue["paused"] and queue["total_pending_tasks"] == 4 and queue["current_task_id"] is None
    assert [t["id"] for t in queue["pending_tasks"]] == ids and [t["position"] for t in queue["pending_tasks"]] == [
        0,
        1,
        2,
        3,
    ]
    assert client.post(f"{Q}/task/{ids[3]}/move/top").json()["success"]
    assert client.post(f"{Q}/task/{ids[2]}/move/{ids[0]}").json()["success"]
    assert [t["id"] for t in client.get(f"{Q}/queue").json()["pending_tasks"]] == [ids[3], ids[2], ids[0], ids[1]]
    assert client.get(f"{Q}/task/{ids[0]}/position").json()["data"] == {"status": "pending", "position": 2}
    assert client.delete(f"{Q}/task/{ids[1]}").json() == {"success": True, "message": "Task deleted"}
    assert client.get(f"{Q}/task/{ids[1]}").json()["data"]["status"] == "interrupted"
    assert client.post(f"{Q}/task/{ids[1]}/move/top").json()["success"] is False
    assert client.post(f"{Q}/queue/clear").json()["success"]
    assert client.get(f"{Q}/queue").json()["total_pending_tasks"] == 0
    kept = client.post(f"{Q}/queue/txt2img", json=body("kept")).json()["task_id"]
    assert client.post(f"{Q}/queue/resume").json()["success"]
    wait_for(client, kept)
    again = client.post(f"{Q}/task/{kept}/requeue").json()
    assert again["success"] and again["task_id"] != kept
    wait_for(client, again["task_id"])
    first, second = (client.get(f"{Q}/task/{t}/results").json()["data"] for t in (kept, again["task_id"]))
    assert first[0]["image"] == second[0]["image"]  # the same request, seed included
    statuses = {t["id"]: t["status"] for t in client.get(f"{Q}/history", params={"limit": 50}).json()["tasks"]}
    assert statuses == {**dict.fromkeys(ids, "interrupted"), kept: "done", again["task_id"]: "done"}
    assert client.get(f"{Q}/history", params={"status": "done"}).json()["total"] == 2


def test_bad_requests_are_422_naming_the_field_and_leave_no_task(client):
    for payload, field in [
        (body(sampler_name="Nope"), "sampler_name"),
        (body(checkpoint="no-such-model"), "checkpoint"),
        (body(callback_url="http://127.0.0.1:9/hook"), "callback_url"),
        (body(callback_url="http://169.254.169.254/latest/meta-data"), "callback_url"),
        (body(steps=0), "steps"),
    ]:
        r = client.post(f"{Q}/queue/txt2img", json=payload)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == field, (payload, r.text)
    assert client.get(f"{Q}/queue").json()["total_pending_tasks"] == 0
    assert client.get(f"{Q}/history").json()["total"] == 0
    r = client.post(f"{Q}/queue/txt2img", json=body(callback_url="http://127.0.0.1:9/hook"))
    assert "--allow-local-callbacks" in r.json()["detail"][0]["msg"]


def test_img2img_is_queued_with_its_init_image(client):
    def run(color: tuple[int, int, int]) -> Image.Image:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
        payload = body(init_images=[base64.b64encode(buffer.getvalue()).decode()], denoising_strength=0.3)
        task_id = client.post(f"{Q}/queue/img2img", json=payload).json()["task_id"]
        data = wait_for(client, task_id)
        assert data["type"] == "img2img" and data["params"]["img2img"]["denoising_strength"] == 0.3
        assert "init_images" not in data["params"]["img2img"] or data["params"]["img2img"]["init_images"] == []
        image = client.get(f"{Q}/task/{task_id}/results").json()["data"][0]["image"]
        return Image.open(io.BytesIO(base64.b64decode(image))).convert("RGB")

    red, blue = run((230, 20, 20)), run((20, 20, 230))
    assert red.tobytes() != blue.tobytes()  # same seed, so only the stored init image can make them differ


def test_api_auth_guards_the_queue_and_users_see_only_their_own_jobs(service):
    users = [("ann", "pw1"), ("bob", "pw2")]
    with serve(app_for(service, auth=users, per_user=True)) as url:
        anon = httpx.Client(base_url=url, timeout=60)
        ann = httpx.Client(base_url=url, timeout=60, auth=("ann", "pw1"))
        bob = httpx.Client(base_url=url, timeout=60, auth=("bob", "pw2"))
        assert anon.get(f"{Q}/queue").status_code == 401
        assert anon.post(f"{Q}/queue/txt2img", json=body()).status_code == 401
        assert httpx.get(f"{url}{Q}/queue", auth=("ann", "wrong")).status_code == 401
        ann.post(f"{Q}/queue/pause")
        a = ann.post(f"{Q}/queue/txt2img", json=body("ann's")).json()["task_id"]
        b = bob.post(f"{Q}/queue/txt2img", json=body("bob's")).json()["task_id"]
        assert [t["id"] for t in ann.get(f"{Q}/queue").json()["pending_tasks"]] == [a]
        assert [t["id"] for t in bob.get(f"{Q}/queue").json()["pending_tasks"]] == [b]
        assert bob.get(f"{Q}/task/{a}").json() == {"success": False, "message": "Task not found"}
        assert bob.delete(f"{Q}/task/{a}").json()["success"] is False
        assert bob.post(f"{Q}/queue/clear").json()["success"]  # clears bob's only
        assert ann.get(f"{Q}/task/{a}").json()["data"]["status"] == "pending"
        assert bob.get(f"{Q}/task/{b}").json()["data"]["status"] == "interrupted"
        assert ann.get(f"{Q}/task/{a}").json()["data"]["owner"] == "ann"
        for c in (anon, ann, bob):
            c.close()


def test_a_queued_xyz_plot_runs_its_grid_and_the_vae_field_is_checked(client):
    """The queue API takes /sdapi/v1's script_name/script_args (they were dropped: a plain image came back) and
    agent-scheduler's ``vae`` field as the request's VAE (it was ignored)."""
    xyz = [6, "3, 9", [], 0, "", [], 0, "", [], True, True, False, False, False, False, False, 0, False]  # CFG: 3, 9
    r = client.post(f"{Q}/queue/txt2img", json=body(script_name="x/y/z plot", script_args=xyz))
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    wait_for(client, task_id)
    result = client.get(f"{Q}/task/{task_id}/results").json()["data"]
    images = [Image.open(io.BytesIO(base64.b64decode(item["image"]))) for item in result]
    assert images[0].size[0] >= 2 * 64  # the grid: two 64 px cells side by side (a plain job gives one 64 px image)
    assert "CFG scale: 3," in result[0]["infotext"]  # the grid carries its first cell's parameters
    bad_axis = client.post(f"{Q}/queue/txt2img", json=body(script_name="x/y/z plot", script_args=[6, "x", *xyz[2:]]))
    assert bad_axis.status_code == 422 and "script_args" in bad_axis.text
    unknown_vae = client.post(f"{Q}/queue/txt2img", json=body(vae="no-such-vae"))
    assert unknown_vae.status_code == 422 and "no-such-vae" in unknown_vae.text
