"""Checkpoints: round trip of every state, pruning, atomic publishing, strict loading, and bit-exact resume."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from omni_r1.rl import checkpoint
from omni_r1.rl.checkpoint import (
    CheckpointError,
    ResumeState,
    TorchState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


class TiedNet(nn.Module):
    """A tiny LM-shaped net whose output head shares the embedding weight (like a tied thinker)."""

    def __init__(self, vocab: int = 11, hidden: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.body = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(hidden, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, tokens: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.head(self.dropout(torch.tanh(self.body(self.embed(tokens) + noise))))


CUDA = pytest.param("cuda", marks=[pytest.mark.gpu,
                                    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])


def _objects(seed: int, device: str = "cpu") -> tuple[TiedNet, torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(seed)
    model = TiedNet().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    total, warmup = 6, 2

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)


class Loader:
    """Epoch-wise shuffled batches from a seeded numpy Generator; its position is plain JSON."""

    def __init__(self, generator: np.random.Generator, size: int = 10, batch: int = 4) -> None:
        self.generator, self.size, self.batch = generator, size, batch
        self.epoch, self.cursor, self.order = 0, 0, generator.permutation(size).tolist()

    def next_batch(self) -> list[int]:
        if self.cursor + self.batch > self.size:
            self.epoch, self.cursor, self.order = self.epoch + 1, 0, self.generator.permutation(self.size).tolist()
        batch = self.order[self.cursor:self.cursor + self.batch]
        self.cursor += self.batch
        return batch

    def position(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "order": self.order}

    def restore(self, position: dict) -> None:
        self.epoch, self.cursor, self.order = position["epoch"], position["cursor"], position["order"]


def _train_step(model, optimizer, scheduler, loader: Loader, device: str = "cpu") -> None:
    """One step that draws from every RNG a trainer touches: data order, torch, np.random, random, dropout."""
    tokens = torch.tensor(loader.next_batch(), device=device) % 11
    noise = torch.randn(len(tokens), 8, device=device) * float(np.random.normal(1.0, 0.1))
    logits = model(tokens, noise)
    loss = nn.functional.cross_entropy(logits, (tokens + 1) % 11) * (0.5 + random.random())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def _scramble_global_rngs() -> None:
    """What a fresh process looks like: every global stream somewhere else."""
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)


def _draws(generator: np.random.Generator) -> tuple:
    cuda = torch.rand(3, device="cuda").tolist() if torch.cuda.is_available() else []
    return (random.random(), float(np.random.random()), torch.rand(3).tolist(), cuda,
            generator.integers(0, 2**62, 3).tolist())


def _stepped_objects(steps: int = 3, device: str = "cpu"):
    model, optimizer, scheduler = _objects(seed=0, device=device)
    loader = Loader(np.random.default_rng(7))
    for _ in range(steps):
        _train_step(model, optimizer, scheduler, loader, device)
    return model, optimizer, scheduler, loader


def _save(root: Path, step: int, model, optimizer, scheduler, loader: Loader, keep_last: int = 3) -> Path:
    return save_checkpoint(root, step, state=TorchState(model, optimizer, scheduler),
                           data_position=loader.position(), keep_last=keep_last,
                           generators={"data": loader.generator}, extra={"run": "unit", "loss": 0.25})


def _assert_same_tensors(left, right) -> None:
    """Nested state dicts equal, tensors bit for bit."""
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor) and left.dtype == right.dtype and torch.equal(left, right)
    elif isinstance(left, dict):
        assert left.keys() == right.keys()
        for key in left:
            _assert_same_tensors(left[key], right[key])
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right)
        for a, b in zip(left, right):
            _assert_same_tensors(a, b)
    else:
        assert left == right


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_round_trip_restores_model_optimizer_scheduler_and_every_rng(tmp_path: Path, device: str) -> None:
    model, optimizer, scheduler, loader = _stepped_objects(device=device)
    folder = _save(tmp_path, 3, model, optimizer, scheduler, loader)
    expected_draws = _draws(loader.generator)

    fresh_model, fresh_optimizer, fresh_scheduler = _objects(seed=99, device=device)
    fresh_generator = np.random.default_rng(1234)
    _scramble_global_rngs()
    resume = load_checkpoint(folder, state=TorchState(fresh_model, fresh_optimizer, fresh_scheduler),
                             generators={"data": fresh_generator})

    assert resume == ResumeState(step=3, data_position=loader.position(), extra={"run": "unit", "loss": 0.25})
    _assert_same_tensors(model.state_dict(), fresh_model.state_dict())
    assert fresh_model.head.weight is fresh_model.embed.weight  # still tied after loading
    _assert_same_tensors(optimizer.state_dict(), fresh_optimizer.state_dict())
    assert fresh_optimizer.state_dict()["state"][0]["step"].item() == 3.0
    assert fresh_optimizer.state_dict()["state"][0]["exp_avg"].device.type == device
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert _draws(fresh_generator) == expected_draws


def test_tied_weight_is_stored_once(tmp_path: Path) -> None:
    model, optimizer, scheduler, loader = _stepped_objects(steps=1)
    folder = _save(tmp_path, 1, model, optimizer, scheduler, loader)
    stored = checkpoint.load_file(str(folder / checkpoint.MODEL_NAME))
    assert "embed.weight" in stored and "head.weight" not in stored
    assert stored.keys() | {"head.weight"} == model.state_dict().keys()


def test_restore_rng_false_leaves_random_streams_alone(tmp_path: Path) -> None:
    model, optimizer, scheduler, loader = _stepped_objects(steps=1)
    folder = _save(tmp_path, 1, model, optimizer, scheduler, loader)
    fresh_model, fresh_optimizer, fresh_scheduler = _objects(seed=5)
    _scramble_global_rngs()
    expected = _draws(np.random.default_rng(3))  # what the streams give when nothing touches them

    _scramble_global_rngs()
    untouched = np.random.default_rng(3)
    load_checkpoint(folder, state=TorchState(fresh_model, fresh_optimizer, fresh_scheduler),
                    generators={"data": untouched}, restore_rng=False)
    assert _draws(untouched) == expected
    _assert_same_tensors(model.state_dict(), fresh_model.state_dict())


def test_keep_last_prunes_to_the_newest_and_latest_finds_the_highest(tmp_path: Path) -> None:
    model, optimizer, scheduler, loader = _stepped_objects(steps=1)
    for step in (2, 4, 6, 8, 10):
        _save(tmp_path, step, model, optimizer, scheduler, loader, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000008", "step-00000010"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000010"


def test_saving_an_existing_step_again_replaces_it_whole(tmp_path: Path) -> None:
    model, optimizer, scheduler, loader = _stepped_objects(steps=1)
    _save(tmp_path, 5, model, optimizer, scheduler, loader)
    folder = save_checkpoint(tmp_path, 5, state=TorchState(model, optimizer, scheduler),
                             data_position={"epoch": 9}, keep_last=3, generators={"data": loader.generator})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000005"]
    assert json.loads((folder / "state.json").read_text())["data_position"] == {"epoch": 9}


def test_latest_checkpoint_ignores_incomplete_and_temp_folders(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "absent") is None
    model, optimizer, scheduler, loader = _stepped_objects(steps=1)
    good = _save(tmp_path, 3, model, optimizer, scheduler, loader)
    (tmp_path / "step-00000009").mkdir()  # a folder without state.json is not a checkpoint
    (tmp_path / "step-00000009" / "model.safetensors").write_bytes(b"partial")
    temp = tmp_path / ".tmp-step-00000012-abc"  # another writer's folder, even one with a state.json
    temp.mkdir()
    (temp / "state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == good
    # Pruning leaves folders it does not own alone.
    _save(tmp_path, 4, model, optimizer, scheduler, loader, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-step-00000012-abc", "step-00000004", "step-00000009"]


def test_failing_write_keeps_the_previous_checkpoint_and_publishes_nothing(tmp_path: Path, monkeypatch) -> None:
    model, optimizer, scheduler, loader = _stepped_objects(steps=1)
    previous = _save(tmp_path, 10, model, optimizer, scheduler, loader, keep_last=1)
    before = {p.name: p.read_bytes() for p in previous.iterdir()}

    def half_written_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 64)  # some bytes reach the disk, then the writer dies
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", half_written_save)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 20, model, optimizer, scheduler, loader, keep_last=1)

    assert latest_checkpoint(tmp_path) == previous
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000010"]  # temp folder cleaned up, nothing pruned
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before


def test_corrupted_weights_file_is_refused_by_name(tmp_path: Path) -> None:
    model, optimizer, scheduler, loader = _stepped_objects(steps=1)
    folder = _save(tmp_path, 1, model, optimizer, scheduler, loader)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    fresh_model, fresh_optimizer, fresh_scheduler = _objects(seed=5)
    untouched = {k: v.clone() for k, v in fresh_model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*sha256.*delete the folder"):
        load_checkpoint(folder, state=TorchState(fresh_model, fresh_optimizer, fresh_scheduler),
                        generators={"data": np.random.default_rng(0)})
    _assert_same_tensors(untouched, fresh_model.state_dict())  # nothing was half-loaded


def test_missing_file_is_refused_by_name(tmp_path: Path) -> None:
    model, optimizer, scheduler, loader = _stepped_objects(steps=1)
    folder = _save(tmp_path, 1, model, optimizer, scheduler, loader)
    (folder / "optimizer.pt").unlink()
    fresh = _objects(seed=5)
    with pytest.raises(CheckpointError, match=r"optimizer\.pt.*missing"):
        load_checkpoint(folder, state=TorchState(fresh[0], fresh[1], fresh[2]),
                        generators={"data": np.random.default_rng(0)})


def test_wrong_model_is_refused_strictly(tmp_path: Path) -> None:
    model, optimizer, scheduler, loader = _stepped_objects(steps=1)
    folder = _save(tmp_path, 1, model, optimizer, scheduler, loader)
    other = nn.Sequential(nn.Linear(8, 8))
    other_optimizer = torch.optim.AdamW(other.parameters())
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not fit Sequential.*missing keys.*0\.weight"):
        load_checkpoint(folder, state=TorchState(other, other_optimizer, None),
                        generators={"data": np.random.default_rng(0)})
    wider = TiedNet(hidden=16)
    with pytest.raises(CheckpointError, match=r"embed\.weight is \(11, 8\).*\(11, 16\)"):
        load_checkpoint(folder, state=TorchState(wider, torch.optim.AdamW(wider.parameters()), None),
                        generators={"data": np.random.default_rng(0)})


def test_mismatched_scheduler_or_generators_are_refused(tmp_path: Path) -> None:
    model, optimizer, scheduler, loader = _stepped_objects(steps=1)
    folder = _save(tmp_path, 1, model, optimizer, scheduler, loader)
    fresh = _objects(seed=5)
    with pytest.raises(CheckpointError, match="pass the run's scheduler"):
        load_checkpoint(folder, state=TorchState(fresh[0], fresh[1], None),
                        generators={"data": np.random.default_rng(0)})
    with pytest.raises(CheckpointError, match=r"generators \['data'\] but \[\] were passed"):
        load_checkpoint(folder, state=TorchState(fresh[0], fresh[1], fresh[2]))


def test_file_list_cannot_escape_the_checkpoint_folder(tmp_path: Path) -> None:
    model, optimizer, scheduler, loader = _stepped_objects(steps=1)
    folder = _save(tmp_path, 1, model, optimizer, scheduler, loader)
    (tmp_path / "outside.bin").write_bytes(b"x")
    state = json.loads((folder / "state.json").read_text())
    state["files"]["../outside.bin"] = {"sha256": "0" * 64, "bytes": 1}
    (folder / "state.json").write_text(json.dumps(state))
    fresh = _objects(seed=5)
    with pytest.raises(CheckpointError, match=r"'\.\./outside\.bin'.*outside the checkpoint folder"):
        load_checkpoint(folder, state=TorchState(fresh[0], fresh[1], fresh[2]),
                        generators={"data": np.random.default_rng(0)})


def test_non_json_data_position_is_refused_before_writing(tmp_path: Path) -> None:
    model, optimizer, scheduler, _ = _stepped_objects(steps=1)
    with pytest.raises(ValueError, match=r"data_position\.cursor is a int64"):
        save_checkpoint(tmp_path, 1, state=TorchState(model, optimizer, scheduler),
                        data_position={"cursor": np.int64(3)}, keep_last=1)
    assert latest_checkpoint(tmp_path) is None


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_resume_is_bit_exact(tmp_path: Path, device: str) -> None:
    """6 steps in one go == 3 steps, save, fresh objects in a scrambled process state, load, 3 more steps."""
    total, stop = 6, 3
    _scramble_global_rngs()
    random.seed(0)
    np.random.seed(0)
    model, optimizer, scheduler, loader = _stepped_objects(steps=total, device=device)
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    random.seed(0)
    np.random.seed(0)
    model, optimizer, scheduler, loader = _stepped_objects(steps=stop, device=device)
    _save(tmp_path, stop, model, optimizer, scheduler, loader)
    del model, optimizer, scheduler, loader

    _scramble_global_rngs()
    model, optimizer, scheduler = _objects(seed=42, device=device)
    loader = Loader(np.random.default_rng(999))
    resume = load_checkpoint(latest_checkpoint(tmp_path), state=TorchState(model, optimizer, scheduler),
                             generators={"data": loader.generator})
    loader.restore(resume.data_position)
    for _ in range(resume.step, total):
        _train_step(model, optimizer, scheduler, loader, device)

    resumed = model.state_dict()
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name
    untrained = _objects(seed=0, device=device)[0].state_dict()["body.weight"]
    assert not torch.equal(resumed["body.weight"], untrained)  # it trained


def test_cuda_rng_of_other_devices_is_refused_unless_rng_is_not_restored(tmp_path: Path, monkeypatch) -> None:
    model, optimizer, scheduler, loader = _stepped_objects(steps=1)
    cpu_state = torch.get_rng_state()
    # As if saved on a machine with 3 GPUs; this machine is made to have none.
    fake_gpus = {f"cuda.{i}": torch.zeros(16, dtype=torch.uint8) for i in range(3)}
    monkeypatch.setattr(checkpoint, "_capture_torch_rng", lambda: {"cpu": cpu_state, **fake_gpus})
    folder = _save(tmp_path, 1, model, optimizer, scheduler, loader)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fresh = _objects(seed=5)
    with pytest.raises(CheckpointError, match=r"3 CUDA devices, this machine has 0.*restore_rng=False"):
        load_checkpoint(folder, state=TorchState(fresh[0], fresh[1], fresh[2]),
                        generators={"data": np.random.default_rng(0)})
    resume = load_checkpoint(folder, state=TorchState(fresh[0], fresh[1], fresh[2]),
                             generators={"data": np.random.default_rng(0)}, restore_rng=False)
    assert resume.step == 1


def test_each_rank_keeps_its_own_random_state_and_the_world_size_is_recorded(tmp_path: Path) -> None:
    model, optimizer, scheduler, loader = _stepped_objects(steps=1)
    folder = _save(tmp_path, 1, model, optimizer, scheduler, loader)
    state = json.loads((folder / "state.json").read_text())
    assert state["world_size"] == 1 and state["format_version"] == checkpoint.FORMAT_VERSION
    assert {checkpoint.rng_name(0), checkpoint.torch_rng_name(0)} <= state["files"].keys()
    assert sorted(state["files"]) == sorted(p.name for p in folder.iterdir() if p.name != "state.json")


def test_a_checkpoint_of_another_world_size_or_format_is_refused_before_anything_loads(tmp_path: Path) -> None:
    model, optimizer, scheduler, loader = _stepped_objects(steps=1)
    folder = _save(tmp_path, 1, model, optimizer, scheduler, loader)
    fresh_model, fresh_optimizer, fresh_scheduler = _objects(seed=5)
    untouched = {k: v.clone() for k, v in fresh_model.state_dict().items()}
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps(state | {"world_size": 8}))
    with pytest.raises(CheckpointError, match=r"written by 8 ranks, this run has 1.*world size set to 8"):
        load_checkpoint(folder, state=TorchState(fresh_model, fresh_optimizer, fresh_scheduler),
                        generators={"data": np.random.default_rng(0)})
    (folder / "state.json").write_text(json.dumps(state | {"format_version": 1}))
    with pytest.raises(CheckpointError, match=r"format_version 1, this code reads 2"):
        load_checkpoint(folder, state=TorchState(fresh_model, fresh_optimizer, fresh_scheduler),
                        generators={"data": np.random.default_rng(0)})
    _assert_same_tensors(untouched, fresh_model.state_dict())


def test_published_weights_come_back_tied_and_checked(tmp_path: Path) -> None:
    model = _stepped_objects(steps=1)[0]  # its head and embedding share one tensor
    folder = checkpoint.publish_weights(tmp_path / "warm-start", model.state_dict(), info={"steps": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["warm-start"]  # no temp folder left
    fresh = TiedNet()
    weights, info = checkpoint.read_weights(folder, fresh)
    assert info == {"steps": 1}
    fresh.load_state_dict(weights, strict=False)
    _assert_same_tensors(model.state_dict(), fresh.state_dict())
    assert fresh.head.weight is fresh.embed.weight
    with pytest.raises(CheckpointError, match=r"weights the model does not have.*train\.init_checkpoint"):
        checkpoint.read_weights(folder, nn.Sequential(nn.Linear(8, 8)))
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"does not match its sha256.*delete"):
        checkpoint.read_weights(folder, TiedNet())
