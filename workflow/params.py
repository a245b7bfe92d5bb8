"""The study schema: one pydantic model per `params.yaml` section.

Every stage loads `params.yaml` through `load_params()` before doing any work. A bad file
raises `ParamsError` whose message names the offending key; the CLI turns it into exit 2.

Units: trunk and decay lengths are **optimizer steps**; one step consumes
`trunk.global_batch_size` sequences of `model.seq_length` tokens.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=64)]
PositiveInt = Annotated[int, Field(gt=0)]
MODEL_ID = re.compile(r"^(trunk)-(\d+)$|^(decay|merge)-([a-z0-9][a-z0-9_-]*)$")


class ParamsError(Exception):
    """An invalid study file; the message names the key and says what is wrong."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(Section):
    paths: list[str] = Field(min_length=1, description="Glob patterns (relative to the repo root) of raw jsonl/jsonl.zst files.")
    domain: Name = Field(description="Domain tag; one source per domain. Names the token files and held-out metrics.")
    text_key: str = Field("text", min_length=1, description="JSON key holding the document text.")
    id_key: str | None = Field(None, description="JSON key holding a document id; a stable hash is used when absent.")


class Curation(Section):
    normalize: Literal["NFC", "NFKC"] | None = Field("NFC", description="Unicode normal form applied to every document; null keeps text as is.")
    min_chars: PositiveInt = Field(32, description="Documents with fewer characters (after normalisation) are dropped.")
    max_doc_bytes: PositiveInt = Field(1_000_000, description="Documents larger than this (UTF-8 bytes) are counted invalid.")
    exact_dedup: bool = Field(True, description="Drop documents whose normalised text was already seen in this source.")
    heldout_fraction: float = Field(0.05, ge=0.0, lt=0.5, description="Fraction of documents (by content hash) kept out of training for evaluation.")
    shard_docs: PositiveInt = Field(2000, description="Documents per output shard `part-*.jsonl.zst`.")


class Tokenizer(Section):
    path: str | None = Field(None, description="A user-supplied HF `tokenizer.json`; when set nothing is trained.")
    vocab_size: Annotated[int, Field(ge=256 + 1, le=1_000_000)] = Field(4096, description="Byte-level BPE vocabulary size (including special tokens).")
    min_frequency: PositiveInt = Field(2, description="Minimum pair frequency for a BPE merge.")
    sample_bytes: PositiveInt = Field(20_000_000, description="Training text sampled deterministically from the curated training shards.")
    eod_token: str = Field("<|endoftext|>", min_length=1, description="End-of-document token appended to every document.")


class Parallel(Section):
    tp: PositiveInt = Field(1, description="Tensor-parallel size.")
    pp: PositiveInt = Field(1, description="Pipeline-parallel size.")
    nproc_per_node: PositiveInt = Field(1, description="Processes per node; >1 launches torchrun.")
    nodes: PositiveInt = Field(1, description="Nodes (multi-node uses SLURM's environment).")


class Fp8(Section):
    format: Literal["hybrid", "e4m3"] = "hybrid"
    recipe: Literal["delayed", "tensorwise", "mxfp8", "blockwise"] = "delayed"
    amax_history_len: PositiveInt = 1024
    margin: Annotated[int, Field(ge=0)] = 0
    first_last_layers_bf16: bool = False


class Model(Section):
    backend: Literal["auto", "cpu", "gpu"] = Field("auto", description="cpu: local layer spec, gloo, fp32; gpu: Transformer Engine spec, bf16 (+fp8); auto: gpu when CUDA is present.")
    num_layers: PositiveInt = 2
    hidden_size: PositiveInt = 128
    num_attention_heads: PositiveInt = 4
    num_query_groups: PositiveInt | None = Field(None, description="GQA groups; null = multi-head attention.")
    ffn_hidden_size: PositiveInt | None = Field(None, description="SwiGLU inner size; null = 8/3 * hidden rounded to 64.")
    seq_length: PositiveInt = 128
    rotary_base: PositiveInt = 10000
    tie_embeddings: bool = True
    init_method_std: float = Field(0.02, gt=0)
    hidden_dropout: float = Field(0.0, ge=0, lt=1)
    attention_dropout: float = Field(0.0, ge=0, lt=1)
    fp8: Fp8 | None = Field(None, description="FP8 recipe (GPU + Transformer Engine only); null trains in bf16 on GPU.")
    parallel: Parallel = Parallel()

    @model_validator(mode="after")
    def _shapes(self) -> "Model":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})")
        groups = self.num_query_groups or self.num_attention_heads
        if self.num_attention_heads % groups:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_query_groups ({groups})")
        return self


class Trunk(Section):
    checkpoints: list[PositiveInt] = Field(min_length=1, description="Sorted optimizer steps at which the stable trunk is saved; each segment is one job.")
    seed: int = Field(1234, description="Seed for initialisation and data order.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate (the stable phase's constant LR).")
    warmup_steps: Annotated[int, Field(ge=0)] = Field(20, description="Linear warmup length in steps.")
    global_batch_size: PositiveInt = Field(16, description="Sequences per optimizer step.")
    micro_batch_size: PositiveInt = Field(8, description="Sequences per forward/backward; gradient accumulation fills the global batch.")
    weight_decay: float = Field(0.1, ge=0)
    adam_beta1: float = Field(0.9, gt=0, lt=1)
    adam_beta2: float = Field(0.95, gt=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, gt=0)
    mixture: dict[Name, Annotated[float, Field(gt=0)]] | None = Field(None, description="Domain sampling weights; null = proportional to tokens.")
    save_interval: PositiveInt = Field(50, description="Intermediate save every N steps inside a segment (resume point after a crash).")
    log_interval: PositiveInt = Field(1, description="Steps between log lines.")

    @model_validator(mode="after")
    def _batch_and_order(self) -> "Trunk":
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"global_batch_size ({self.global_batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})")
        if list(self.checkpoints) != sorted(set(self.checkpoints)):
            raise ValueError(f"checkpoints must be strictly increasing, got {self.checkpoints}")
        return self


class Decay(Section):
    from_step: PositiveInt = Field(description="Trunk checkpoint the branch starts from (must be listed in trunk.checkpoints).")
    steps: PositiveInt = Field(description="Decay length in optimizer steps.")
    shape: Literal["linear", "cosine", "minus_sqrt", "exponential"] = Field("linear", description="Annealing shape from the peak LR to final_lr.")
    final_lr: float = Field(0.0, ge=0, description="Learning rate at the end of the decay (absolute).")
    mixture: dict[Name, Annotated[float, Field(gt=0)]] | None = Field(None, description="Domain weights used only during the decay; null = the trunk's.")


class Merge(Section):
    models: list[str] = Field(min_length=1, description="Model ids to average: trunk-<N>, decay-<branch>, merge-<name>.")
    method: Literal["uniform"] = Field("uniform", description="Averaging method.")


class Eval(Section):
    batch_size: PositiveInt = Field(8, description="Sequences per forward pass.")
    max_sequences: PositiveInt | None = Field(64, description="Cap on held-out sequences per domain; null = all.")


class Params(Section):
    sources: dict[Name, Source] = Field(min_length=1)
    curation: Curation = Curation()
    tokenizer: Tokenizer = Tokenizer()
    model: Model = Model()
    trunk: Trunk
    decays: dict[Name, Decay] = Field(default_factory=dict)
    merges: dict[Name, Merge] = Field(default_factory=dict)
    eval: Eval = Eval()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Params":
        seen: dict[str, str] = {}
        for name, source in self.sources.items():
            if source.domain in seen:
                raise ValueError(f"sources.{name}.domain: domain '{source.domain}' is already used by source '{seen[source.domain]}'; one source per domain")
            seen[source.domain] = name
        for key, mixture in [("trunk.mixture", self.trunk.mixture)] + [(f"decays.{b}.mixture", d.mixture) for b, d in self.decays.items()]:
            for domain in mixture or {}:
                if domain not in seen:
                    raise ValueError(f"{key}.{domain}: unknown domain; declared domains are {sorted(seen)}")
        for branch, decay in self.decays.items():
            if decay.from_step not in self.trunk.checkpoints:
                raise ValueError(f"decays.{branch}.from_step: {decay.from_step} is not a trunk checkpoint (trunk.checkpoints = {list(self.trunk.checkpoints)})")
        declared = set(self.model_ids())
        for name, merge in self.merges.items():
            for i, model in enumerate(merge.models):
                if model not in declared:
                    raise ValueError(f"merges.{name}.models.{i}: '{model}' is not a declared model; declared: {', '.join(self.model_ids())}")
            if len(set(merge.models)) != len(merge.models):
                raise ValueError(f"merges.{name}.models: lists a model twice")
        self.merge_order()  # raises on cycles
        return self

    def model_ids(self) -> list[str]:
        """Every model the study produces, in DAG order within each kind."""
        return ([f"trunk-{s}" for s in self.trunk.checkpoints] + [f"decay-{b}" for b in self.decays]
                + [f"merge-{m}" for m in self.merges])

    def merge_order(self) -> list[str]:
        """Merge names in an order where every merge comes after the merges it averages."""
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(name: str, chain: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                raise ValueError(f"merges.{name}.models: cycle between merges: {' -> '.join(chain + [name])}")
            state[name] = 1
            for model in self.merges[name].models:
                if model.startswith("merge-") and model[6:] in self.merges:
                    visit(model[6:], chain + [name])
            state[name] = 2
            order.append(name)

        for name in self.merges:
            visit(name, [])
        return order

    def domains(self) -> list[str]:
        return [s.domain for s in self.sources.values()]

    def source_of_domain(self, domain: str) -> str:
        return next(n for n, s in self.sources.items() if s.domain == domain)


def _format(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see workflow/params.py for the schema)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and e["type"] not in ("value_error",) and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{origin}: {loc + ': ' if loc else ''}{msg}")
    return "\n".join(lines)


def parse_params(data: Any, origin: str = "params.yaml") -> Params:
    """Validate an already-loaded mapping."""
    if not isinstance(data, dict):
        raise ParamsError(f"{origin}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(_format(err, origin)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a study file; raises ParamsError with a readable message."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ParamsError(f"{path}: cannot read the study file ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return parse_params(data, str(path))


def parse_model_id(model_id: str) -> tuple[str, str]:
    """`trunk-200` -> ("trunk", "200"); raises ParamsError for a malformed id."""
    m = MODEL_ID.match(model_id)
    if not m:
        raise ParamsError(f"model id '{model_id}': expected trunk-<step>, decay-<branch> or merge-<name>")
    return (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
