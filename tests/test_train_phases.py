"""PhaseRun: what a training phase saves, what it resumes from, and when it counts as finished."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from webui.train.checkpointing import load_state
from webui.train.demo import PhaseRun


@dataclass
class Config:
    lr: float = 0.1


def make_run(tmp_path, steps=4, **kwargs) -> tuple[PhaseRun, torch.nn.Linear]:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=Config.lr)
    return PhaseRun("toy", tmp_path, steps, {"model": model}, optimizer, Config(), checkpoint_every=2, **kwargs), model


def loop(model: torch.nn.Linear, optimizer: torch.optim.Optimizer, interrupt_at: int | None = None):
    def train(start, on_step):
        for step in range(start, 4):
            loss = model(torch.full((1, 2), float(step))).square().sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            on_step(step, {"loss": loss.item()})
            if step == interrupt_at:
                raise KeyboardInterrupt

    return train


def test_an_interrupt_saves_the_last_step_and_a_new_run_continues_from_it(tmp_path):
    saves = []
    run, model = make_run(tmp_path, after_save=lambda step, done: saves.append((step, done)))
    assert run.resume() is None and run.start == 0
    with pytest.raises(KeyboardInterrupt):
        run.train(loop(model, run.optimizer, interrupt_at=2))
    assert saves == [(2, False), (3, False)]  # the periodic save at 2, the interrupt's at 3
    state = load_state(tmp_path / "toy.pt")
    assert state["step"] == 3 and not state["done"] and state["config"] == {"lr": 0.1}

    again, fresh = make_run(tmp_path)
    assert again.resume() is None and again.start == 3 and again.elapsed == state["elapsed"]
    assert torch.equal(fresh.weight, model.weight)
    assert again.optimizer.state_dict()["state"][0]["step"] == 3
    progress = again.train(loop(fresh, again.optimizer))
    again.finish(progress, psnr=12.5)
    final = load_state(tmp_path / "toy.pt")
    assert final["step"] == 4 and final["done"] and final["psnr"] == 12.5


def test_a_finished_phase_trains_on_only_when_asked_for_more_steps_and_allowed_to(tmp_path):
    run, model = make_run(tmp_path)
    run.finish(run.train(loop(model, run.optimizer)), psnr=1.0)

    same, _ = make_run(tmp_path)
    assert same.resume()["psnr"] == 1.0  # finished: nothing to train
    longer, _ = make_run(tmp_path, steps=6)
    assert longer.resume() is None and longer.start == 4  # trains on from step 4
    frozen, _ = make_run(tmp_path, steps=6, extend_when_done=False)
    assert frozen.resume() is not None and frozen.start == 0


def test_a_phase_saved_at_its_last_step_but_not_finished_goes_on_to_finish(tmp_path):
    """E.g. interrupted while measuring after the last step: it resumes at the end, with nothing to redo."""
    run, model = make_run(tmp_path)
    run.train(loop(model, run.optimizer))  # the periodic save at step 4, then no finish()
    again, _ = make_run(tmp_path)
    assert again.resume() is None and again.start == 4
