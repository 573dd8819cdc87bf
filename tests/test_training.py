"""The training engine by contract: schedule, data order, EMA, exact resume across processes, DDP (2 gloo
ranks) equal to one rank with the same global batch, non-finite handling, time limit, weights export."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import toy_stage
from ecgflowcmr.bundle import load_weights, read_config, save_weights
from ecgflowcmr.errors import ConfigError, InputError
from ecgflowcmr.training import distributed as dist
from ecgflowcmr.training.checkpoint import latest_checkpoint, load_checkpoint, resolve_resume
from ecgflowcmr.training.config import TrainConfig
from ecgflowcmr.training.loop import EMA, TrainingError, build_optimizer, lr_factor
from ecgflowcmr.training.seeding import EpochBatches
from ecgflowcmr.training.tasks import run_stage, train

TOY = Path(toy_stage.__file__)
REPO = TOY.parent.parent


def run_toy(out: Path, *sets: str, resume: str | None = None) -> Path:
    return run_stage(toy_stage, "toy", Path("unused"), out, sets=list(sets), resume=resume)


def toy_subprocess(*args: str) -> subprocess.Popen:
    """The toy stage in a fresh interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, str(TOY), *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def metrics(run: Path, split: str = "train") -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["split"] == split]


def assert_same_state(a: dict, b: dict, where: str = "") -> None:
    assert a.keys() == b.keys(), where
    for k in a:
        if isinstance(a[k], dict):
            assert_same_state(a[k], b[k], f"{where}.{k}")
        elif isinstance(a[k], list):
            assert len(a[k]) == len(b[k])
            for i, (x, y) in enumerate(zip(a[k], b[k])):
                assert_same_state({"v": x}, {"v": y}, f"{where}.{k}[{i}]")
        elif torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), f"{where}.{k} differs"
        else:
            assert a[k] == b[k], f"{where}.{k}: {a[k]} != {b[k]}"


# --------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------


def test_lr_schedule_warmup_then_cosine_to_min_ratio():
    f = [lr_factor(s, warmup=4, total=20, min_ratio=0.1) for s in range(25)]
    assert f[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert f[4] == pytest.approx(1.0)
    assert f[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f[20] == pytest.approx(0.1) and f[24] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(f[4:]))


def test_optimizer_decays_matrices_only():
    model = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Conv1d(5, 2, 3))
    groups = build_optimizer(model, TrainConfig(weight_decay=0.5)).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.5 for p in g["params"]}
    assert decayed == {id(model[0].weight), id(model[2].weight)}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_global_batches_do_not_depend_on_world_size_and_order_on_seed_epoch():
    one = EpochBatches(20, 4, rank=0, world=1, seed=7)
    ranks = [EpochBatches(20, 2, rank=r, world=2, seed=7) for r in range(2)]
    for epoch in (0, 3):
        for s in (one, *ranks):
            s.set_position(epoch, 0)
        split = [list(r) for r in ranks]
        assert len(one) == 5 and all(len(b) == 5 for b in split)
        assert list(one) == [a + b for a, b in zip(*split)]
    one.set_position(3, 2)
    again = EpochBatches(20, 4, rank=0, world=1, seed=7)
    again.set_position(3, 0)
    assert list(one) == list(again)[2:]
    again.set_position(4, 0)
    assert list(again) != list(one)


def test_ema_follows_closed_form_and_applied_restores_weights():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # d = min(0.5, 1/10) = 0.1 → 0.9
    ema.update(model)  # d = min(0.5, 2/11) → 0.9 + (2/11)·… toward 1
    expected = 1 - 0.1 * (2 / 11)
    assert ema.shadow["weight"] == pytest.approx(torch.full((1, 2), expected))
    with ema.applied(model):
        assert torch.allclose(model.weight, torch.full((1, 2), expected))
    assert torch.equal(model.weight, torch.ones(1, 2))


def test_train_config_rejects_bad_values():
    for bad in ({"batch_size": 0}, {"lr": 0.0}, {"ema_decay": 1.0}, {"warmup_steps": -1}, {"device": "tpu"}):
        with pytest.raises(ConfigError) as info:
            TrainConfig(**bad)
        assert info.value.where == f"train.{next(iter(bad))}"  # the field that is wrong, not just any


@pytest.mark.parametrize(("stage", "old"), [("vae", "stage.eval_batch_size"), ("vae", "stage.eval_max_items"),
                                            ("flow", "stage.eval_items"), ("flow", "stage.eval_seed")])
def test_every_stage_caps_evaluation_with_eval_max_items_and_old_keys_name_it(stage, old):
    import importlib

    from ecgflowcmr.config import load_config

    for name in ("pamae", "vae", "flow"):
        module = importlib.import_module(f"ecgflowcmr.training.stages.{name}")
        assert load_config(module.RunConfig, name, "tiny", ["eval.max_items=3"]).eval.max_items == 3
    module = importlib.import_module(f"ecgflowcmr.training.stages.{stage}")
    with pytest.raises(ConfigError, match=r"renamed: use eval\.") as err:
        load_config(module.RunConfig, stage, "tiny", [f"{old}=3"])
    assert err.value.where == old


def test_unknown_stage_is_refused(tmp_path):
    with pytest.raises(InputError, match="unknown stage"):
        train("nope", tmp_path, tmp_path / "run")


# --------------------------------------------------------------------------------------------------
# Weights export
# --------------------------------------------------------------------------------------------------


class Tied(nn.Module):
    def __init__(self, width: int = 3):
        super().__init__()
        self.config = {"width": width}
        self.a = nn.Linear(width, width)
        self.b = nn.Linear(width, width)
        self.b.weight = self.a.weight  # shared storage: safetensors refuses it unless un-shared


def test_weights_roundtrip_with_tied_tensors(tmp_path):
    src, dst = Tied(), Tied()
    save_weights(src, tmp_path, config=src.config)
    load_weights(dst, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    assert read_config(tmp_path) == {"width": 3}
    assert not list(tmp_path.glob(".tmp*"))


def test_load_weights_names_missing_unexpected_and_mismatched_keys(tmp_path):
    save_weights(Tied(), tmp_path, config={})
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["a.bias"]
    tensors["extra.weight"] = torch.zeros(1)
    tensors["b.bias"] = torch.zeros(4)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(InputError) as err:
        load_weights(Tied(), tmp_path)
    text = str(err.value)
    assert "model.safetensors" in text and "a.bias" in text and "extra.weight" in text
    assert "b.bias (file (4,), model (3,))" in text
    with pytest.raises(InputError, match="not found"):
        load_weights(Tied(), tmp_path / "missing")


# --------------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------------


def test_run_folder_contents(tmp_path):
    run = run_toy(tmp_path / "run")
    train_lines, val_lines = metrics(run), metrics(run, "val")
    assert [r["step"] for r in train_lines] == list(range(1, 13))
    assert {"loss", "parts", "lr", "items_per_s", "epoch", "time", "grad_norm"} <= train_lines[0].keys()
    assert train_lines[0]["parts"]["const"] == 1.0
    assert [r["step"] for r in val_lines] == [4, 8, 12] and val_lines[0]["items"] == 8
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "step-12", "step-8"]
    assert val_lines[-1]["loss"] < val_lines[0]["loss"]
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["training"]["steps"] == 12 and "test_mse" in summary
    model = toy_stage.load(run)  # the EMA export, not the training weights
    state = load_checkpoint(run / "checkpoints" / "step-12")
    for name, p in model.named_parameters():
        assert torch.equal(p, state["ema"]["shadow"][name])
    assert "lr: 0.01" in (run / "checkpoints" / "step-12" / "config.yaml").read_text()
    assert min(r["loss"] for r in val_lines) == summary["training"]["best_val_loss"]


def test_initial_weights_come_from_the_seed_not_from_earlier_random_draws(tmp_path):
    """Two runs in one process, random numbers drawn between them: the same weights; another seed: others."""
    a = run_toy(tmp_path / "a", "train.steps=1")
    torch.rand(1000)
    b = run_toy(tmp_path / "b", "train.steps=1")
    c = run_toy(tmp_path / "c", "train.steps=1", "train.seed=1")
    wa, wb, wc = (load_file(run / "model.safetensors") for run in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_equals_uninterrupted_run_bit_for_bit(tmp_path):
    # dropout + load-time augmentation + a DataLoader worker + grad accumulation; the stop (step 5) falls
    # mid-epoch (24 items / (4·2) = 3 steps per epoch) and the first session runs in another process.
    sets = ["train.steps=9", "train.grad_accum=2", "train.num_workers=1", "train.ckpt_every=3",
            "train.val_every=3"]
    first = toy_subprocess(str(tmp_path / "resumed"), *[f"--set={s}" for s in [*sets, "train.stop_at_step=5"]])
    with one_thread():
        run_toy(tmp_path / "straight", *sets)
    finish(first)
    assert latest_checkpoint(tmp_path / "resumed").name == "step-5"
    with one_thread():
        run_toy(tmp_path / "resumed", *sets, resume="latest")
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step-9")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step-9")
    for key in ("model", "ema", "optimizer", "step", "epoch", "batch", "best_val_loss"):
        assert_same_state({key: a[key]}, {key: b[key]})
    assert load_file(tmp_path / "straight" / "model.safetensors").keys()
    for name, t in load_file(tmp_path / "straight" / "model.safetensors").items():
        assert torch.equal(t, load_file(tmp_path / "resumed" / "model.safetensors")[name])
    assert [r["loss"] for r in metrics(tmp_path / "straight")] == [r["loss"] for r in metrics(tmp_path / "resumed")]


def ddp_rank(rank: int, port: int, args: list[str]) -> None:
    """One of two processes, with the environment torchrun would give it."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist.teardown_distributed()  # forget the parent's single-process state
    torch.set_num_threads(1)
    toy_stage.main(args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_one_rank_with_the_same_global_batch(tmp_path):
    # Forked (not spawned) so the two ranks start in a second instead of re-importing torch.
    # grad_accum 2: the first micro-batch of each step runs under DDP's no_sync
    sets = ["--set=model.dropout=0.0", "--set=train.steps=6", "--set=train.val_every=3", "--set=train.grad_accum=2"]
    args = [str(tmp_path / "two"), *sets, "--set=train.batch_size=3", "--fit-only"]
    port = free_port()
    ranks = [multiprocessing.get_context("fork").Process(target=ddp_rank, args=(r, port, args)) for r in range(2)]
    for p in ranks:
        p.start()
    with one_thread():
        toy_stage.main([str(tmp_path / "one"), *sets, "--set=train.batch_size=6", "--fit-only"])
    for p in ranks:
        p.join(timeout=120)
        assert p.exitcode == 0
    rank0, rank1 = (torch.load(tmp_path / "two" / f"params-rank{r}.pt") for r in range(2))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    one = torch.load(tmp_path / "one" / "params-rank0.pt")
    assert all(torch.allclose(rank0[k], one[k], atol=1e-5) for k in one)
    for split in ("train", "val"):
        curve_two, curve_one = metrics(tmp_path / "two", split), metrics(tmp_path / "one", split)
        assert len(curve_two) == len(curve_one) > 0
        for r2, r1 in zip(curve_two, curve_one):
            assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
            assert r2["parts"]["mae"] == pytest.approx(r1["parts"]["mae"], rel=1e-5)


def test_nonfinite_step_is_skipped_and_training_goes_on(tmp_path):
    # item 0 is NaN: every batch holding it gives a NaN loss; the other steps train normally.
    run = run_toy(tmp_path / "run", "data.nan_items=[0]", "train.steps=6")
    lines = metrics(run)
    assert any(r["loss"] is None and r["skipped"] >= 1 for r in lines)
    assert any(r["skipped"] == 0 for r in lines)
    state = load_checkpoint(run / "checkpoints" / "step-6")
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_nonfinite_in_a_row_stops_with_a_clear_error_and_writes_nothing(tmp_path):
    nan_all = "data.nan_items=[" + ",".join(map(str, range(24))) + "]"
    with pytest.raises(TrainingError, match="non-finite for 3 steps in a row"):
        run_toy(tmp_path / "run", nan_all, "train.max_nonfinite=3", "train.ckpt_every=1")
    assert latest_checkpoint(tmp_path / "run").name == "step-2"  # skipped steps left the weights finite


def test_checkpoint_with_nonfinite_weights_is_never_written(tmp_path):
    with pytest.raises(TrainingError, match="unused is non-finite"):
        run_toy(tmp_path / "run", "model.nan_buffer=true", "train.ckpt_every=2", "data.n_val=0")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_time_limit_stops_cleanly_with_checkpoint_and_export(tmp_path):
    run = run_toy(tmp_path / "run", "train.time_limit_s=1e-6", "train.steps=1000")
    summary = json.loads((run / "metrics.json").read_text())["training"]
    assert summary["stopped"] == "time_limit" and summary["steps"] == 1
    assert latest_checkpoint(run).name == "step-1" and (run / "model.safetensors").exists()


def test_resume_needs_a_checkpoint_and_accepts_paths(tmp_path):
    with pytest.raises(InputError, match="no complete checkpoint"):
        resolve_resume(tmp_path, "latest")
    run = run_toy(tmp_path / "run", "train.steps=4", "train.val_every=0")
    ckpt = run / "checkpoints" / "step-4"
    assert resolve_resume(run, "latest") == ckpt
    assert resolve_resume(tmp_path, ckpt / "state.pt") == ckpt == resolve_resume(tmp_path, run)
    (run / "checkpoints" / ".step-8.tmp-1").mkdir()  # a half-written checkpoint is invisible
    assert latest_checkpoint(run) == ckpt
    with pytest.raises(InputError, match="does not fit"):
        run_toy(tmp_path / "run", "model.width=8", resume="latest")


def test_bf16_on_cpu_is_ignored_with_a_message(tmp_path, capfd):
    run_toy(tmp_path / "run", "train.bf16=true", "train.steps=2", "train.val_every=0")
    assert "train.bf16 ignored" in capfd.readouterr().err


def test_epochs_set_the_step_count_and_tensorboard_is_written(tmp_path):
    # 24 items / batch 4 = 6 batches per epoch; 1.5 epochs with grad_accum 2 → ceil(9 / 2) = 5 steps
    run = run_toy(tmp_path / "run", "train.epochs=1.5", "train.grad_accum=2", "train.tensorboard=true")
    assert [r["step"] for r in metrics(run)][-1] == 5
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_train_set_smaller_than_a_batch_is_refused(tmp_path):
    with pytest.raises(InputError, match="fewer than one global batch"):
        run_toy(tmp_path / "run", "data.n_train=3")
