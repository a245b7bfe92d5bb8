"""Evaluate one model: held-out loss/bpb per domain and lm-eval-harness tasks -> `artifacts/eval/<model-id>.json`.

    {"model": id,
     "lineage": {...meta.json lineage (trunk step / branch settings / merge inputs), "fingerprint", "step",
                 "tokens_seen", "revision": {"git", "git_dirty", "dvc"}},
     "heldout": {"<domain>": {"loss", "bpb", "tokens"}, ..., "all": {...}},
     "tasks": {"<task>": {"<metric>": value, "<metric>_stderr": value, "samples": n}}}

Modules: `model` (load a model dir for inference), `heldout` (loss/bpb), `harness` (lm-eval model class
and task run), `taskdata` (the `eval_tasks` stage: data of the local tasks in `workflow/tasks/`).
Imports stay lazy here: the stage table imports this module without loading torch or lm-eval.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from workflow import faults, paths
from workflow.params import Params, scoped

META_KEYS = ("fingerprint", "step", "tokens_seen", "consumed_samples")


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def dvc_lock_entry(model_dir: str, lock: str = "dvc.lock") -> dict | None:
    """The dvc.lock record (stage, path, md5) of the output holding `model_dir`, if DVC has recorded one.
    It names the content DVC last produced; after a rebuild outside DVC it is stale until `dvc commit`."""
    import yaml

    if not Path(lock).is_file():
        return None
    stages = (yaml.safe_load(Path(lock).read_text()) or {}).get("stages", {})
    for name, stage in stages.items():
        for out in stage.get("outs", []):
            path = out.get("path", "").rstrip("/")
            if path and (model_dir == path or model_dir.startswith(path + "/")):
                return {"stage": name, "path": path, "md5": out.get("md5")}
    return None


def revision(model_id: str) -> dict:
    """The code and data revision the evaluation ran at: git commit (and whether the tree was dirty), DVC's record."""
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git": commit, "git_dirty": bool(dirty) if commit else None, "dvc": dvc_lock_entry(paths.model_dir(model_id))}


def lineage(model_id: str, meta: dict) -> dict:
    """What the model is: its meta.json lineage, fingerprint, step and tokens, plus the revision."""
    return {"model_id": model_id, **meta.get("lineage", {}), **{k: meta.get(k) for k in META_KEYS},
            "revision": revision(model_id)}


def run(params: Params, model: str, *, inputs: dict[str, list[str]]) -> None:
    """Evaluate `model` (its dir is `inputs["model"]`) and write `artifacts/eval/<model>.json`."""
    from workflow.evaluate.harness import run_tasks, task_line
    from workflow.evaluate.heldout import heldout_metrics
    from workflow.evaluate.model import load_model
    from workflow.io import write_json

    model_id = model
    params = scoped(params, model_id)
    loaded = load_model(params, model_id)
    faults.point("evaluate.model")
    heldout = heldout_metrics(params, loaded)
    faults.point("evaluate.heldout")
    tasks = run_tasks(params, loaded)
    write_json(paths.eval_file(model_id), {"model": model_id, "lineage": lineage(model_id, loaded.meta),
                                           "heldout": heldout, "tasks": tasks})
    parts = [f"{d} {r['loss']:.4f}/{r['bpb']:.3f}" for d, r in heldout.items() if r["tokens"]]
    print(f"{model_id}: held-out loss/bpb " + ", ".join(parts) + (f"; {task_line(tasks)}" if tasks else ""))
