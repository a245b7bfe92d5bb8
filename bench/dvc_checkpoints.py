"""Large checkpoints under DVC: `dvc commit` and the next no-op `dvc status`, whole directories vs manifest mode.

    .venv/bin/python bench/dvc_checkpoints.py [--hidden 2048] [--layers 6] [--json PATH]

A copy of the repository with the tiny test study widened to `--layers` x `--hidden` (about 3 GB per
checkpoint with the fp32 Adam moments at the defaults) runs curation, the tokenizer, the tokens and one
2-step trunk segment, built by Snakemake (DVC has hashed none of it). Then, on that workspace: `dvc.checkpoints: manifest` (DVC tracks the model directory by
its meta.json, which already lists every file's SHA-256) and `dvc.checkpoints: cache` (the default: DVC hashes
every byte and links it into its cache), each timed for `dvc commit` of the trunk stage and the following
no-op `dvc status` of it and its upstream. Baseline: the default mode. `sha256sum` and `md5sum` of the checkpoint's bytes are timed
beside them, and the README extrapolates to a 70B checkpoint from the default mode's bytes per second.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]  # bench/tokenize.py
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import yaml  # noqa: E402

from bench.common import Row, add_json_option, copy_repo, run, write_result  # noqa: E402


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    run(cmd, cwd)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=6)
    add_json_option(parser)
    args = parser.parse_args()

    raw = yaml.safe_load((ROOT / "tests/configs/tiny/params.yaml").read_text())
    raw["model"].update(hidden_size=args.hidden, num_layers=args.layers, num_attention_heads=16, num_query_groups=4,
                        ffn_hidden_size=None)
    raw["trunk"].update(checkpoints=[2], warmup_steps=1, global_batch_size=4, micro_batch_size=4, save_interval=100)
    raw["decays"], raw["merges"] = {}, {}
    py = [sys.executable, "-m"]
    os.environ.setdefault("SLURM_CONF", "/dev/null")  # Snakemake here needs no cluster (it would wait for scontrol)
    with tempfile.TemporaryDirectory(prefix="arbor-bench-ckpt-") as tmp:
        repo = copy_repo(Path(tmp) / "repo", yaml.safe_dump(raw, sort_keys=False))
        start = time.perf_counter()
        # built by Snakemake, so DVC has hashed nothing of it yet
        run([*py, "snakemake", "--profile", "profiles/local", "--cores", "all", "artifacts/trunk/step-2"], repo)
        ckpt = repo / "artifacts/trunk/step-2"
        size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
        print(f"trunk checkpoint {size / 1e9:.2f} GB ({args.layers} x {args.hidden}) made in "
              f"{time.perf_counter() - start:.0f}s", flush=True)
        files = sorted(str(p) for p in ckpt.rglob("*") if p.is_file())
        sums = {tool: timed([tool, *files], repo) for tool in ("sha256sum", "md5sum")}
        figures = {}
        for mode in ("manifest", "cache"):
            (repo / "params.yaml").write_text(yaml.safe_dump({**raw, "dvc": {"checkpoints": mode}}, sort_keys=False))
            run([*py, "workflow", "dvc-yaml"], repo)
            # the stages up to the trunk recorded (untimed; in the default mode only resolve, whose file changed)
            run([*py, "dvc", "commit", "--force", "--quiet", *(["--with-deps", "trunk"] if mode == "manifest" else ["resolve"])], repo)
            commit = timed([*py, "dvc", "commit", "--force", "--quiet", "trunk"], repo)
            status = timed([*py, "dvc", "status", "--with-deps", "trunk"], repo)
            figures[mode] = (commit, status)
            print(f"  {mode:>8}: dvc commit trunk {commit:.1f}s, then no-op dvc status {status:.2f}s", flush=True)
        print(f"  sha256sum {sums['sha256sum']:.1f}s, md5sum {sums['md5sum']:.1f}s of the same bytes")
    (c_commit, c_status), (m_commit, m_status) = figures["cache"], figures["manifest"]
    gb = size / 1e9
    rows = [
        Row(f"`dvc commit` of a {gb:.1f} GB trunk checkpoint, manifest mode", m_commit, "s",
            "default mode (hash + cache every byte)", c_commit, m_commit / c_commit, "<= 0.1",
            note=f"default mode {gb / c_commit:.2f} GB/s; sha256sum {sums['sha256sum']:.1f}s, md5sum {sums['md5sum']:.1f}s"),
        Row("no-op `dvc status` after it, manifest mode", m_status, "s", "default mode", c_status, m_status / c_status),
    ]
    write_result(args.json, "dvc_checkpoints", rows)


if __name__ == "__main__":
    main()
