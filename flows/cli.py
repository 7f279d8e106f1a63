"""The ``omni-r1`` command: the user-facing entry points over the same code the DVC stages run.

    omni-r1 synth   --format video|refavs|revos --out DIR --videos N --seed S
    omni-r1 prepare --format video|refavs|revos --root DIR --out DIR   (ingest, validate, shard, features)
    omni-r1 inspect OUT_DIR [--json]
    omni-r1 pipeline [--stage NAME ...]                                  (the Prefect flow over dvc.yaml)
    omni-r1 score revos  --meta META.json --mask-dict mask_dict.json --foreground FG.json --pred DIR --out OUT.json
    omni-r1 score refavs --root REFAVS_ROOT --split test_s|test_u|test_n --pred DIR --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

PREPARE_STAGES = ("ingest", "validate", "shard", "features")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="omni-r1", description="Omni-R1 data-to-model pipeline")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write the synthetic omni dataset")
    s.add_argument("--format", choices=["video", "refavs", "revos"], default="video")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--videos", type=int, default=12)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--params", type=Path, default=Path("params.yaml"))

    r = sub.add_parser("prepare", help="ingest, validate, shard and featurize any dataset outside the DVC graph")
    r.add_argument("--format", choices=["video", "refavs", "revos"], required=True)
    r.add_argument("--root", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--params", type=Path, default=Path("params.yaml"))
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    i = sub.add_parser("inspect", help="per-split counts, sizes, audio and quarantine of a prepared folder")
    i.add_argument("out_dir", type=Path)
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")

    f = sub.add_parser("pipeline", help="run dvc.yaml stage by stage as a Prefect flow")
    f.add_argument("--stage", action="append", dest="stages")
    f.add_argument("--repo", default=".")

    sc = sub.add_parser("score", help="score predictions in an official benchmark layout, like the official tools")
    bench = sc.add_subparsers(dest="benchmark", required=True)
    rv = bench.add_parser("revos", help="ReVOS: J, F, A, R, JF per type (referring / reason / overall)")
    rv.add_argument("--meta", type=Path, required=True, help="meta_expressions_valid_.json")
    rv.add_argument("--mask-dict", type=Path, required=True)
    rv.add_argument("--foreground", type=Path, required=True, help="mask_dict_foreground.json")
    rv.add_argument("--pred", type=Path, required=True, help="folder of <video>/<exp_id>/<frame>.png")
    rv.add_argument("--out", type=Path, required=True)
    ra = bench.add_parser("refavs", help="RefAVS: mIoU and F (seen/unseen) or S (null)")
    ra.add_argument("--root", type=Path, required=True)
    ra.add_argument("--split", choices=["test_s", "test_u", "test_n"], required=True)
    ra.add_argument("--pred", type=Path, required=True, help="folder of <vid>/fid_<fid>/0000{i}.png")
    ra.add_argument("--out", type=Path, required=True)

    args = p.parse_args(argv)
    commands = {"synth": _synth, "prepare": _prepare, "inspect": _inspect, "pipeline": _pipeline, "score": _score}
    return commands[args.command](args)


def _score(args: argparse.Namespace) -> int:
    from omni_r1.eval.scoring import score_refavs, score_revos
    from omni_r1.fileio import atomic_write_json

    if args.benchmark == "revos":
        result = score_revos(args.meta, args.mask_dict, args.foreground, args.pred)
    else:
        result = score_refavs(args.root, args.split, args.pred)
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from stages import synth

    return synth.main(["--params", str(args.params), "--out", str(args.out), "--set", f"synth.format={args.format}",
                       "--set", f"synth.videos={args.videos}", "--set", f"synth.seed={args.seed}"])


def _prepare(args: argparse.Namespace) -> int:
    """The data stages, in order, with the params file, on the given dataset; outputs mirror ``data/``."""
    from stages import features, ingest, shard, validate

    out: Path = args.out
    common = ["--params", str(args.params), *[a for o in args.overrides for a in ("--set", o)]]
    steps = {
        "ingest": (ingest.main, ["--format", args.format, "--root", str(args.root),
                                 "--out", str(out / "interim/manifest.parquet"),
                                 "--metrics", str(out / "metrics/ingest.json")]),
        "validate": (validate.main, ["--root", str(args.root), "--manifest", str(out / "interim/manifest.parquet"),
                                     "--out", str(out / "interim/validated.parquet"),
                                     "--quarantine", str(out / "interim/quarantine.json"),
                                     "--metrics", str(out / "metrics/validate.json")]),
        "shard": (shard.main, ["--root", str(args.root), "--manifest", str(out / "interim/validated.parquet"),
                               "--out", str(out / "shards"), "--metrics", str(out / "metrics/shard.json")]),
        "features": (features.main, ["--shards", str(out / "shards"), "--out", str(out / "features"),
                                     "--metrics", str(out / "metrics/features.json")]),
    }
    for name in PREPARE_STAGES:
        run, argv = steps[name]
        code = run([*common, *argv])
        if code != 0:
            logging.getLogger("omni-r1").error("prepare stopped at %s (exit %d); see the log above", name, code)
            return code
    return _inspect(argparse.Namespace(out_dir=out, json=False))


def _inspect(args: argparse.Namespace) -> int:
    from omni_r1.data.inspect import summarise

    summary = summarise(args.out_dir)
    print(json.dumps(summary, indent=2) if args.json else _table(summary))
    return 0


def _table(summary: dict[str, Any]) -> str:
    lines = [f"{summary['root']}", f"{'split':<6} {'videos':>6} {'samples':>7} {'frames/video':>12} {'audio':>6} "
             f"{'audio s':>8}  sizes (native | low | high)"]
    for split, s in summary["splits"].items():
        lines.append(f"{split:<6} {s['videos']:>6} {s['samples']:>7} {s['sampled_frames']['mean']:>12} "
                     f"{s['videos_with_audio']:>6} {s['audio_seconds']['total']:>8}  "
                     f"{','.join(s['native_sizes'])} | {','.join(s['low_res_sizes'])} | {','.join(s['high_res_sizes'])}")
    lines.append(f"quarantined: {summary['quarantined']}")
    for q in summary["quarantine"]:
        lines.append(f"  {q['sample_id']} [{q['stage']}/{q['check']}] {q['file']}: {q['reason']} -> {q['hint']}")
    return "\n".join(lines)


def _pipeline(args: argparse.Namespace) -> int:
    from flows import pipeline

    return pipeline.main(["--repo", args.repo, *[a for s in (args.stages or []) for a in ("--stage", s)]])


if __name__ == "__main__":
    sys.exit(main())
