"""Command line: `python -m workflow <stage> [--key value ...]` for every stage of the table, plus tools.

The stage commands are generated from `workflow/stages.py` (the contract both engines run); the tools are
`check`, `why`, `resolve`, `dvc-yaml` and `export-hf`. Heavy libraries load only inside the stage that needs them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from workflow.cost import ACCELERATORS, estimate
from workflow.errors import StageError, disk_full
from workflow.params import Params, ParamsError, load_params

EXIT_STAGE_ERROR = 1
EXIT_BAD_PARAMS = 2


def _check(params: Params, args: argparse.Namespace) -> None:
    from workflow.engines import dvc
    from workflow.train.backend import BackendError, validate

    print(f"{args.params}: OK")
    print(f"sources:  {', '.join(f'{n} ({s.domain})' for n, s in params.sources.items())}")
    print(f"models:   {', '.join(params.model_ids())}")
    stale = dvc.difference(params)
    print(f"dvc.yaml: {'current' if stale is None else f'out of date ({stale}): `python -m workflow dvc-yaml` regenerates it'}")
    try:
        backends = {name: validate(t.model) for name, t in params.trunks.items()}
        shared = len(set(backends.values())) == 1
        print(f"backend:  {next(iter(backends.values())) if shared else '; '.join(f'{n}: {b}' for n, b in backends.items())}")
    except BackendError as err:
        raise ParamsError(f"{args.params}: {err}") from None
    _check_imports(params, args.params)
    print("\n".join(estimate(params, args.accelerator, args.mfu)))
    from workflow import stages  # jobs per stage as Snakemake plans them (DVC runs the trunk's as one stage)

    print("jobs:     " + ", ".join(f"{n} {len(s.instances(params))}" for n, s in stages.STAGES.items()))


def _check_imports(params: Params, origin: str) -> None:
    """Each `from_hf` checkpoint's config.json against its trunk's model keys (the tokenizer is checked when the trunk runs)."""
    from workflow import hf

    for name, t in params.trunks.items():
        if t.from_hf:
            try:
                problems = hf.config_problems(hf.read_config(t.from_hf), t.model, f"trunks.{name}.model")
            except hf.HfImportError as err:
                problems = [str(err)]
            if problems:
                raise ParamsError(f"{origin}: trunks.{name}.from_hf: {t.from_hf} cannot be imported: {'; '.join(problems)}")
            print(f"from_hf:  {name} starts from {t.from_hf} (config.json matches its model)")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _why(params: Params, args: argparse.Namespace) -> None:
    from workflow.engines.why import explain

    explain(params, args.target)


def _resolve(params: Params, args: argparse.Namespace) -> None:
    from workflow import paths
    from workflow.engines import dvc

    dvc.check(params)
    dvc.write_resolved(params)
    print(f"{paths.stage_params_dir()}/: what each DVC stage tracks (the values of the {args.params} keys it reads, "
          "defaults filled in, and a digest of its dependencies)")


def _dvc_yaml(params: Params, args: argparse.Namespace) -> None:
    from workflow.engines import dvc

    for path in dvc.sync(params, args.out):
        print(f"wrote {path}")


def _export(params: Params, args: argparse.Namespace) -> None:
    from workflow import export

    export.run(params, args.model, args.out)


Tool = tuple[str, list[tuple[str, dict]], Callable[[Params, argparse.Namespace], None]]
TOOLS: dict[str, Tool] = {
    "check": ("Validate params.yaml; print the planned models, the training backend and the study's estimated cost.",
              [("--accelerator", dict(default="h100", choices=list(ACCELERATORS), help="GPU of the GPU-hours estimate")),
               ("--mfu", dict(default=0.4, type=_fraction, help="model FLOPs utilisation assumed (default 0.4)"))],
              _check),
    "why": ("List each job that would run and what made it stale (params old -> new, inputs, code).",
            [("target", dict(nargs="?", default=None, help="an output path, a model id or a stage (default: everything)"))], _why),
    "resolve": ("Write artifacts/params/<stage>.json, what each DVC stage tracks (the resolved values of the keys it "
                "reads, a digest of its dependencies); refuse when dvc.yaml is out of date.", [], _resolve),
    "dvc-yaml": ("Regenerate dvc.yaml and artifacts/params/ from params.yaml.",
                 [("--out", dict(default="dvc.yaml", help="where to write"))], _dvc_yaml),
    "export-hf": ("Write a model as a Hugging Face LlamaForCausalLM directory (safetensors, config, tokenizer).",
                  [("--model", dict(required=True, metavar="ID", help="<trunk>@<N>, decay-<branch> or merge-<name>")),
                   ("--out", dict(required=True, metavar="DIR", help="the directory to write (replaced if it exists)"))],
                  _export),
}


def build_parser() -> argparse.ArgumentParser:
    from workflow.stages import STAGES

    parser = argparse.ArgumentParser(prog="python -m workflow", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="the study file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES.values():
        p = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        for key in stage.keys:
            required = stage.run_all is None
            help_text = key.help + ("" if required else " (none: every instance, resuming: DVC's one stage per trunk)")
            p.add_argument(f"--{key.name}", required=required, default=None, metavar=key.name.upper(), help=help_text)
    for name, (help_text, options, _) in TOOLS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        for flag, kwargs in options:
            p.add_argument(flag, **kwargs)
    return parser


def run_stage(params: Params, name: str, args: argparse.Namespace) -> None:
    """One stage instance (or, without its keys, every instance of a `run_all` stage), under the read recorder
    when `ARBOR_RECORD_READS` names a folder."""
    from workflow import stages
    from workflow.reads import RECORD_ENV, Reads, recording

    stage = stages.STAGES[name]
    key = {k: getattr(args, k) for k in stage.key_names}
    if stage.run_all is None or all(v is not None for v in key.values()):
        stages.check_key(params, stage, key)
    reads, folder = Reads(), os.environ.get(RECORD_ENV)
    label = stage.call(params, recording(params, reads) if folder else None, **key)
    if folder and os.environ.get("RANK", "0") == "0":
        Path(folder).mkdir(parents=True, exist_ok=True)
        record = {"keys": sorted(reads.keys), "collections": sorted(reads.collections), "present": sorted(reads.present)}
        (Path(folder) / f"{label}.json").write_text(json.dumps(record, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    from workflow.curate.readers import frozen_listings

    args = build_parser().parse_args(argv)
    with frozen_listings():  # one command, one look at each source's files
        _main(args, argv)


def _main(args: argparse.Namespace, argv: list[str] | None) -> None:
    from workflow import stages

    start = time.perf_counter()
    is_stage = args.command in stages.STAGES
    try:
        params = load_params(args.params)
        stages.check_resources(params)
        if is_stage and stages.STAGES[args.command].training:  # several processes: re-run under torchrun
            from workflow.train.launch import LaunchError, relaunch_if_needed

            try:
                relaunch_if_needed(params.model.parallel, sys.argv[1:] if argv is None else list(argv))
            except LaunchError as err:
                raise ParamsError(f"{args.params}: {err}") from None
        if is_stage:
            run_stage(params, args.command, args)
        else:
            TOOLS[args.command][2](params, args)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_PARAMS)
    except (StageError, FileNotFoundError) as err:  # a missing or unusable input: say which, no traceback
        print(f"error: [{args.command}] {err}", file=sys.stderr)
        sys.exit(EXIT_STAGE_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BaseException as err:  # a full disk the atomic writers did not see (they name the artifact): one line too
        full = disk_full(err, None)
        if full is err:
            raise
        print(f"error: [{args.command}] {full}", file=sys.stderr)
        sys.exit(EXIT_STAGE_ERROR)
    if is_stage and os.environ.get("RANK", "0") == "0":
        print(f"[{args.command}] done in {time.perf_counter() - start:.1f}s", file=sys.stderr)
