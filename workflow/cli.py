"""Command line: parse arguments, validate params, dispatch to one stage's `run()`.

Each subcommand is the contract shared by `rules/*.smk`, `dvc.yaml` and users. Stage modules are
imported lazily so `check` and `--help` stay fast (torch and megatron load only when needed).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from workflow.errors import StageError, disk_full
from workflow.params import Params, ParamsError, load_params

EXIT_STAGE_ERROR = 1
EXIT_BAD_PARAMS = 2


def _check(params: Params, args: argparse.Namespace) -> None:
    from workflow import dag

    print(f"{args.params}: OK")
    print(f"sources:  {', '.join(f'{n} ({s.domain})' for n, s in params.sources.items())}")
    print(f"models:   {', '.join(params.model_ids())}")
    dag.check_dvc_yaml(params, params_file=args.params)
    from workflow.train.backend import BackendError, validate

    try:
        print(f"backend:  {validate(params.model)}")
    except BackendError as err:
        raise ParamsError(f"{args.params}: {err}") from None


def _dvc_yaml(params: Params, args: argparse.Namespace) -> None:
    from workflow import dag

    dag.write_dvc_yaml(params, args.out, params_file=args.params)


def _stage(module: str, *fields: str):
    def call(params: Params, args: argparse.Namespace) -> None:
        importlib.import_module(f"workflow.{module}").run(params, *(getattr(args, f) for f in fields))

    return call


COMMANDS: dict[str, tuple[str, list[tuple[str, dict]], object]] = {
    "check": ("Validate params.yaml and print the planned models and stages.", [], _check),
    "curate": ("Read, clean, deduplicate and split one source into zstd shards.",
               [("--source", dict(required=True, metavar="NAME", help="a key of `sources`"))], _stage("curate", "source")),
    "curate-shard": ("Filter one input file of a source (its PART-th path match) through the per-document pipeline.",
                     [("--source", dict(required=True, metavar="NAME", help="a key of `sources`")),
                      ("--part", dict(required=True, type=int, metavar="K", help="index into the source's sorted input files"))],
                     _stage("curate.shard", "source", "part")),
    "curate-split": ("Deduplicate a source across its shards (exact + MinHash) and draw its held-out split.",
                     [("--source", dict(required=True, metavar="NAME", help="a key of `sources`"))], _stage("curate.split", "source")),
    "tokenizer": ("Train (or copy) the byte-level BPE tokenizer.", [], _stage("tokenizer")),
    "tokenize": ("Write one source's Megatron .bin/.idx datasets (train + held-out).",
                 [("--source", dict(required=True, metavar="NAME", help="a key of `sources`"))], _stage("tokenize", "source")),
    "trunk": ("Train the WSD stable phase up to a trunk checkpoint (all checkpoints without --step).",
              [("--step", dict(type=int, default=None, metavar="N", help="a value of `trunk.checkpoints`"))], _stage("train.trunk", "step")),
    "decay": ("Train one decay branch from its trunk checkpoint.",
              [("--branch", dict(required=True, metavar="NAME", help="a key of `decays`"))], _stage("train.decay", "branch")),
    "merge": ("Average the weights of the models of one merge.",
              [("--name", dict(required=True, metavar="NAME", help="a key of `merges`"))], _stage("merge", "name")),
    "eval-tasks": ("Build the data of the local lm-eval tasks (workflow/tasks/) from the held-out split.", [],
                   _stage("evaluate.taskdata")),
    "evaluate": ("Held-out loss and bits-per-byte of one model, and its lm-eval task scores.",
                 [("--model", dict(required=True, metavar="ID", help="trunk-<N>, decay-<branch> or merge-<name>"))], _stage("evaluate", "model")),
    "report": ("Write reports/summary.md and plots from every eval.", [], _stage("report")),
    "export-hf": ("Write a model as a Hugging Face LlamaForCausalLM directory (safetensors, config, tokenizer).",
                  [("--model", dict(required=True, metavar="ID", help="trunk-<N>, decay-<branch> or merge-<name>")),
                   ("--out", dict(required=True, metavar="DIR", help="the directory to write (replaced if it exists)"))],
                  _stage("export", "model", "out")),
    "dvc-yaml": ("Regenerate dvc.yaml from params.yaml (needed when models are added or removed).",
                 [("--out", dict(default="dvc.yaml", help="where to write"))], _dvc_yaml),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workflow", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="the study file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, options, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        for flag, kwargs in options:
            p.add_argument(flag, **kwargs)
    return parser


def _validate_target(params: Params, args: argparse.Namespace) -> None:
    """The stage's own argument must name something params.yaml declares."""
    checks = {
        "source": ("sources", params.sources),
        "branch": ("decays", params.decays),
        "name": ("merges", params.merges),
    }
    for attr, (section, table) in checks.items():
        value = getattr(args, attr, None)
        if value is not None and value not in table:
            raise ParamsError(f"{args.params}: {section}.{value}: not declared (declared: {', '.join(table) or 'none'})")
    if getattr(args, "step", None) is not None and args.step not in params.trunk.checkpoints:
        raise ParamsError(f"{args.params}: trunk.checkpoints: {args.step} is not a trunk checkpoint ({list(params.trunk.checkpoints)})")
    if getattr(args, "model", None) is not None and args.model not in params.model_ids():
        raise ParamsError(f"{args.params}: model '{args.model}' is not declared (declared: {', '.join(params.model_ids())})")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        params = load_params(args.params)
        _validate_target(params, args)
        if args.command not in ("check", "dvc-yaml"):
            from workflow.dag import check_dvc_yaml

            check_dvc_yaml(params, params_file=args.params)
        if args.command in ("trunk", "decay"):  # several processes: re-run under torchrun
            from workflow.train.launch import LaunchError, relaunch_if_needed

            try:
                relaunch_if_needed(params.model.parallel, sys.argv[1:] if argv is None else list(argv))
            except LaunchError as err:
                raise ParamsError(f"{args.params}: {err}") from None
        COMMANDS[args.command][2](params, args)
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
    if args.command not in ("check", "dvc-yaml") and os.environ.get("RANK", "0") == "0":
        print(f"[{args.command}] done in {time.perf_counter() - start:.1f}s", file=sys.stderr)
