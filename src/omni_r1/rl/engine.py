"""The policy update behind one small interface: DeepSpeed on GPUs, plain torch on CPU.

The GRPO loop computes a loss with ``engine.model`` and then calls ``engine.backward(loss)`` and
``engine.step()``; it never touches the optimizer, the scheduler or the clipping itself. Two
implementations satisfy ``PolicyEngine``:

- ``TorchEngine``: AdamW over the trainable parameters, a ``LambdaLR`` schedule and
  ``clip_grad_norm_``; the default, and the CPU demo's path.
- ``DeepSpeedEngine``: the same optimizer, schedule and clipping handed to
  ``deepspeed.initialize`` with a ZeRO config from ``configs/deepspeed/`` (spec section 3: ZeRO-3
  with CPU offload, bf16, gradient checkpointing on 8 GPUs). On CPU it runs in one process over
  gloo with DeepSpeed's CPU accelerator, which is how the tests exercise it.

Both save and load their state as files of a checkpoint folder (``save`` / ``load``, called on every rank:
DeepSpeed's ``save_checkpoint`` / ``load_checkpoint`` write and read each rank's ZeRO shard), and the
supervised warm start trains through the same kind of engine (``build_warm_start_engine``).

``build_engine`` picks one by ``train.deepspeed.enabled``. Hyperparameters (learning rate, weight
decay, clipping, precision) come from ``params.yaml`` only: the DeepSpeed JSON holds
infrastructure (ZeRO stage, offload, buckets, batch layout), and a JSON that also sets one of the
values owned by ``params.yaml`` is an error rather than a silent second source of truth.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from omni_r1.config import ConfigError, DeepSpeedParams, TrainParams, WarmStartParams
from omni_r1.rl.checkpoint import CheckpointError, TorchState

Schedule = Literal["cosine", "constant"]

DEEPSPEED_DIR = "deepspeed"  # where DeepSpeedEngine.save puts its files inside a checkpoint folder
DEEPSPEED_TAG = "state"  # DeepSpeed's checkpoint tag: one state per checkpoint folder, the folder names the step
WARM_START_WEIGHT_DECAY = 0.01  # torch AdamW's default, which the warm start used before it had an engine

# Keys of a DeepSpeed config whose values params.yaml owns (filled in by ``deepspeed_config``).
OWNED_KEYS = ("optimizer", "scheduler", "gradient_clipping", "bf16", "fp16")


class PolicyEngine(Protocol):
    """What the GRPO loop needs from whatever updates the policy.

    ``model`` is what to call ``forward`` (and ``generate``) on; ``device`` is where its inputs go.
    """

    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler
    device: torch.device
    reference: nn.Module | None  # the frozen KL reference (``build_reference``), built before any sharding

    def backward(self, loss: Tensor) -> None:
        """Accumulate the gradients of ``loss`` (a scalar)."""
        ...

    def step(self) -> dict[str, float]:
        """Clip, step the optimizer and the schedule, zero the gradients.

        Returns ``{"grad_norm": total norm before clipping, "lr": the learning rate this step used}``.
        """
        ...

    def train(self) -> None:
        """Put the model in training mode."""
        ...

    def eval(self) -> None:
        """Put the model in evaluation mode."""
        ...

    def unwrapped(self) -> nn.Module:
        """The plain model (for ``save_pretrained``); under ZeRO-3 its weights are partitioned."""
        ...

    def full_state_dict(self) -> dict[str, Tensor]:
        """Every weight, whole and on the CPU, whatever the sharding (a collective call under ZeRO-3)."""
        ...

    def gathered(self) -> contextlib.AbstractContextManager[Any]:
        """A context inside which the policy's weights are whole on every rank (a collective under ZeRO-3)."""
        ...

    def save(self, folder: Path) -> None:
        """Write the weights, optimizer and schedule into the existing ``folder`` (every rank calls it: under
        DeepSpeed each rank writes its own ZeRO shard)."""
        ...

    def load(self, folder: Path) -> None:
        """Restore what ``save`` wrote into ``folder`` (every rank calls it), on a freshly built engine."""
        ...

    def close(self) -> None:
        """Let go of the optimizer, schedule and reference, and of the model (DeepSpeed removes its hooks), so
        their memory can go and another engine may be built; the engine is unusable afterwards."""
        ...


# --------------------------------------------------------------------------------------------- schedule


def make_lr_lambda(schedule: Schedule, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier per optimizer step, as the HF Trainer the paper used defines it.

    Linear warmup ``step / warmup_steps`` (0 at step 0), then ``1`` (constant) or a half cosine from
    1 at ``warmup_steps`` down to 0 at ``total_steps`` (and 0 after).
    """
    if schedule not in ("cosine", "constant"):
        raise ConfigError(f"train.lr_schedule is {schedule!r}; use 'cosine' or 'constant'")
    if warmup_steps < 0 or total_steps < 1:
        raise ConfigError(
            f"warmup_steps={warmup_steps}, total_steps={total_steps}: need warmup >= 0 and at least one step; "
            "fix train.warmup_steps / train.steps in params.yaml"
        )

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters: matrices decay, biases and norm scales do not.

    This is the HF Trainer's split (no decay on biases and LayerNorm/RMSNorm weights), written as
    "1-D parameters do not decay". Empty groups are left out; no trainable parameter is an error.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the policy has no trainable parameters: nothing for the optimizer to update")
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def _check_finite(grad_norm: float) -> float:
    # A NaN/inf norm means the update is garbage; stop loudly instead of logging a NaN and carrying on.
    if not math.isfinite(grad_norm):
        raise FloatingPointError(
            f"gradient norm is {grad_norm}: the loss or its gradients are not finite; "
            "lower train.lr or check the loss inputs"
        )
    return grad_norm


# ------------------------------------------------------------------------------------------- reference


class _TextModel(nn.Module):
    """The ``model.model`` of a ``ReferenceModel``: the language model alone (embeddings included)."""

    def __init__(self, language_model: nn.Module) -> None:
        super().__init__()
        self.language_model = language_model

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()


class ReferenceModel(nn.Module):
    """The KL reference of a thinker whose towers are frozen: a frozen copy of its language model and head.

    The towers' outputs are the same for the policy and the reference (both frozen), so the prompt's
    encoding is shared and only the language model is copied: no second vision and audio tower. It
    has the attributes the encoded log-prob path reads (``model.language_model``,
    ``model.get_input_embeddings()``, ``lm_head``).
    """

    def __init__(self, thinker: nn.Module) -> None:
        super().__init__()
        # One deepcopy of both keeps a tied head tied.
        language_model, lm_head = copy.deepcopy((thinker.model.language_model, thinker.lm_head))
        self.model = _TextModel(language_model)
        self.lm_head = lm_head


class TrainablePart(nn.Module):
    """What DeepSpeed wraps of a thinker whose towers are frozen: its language model and head, the very same
    modules (not copies), so the thinker trains in place.

    The frozen towers stay whole on every rank, outside ZeRO: which of them runs depends on the sample
    (audio or not), and under ZeRO-3 every forward of a wrapped module gathers its weights from all ranks,
    so a tower run on one rank only would leave the others waiting. The language model's calls are the
    same on every rank (one prompt forward per group, a synchronised decode, the same updates).
    """

    def __init__(self, thinker: nn.Module) -> None:
        super().__init__()
        self.model = _TextModel(thinker.model.language_model)
        self.lm_head = thinker.lm_head


def _is_thinker(model: nn.Module) -> bool:
    return hasattr(model, "model") and hasattr(model.model, "language_model") and hasattr(model, "lm_head")


def build_reference(model: nn.Module) -> nn.Module:
    """A frozen copy of the starting policy for the KL term: language model and head only when the towers are
    frozen (``ReferenceModel``), the whole thinker otherwise. Call it before DeepSpeed partitions ``model``."""
    from omni_r1.rl.policy import towers_frozen

    reference = ReferenceModel(model) if _is_thinker(model) and towers_frozen(model) else copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


def local_device(device: str | torch.device) -> torch.device:
    """This rank's device, made the current CUDA device before any model, prompt or System 2 lands on it.

    Under the ``deepspeed`` launcher (or torchrun) every rank would otherwise put everything on
    ``cuda:0``; the launcher's ``LOCAL_RANK`` names the GPU of this rank. CPU devices pass through.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return device
    index = int(os.environ.get("LOCAL_RANK", device.index or 0))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


# ----------------------------------------------------------------------------------------------- torch


class TorchEngine:
    """AdamW + ``LambdaLR`` + ``clip_grad_norm_`` on one device, no distribution."""

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float,
        weight_decay: float,
        max_grad_norm: float,
        lr_lambda: Callable[[int], float],
        reference: nn.Module | None = None,
    ) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.reference = None if reference is None else reference.to(self.device)
        self.max_grad_norm = max_grad_norm
        groups = param_groups(model, weight_decay)
        self._trainable = [p for group in groups for p in group["params"]]
        self.optimizer: Optimizer = torch.optim.AdamW(groups, lr=lr)
        self.scheduler: LRScheduler = LambdaLR(self.optimizer, lr_lambda)

    def backward(self, loss: Tensor) -> None:
        """``loss.backward()``."""
        loss.backward()

    def step(self) -> dict[str, float]:
        """Clip to ``max_grad_norm``, step AdamW and the schedule, zero the gradients."""
        lr = float(self.optimizer.param_groups[0]["lr"])
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self._trainable, self.max_grad_norm))
        _check_finite(grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": grad_norm, "lr": lr}

    def train(self) -> None:
        """Training mode."""
        self.model.train()

    def eval(self) -> None:
        """Evaluation mode."""
        self.model.eval()

    def unwrapped(self) -> nn.Module:
        """The model itself."""
        return self.model

    def full_state_dict(self) -> dict[str, Tensor]:
        """The model's weights, detached, on the CPU."""
        return {name: tensor.detach().cpu() for name, tensor in self.model.state_dict().items()}

    def gathered(self) -> contextlib.AbstractContextManager[Any]:
        """The weights are whole already: a no-op."""
        return contextlib.nullcontext()

    def save(self, folder: Path) -> None:
        """``model.safetensors``, ``optimizer.pt`` and ``scheduler.pt`` in ``folder`` (``checkpoint.TorchState``)."""
        TorchState(self.model, self.optimizer, self.scheduler).save(folder)

    def load(self, folder: Path) -> None:
        """Read them back, checked before anything changes (optimizer and schedule with weights_only=True)."""
        TorchState(self.model, self.optimizer, self.scheduler).load(folder)

    def close(self) -> None:
        """Drop the optimizer (its Adam moments are twice the trainable weights), the schedule and the reference;
        the model itself belongs to its caller."""
        del self.optimizer, self.scheduler, self.reference, self._trainable


# ------------------------------------------------------------------------------------------- deepspeed


def load_deepspeed_config(path: str | Path) -> dict[str, Any]:
    """Read the DeepSpeed JSON named by ``train.deepspeed.config``; errors name the key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"train.deepspeed.config points at {str(path)!r}, which does not exist; set it in params.yaml to one of "
            "configs/deepspeed/zero2.json or configs/deepspeed/zero3.json (paths are relative to the repository root)"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} (train.deepspeed.config) is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ConfigError(f"{path} (train.deepspeed.config) must hold a JSON object, not {type(config).__name__}")
    return config


def deepspeed_config(raw: Mapping[str, Any], params: TrainParams, device: torch.device) -> dict[str, Any]:
    """``raw`` with the values params.yaml owns filled in: clipping, and bf16 on CUDA only.

    The optimizer and schedule are passed to ``deepspeed.initialize`` as objects, so the JSON must
    not name them either. bf16 follows the paper on GPUs; the CPU path stays in fp32.
    """
    return _filled_config(raw, params.max_grad_norm, device)


def _filled_config(raw: Mapping[str, Any], max_grad_norm: float, device: torch.device) -> dict[str, Any]:
    """``deepspeed_config`` for a clipping threshold (``inf``: no clipping, which DeepSpeed spells 0)."""
    owned = [key for key in OWNED_KEYS if key in raw]
    if owned:
        raise ConfigError(
            f"train.deepspeed.config sets {owned}; remove them from the JSON: learning rate, weight decay, "
            "schedule and clipping come from train.* in params.yaml, and precision from the device"
        )
    config = copy.deepcopy(dict(raw))
    config["gradient_clipping"] = float(max_grad_norm) if math.isfinite(max_grad_norm) else 0.0
    config["bf16"] = {"enabled": device.type == "cuda"}
    return config


def offloads_optimizer(config: Mapping[str, Any]) -> bool:
    """Whether the config puts the optimizer states on the CPU (ZeRO-Offload)."""
    offload = config.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") == "cpu"


def import_deepspeed(device: torch.device) -> ModuleType:
    """Import DeepSpeed with the accelerator that matches ``device``.

    DeepSpeed picks its accelerator once, at first import, from ``DS_ACCELERATOR`` or by probing
    CUDA; on CPU we set ``DS_ACCELERATOR=cpu`` before that import (the CPU accelerator falls back to
    gloo when oneccl is not installed). If DeepSpeed was already imported with another accelerator,
    the documented ``deepspeed.accelerator.set_accelerator`` switches it.
    """
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"DeepSpeed runs the policy on 'cpu' or 'cuda', not {device.type!r}")
    if device.type == "cpu" and "deepspeed" not in sys.modules:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from deepspeed.accelerator import get_accelerator, set_accelerator

    if get_accelerator().device_name() != device.type:
        if device.type == "cpu":
            from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator as Accelerator
        else:
            from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator as Accelerator
        set_accelerator(Accelerator())
    return deepspeed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _single_process_defaults() -> None:
    # The deepspeed launcher (or torchrun) sets these for every rank; a plain `python -m stages.train`
    # is one rank of one. Only missing values are filled, so a launched run is never overridden.
    defaults = {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())


def init_distributed(deepspeed: ModuleType, device: torch.device) -> None:
    """Join (or, alone, create) the process group: gloo on CPU, the accelerator's backend (nccl) on CUDA."""
    _single_process_defaults()
    backend = "gloo" if device.type == "cpu" else deepspeed.accelerator.get_accelerator().communication_backend_name()
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in backward (spec section 3); needs a Hugging Face model."""
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if enable is None:
        raise TypeError(
            f"train.deepspeed.gradient_checkpointing is true but {type(model).__name__} has no "
            "gradient_checkpointing_enable(); set it to false or pass a Hugging Face model"
        )
    # Non-reentrant checkpointing still backpropagates when the inputs (embeddings of frozen towers) need no grad.
    enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class DeepSpeedEngine:
    """The policy wrapped by ``deepspeed.initialize``: ZeRO sharding, bf16 on CUDA, clipping by DeepSpeed."""

    def __init__(
        self,
        model: nn.Module,
        *,
        config: Mapping[str, Any],
        lr: float,
        weight_decay: float,
        lr_lambda: Callable[[int], float],
        device: torch.device,
        gradient_checkpointing: bool = False,
        reference: nn.Module | None = None,
    ) -> None:
        self._deepspeed = import_deepspeed(device)
        init_distributed(self._deepspeed, device)
        # Before the policy is wrapped: ZeRO-3 partitions its weights in place.
        self.reference = None if reference is None else self._wrap_reference(reference, config, device)
        if gradient_checkpointing:
            enable_gradient_checkpointing(model)
        wrapped = self._trainable_part(model, config, device)
        groups = param_groups(wrapped, weight_decay)
        optimizer = self._optimizer(groups, lr, offloads_optimizer(config))
        engine, optimizer, _, scheduler = self._deepspeed.initialize(
            model=wrapped,
            model_parameters=groups,
            optimizer=optimizer,
            # Built by DeepSpeed on the optimizer it actually steps, so the schedule drives the real lr.
            lr_scheduler=lambda basic: LambdaLR(basic, lr_lambda),
            config=dict(config),
        )
        self._engine = engine
        self.model: nn.Module = engine
        self.optimizer: Optimizer = optimizer
        self.scheduler: LRScheduler = scheduler
        self.device = torch.device(engine.device)
        self._stage = int(engine.zero_optimization_stage())

    @staticmethod
    def _trainable_part(model: nn.Module, config: Mapping[str, Any], device: torch.device) -> nn.Module:
        """``TrainablePart`` of a thinker with frozen towers (the towers moved to this rank's device and the
        training precision by hand, as DeepSpeed does for what it wraps); any other model whole."""
        from omni_r1.rl.policy import towers_frozen

        if not (_is_thinker(model) and towers_frozen(model)):
            return model
        dtype = torch.bfloat16 if config.get("bf16", {}).get("enabled") else None
        for name in ("visual", "audio_tower"):
            tower = getattr(model.model, name, None)
            if tower is not None:
                tower.to(device=device, dtype=dtype)
        return TrainablePart(model)

    def gathered(self) -> contextlib.AbstractContextManager[Any]:
        """Inside: every weight of the wrapped model whole on every rank (ZeRO-3 gathers them; all ranks must
        enter), e.g. to export the policy. A no-op below ZeRO-3."""
        if self._stage < 3:
            return contextlib.nullcontext()
        return self._deepspeed.zero.GatheredParameters(list(self._engine.module.parameters()), modifier_rank=None)

    def _wrap_reference(self, reference: nn.Module, config: Mapping[str, Any], device: torch.device) -> nn.Module:
        """ZeRO-3: the reference as its own frozen ZeRO-3 inference engine (partitioned like the policy, no
        optimizer), as TRL prepares its reference model; otherwise a whole frozen copy on this rank's device
        in the precision the policy trains in."""
        zero = dict(config.get("zero_optimization", {}))
        if int(zero.get("stage", 0)) < 3:
            dtype = torch.bfloat16 if config.get("bf16", {}).get("enabled") else None
            return reference.to(device=device, dtype=dtype)
        inference = {
            "train_micro_batch_size_per_gpu": config.get("train_micro_batch_size_per_gpu", 1),
            "bf16": dict(config.get("bf16", {"enabled": False})),
            "zero_optimization": {key: value for key, value in zero.items()
                                  if key in ("stage", "offload_param", "stage3_param_persistence_threshold",
                                             "stage3_prefetch_bucket_size", "stage3_max_live_parameters",
                                             "stage3_max_reuse_distance")},
            "steps_per_print": config.get("steps_per_print", 1_000_000),
        }
        engine, *_ = self._deepspeed.initialize(model=reference, config=inference)
        engine.eval()
        return engine

    def _optimizer(self, groups: list[dict[str, Any]], lr: float, offload: bool) -> Optimizer:
        # ZeRO-Offload refuses a torch optimizer on CPU-held states (too slow); DeepSpeed's vectorised
        # CPU Adam in AdamW mode is the same update. It compiles a C++ op on first use.
        if offload:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(groups, lr=lr, adamw_mode=True)
        return torch.optim.AdamW(groups, lr=lr)

    def backward(self, loss: Tensor) -> None:
        """``engine.backward``: ZeRO reduces and partitions the gradients as they arrive."""
        self._engine.backward(loss)

    def step(self) -> dict[str, float]:
        """``engine.step``: clip (config ``gradient_clipping``), optimizer, schedule, zero the gradients."""
        lr = float(self._engine.get_lr()[0])
        self._engine.step()
        grad_norm = self._engine.get_global_grad_norm()
        if grad_norm is None:
            raise RuntimeError(
                "DeepSpeed computed no gradient norm; remove zero_optimization.compute_grad_norm=false "
                "from train.deepspeed.config"
            )
        return {"grad_norm": _check_finite(float(grad_norm)), "lr": lr}

    def train(self) -> None:
        """Training mode."""
        self._engine.train()

    def eval(self) -> None:
        """Evaluation mode."""
        self._engine.eval()

    def unwrapped(self) -> nn.Module:
        """The module DeepSpeed wraps (bf16 on CUDA; partitioned weights under ZeRO-3)."""
        return self._engine.module

    def full_state_dict(self) -> dict[str, Tensor]:
        """Every weight on the CPU; under ZeRO-3 the partitions are gathered first (all ranks must call)."""
        module = self._engine.module
        if self._stage < 3:
            return {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}
        with self._deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {name: tensor.detach().clone().cpu() for name, tensor in module.state_dict().items()}

    def save(self, folder: Path) -> None:
        """``engine.save_checkpoint`` into ``folder/deepspeed`` on every rank: the module, each rank's ZeRO
        shard of the optimizer (the fp32 master weights and Adam moments) and the LR schedule."""
        self._engine.save_checkpoint(str(folder / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, save_latest=True)

    def load(self, folder: Path) -> None:
        """``engine.load_checkpoint`` of what ``save`` wrote, on every rank, into this freshly built engine
        (DeepSpeed loads ZeRO-3 states only into an engine that has not saved yet, as after a restart).

        DeepSpeed reads its files with ``torch.load(weights_only=False)`` (its checkpoint engine): the files
        are our own run's output, checked against the sha256 in the checkpoint's state.json before this is
        called, never a downloaded file; our own files are read with weights_only=True or safetensors."""
        source = folder / DEEPSPEED_DIR
        if not (source / DEEPSPEED_TAG).is_dir():
            raise CheckpointError(f"{source / DEEPSPEED_TAG} is missing: {folder} was not written by DeepSpeed "
                                  "(train.deepspeed.enabled must match the saved run)")
        path, _ = self._engine.load_checkpoint(str(source), tag=DEEPSPEED_TAG, load_optimizer_states=True,
                                               load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {source / DEEPSPEED_TAG}; delete {folder} to fall "
                                  "back to the previous checkpoint")

    def close(self) -> None:
        """``engine.destroy`` (its hooks leave the module; ZeRO-3 weights stay partitioned, so gather them
        first), then every reference to DeepSpeed's engine, its optimizer shard and the reference engine."""
        self._engine.destroy()
        del self._engine, self.model, self.optimizer, self.scheduler, self.reference


# ---------------------------------------------------------------------------------------------- factory


def build_engine(model: nn.Module, params: TrainParams, *, total_steps: int, device: torch.device) -> PolicyEngine:
    """The engine ``params.deepspeed.enabled`` asks for, with ``total_steps`` optimizer steps of schedule.

    With ``train.beta`` > 0 the engine also holds the KL reference, copied from ``model`` as it is now
    (the starting policy) before anything is sharded."""
    return _make_engine(model, params.deepspeed, lr=params.lr, weight_decay=params.weight_decay,
                        max_grad_norm=params.max_grad_norm,
                        lr_lambda=make_lr_lambda(params.lr_schedule, params.warmup_steps, total_steps),
                        device=device, reference=build_reference(model) if params.beta > 0 else None)


def build_warm_start_engine(model: nn.Module, warm: WarmStartParams, deepspeed: DeepSpeedParams, *,
                            device: torch.device) -> PolicyEngine:
    """The supervised warm start's engine: the kind ``train.deepspeed`` asks for (so a 7B warm start is sharded
    like its GRPO), AdamW at ``train.warm_start.lr`` held constant, no clipping, weight decay 0.01
    (``WARM_START_WEIGHT_DECAY``, torch's default, which the warm start used before it had an engine) on the
    matrices only (``param_groups``: biases and norm scales no longer decay); no KL reference."""
    return _make_engine(model, deepspeed, lr=warm.lr, weight_decay=WARM_START_WEIGHT_DECAY, max_grad_norm=math.inf,
                        lr_lambda=make_lr_lambda("constant", 0, max(warm.steps, 1)), device=device, reference=None)


def _make_engine(model: nn.Module, deepspeed: DeepSpeedParams, *, lr: float, weight_decay: float,
                 max_grad_norm: float, lr_lambda: Callable[[int], float], device: torch.device,
                 reference: nn.Module | None) -> PolicyEngine:
    if not deepspeed.enabled:
        return TorchEngine(model.to(device), lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                           lr_lambda=lr_lambda, reference=reference)
    config = _filled_config(load_deepspeed_config(deepspeed.config), max_grad_norm, device)
    return DeepSpeedEngine(model, config=config, lr=lr, weight_decay=weight_decay, lr_lambda=lr_lambda, device=device,
                           gradient_checkpointing=deepspeed.gradient_checkpointing, reference=reference)
