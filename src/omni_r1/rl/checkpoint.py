"""Training checkpoints: save and resume everything a GRPO run needs to continue bit for bit, on one rank or many.

One checkpoint is one folder ``root/step-00000010/`` holding

    (the engine's files)              what ``PolicyEngine.save`` wrote into it: ``TorchState`` (the single-process
                                      engine) writes model.safetensors (tied tensors stored once, re-tied on load),
                                      optimizer.pt and scheduler.pt (torch.save, read back with weights_only=True);
                                      DeepSpeed writes its sharded ZeRO files (every rank its own) under deepspeed/
    rng.rank00000.json                per rank: python ``random``, numpy's global legacy state, named numpy Generators
    torch_rng.rank00000.safetensors   per rank: torch CPU RNG state (and one per CUDA device) as uint8 tensors
    state.json                        step, data position, extra, world size, format version, and the relative
                                      path + sha256 of every file above

Every rank calls ``save_checkpoint`` and ``load_checkpoint``; under several ranks they are collectives (the
engine's state is sharded, so each rank writes and reads its own part) on a file system all ranks share, as
DeepSpeed's own checkpoints assume. Rank 0 makes a hidden temp folder inside
``root`` and tells the others its name; every rank writes into it; the ranks share the hashing; rank 0 alone
writes ``state.json`` last and renames the folder into place, and prunes. A reader trusts only folders named
``step-<digits>`` that hold a ``state.json``, so a crash at any moment leaves either the previous checkpoints or
the new whole one, never half of one. A failure on any rank is raised on every rank, so none waits forever.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from omni_r1.data.paths import PathEscapeError, safe_join
from omni_r1.rl.ranks import agree, broadcast_object, distributed_rank, gather_objects

FORMAT_VERSION = 2  # 2: the engine writes its own files (sharded under DeepSpeed), RNG states per rank
STATE_NAME = "state.json"
MODEL_NAME = "model.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"

_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_ALIASES_KEY = "omni_r1.aliases"  # safetensors metadata: JSON {dropped name: stored name} for tied tensors
_HASH_CHUNK = 1 << 20
_FALLBACK_FIX = "delete the folder to fall back to the previous checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, corrupted, or does not fit the objects it is loaded into."""


class EngineState(Protocol):
    """What a checkpoint holds of whatever updates the policy (``PolicyEngine``): weights, optimizer, schedule.

    ``save`` writes files into an existing folder and ``load`` reads them back from it; under several ranks
    both are collectives that every rank calls with the same folder."""

    def save(self, folder: Path) -> None:
        ...

    def load(self, folder: Path) -> None:
        ...


def rng_name(rank: int) -> str:
    """The JSON file of python/numpy RNG states of ``rank``."""
    return f"rng.rank{rank:05d}.json"


def torch_rng_name(rank: int) -> str:
    """The safetensors file of torch RNG states of ``rank``."""
    return f"torch_rng.rank{rank:05d}.safetensors"


@dataclass(frozen=True)
class ResumeState:
    """What the trainer needs besides the restored objects: where it stopped and what it noted."""

    step: int
    data_position: dict[str, Any]
    extra: dict[str, Any]


def step_dir_name(step: int) -> str:
    """The folder name of the checkpoint of ``step`` (zero-padded so names sort like steps)."""
    return f"step-{step:08d}"


# --------------------------------------------------------------------------------------------- saving


def save_checkpoint(
    root: Path,
    step: int,
    *,
    state: EngineState,
    data_position: dict[str, Any],
    keep_last: int,
    generators: dict[str, np.random.Generator] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` atomically under ``root``, prune to ``keep_last``, return its folder.

    Every rank calls it (``state.save`` is a collective under DeepSpeed); ``data_position`` and ``extra`` are
    rank 0's, and must be plain JSON values (dict/list/str/int/float/bool/None) so they come back exactly as
    given. An existing checkpoint of the same step is replaced whole.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative int, got {step!r}")
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1 (train checkpoint setting), got {keep_last}")
    extra = {} if extra is None else extra
    _check_json_tree(data_position, "data_position")
    _check_json_tree(extra, "extra")

    rank, world = distributed_rank()
    root = Path(root)
    final = root / step_dir_name(step)
    made: Path | None = None
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        made = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{final.name}-", dir=root))
    temp: Path = broadcast_object(made)
    try:
        failure: Exception | None = None
        try:
            state.save(temp)
            _write_rng(temp, rank, generators or {})
        except Exception as error:  # every rank must hear of a failure before any goes on, or the others hang
            failure = error
        agree(failure, f"writing checkpoint {final}")
        files = _hash_files(temp)
        failure = None
        if rank == 0:
            try:
                record = {
                    "format_version": FORMAT_VERSION,
                    "step": step,
                    "world_size": world,
                    "data_position": data_position,
                    "extra": extra,
                    "files": files,
                }
                _write_synced(temp / STATE_NAME, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
                for folder in sorted({temp, *(p for p in temp.rglob("*") if p.is_dir())}, reverse=True):
                    _fsync_path(folder)
                os.chmod(temp, 0o755)  # mkdtemp makes 0700; a published checkpoint is readable like any other output
                _publish_dir(temp, final)
                _prune(root, keep_last, keep=final)
            except Exception as error:  # as above: the other ranks wait for rank 0's word
                failure = error
        agree(failure, f"publishing checkpoint {final}")
    finally:
        if rank == 0 and temp.exists():  # only on failure: the rename consumed it otherwise
            shutil.rmtree(temp, ignore_errors=True)
    return final


def _write_rng(folder: Path, rank: int, generators: dict[str, np.random.Generator]) -> None:
    """This rank's RNG states: python/numpy as JSON, torch as safetensors."""
    _write_synced(folder / rng_name(rank), (json.dumps(_capture_rng(generators), sort_keys=True) + "\n").encode())
    save_file(_capture_torch_rng(), str(folder / torch_rng_name(rank)))


def _relative_files(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def _hash_files(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {sha256, bytes}}`` of every file under ``folder``, each rank hashing (and fsyncing) a
    share: a ZeRO checkpoint of 7B is about 100 GB, too much for rank 0 alone at every save."""
    rank, world = distributed_rank()
    names: list[str] = broadcast_object(_relative_files(folder) if rank == 0 else None)
    mine = {}
    for name in names[rank::world]:
        path = folder / name
        _fsync_path(path)
        mine[name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    merged: dict[str, dict[str, Any]] = {}
    for part in gather_objects(mine):
        merged.update(part)
    return merged


class TorchState:
    """A single-process engine's model, optimizer and (optional) LR scheduler as checkpoint files:
    ``model.safetensors``, ``optimizer.pt`` and ``scheduler.pt`` (torch.save; read back with weights_only=True)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any | None) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

    def save(self, folder: Path) -> None:
        """Write the three files into ``folder``."""
        tensors, aliases = _model_tensors(self.model)
        save_file(tensors, str(folder / MODEL_NAME), metadata={_ALIASES_KEY: json.dumps(aliases, sort_keys=True)})
        torch.save(self.optimizer.state_dict(), folder / OPTIMIZER_NAME)
        if self.scheduler is not None:
            torch.save(self.scheduler.state_dict(), folder / SCHEDULER_NAME)

    def load(self, folder: Path) -> None:
        """Read and check every file first (keys, shapes, dtypes, optimizer groups, scheduler presence), then
        restore the objects, so a checkpoint that does not fit changes nothing."""
        for name in (MODEL_NAME, OPTIMIZER_NAME):
            if not (folder / name).is_file():
                raise CheckpointError(f"{folder / name} is missing: {folder} was not written by the torch engine "
                                      f"(train.deepspeed.enabled must match the saved run); {_FALLBACK_FIX}")
        model_state = _read_model_state(folder / MODEL_NAME, self.model)
        optimizer_state = _torch_load(folder / OPTIMIZER_NAME)
        _check_optimizer_fits(optimizer_state, self.optimizer, folder / OPTIMIZER_NAME)
        scheduler_state = _read_scheduler_state(folder, (folder / SCHEDULER_NAME).is_file(), self.scheduler)
        _apply(self.model.load_state_dict, model_state, folder / MODEL_NAME)
        _apply(self.optimizer.load_state_dict, optimizer_state, folder / OPTIMIZER_NAME)
        if self.scheduler is not None:
            _apply(self.scheduler.load_state_dict, scheduler_state, folder / SCHEDULER_NAME)


def _model_tensors(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state_dict with tied tensors stored once, as CPU tensors safetensors accepts, plus the alias map."""
    return _storable(model.state_dict())


def _storable(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``state`` with tied tensors stored once, as CPU tensors safetensors accepts, plus the alias map."""
    aliases = _alias_map(state)
    kept = {name: tensor.detach() for name, tensor in state.items() if name not in aliases}
    # safetensors refuses tensors that share memory; tensors that overlap without being the same view
    # (rare: slices of one buffer) are copied so each is stored whole.
    storage_counts: dict[int, int] = {}
    for tensor in kept.values():
        if tensor.numel():
            ptr = tensor.untyped_storage().data_ptr()
            storage_counts[ptr] = storage_counts.get(ptr, 0) + 1
    tensors = {}
    for name, tensor in kept.items():
        shared = tensor.numel() and storage_counts[tensor.untyped_storage().data_ptr()] > 1
        tensor = tensor.to("cpu").contiguous()
        tensors[name] = tensor.clone() if shared else tensor
    return tensors, aliases


def _alias_map(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{name: canonical name}`` for every entry that is the very same view as another (tied weights)."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, tensor in state.items():
        if tensor.numel() == 0:  # empty tensors have no storage to share; never treat them as tied
            continue
        identity = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                    tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        groups.setdefault(identity, []).append(name)
    aliases = {}
    for names in groups.values():
        canonical, *others = sorted(names)
        aliases.update({other: canonical for other in others})
    return aliases


def _capture_rng(generators: dict[str, np.random.Generator]) -> dict[str, Any]:
    """Python, numpy-global and named numpy Generator states as JSON-ready values."""
    version, internal, gauss_next = random.getstate()
    return {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy_global": _to_json(np.random.get_state(legacy=False)),
        "generators": {name: _to_json(gen.bit_generator.state) for name, gen in sorted(generators.items())},
    }


def _capture_torch_rng() -> dict[str, torch.Tensor]:
    """Torch CPU RNG state and, where CUDA is available, one state per visible device."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda.{index}"] = state.cpu()
    return states


def _publish_dir(temp: Path, final: Path) -> None:
    """Rename the finished ``temp`` folder to ``final``; an existing ``final`` is moved aside first, then deleted."""
    trash = None
    if final.exists():
        # rename(2) cannot replace a non-empty folder: move the old one out of the readers' sight first.
        trash = final.parent / f"{_TRASH_PREFIX}{final.name}-{uuid.uuid4().hex}"
        os.rename(final, trash)
    os.rename(temp, final)
    _fsync_path(final.parent)
    if trash is not None:
        shutil.rmtree(trash)


def _prune(root: Path, keep_last: int, *, keep: Path) -> None:
    """Delete complete checkpoints beyond the ``keep_last`` highest steps; ``keep`` is never deleted."""
    complete = sorted(_complete_checkpoints(root), reverse=True)
    for _, folder in complete[keep_last:]:
        if folder == keep:
            continue
        # Out of the readers' sight first (one rename), then the slow delete.
        trash = root / f"{_TRASH_PREFIX}{folder.name}-{uuid.uuid4().hex}"
        os.rename(folder, trash)
        shutil.rmtree(trash)


# --------------------------------------------------------------------------------- weights folders


def publish_weights(folder: Path, tensors: dict[str, torch.Tensor], *, info: dict[str, Any]) -> Path:
    """Write ``tensors`` (a policy's weights, by the model's state_dict names) as ``folder/model.safetensors``
    with a ``state.json`` of ``info`` (plain JSON) and the file's sha256, published whole by one rename.

    One process writes (rank 0 under a launcher); ``read_weights`` gives them back. The warm start keeps its
    result so: a resumed run starts GRPO's KL reference from the same warm-started policy.
    """
    _check_json_tree(info, "info")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{folder.name}-", dir=folder.parent))
    try:
        stored, aliases = _storable(tensors)
        save_file(stored, str(temp / MODEL_NAME), metadata={_ALIASES_KEY: json.dumps(aliases, sort_keys=True)})
        _fsync_path(temp / MODEL_NAME)
        record = {"format_version": FORMAT_VERSION, "info": info,
                  "files": {MODEL_NAME: {"sha256": _sha256(temp / MODEL_NAME),
                                         "bytes": (temp / MODEL_NAME).stat().st_size}}}
        _write_synced(temp / STATE_NAME, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        _fsync_path(temp)
        os.chmod(temp, 0o755)
        _publish_dir(temp, folder)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
    return folder


def read_weights(folder: Path, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights ``publish_weights`` wrote into ``folder`` and their ``info``, checked against the sha256 and
    against ``model`` (every stored name is one of its state_dict's, with its shape and dtype). Load them with
    ``model.load_state_dict(weights, strict=False)``: names not stored keep the model's values."""
    folder = Path(folder)
    state_file = folder / STATE_NAME
    if not state_file.is_file():
        raise CheckpointError(f"{state_file} is missing, so {folder} holds no complete weights; delete {folder} "
                              "and the checkpoints beside it to train again, or set train.resume=false")
    try:
        record = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{state_file} is not valid JSON ({error}); delete {folder} to train again") from error
    file = folder / MODEL_NAME
    expected = record.get("files", {}).get(MODEL_NAME, {}).get("sha256") if isinstance(record, dict) else None
    if not file.is_file() or _sha256(file) != expected:
        raise CheckpointError(f"{file} is missing or does not match its sha256 in {state_file}; delete {folder} "
                              "to train again")
    stored = _load_safetensors(file)
    metadata = _safetensors_metadata(file)
    for alias, source in json.loads(metadata.get(_ALIASES_KEY, "{}")).items():
        stored[alias] = stored[source]
    target = model.state_dict()
    unknown = sorted(stored.keys() - target.keys())
    if unknown:
        raise CheckpointError(f"{file} holds weights the model does not have ({unknown[:5]}); it belongs to another "
                              f"model: check train.init_checkpoint, or delete {folder} to train again")
    for name, tensor in stored.items():
        if tensor.shape != target[name].shape or tensor.dtype != target[name].dtype:
            raise CheckpointError(f"{file}: {name} is {tuple(tensor.shape)} {tensor.dtype} on disk but "
                                  f"{tuple(target[name].shape)} {target[name].dtype} in the model; build the model "
                                  "with the config and dtype the run was saved with")
    return stored, dict(record.get("info", {}))


# ---------------------------------------------------------------------------------------- finding


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest step under ``root``, or None; temp folders are ignored."""
    complete = _complete_checkpoints(Path(root))
    return max(complete)[1] if complete else None


def _complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` for every ``step-<digits>`` folder under ``root`` that holds a state.json."""
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir() and (entry / STATE_NAME).is_file():
            found.append((int(match.group(1)), entry))
    return found


# ---------------------------------------------------------------------------------------- loading


def load_checkpoint(
    path: Path,
    *,
    state: EngineState,
    generators: dict[str, np.random.Generator] | None = None,
    restore_rng: bool = True,
) -> ResumeState:
    """Restore the engine's state and (unless ``restore_rng`` is False) this rank's RNGs from ``path``.

    Every rank calls it with the same ``path``. Everything of ours is checked first (sha256 of every file, the
    number of ranks, this rank's RNG files and generator names); ``state.load`` then checks its own files before
    changing anything (``TorchState``: keys, shapes, dtypes, optimizer groups, scheduler presence), and the RNGs
    are set last. ``restore_rng=False`` leaves python/numpy/torch RNGs and the passed generators as they are.
    Raises CheckpointError naming the file and the fix (``OtherRankFailed`` on the ranks whose own checks passed).
    """
    path = Path(path)
    rank, world = distributed_rank()
    failure: Exception | None = None
    record: dict[str, Any] = {}
    rng: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None
    try:
        record = _read_state(path)
        if record["world_size"] != world:
            raise CheckpointError(
                f"{path / STATE_NAME} was written by {record['world_size']} ranks, this run has {world}: sharded "
                "ZeRO states only load into the same number of ranks; resume with the launcher's world size "
                f"set to {record['world_size']}, or set train.resume=false to start over"
            )
        _verify_files(path, record["files"], world)
        rng = _read_rng(path, rank, generators or {}) if restore_rng else None
    except (CheckpointError, OSError) as error:  # raised on every rank below, so none waits in a collective
        failure = error
    agree(failure, f"checking checkpoint {path}")
    state.load(path)
    if rng is not None:
        _restore_rng(*rng, generators or {})
    return ResumeState(step=record["step"], data_position=record["data_position"], extra=record["extra"])


def _read_state(path: Path) -> dict[str, Any]:
    """Parse and type-check ``path/state.json``."""
    state_file = path / STATE_NAME
    if not state_file.is_file():
        raise CheckpointError(f"{state_file} is missing, so {path} is not a complete checkpoint; {_FALLBACK_FIX}")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{state_file} is not valid JSON ({error}); {_FALLBACK_FIX}") from error
    if isinstance(state, dict) and isinstance(state.get("format_version"), int) \
            and state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{state_file} has format_version {state['format_version']}, this code reads {FORMAT_VERSION}; "
            "resume with the omni_r1 version that wrote it"
        )
    expected = {"format_version": int, "step": int, "world_size": int, "data_position": dict, "extra": dict,
                "files": dict}
    for key, kind in expected.items():
        if not isinstance(state, dict) or not isinstance(state.get(key), kind):
            raise CheckpointError(f"{state_file}: key {key!r} is missing or not a {kind.__name__}; {_FALLBACK_FIX}")
    return state


def _verify_files(path: Path, files: dict[str, Any], world: int) -> None:
    """Every listed file lies inside ``path``, exists and matches its sha256 (the ranks share the hashing); every
    rank's RNG files are listed."""
    required = {name for rank in range(world) for name in (rng_name(rank), torch_rng_name(rank))}
    if not required <= files.keys():
        raise CheckpointError(
            f"{path / STATE_NAME} does not list {sorted(required - files.keys())}; {_FALLBACK_FIX}"
        )
    checked = {}
    for name, entry in files.items():
        try:
            checked[name] = (safe_join(path, name), entry.get("sha256") if isinstance(entry, dict) else None)
        except PathEscapeError as error:
            raise CheckpointError(
                f"{path / STATE_NAME} lists {name!r}, which lies outside the checkpoint folder; {_FALLBACK_FIX}"
            ) from error
    for name, (file, _) in checked.items():
        if not file.is_file():
            raise CheckpointError(f"{file} is listed in {STATE_NAME} but missing; {_FALLBACK_FIX}")
    rank = distributed_rank()[0]
    mine = sorted(checked)[rank::world]
    for name in mine:
        file, expected = checked[name]
        if _sha256(file) != expected:
            raise CheckpointError(f"{file} does not match its sha256 in {STATE_NAME} (corrupted); {_FALLBACK_FIX}")


def _read_model_state(file: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full state_dict for ``model`` from ``file``, tied names filled in; keys, shapes, dtypes checked."""
    stored = _load_safetensors(file)
    expected = model.state_dict()
    # A tied name may be stored under either member of its group (sorting can differ between models).
    groups: dict[str, list[str]] = {}
    aliases = _alias_map(expected)
    for name in expected:
        groups.setdefault(aliases.get(name, name), []).append(name)

    full: dict[str, torch.Tensor] = {}
    missing = []
    for members in groups.values():
        source = next((name for name in members if name in stored), None)
        if source is None:
            missing.extend(members)
            continue
        full.update({name: stored[source] for name in members})
    unexpected = sorted(stored.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"{file} does not fit {type(model).__name__}: missing keys {sorted(missing)[:10]}, "
            f"unexpected keys {unexpected[:10]}; build the model with the config the run was saved with "
            f"(or {_FALLBACK_FIX} if it belongs to another run)"
        )
    for name, tensor in full.items():
        target = expected[name]
        if tensor.shape != target.shape or tensor.dtype != target.dtype:
            raise CheckpointError(
                f"{file}: {name} is {tuple(tensor.shape)} {tensor.dtype} on disk but {tuple(target.shape)} "
                f"{target.dtype} in the model; build the model with the config and dtype the run was saved with"
            )
    return full


def _read_scheduler_state(path: Path, saved: bool, scheduler: Any | None) -> dict[str, Any] | None:
    """The scheduler state dict, after checking that a scheduler was saved exactly when one is passed."""
    if saved and scheduler is None:
        raise CheckpointError(f"{path / SCHEDULER_NAME} holds a scheduler state; pass the run's scheduler to resume")
    if not saved and scheduler is not None:
        raise CheckpointError(f"{path} was saved without a scheduler; resume with scheduler=None")
    return _torch_load(path / SCHEDULER_NAME) if saved else None


def _check_optimizer_fits(saved: Any, optimizer: torch.optim.Optimizer, file: Path) -> None:
    """Same number of param groups with the same sizes, so ``load_state_dict`` cannot fail half-way."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or "state" not in saved:
        raise CheckpointError(f"{file} is not an optimizer state_dict; {_FALLBACK_FIX}")
    saved_sizes = [len(group.get("params", ())) for group in groups]
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if saved_sizes != sizes:
        raise CheckpointError(
            f"{file} has parameter groups of sizes {saved_sizes}, the optimizer {sizes}; "
            "build the optimizer over the same parameters as the saved run"
        )


def _read_rng(path: Path, rank: int,
              generators: dict[str, np.random.Generator]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``rank``'s saved RNG states, after checking they cover the passed generators and this machine's CUDA
    devices."""
    rng_file = path / rng_name(rank)
    try:
        rng = json.loads(rng_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{rng_file} is not valid JSON ({error}); {_FALLBACK_FIX}") from error
    saved_generators = rng.get("generators", {}) if isinstance(rng, dict) else {}
    if set(saved_generators) != set(generators):
        raise CheckpointError(
            f"{rng_file} holds generators {sorted(saved_generators)} but {sorted(generators)} were passed; "
            "pass the same named generators the run saved (or restore_rng=False for fresh random streams)"
        )
    torch_file = path / torch_rng_name(rank)
    torch_states = _load_safetensors(torch_file)
    cuda_saved = sum(name.startswith("cuda.") for name in torch_states)
    cuda_here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda_saved and cuda_saved != cuda_here:
        raise CheckpointError(
            f"{torch_file} holds RNG states of {cuda_saved} CUDA devices, this machine has {cuda_here}; "
            "resume on the same devices, or pass restore_rng=False to continue with fresh random streams"
        )
    return rng, torch_states


def _restore_rng(rng: dict[str, Any], torch_states: dict[str, torch.Tensor],
                 generators: dict[str, np.random.Generator]) -> None:
    """Set python, numpy-global, generator and torch RNG states (already checked to fit)."""
    python = rng["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    np.random.set_state(_from_json(rng["numpy_global"]))
    for name, generator in generators.items():
        try:
            generator.bit_generator.state = _from_json(rng["generators"][name])
        except (ValueError, TypeError) as error:
            raise CheckpointError(
                f"the RNG file: generator {name!r} was saved from another bit generator ({error}); "
                "build it with the same numpy bit generator as the saved run"
            ) from error
    torch.set_rng_state(torch_states["cpu"])
    cuda = [torch_states[f"cuda.{index}"] for index in range(sum(n.startswith("cuda.") for n in torch_states))]
    if cuda:
        torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------------------- helpers


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU, turning a malformed file into CheckpointError."""
    try:
        return load_file(str(file), device="cpu")
    except Exception as error:  # safetensors raises its own SafetensorError (no public base class to catch)
        raise CheckpointError(f"{file} cannot be read as safetensors ({error}); {_FALLBACK_FIX}") from error


def _safetensors_metadata(file: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (read with ``safe_open``, no tensors)."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return dict(handle.metadata() or {})


def _torch_load(file: Path) -> Any:
    """``torch.load`` with ``weights_only=True``: plain containers and tensors only, never arbitrary objects."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors differ by cause; all mean "not loadable"
        raise CheckpointError(f"{file} cannot be loaded with weights_only=True ({error}); {_FALLBACK_FIX}") from error


def _apply(load_state_dict: Any, state: Any, file: Path) -> None:
    """Call an object's ``load_state_dict`` and name the file if the state does not fit."""
    try:
        load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{file} does not fit the object it is loaded into ({error}); "
                              "build it with the same settings as the saved run") from error


def _to_json(value: Any) -> Any:
    """numpy RNG state -> JSON: arrays become ``{"__ndarray__": list, "dtype": str}``, numpy scalars plain."""
    if isinstance(value, dict):
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json(value: Any) -> Any:
    """Inverse of ``_to_json``."""
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
        return {key: _from_json(item) for key, item in value.items()}
    return value


def _check_json_tree(value: Any, where: str) -> None:
    """Refuse anything JSON would silently change (tuples, numpy numbers, non-str keys)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_tree(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has key {key!r} of type {type(key).__name__}; checkpoint keys must be str")
            _check_json_tree(item, f"{where}.{key}")
        return
    raise ValueError(
        f"{where} is a {type(value).__name__}; checkpoint state must be plain JSON "
        "(dict/list/str/int/float/bool/None) — convert it (e.g. int(x), list(t)) before saving"
    )


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_synced(file: Path, data: bytes) -> None:
    """Write ``data`` and flush it to disk before returning."""
    with open(file, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_path(path: Path) -> None:
    """fsync a file or folder so a rename published after it cannot point at unwritten data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
