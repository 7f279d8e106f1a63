"""Benchmark: one GRPO step of the 7B-shaped thinker on one GPU, against the hardware's own limits.

Run it from the repository root, one GPU::

    .venv/bin/python bench/gpu_step.py                 # the 7B shape, G=8 x P=8, 800-token completions
    .venv/bin/python bench/gpu_step.py --tiny          # the whole script at the tiny shape on CPU (smoke, ~1 min)

Everything is random weights made on the device from config dicts in code (``omni_r1.models.shapes``,
SAM2.1 with ``detail.sam2_checkpoint: random``); nothing downloads. One run writes
``reports/bench/gpu_step.json`` (``--out``) with the GPU's name, the versions and every size, and prints
the ratios last. What is measured, each against a limit measured in the same run:

- ``peak``: a bf16 matrix product (TFLOP/s; float32 on CPU) and a device-to-device copy (GB/s, bytes read
  plus written).
- ``rollout``: G completions of each of P prompts of ``--prompt-tokens`` tokens, exactly ``--new-tokens``
  each (no EOS), by ``omni_r1.rl.static_sampler.sample_static`` (one batch, static KV cache, CUDA graph on
  CUDA): tokens/s, prefill included. Beside it the memory-bandwidth bound (the language model's weight bytes
  read per decode step / the measured copy bandwidth, times the batch rows; KV-cache reads come on top, so
  the bound is generous) and transformers' ``generate`` on the same prompts (``--hf-tokens`` new tokens, to
  spend less device time; its tokens/s is the unit), as ratios.
- ``update``: the GRPO loss of ``omni_r1.rl.grpo.policy_loss`` on the P groups' completions through
  ``encoded_logprobs`` (full rows under gradient checkpointing), backward and optimizer step, by the
  project's engine (``omni_r1.rl.engine.build_engine``: DeepSpeed ZeRO-2 from ``configs/deepspeed/zero2.json``
  on CUDA, plain torch on CPU). Tokens/s, model TFLOP/s (6 x trainable language parameters x tokens plus
  causal attention, x 4/3 for the recomputed forward counted as hardware FLOPs), MFU against the measured
  peak, peak memory. The 7B shape when ``omni_r1.rl.memory`` estimates that its ZeRO-2 state fits the GPU,
  else the 3B shape, and the JSON says why.
- ``system2``: SAM2.1 (``--sam2-config``, hiera-large at 1024 px on GPU) on one group's clip of ``--frames``
  frames, G answers of 1-3 keyframes with one box each (a fixed stand-in grounder): each answer segmented
  alone (its own frame features, the per-rollout path) vs the group in one ``segment_batch`` (frame features
  once per group); frames/s (answers x frames per second) and the ratio.
- ``reward``: J&F of the G answers' masks against a target over the clip (``omni_r1.eval.metrics.j_and_f``,
  the rewards' metric), per group.
- ``step``: the phase split of one step at that scale, composed from the phases above (rollout, System 2 x P,
  reward x P, update).

The GPU machine has torch and transformers; deepspeed and sam2 travel as wheels. A missing package stops
the run before any device work, naming the package and the flag that skips its part.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TQDM_DISABLE", "1")  # SAM2's propagation bars, before sam2 is imported
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEFAULT_OUT = REPO / "reports" / "bench" / "gpu_step.json"


# ----------------------------------------------------------------------------------------------- set-up


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and sizes on CPU (smoke run)")
    parser.add_argument("--shape", default="7b", choices=("7b", "3b", "tiny"), help="rollout thinker shape")
    parser.add_argument("--update-shape", default="auto", choices=("auto", "7b", "3b", "tiny"))
    parser.add_argument("--prompts", type=int, default=8, help="P prompts per step")
    parser.add_argument("--group", type=int, default=8, help="G completions per prompt")
    parser.add_argument("--prompt-tokens", type=int, default=1500)
    parser.add_argument("--new-tokens", type=int, default=800)
    parser.add_argument("--hf-tokens", type=int, default=128, help="new tokens of the HF generate baseline")
    parser.add_argument("--graph", default="auto", choices=("auto", "off", "cuda_graph", "compile"))
    parser.add_argument("--update-steps", type=int, default=2, help="optimizer steps; the first is warm-up")
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient (0: no reference copy)")
    parser.add_argument("--sam2-config", default="configs/sam2.1/sam2.1_hiera_l.yaml")
    parser.add_argument("--sam2-size", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=16, help="frames of the System 2 clip")
    parser.add_argument("--frame-size", default="720x1280", help="HEIGHTxWIDTH of the System 2 clip")
    parser.add_argument("--skip", action="append", default=[], choices=("rollout", "update", "system2"),
                        help="leave a part out (repeatable)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.tiny:
        args.shape, args.update_shape = "tiny", "tiny"
        args.prompts, args.group, args.prompt_tokens, args.new_tokens, args.hf_tokens = 2, 4, 48, 32, 16
        args.sam2_config, args.sam2_size, args.frames, args.frame_size = ("configs/sam2.1/sam2.1_hiera_t.yaml", 256,
                                                                          2, "96x128")
    return args


def require(package: str, skip: str) -> None:
    """Stop before any device work when ``package`` is missing, naming the flag that skips its part."""
    try:
        importlib.import_module(package)
    except ImportError as error:
        raise SystemExit(f"bench/gpu_step.py needs the {package!r} package ({error}); install its wheel into this "
                         f"Python (pip install <wheel>), or pass --skip {skip} to leave that part out") from error


def pick_device(tiny: bool) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not tiny:
        raise SystemExit("bench/gpu_step.py measures a GPU and found no CUDA device (torch.cuda.is_available() is "
                         "False); run it on a GPU machine, or pass --tiny for the CPU smoke run")
    return torch.device("cpu")


def versions(device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "device": str(device), "date": time.strftime("%Y-%m-%d")}
    for package in ("transformers", "deepspeed", "sam2", "accelerate"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out |= {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 1e9, 1), "cuda": torch.version.cuda}
    else:
        out |= {"gpu": None, "cpu_threads": torch.get_num_threads()}
    return out


def _sig(value: float) -> float:
    """Four significant digits (tiny CPU figures are far below 0.01)."""
    return float(f"{value:.4g}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


# ----------------------------------------------------------------------------------------------- hardware peaks


def measure_peaks(device: torch.device) -> dict[str, float]:
    """Dense matrix-product TFLOP/s (bf16 on CUDA, float32 on CPU) and copy GB/s (read + write)."""
    cuda = device.type == "cuda"
    n, dtype, reps = (8192, torch.bfloat16, 20) if cuda else (512, torch.float32, 5)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    seconds, _ = timed(device, lambda: [a @ b for _ in range(reps)])
    tflops = 2 * n**3 * reps / seconds / 1e12
    numel = (2 * 1024**3 if cuda else 32 * 1024**2) // 2
    src = torch.empty(numel, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds, _ = timed(device, lambda: [dst.copy_(src) for _ in range(reps)])
    del a, b, src, dst
    return {"matmul_tflops": _sig(tflops), "matmul_dtype": str(dtype).split(".")[-1], "matmul_n": n,
            "copy_gb_s": round(2 * numel * 2 * reps / seconds / 1e9, 1)}


# ----------------------------------------------------------------------------------------------- rollout


def prompt_encodings(model: Any, count: int, length: int, *, seed: int = 0) -> list[Any]:
    """Text-only ``PromptEncoding``s (random ids, plain positions): what the samplers get for a prompt."""
    from omni_r1.rl.policy import PromptEncoding

    device = model.lm_head.weight.device
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.text_config.vocab_size
    out = []
    for _ in range(count):
        ids = torch.randint(10, min(vocab, 150_000) - 10, (1, length), generator=generator).to(device)
        hidden = model.config.text_config.hidden_size
        features = torch.zeros(1, length, hidden, device=device, dtype=model.lm_head.weight.dtype)
        multimodal = torch.zeros(1, length, 1, dtype=torch.bool, device=device)
        positions = torch.arange(length, device=device).view(1, 1, -1).expand(3, 1, -1)
        out.append(PromptEncoding(ids, features, multimodal, positions, 0))
    return out


def decode_weight_bytes(model: Any) -> int:
    """Bytes of weights one decode step reads: every layer, the final norm and the head (the embedding
    table only for the batch's rows, left out)."""
    language_model = model.model.language_model
    parts = [*language_model.layers, language_model.norm, model.lm_head]
    return sum(p.numel() * p.element_size() for part in parts for p in part.parameters())


def bench_rollout(args: argparse.Namespace, device: torch.device, peaks: dict[str, float]) -> dict[str, Any]:
    from omni_r1.models.shapes import parameter_count, random_thinker
    from omni_r1.rl.static_sampler import resolve_graph, sample_static

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = random_thinker(args.shape, device=device, dtype=dtype, seed=0)
    encodings = prompt_encodings(model, args.prompts, args.prompt_tokens)
    rows = args.prompts * args.group
    common = dict(num=args.group, eos_id=-1, pad_id=0, do_sample=True, temperature=1.0, top_p=0.95,
                  graph=args.graph)
    sample_static(model, encodings[:1], max_new_tokens=4, **common)  # warm-up: kernels, allocator
    generators = [torch.Generator(device=device).manual_seed(i) for i in range(args.prompts)]
    seconds, ids = timed(device, lambda: sample_static(model, encodings, max_new_tokens=args.new_tokens,
                                                       generators=generators, **common))
    tokens = sum(int(g.numel()) for g in ids)
    static_tps = tokens / seconds
    weight_bytes = decode_weight_bytes(model)
    bound_tps = peaks["copy_gb_s"] * 1e9 / weight_bytes * rows
    hf_seconds, hf_tokens = hf_generate(model, encodings, args, device)
    hf_tps = hf_tokens / hf_seconds
    out = {
        "shape": args.shape, "dtype": str(dtype).split(".")[-1], "prompts": args.prompts, "group": args.group,
        "rows": rows, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "graph": resolve_graph(args.graph, device, model),
        "language_params": parameter_count(model, language_only=True), "params": parameter_count(model),
        "seconds": round(seconds, 3), "tokens": tokens, "tokens_per_s": round(static_tps, 1),
        "decode_weight_gb": _sig(weight_bytes / 1e9), "bandwidth_bound_tokens_per_s": round(bound_tps, 1),
        "ratio_to_bandwidth_bound": _sig(static_tps / bound_tps),
        "hf_generate_new_tokens": args.hf_tokens, "hf_generate_seconds": round(hf_seconds, 3),
        "hf_generate_tokens_per_s": round(hf_tps, 1), "ratio_to_hf_generate": round(static_tps / hf_tps, 2),
    }
    del model
    return out


def hf_generate(model: Any, encodings: list[Any], args: argparse.Namespace, device: torch.device) -> tuple[float, int]:
    """transformers' ``generate`` on the same prompts (text ids, P x G rows in one call), ``--hf-tokens`` each."""
    ids = torch.cat([e.input_ids for e in encodings])
    options = dict(num_return_sequences=args.group, do_sample=True, temperature=1.0, top_p=0.95, top_k=0,
                   max_new_tokens=args.hf_tokens, min_new_tokens=args.hf_tokens, pad_token_id=0)
    with torch.no_grad():
        model.generate(input_ids=ids[:1], attention_mask=torch.ones_like(ids[:1]), **(options | {"max_new_tokens": 2,
                                                                                                 "min_new_tokens": 2}))
        seconds, out = timed(device, lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                            **options))
    return seconds, int((out.shape[1] - ids.shape[1]) * out.shape[0])


# ----------------------------------------------------------------------------------------------- update


def update_shape(args: argparse.Namespace, device: torch.device) -> tuple[str, str]:
    """The update's shape and why: 7B when its ZeRO-2 state on one GPU fits, else 3B (``omni_r1.rl.memory``)."""
    if args.update_shape != "auto":
        return args.update_shape, "chosen by --update-shape"
    from omni_r1.rl.memory import SEVEN_B, estimate_memory

    recipe = replace(SEVEN_B, grounder_params=0, sam2_params=0, group_size=args.group,
                     prompt_tokens=args.prompt_tokens, completion_tokens=args.new_tokens)
    need = estimate_memory(recipe, stage=2, gpus=1, offload=False, gradient_checkpointing=True)["total"]
    have = torch.cuda.get_device_properties(device).total_memory / 1e9
    if need <= have:
        return "7b", f"the 7B ZeRO-2 estimate ({need:.0f} GB without System 2) fits the GPU's {have:.0f} GB"
    return "3b", (f"the 7B shape's weights, gradients, fp32 Adam states and reference under ZeRO-2 on one GPU need "
                  f"about {need:.0f} GB (omni_r1.rl.memory, System 2 left out) > the GPU's {have:.0f} GB; ZeRO-3 "
                  "on one GPU shards nothing, so the 3B shape (Qwen2.5-Omni-3B) is measured instead")


def bench_update(args: argparse.Namespace, device: torch.device, peaks: dict[str, float]) -> dict[str, Any]:
    from omni_r1.config import DeepSpeedParams, TrainParams
    from omni_r1.models.shapes import parameter_count, random_thinker
    from omni_r1.rl.engine import build_engine
    from omni_r1.rl.grpo import policy_loss
    from omni_r1.rl.policy import encoded_logprobs

    shape, why = (args.update_shape, "the tiny smoke run") if args.tiny else update_shape(args, device)
    cuda = device.type == "cuda"
    model = random_thinker(shape, device=device, dtype=torch.bfloat16 if cuda else torch.float32, seed=1)
    for name in ("visual", "audio_tower"):
        getattr(model.model, name).requires_grad_(False)
    train = TrainParams(lr=1e-6, beta=args.beta, deepspeed=DeepSpeedParams(
        enabled=cuda, config=str(REPO / "configs/deepspeed/zero2.json"), gradient_checkpointing=True))
    if not cuda:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    engine = build_engine(model, train, total_steps=args.update_steps, device=device)
    encodings = prompt_encodings(model, args.prompts, args.prompt_tokens, seed=1)
    vocab = min(model.config.text_config.vocab_size, 150_000)
    completions = [torch.randint(10, vocab - 10, (args.group, args.new_tokens), device=device) for _ in encodings]
    advantages = torch.randn(args.prompts, args.group, device=device)
    reference = getattr(engine, "reference", None)

    def one_update() -> float:
        engine.model.train()
        total = None
        for encoding, ids, advantage in zip(encodings, completions, advantages):
            logp = encoded_logprobs(engine.model, encoding, ids, eos_id=-1, pad_id=None)
            ref = None
            if reference is not None:
                with torch.no_grad():
                    ref = encoded_logprobs(reference, encoding, ids, eos_id=-1, pad_id=None)
            loss, _ = policy_loss(logp, logp.detach(), advantage, torch.ones_like(ids, dtype=torch.bool),
                                  clip_low=0.2, clip_high=0.28, beta=args.beta, ref_logp=ref, norm="sequence")
            total = loss / args.prompts if total is None else total + loss / args.prompts
        engine.backward(total)
        engine.step()
        return float(total.detach())

    seconds = [timed(device, one_update)[0] for _ in range(max(1, args.update_steps))]
    step_s = seconds[-1]
    language = parameter_count(model, language_only=True)
    text = model.config.text_config
    rows, length = args.prompts * args.group, args.prompt_tokens + args.new_tokens
    tokens = rows * length
    model_flops = 6 * language * tokens + 6 * text.num_hidden_layers * text.hidden_size * length**2 * rows
    hardware_flops = model_flops * 4 / 3 + (2 * language * tokens if reference is not None else 0)
    achieved = model_flops / step_s / 1e12
    out = {
        "shape": shape, "why": why, "engine": type(engine).__name__, "zero_stage": 2 if cuda else None,
        "gradient_checkpointing": True, "beta": args.beta, "language_params": language, "rows": rows,
        "tokens_per_row": length, "seconds_per_step": [round(s, 3) for s in seconds],
        "tokens_per_s": round(tokens / step_s, 1), "completion_tokens_per_s": round(rows * args.new_tokens / step_s, 1),
        "model_tflops": _sig(achieved), "hardware_tflops": _sig(hardware_flops / step_s / 1e12),
        "mfu": _sig(achieved / peaks["matmul_tflops"]),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if cuda else None,
    }
    del engine, model
    if cuda:
        torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------------------------- System 2


class FixedBoxGrounder:
    """A stand-in grounder: one box per keyframe at a fixed place (random SAM2 weights give noise masks anyway)."""

    def __init__(self, height: int, width: int) -> None:
        self.box = (width * 0.3, height * 0.3, width * 0.6, height * 0.7)

    def ground(self, frame: np.ndarray, description: str, task: str = "revos") -> list[Any]:
        from omni_r1.types import Box

        return [Box(*self.box)]


def group_answers(group: int, frames: int, seed: int = 0) -> list[list[Any]]:
    """G answers of 1-3 distinct keyframes each, from a fixed seed."""
    from omni_r1.systems.detail import KeyframePrompt

    rng = np.random.default_rng(seed)
    return [[KeyframePrompt(int(f), "the object") for f in sorted(rng.choice(frames, size=min(frames, k),
                                                                             replace=False))]
            for k in rng.integers(1, 4, size=group)]


def bench_system2(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from omni_r1.config import DetailParams
    from omni_r1.eval.metrics import j_and_f
    from omni_r1.systems.detail import KeyframePrompt, Sam2Segmenter, build_sam2_predictor

    height, width = (int(v) for v in args.frame_size.split("x"))
    torch.manual_seed(0)
    predictor = build_sam2_predictor(DetailParams(backend="sam2", sam2_config=args.sam2_config,
                                                  sam2_checkpoint="random", sam2_image_size=args.sam2_size,
                                                  device=str(device)))
    segmenter = Sam2Segmenter(predictor, FixedBoxGrounder(height, width), max_objects=3)
    frames = np.random.default_rng(0).integers(0, 256, (args.frames, height, width, 3), dtype=np.uint8)
    answers = group_answers(args.group, args.frames)
    segmenter.segment(frames[:2], [KeyframePrompt(0, "warm-up")])  # kernels, allocator
    alone_s, _ = timed(device, lambda: [segmenter.segment(frames, a) for a in answers])
    group_s, results = timed(device, lambda: segmenter.segment_batch(frames, answers))
    target = np.zeros(frames.shape[:3], dtype=bool)
    target[:, height // 4: height // 2, width // 4: width // 2] = True
    reward_s, _ = timed(device, lambda: [j_and_f(r.masks, target) for r in results])
    work = args.group * args.frames
    out = {"config": args.sam2_config, "image_size": args.sam2_size, "frames": args.frames,
           "frame_size": [height, width], "answers": args.group,
           "keyframes_per_answer": [len(a) for a in answers], "per_rollout_seconds": round(alone_s, 3),
           "group_seconds": round(group_s, 3), "per_rollout_frames_per_s": round(work / alone_s, 2),
           "group_frames_per_s": round(work / group_s, 2), "ratio_group_to_per_rollout": round(alone_s / group_s, 2),
           "reward_seconds_per_group": round(reward_s, 4)}
    del predictor, segmenter
    return out


# ----------------------------------------------------------------------------------------------- main


def phase_split(report: dict[str, Any], prompts: int) -> dict[str, Any]:
    """One step's phases at this scale, from the parts measured above (System 2 and reward once per group)."""
    seconds = {
        "rollout": report.get("rollout", {}).get("seconds"),
        "system2": None if "system2" not in report else report["system2"]["group_seconds"] * prompts,
        "reward": None if "system2" not in report else report["system2"]["reward_seconds_per_group"] * prompts,
        "update": report.get("update", {}).get("seconds_per_step", [None])[-1],
    }
    known = {k: v for k, v in seconds.items() if v is not None}
    total = sum(known.values())
    return {"seconds": {k: round(v, 3) for k, v in known.items()}, "total_seconds": round(total, 3),
            "share": {k: round(v / total, 3) for k, v in known.items()} if total else {},
            "note": "composed from the separately measured phases; a missing phase was skipped"}


def summary(report: dict[str, Any]) -> str:
    parts = []
    if "rollout" in report:
        r = report["rollout"]
        parts.append(f"rollout {r['tokens_per_s']:.0f} tok/s = {r['ratio_to_bandwidth_bound']:.2f} x bandwidth bound, "
                     f"{r['ratio_to_hf_generate']:.1f} x HF generate")
    if "update" in report:
        u = report["update"]
        parts.append(f"update {u['shape']} {u['tokens_per_s']:.0f} tok/s, MFU {u['mfu']:.3f}")
    if "system2" in report:
        parts.append(f"system2 group/per-rollout = {report['system2']['ratio_group_to_per_rollout']:.2f}")
    return "ratios: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "update" not in args.skip and not args.tiny:
        require("deepspeed", "update")
    if "system2" not in args.skip:
        require("sam2", "system2")
    device = pick_device(args.tiny)
    if device.type == "cpu":
        torch.set_num_threads(1)  # the tiny shapes run fastest single-threaded (train.cpu_threads)
    report: dict[str, Any] = {"versions": versions(device), "tiny": args.tiny}
    report["peak"] = measure_peaks(device)
    print(f"device {report['versions'].get('gpu') or 'cpu'}: {report['peak']}", flush=True)
    for name, run in (("rollout", lambda: bench_rollout(args, device, report["peak"])),
                      ("system2", lambda: bench_system2(args, device)),
                      ("update", lambda: bench_update(args, device, report["peak"]))):
        if name in args.skip:
            continue
        report[name] = run()
        print(f"{name}: {json.dumps(report[name])}", flush=True)
    report["step"] = phase_split(report, args.prompts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"step: {json.dumps(report['step'])}")
    print(f"wrote {args.out}")
    print(summary(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
