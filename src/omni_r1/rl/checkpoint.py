"""Training checkpoints: save and resume everything a GRPO run needs to continue bit for bit.

One checkpoint is one folder ``root/step-00000010/`` holding

    model.safetensors      the full model state_dict; tied/shared tensors are stored once and re-tied on load
    optimizer.pt           optimizer.state_dict() via torch.save, read back with torch.load(weights_only=True)
    scheduler.pt           the same for the LR scheduler (absent when the run has none)
    rng.json               python ``random``, numpy's global legacy state and every named numpy Generator
    torch_rng.safetensors  torch CPU RNG state (and one per CUDA device) as uint8 tensors
    state.json             step, data position, extra, format version, and name + sha256 of every file above

The folder is built as a hidden temp folder inside ``root`` and renamed into place; ``state.json`` is
written last inside it. A reader trusts only folders named ``step-<digits>`` that hold a ``state.json``,
so a crash at any moment leaves either the previous checkpoints or the new whole one, never half of one.
Only the writing process (rank 0 under DeepSpeed) may call ``save_checkpoint`` for a given ``root``.
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
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from omni_r1.data.paths import PathEscapeError, safe_join

FORMAT_VERSION = 1
STATE_NAME = "state.json"
MODEL_NAME = "model.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
RNG_NAME = "rng.json"
TORCH_RNG_NAME = "torch_rng.safetensors"

_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_ALIASES_KEY = "omni_r1.aliases"  # safetensors metadata: JSON {dropped name: stored name} for tied tensors
_HASH_CHUNK = 1 << 20
_FALLBACK_FIX = "delete the folder to fall back to the previous checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, corrupted, or does not fit the objects it is loaded into."""


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
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    data_position: dict[str, Any],
    keep_last: int,
    generators: dict[str, np.random.Generator] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` atomically under ``root``, prune to ``keep_last``, return its folder.

    ``data_position`` and ``extra`` must be plain JSON values (dict/list/str/int/float/bool/None) so
    they come back exactly as given. An existing checkpoint of the same step is replaced whole.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative int, got {step!r}")
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1 (train checkpoint setting), got {keep_last}")
    extra = {} if extra is None else extra
    _check_json_tree(data_position, "data_position")
    _check_json_tree(extra, "extra")

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    temp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{final.name}-", dir=root))
    try:
        files = _write_payload(temp, model, optimizer, scheduler, generators or {})
        state = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "data_position": data_position,
            "extra": extra,
            "has_scheduler": scheduler is not None,
            "files": files,
        }
        _write_synced(temp / STATE_NAME, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())
        _fsync_path(temp)
        os.chmod(temp, 0o755)  # mkdtemp makes 0700; a published checkpoint is readable like any other output
        _publish_dir(temp, final)
    finally:
        if temp.exists():  # only on failure: the rename consumed it otherwise
            shutil.rmtree(temp, ignore_errors=True)
    _prune(root, keep_last, keep=final)
    return final


def _write_payload(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    generators: dict[str, np.random.Generator],
) -> dict[str, dict[str, Any]]:
    """Write every payload file into ``folder`` and return ``{name: {sha256, bytes}}`` for state.json."""
    tensors, aliases = _model_tensors(model)
    save_file(tensors, str(folder / MODEL_NAME), metadata={_ALIASES_KEY: json.dumps(aliases, sort_keys=True)})
    torch.save(optimizer.state_dict(), folder / OPTIMIZER_NAME)
    if scheduler is not None:
        torch.save(scheduler.state_dict(), folder / SCHEDULER_NAME)
    _write_synced(folder / RNG_NAME, (json.dumps(_capture_rng(generators), sort_keys=True) + "\n").encode())
    save_file(_capture_torch_rng(), str(folder / TORCH_RNG_NAME))

    files = {}
    for path in sorted(folder.iterdir()):
        _fsync_path(path)
        files[path.name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    return files


def _model_tensors(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state_dict with tied tensors stored once, as CPU tensors safetensors accepts, plus the alias map."""
    state = model.state_dict()
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
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    generators: dict[str, np.random.Generator] | None = None,
    restore_rng: bool = True,
) -> ResumeState:
    """Restore model, optimizer, scheduler and (unless ``restore_rng`` is False) every RNG from ``path``.

    Everything is read and checked first (sha256 of every file, model keys, shapes and dtypes, optimizer
    groups, scheduler and generator presence); the objects are changed only once all checks pass.
    ``restore_rng=False`` leaves python/numpy/torch RNGs and the passed generators as they are.
    Raises CheckpointError naming the file and the fix.
    """
    path = Path(path)
    state = _read_state(path)
    _verify_files(path, state["files"])

    model_state = _read_model_state(path / MODEL_NAME, model)
    optimizer_state = _torch_load(path / OPTIMIZER_NAME)
    _check_optimizer_fits(optimizer_state, optimizer, path / OPTIMIZER_NAME)
    scheduler_state = _read_scheduler_state(path, state["has_scheduler"], scheduler)
    rng = _read_rng(path, generators or {}) if restore_rng else None

    _apply(model.load_state_dict, model_state, path / MODEL_NAME)
    _apply(optimizer.load_state_dict, optimizer_state, path / OPTIMIZER_NAME)
    if scheduler is not None:
        _apply(scheduler.load_state_dict, scheduler_state, path / SCHEDULER_NAME)
    if rng is not None:
        _restore_rng(*rng, generators or {})
    return ResumeState(step=state["step"], data_position=state["data_position"], extra=state["extra"])


def _read_state(path: Path) -> dict[str, Any]:
    """Parse and type-check ``path/state.json``."""
    state_file = path / STATE_NAME
    if not state_file.is_file():
        raise CheckpointError(f"{state_file} is missing, so {path} is not a complete checkpoint; {_FALLBACK_FIX}")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{state_file} is not valid JSON ({error}); {_FALLBACK_FIX}") from error
    expected = {"format_version": int, "step": int, "data_position": dict, "extra": dict,
                "has_scheduler": bool, "files": dict}
    for key, kind in expected.items():
        if not isinstance(state, dict) or not isinstance(state.get(key), kind):
            raise CheckpointError(f"{state_file}: key {key!r} is missing or not a {kind.__name__}; {_FALLBACK_FIX}")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{state_file} has format_version {state['format_version']}, this code reads {FORMAT_VERSION}; "
            "resume with the omni_r1 version that wrote it"
        )
    return state


def _verify_files(path: Path, files: dict[str, Any]) -> None:
    """Every listed file lies inside ``path``, exists and matches its sha256; the required ones are listed."""
    required = {MODEL_NAME, OPTIMIZER_NAME, RNG_NAME, TORCH_RNG_NAME}
    if not required <= files.keys():
        raise CheckpointError(
            f"{path / STATE_NAME} does not list {sorted(required - files.keys())}; {_FALLBACK_FIX}"
        )
    for name, entry in files.items():
        try:
            file = safe_join(path, name)
        except PathEscapeError as error:
            raise CheckpointError(
                f"{path / STATE_NAME} lists {name!r}, which lies outside the checkpoint folder; {_FALLBACK_FIX}"
            ) from error
        if not file.is_file():
            raise CheckpointError(f"{file} is listed in {STATE_NAME} but missing; {_FALLBACK_FIX}")
        expected = entry.get("sha256") if isinstance(entry, dict) else None
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


def _read_rng(path: Path, generators: dict[str, np.random.Generator]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The saved RNG states, after checking they cover the passed generators and this machine's CUDA devices."""
    rng_file = path / RNG_NAME
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
    torch_states = _load_safetensors(path / TORCH_RNG_NAME)
    cuda_saved = sum(name.startswith("cuda.") for name in torch_states)
    cuda_here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda_saved and cuda_saved != cuda_here:
        raise CheckpointError(
            f"{path / TORCH_RNG_NAME} holds RNG states of {cuda_saved} CUDA devices, this machine has {cuda_here}; "
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
                f"{RNG_NAME}: generator {name!r} was saved from another bit generator ({error}); "
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
