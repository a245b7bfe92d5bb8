"""Invalidation you can prove, on a real run of the tiny study (every stage recorded what it read).

* Measured params: each job's recorded reads (workflow/reads.py) are all tracked by both engines (read back
  from Snakemake's job graph and DVC's index), and every key an engine tracks is read by some job of that stage.
* The matrix: every leaf key of the study perturbed to another valid value, plus the canonical edits; after
  each, `snakemake -n` plans exactly, and `dvc status` flags exactly, what should re-run (tests/invalidation.py).
* Extending the trunk trains only the new segment in both engines; a merge DVC cannot template stops
  `dvc repro` before any stage runs; `python -m workflow why` explains two edits.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import clone_study, recorded_reads, run
from tests.engines import dvc_jobs, snakemake_jobs
from tests.invalidation import (USER_CLASSIFIER, USER_HF, USER_TOKENIZER, Edit, expand, expected, job_inputs, normalized, perturbations, plans,
                                related, set_key, untracked, write_study)
from workflow import paths, stages
from workflow.engines import dvc as dvc_engine
from workflow.params import load_params, parse_params

pytestmark = pytest.mark.slow


class Study:
    def __init__(self, repo: Path, recorded: dict[str, dict[str, list[str]]]):
        self.repo = repo
        self.reads = {label: set(r["keys"]) for label, r in recorded.items()}              # values read
        self.present = {label: set(r["present"]) for label, r in recorded.items()}         # optional sections tested
        self.collections = {label: set(r["collections"]) for label, r in recorded.items()}  # mappings iterated
        self.raw = yaml.safe_load((repo / "params.yaml").read_text())
        self.params = load_params(repo / "params.yaml")
        self.resolved = dvc_engine.resolved(self.params)


@pytest.fixture(scope="module")
def study(tiny_study, tmp_path_factory) -> Study:
    """A copy of the session's tiny study (`make study`, every stage recorded what it read)."""
    repo = clone_study(tiny_study, tmp_path_factory.mktemp("recorded") / "repo")
    recorded = {f.stem: json.loads(f.read_text()) for f in recorded_reads(tiny_study).glob("*.json")}
    shutil.copy(repo / paths.tokenizer_file(), repo / USER_TOKENIZER)  # for the `tokenizer.path` perturbation
    scorer = next(iter(yaml.safe_load((repo / "params.yaml").read_text())["quality"]["scorers"]))
    shutil.copy(repo / paths.classifier_dir(scorer) / "model.bin", repo / USER_CLASSIFIER)  # for a ready classifier
    run([sys.executable, "-m", "workflow", "export-hf", "--model", "main@12", "--out", USER_HF], repo)  # for `from_hf`
    return Study(repo, recorded)


def test_every_job_recorded_its_reads(study):
    assert set(study.reads) == {job.label for job in stages.jobs(study.params)}


def tracked_by_engines(study: Study) -> dict[str, dict[str, frozenset[str]]]:
    """label -> engine -> the keys that engine tracks for the job, read back from the engine."""
    smk, dvc = snakemake_jobs(study.repo), dvc_jobs(study.repo)
    out = {}
    for job in stages.jobs(study.params):
        dvc_out = job.outputs[0] if job.stage.run_all is None else paths.trunk_root(job.key["trunk"])
        out[job.label] = {"snakemake": smk[job.outputs[0]].params, "dvc": dvc[dvc_out].params}
    return out


def test_engines_track_every_key_a_job_reads(study):
    """Read but not tracked would reuse stale results: none, job by job, in both engines."""
    for label, engines in tracked_by_engines(study).items():
        read = {k for k in expand(study.reads[label], study.resolved) if not untracked(k)}
        for engine, keys in engines.items():
            missing = read - expand(keys, study.resolved)
            assert not missing, f"{engine} does not track what {label} reads: {sorted(missing)}"
            for section in study.present[label] - {s for s in study.present[label] if untracked(s)}:
                # `if section:` - tracking any of its keys sees it come and go
                assert any(related(section, k) for k in keys), f"{engine} does not track whether {label}'s {section} is set"


def test_engines_track_nothing_no_job_reads(study):
    """Tracked but never read re-runs for nothing: every tracked key is read by some job of its stage."""
    jobs = stages.jobs(study.params)
    tracked = tracked_by_engines(study)
    for stage in stages.STAGES.values():
        labels = [j.label for j in jobs if j.stage is stage]
        read = {normalized(k) for label in labels for k in expand(study.reads[label], study.resolved)}
        read |= {normalized(k) for t in study.params.trunks for k in expand({r.format(t) for r in stage.run_all_reads},
                                                                               study.resolved)}  # DVC's stage per trunk
        for engine in ("snakemake", "dvc"):
            keys = {normalized(k) for label in labels for k in expand(tracked[label][engine], study.resolved)}
            assert keys - read == set(), f"{engine} tracks keys no {stage.name} job reads: {sorted(keys - read)}"


def canonical_edits(raw: dict) -> list[Edit]:
    """The edits users make most, and the switches between alternatives no single key can make."""
    def edit(name, fn, key=None):
        new = json.loads(json.dumps(raw))
        fn(new)
        parse_params(new)
        return Edit(name, new, key)

    trunk = raw["trunk"]["checkpoints"]
    first_source = next(iter(raw["sources"]))
    scorer, selection = next(iter(raw["quality"]["scorers"])), next(iter(raw["quality"]["selections"]))
    return [
        edit("extend the trunk by one checkpoint", lambda r: r["trunk"].update(checkpoints=[*trunk, trunk[-1] + 12]),
             "trunk.checkpoints"),
        edit("add a decay branch", lambda r: r["decays"].update(extra={"from": f"main@{trunk[0]}", "steps": 4, "shape": "cosine"})),
        edit("branch from a decay", lambda r: r["decays"].update(extra={"from": "decay-short", "steps": 2})),
        edit("add a trunk", lambda r: r["trunks"].update(extra={"lr": 0.002, "checkpoints": [8]})),
        edit("change a setting every trunk shares", lambda r: r["trunk"].update(warmup_steps=3), "trunk.warmup_steps"),
        edit("change one decay's final LR", lambda r: r["decays"]["short"].update(final_lr=0.0005), "decays.short.final_lr"),
        edit("add a merge", lambda r: r["merges"].update(extra={"models": ["main@12", "decay-short"]})),
        edit("change one source's filter", lambda r: r["sources"][first_source]["steps"]["language"].update(
            language_threshold=0.5), f"sources.{first_source}.steps.language.language_threshold"),
        edit("add a source", lambda r: r["sources"].update(
            extra={"paths": ["data/sample/reference/*.jsonl.zst"], "domain": "extra", "id_key": "id"})),
        edit("remove a source", lambda r: (r["sources"].pop("code"), r["decays"]["rewarm"].pop("mixture"),
                                            r.pop("quality"))),  # its scorer learns from code
        edit("drop an input of a merge", lambda r: r["merges"]["lw"].update(models=["decay-rewarm"])),
        edit("change an eval setting", lambda r: r["eval"].update(max_sequences=12), "eval.max_sequences"),
        edit("change the model width", lambda r: r["model"].update(hidden_size=128), "model.hidden_size"),
        edit("change one trunk's model width", lambda r: r["trunks"]["cos"].update(model={"hidden_size": 128}),
             "trunks.cos.model.hidden_size"),
        edit("a decay's length as a fraction instead of steps", lambda r: r["decays"]["short"].update(steps=None, fraction=0.5),
             "decays.short"),
        edit("a decay's final LR as a ratio", lambda r: r["decays"]["late"].update(final_lr=None, final_lr_ratio=0.1),
             "decays.late"),
        edit("change a selection's keep fraction (only selection and what follows re-run)",
             lambda r: r["quality"]["selections"][selection].update(keep_fraction=0.3),
             f"quality.selections.{selection}.keep_fraction"),
        edit("a selection by threshold instead of keep fraction",
             lambda r: r["quality"]["selections"][selection].update(keep_fraction=None, threshold=0.5),
             f"quality.selections.{selection}"),
        edit("change the classifier (scoring re-runs too)", lambda r: r["quality"]["scorers"][scorer].update(epoch=3),
             f"quality.scorers.{scorer}.epoch"),
        edit("a ready classifier file instead of training", lambda r: r["quality"]["scorers"][scorer].update(
            model=USER_CLASSIFIER, positives=[], negatives=[]), f"quality.scorers.{scorer}"),
        edit("train on a data variant", lambda r: r["trunk"].update(data=selection), "trunk.data"),
        edit("train one trunk on a data variant", lambda r: r["trunks"]["cos"].update(data=selection), "trunks.cos.data"),
        edit("a merge weighted instead of uniform", lambda r: r["merges"]["both"].update(method="weighted", weights=[1, 3]),
             "merges.both"),
    ]


def form_only_edits(raw: dict) -> list[Edit]:
    """Edits of form: nothing may re-run."""
    reordered = {k: raw[k] for k in reversed(list(raw))}
    spelled = set_key(set_key(raw, "trunk.adam_beta1", 0.9), "decays.short.rewarm", None)
    return [Edit("reorder the sections", reordered, None), Edit("spell out two defaults", spelled, None)]


def test_invalidation_matrix(study, capsys):
    """Every leaf key and the canonical edits, in both engines; any mismatch is listed."""
    edits, skipped = perturbations(study.raw, study.resolved)
    edits += canonical_edits(study.raw)
    mismatches, counts = [], {"snakemake": 0, "dvc": 0}
    try:
        for edit in edits + form_only_edits(study.raw):
            write_study(study.repo, edit.raw)
            new = load_params(study.repo / "params.yaml")
            want = expected(study.params, new, study.reads, study.present, study.collections)
            smk, dvc = plans(study.repo)
            want_smk, want_dvc = want.snakemake, want.dvc
            for engine, got, wanted in (("snakemake", smk, want_smk), ("dvc", dvc, want_dvc)):
                counts[engine] += 1
                if got != wanted:
                    mismatches.append(f"{edit.name} [{engine}]: extra {sorted(got - wanted)}, missing {sorted(wanted - got)}")
    finally:
        write_study(study.repo, study.raw)
        run([sys.executable, "-m", "workflow", "dvc-yaml"], study.repo)
    with capsys.disabled():
        print(f"\ninvalidation matrix: {len(edits)} edits x 2 engines ({counts}); {len(skipped)} leaves no single "
              f"edit can change: {sorted(skipped)}")
    assert not mismatches, "\n".join(mismatches)


def test_appending_files_runs_only_their_jobs(study, tmp_path):
    """Ten files appended to a source: new curate_shard jobs for them (the existing groups keep their members
    and their results) and what follows from the source's new data, in both engines. (Runs after tests that
    built Snakemake's DAG in this process: tests/engines.py scopes its frozen listings to that build.)"""
    repo = shutil.copytree(study.repo, tmp_path / "repo", symlinks=True)
    source = next(s for s, spec in study.params.sources.items() if "*" in spec.paths[0])
    folder = repo / Path(study.params.sources[source].paths[0]).parent
    with contextlib.chdir(repo):
        before = job_inputs(study.params)
    first = sorted(folder.iterdir())[0]
    for i in range(10):
        shutil.copy(first, folder / f"zz-appended-{i:02d}{''.join(first.suffixes)}")
    with contextlib.chdir(repo):
        want = expected(study.params, study.params, study.reads, study.present, study.collections, before)
        groups = stages.shard_parts(study.params, source)
    new_shards = {f"curate_shard@{source}-{p}" for p in groups[-10:]}
    assert new_shards <= want.snakemake and f"curate_shard@{source}-{groups[0]}" not in want.snakemake
    smk, dvc = plans(repo)
    assert smk == want.snakemake and dvc == want.dvc


def test_manifest_mode_flags_what_the_cache_mode_flags(study, tmp_path):
    """`dvc.checkpoints: manifest`: DVC tracks each model directory by its meta.json (every file's size and
    SHA-256), so it hashes no checkpoint; after `dvc commit` nothing is stale, and each canonical edit makes
    `dvc status` flag exactly the stages it flags in the default mode."""
    repo = shutil.copytree(study.repo, tmp_path / "repo", symlinks=True)
    write_study(repo, set_key(study.raw, "dvc.checkpoints", "manifest"))
    run([sys.executable, "-m", "workflow", "dvc-yaml"], repo)
    run([sys.executable, "-m", "dvc", "commit", "--force", "--quiet"], repo)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    outs = {o["path"] for stage in lock.values() for o in stage.get("outs", [])}
    models = [paths.model_dir(m) for m in study.params.model_ids()]
    assert {paths.model_meta(m) for m in models} <= outs and not outs & {*models, *map(paths.trunk_root, study.params.trunks)}
    assert plans(repo)[1] == set()
    mismatches = []
    for edit in canonical_edits(study.raw):
        write_study(repo, set_key(edit.raw, "dvc.checkpoints", "manifest"))
        want = expected(study.params, load_params(repo / "params.yaml"), study.reads, study.present, study.collections)
        dvc = plans(repo)[1]
        if dvc != want.dvc:
            mismatches.append(f"{edit.name}: extra {sorted(dvc - want.dvc)}, missing {sorted(want.dvc - dvc)}")
    assert not mismatches, "\n".join(mismatches)


def snakemake_plan(repo: Path) -> set[str]:
    out = run([sys.executable, "-m", "snakemake", "--profile", "profiles/local", "-n", "--cores", "2"], repo,
              env={"SLURM_CONF": "/dev/null"}).stdout
    return {o for line in re.findall(r"^\s+output: (.+)$", out, flags=re.M) for o in line.split(", ")}


def test_extending_the_trunk_trains_only_the_new_segment(study, tmp_path):
    repo = shutil.copytree(study.repo, tmp_path / "repo", symlinks=True)
    before = {s: (repo / paths.trunk_dir("main", s) / "meta.json").read_bytes() for s in study.params.trunks["main"].checkpoints}
    raw = set_key(study.raw, "trunk.checkpoints", [12, 24, 36])
    write_study(repo, raw)
    assert snakemake_plan(repo) == {paths.trunk_dir("main", 36), paths.eval_file("main@36"), paths.merge_dir("lawa"),
                                    paths.eval_file("merge-lawa"), paths.report_dir()}
    # no regeneration of dvc.yaml: DVC's templates follow the new checkpoint (its last-k merge too)
    assert (repo / "dvc.yaml").read_text() == dvc_engine.render(load_params(repo / "params.yaml"))
    ran = run([sys.executable, "-m", "dvc", "repro"], repo).stdout
    assert set(re.findall(r"Running stage '([^']+)'", ran)) == {
        "resolve", "trunk-main", "evaluate-trunk-main@36", "merge-lawa", "evaluate-merge@lawa", "report"}
    log = (repo / "dvc.lock").read_text()
    assert "step-36" in log
    for step, meta in before.items():  # the old segments were not retrained
        assert (repo / paths.trunk_dir("main", step) / "meta.json").read_bytes() == meta
    trunk_out = re.search(r"main@12: up to date.*\n.*main@24: up to date", ran)
    assert trunk_out, ran


def test_dvc_stops_before_any_stage_when_it_cannot_follow_an_edit(study, tmp_path):
    repo = shutil.copytree(study.repo, tmp_path / "repo", symlinks=True)
    write_study(repo, set_key(study.raw, "merges.extra", {"models": ["main@12", "decay-short"]}))
    proc = run([sys.executable, "-m", "dvc", "repro"], repo, check=False)
    assert proc.returncode != 0
    assert set(re.findall(r"Running stage '([^']+)'", proc.stdout)) == {"resolve"}
    line = next(x for x in (proc.stdout + proc.stderr).splitlines() if "dvc.yaml is out of date" in x)
    assert "new stages: merge-extra" in line and "python -m workflow dvc-yaml" in line
    assert not (repo / paths.merge_dir("extra")).exists()
    snakemake_plan(repo)  # snakemake regenerates dvc.yaml before planning
    assert (repo / "dvc.yaml").read_text() == dvc_engine.render(load_params(repo / "params.yaml"))


def test_why_explains_two_edits(study, tmp_path):
    repo = shutil.copytree(study.repo, tmp_path / "repo", symlinks=True)
    why = [sys.executable, "-m", "workflow", "why"]
    assert "up to date" in run(why, repo, env={"SLURM_CONF": "/dev/null"}).stdout
    write_study(repo, set_key(study.raw, "decays.short.final_lr", 0.0005))
    out = run([*why, "decay-short"], repo, env={"SLURM_CONF": "/dev/null"}).stdout
    assert re.search(r"decay@short\s+params decays\.short\.final_lr: 0\.0 -> 0\.0005", out), out
    assert re.search(r"evaluate@decay-short\s+rebuilt upstream: decay@short", out), out
    assert "trunk@" not in out
    write_study(repo, set_key(study.raw, "trunk.checkpoints", [12, 24, 36]))
    out = run(why, repo, env={"SLURM_CONF": "/dev/null"}).stdout
    assert re.search(r"trunk@main-36\s+output missing: artifacts/trunk/main/step-36", out), out
    assert re.search(r"merge@lawa\s+its list of inputs changed", out), out
    assert not re.search(r"trunk@main-(12|24)\b", out) and not re.search(r"decay@", out), out
