"""The ``omni-r1`` command: the user-facing entry points over the same code the DVC stages run.

    omni-r1 synth   --format video|refavs|revos --out DIR --videos N --seed S
    omni-r1 prepare --format video|refavs|revos --root DIR --out DIR   (dvc.yaml's ingest .. features, by DVC in DIR)
    omni-r1 inspect OUT_DIR [--json]
    omni-r1 pipeline [--stage NAME ...]                                  (the Prefect flow over dvc.yaml)
    omni-r1 serve [--cron "0 3 * * *"] [--name NAME]                     (the cron deployment; needs `make server`)
    omni-r1 score revos  --meta META.json --mask-dict mask_dict.json --foreground FG.json --pred DIR --out OUT.json
    omni-r1 score refavs --root REFAVS_ROOT --split test_s|test_u|test_n --pred DIR --out OUT.json
    omni-r1 data pin|checkout|verify NAME                              (pinned data versions: git tag + dvc.lock)
    omni-r1 reproduce --table refavs|revos --data-version NAME --checkpoint PATH [--detail-checkpoint PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="omni-r1", description="Omni-R1 data-to-model pipeline")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write the synthetic omni dataset")
    s.add_argument("--format", choices=["video", "refavs", "revos"], default="video")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--videos", type=int, default=12)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--params", type=Path, default=Path("params.yaml"))

    r = sub.add_parser("prepare", help="ingest, validate, shard and featurize any dataset: dvc.yaml's data stages "
                                       "run by DVC in OUT (a small DVC project)")
    r.add_argument("--format", choices=["video", "refavs", "revos"], required=True)
    r.add_argument("--root", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--params", type=Path, default=Path("params.yaml"))
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--via", choices=["dvc", "flow"], default="dvc",
                   help="dvc: `dvc repro` in OUT (default); flow: the Prefect pipeline flow over OUT's dvc.yaml")

    i = sub.add_parser("inspect", help="per-split counts, sizes, audio and quarantine of a prepared folder")
    i.add_argument("out_dir", type=Path)
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")

    f = sub.add_parser("pipeline", help="run dvc.yaml stage by stage as a Prefect flow")
    f.add_argument("--stage", action="append", dest="stages", help="run only these stages (repeatable)")
    f.add_argument("--repo", default=".")
    f.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override a param for this run (dvc exp run -S; repeatable)")
    f.add_argument("--data-version", help="refuse to run unless the data matches this pinned version")

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

    _add_version_commands(sub)

    sv = sub.add_parser("serve", help="serve the pipeline flow on a cron schedule (needs `make server`)")
    sv.add_argument("--cron", help="cron expression, UTC (default: flows.deploy.DEFAULT_CRON, 03:00 every day)")
    sv.add_argument("--name", help="deployment name (default: flows.deploy.DEFAULT_NAME, omni-r1-nightly)")
    sv.add_argument("--repo", default=".", help="the project checkout each scheduled run reproduces")
    sv.add_argument("--stage", action="append", dest="stages", help="run only these stages (repeatable)")
    sv.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                    help="params override for every run, via `dvc exp run -S` (repeatable)")
    sv.add_argument("--data-version", help="each run first checks that the data matches this named version")

    args = p.parse_args(argv)
    commands = {"synth": _synth, "prepare": _prepare, "inspect": _inspect, "pipeline": _pipeline, "score": _score}
    commands.update({"data": _data, "reproduce": _reproduce})
    commands["serve"] = _serve
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
    """The data stages of dvc.yaml, run by DVC (or the flow) on the given dataset; outputs mirror ``data/``."""
    from flows.project import PrepareFailed, run_project, write_project
    from omni_r1.config import ConfigError

    try:
        project = write_project(Path(__file__).resolve().parents[1], args.out, args.root, args.format, args.params,
                                args.overrides)
        run_project(project, via=args.via)
    except (ConfigError, PrepareFailed, ValueError) as error:
        print(f"error: prepare stopped: {error}", file=sys.stderr)
        return 1
    return _inspect(argparse.Namespace(out_dir=args.out, json=False))


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

    argv = ["--repo", args.repo, *[a for s in (args.stages or []) for a in ("--stage", s)],
            *[a for o in (args.overrides or []) for a in ("--set", o)]]
    if args.data_version:
        argv += ["--data-version", args.data_version]
    return pipeline.main(argv)


def _add_version_commands(sub: Any) -> None:
    """``data pin|checkout|verify NAME`` and ``reproduce``: pinned data versions and paper-table runs."""
    d = sub.add_parser("data", help="pinned data versions: a git tag data/NAME plus dvc.lock")
    d.add_argument("action", choices=["pin", "checkout", "verify"],
                   help="pin: record, commit, tag (and dvc push); checkout: restore; verify: compare the workspace")
    d.add_argument("name", help="version name, e.g. v1 (git tag data/v1, record data/versions/v1.json)")
    d.add_argument("--repo", type=Path, default=Path("."))
    d.add_argument("--no-push", action="store_true", help="pin without dvc push to the default remote")
    d.add_argument("--force", action="store_true", help="checkout: discard edited data files that no cache holds")
    d.add_argument("--dvc", default="dvc", help="the dvc executable")

    rp = sub.add_parser("reproduce",
                        help="verify a data version, run predict + evaluate, write reports/paper_<table>.md")
    rp.add_argument("--table", choices=["refavs", "revos"], required=True)
    rp.add_argument("--data-version", required=True)
    rp.add_argument("--checkpoint", required=True, help="System 1: a local Qwen2.5-Omni folder, or builtin:tiny")
    rp.add_argument("--detail-checkpoint", help="System 2: the light model folder or a SAM2 .pt, per detail.backend")
    rp.add_argument("--repo", type=Path, default=Path("."))
    rp.add_argument("--dvc", default="dvc", help="the dvc executable")


def _data(args: argparse.Namespace) -> int:
    from flows import data_versions
    from omni_r1.versioning import verify_version

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.action == "pin":
            record = data_versions.pin(args.repo, args.name, dvc=args.dvc, push=not args.no_push)
            print(f"pinned {args.name}: tag {record['tag']}, " + ", ".join(
                f"{path} {entry['md5']} ({len(entry['files'])} files)" for path, entry in record["outs"].items()))
        elif args.action == "checkout":
            data_versions.checkout(args.repo, args.name, dvc=args.dvc, force=args.force)
            print(f"data version {args.name} restored and verified")
        else:
            verify_version(args.repo, args.name)
            print(f"the workspace matches data version {args.name}")
    except (ValueError, data_versions.CommandFailed) as error:  # DataVersionMismatch is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from flows import data_versions

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = data_versions.reproduce(args.repo, args.table, args.data_version, args.checkpoint,
                                      args.detail_checkpoint, dvc=args.dvc)
    except (ValueError, data_versions.CommandFailed) as error:  # DataVersionMismatch is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0



def _serve(args: argparse.Namespace) -> int:
    """Build the cron deployment of the pipeline flow and serve it until interrupted."""
    from flows import deploy

    deployment = deploy.build_deployment(name=args.name or deploy.DEFAULT_NAME, cron=args.cron or deploy.DEFAULT_CRON,
                                         repo=args.repo, stages=args.stages, overrides=args.overrides,
                                         data_version=args.data_version)
    try:
        deploy.serve(deployment)
    except deploy.NoPrefectServer as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
