"""The pipeline file, as pydantic models.

Written for people who type these by hand: every field has an obvious default, unknown keys are
errors (with a "did you mean"), and each stage kind accepts only the fields that mean something
for it. Defaults from `[defaults]` are merged into each stage by `file.py` before these
models see it; a `continue` stage inherits its LoRA shape from the adapter it continues.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

STAGE_NAME = r"^[A-Za-z][A-Za-z0-9_.-]*$"
TRAINING_KINDS = frozenset({"sft", "dpo", "grpo"})
ADAPTER_KINDS = TRAINING_KINDS | {"combine"}
# What TRL 1.15's DPOTrainer accepts as loss_type.
DPOLoss = Literal[
    "sigmoid",
    "ipo",
    "hinge",
    "robust",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
]
DPO_LOSSES: tuple[str, ...] = get_args(DPOLoss)
CombineMethod = Literal[
    "cat",
    "svd",
    "linear",
    "ties",
    "ties_svd",
    "dare_linear",
    "dare_ties",
    "dare_linear_svd",
    "dare_ties_svd",
    "magnitude_prune",
    "magnitude_prune_svd",
]
COMBINE_METHODS: tuple[str, ...] = get_args(CombineMethod)
EvalMetric = Literal["loss", "exact_match", "end_of_turn"]
ExportFormat = Literal["safetensors", "gguf", "ollama"]
# Trackers and TRL knobs (docs/trackers.md)
Precision = Literal["auto", "bf16", "fp16", "fp32"]
Tracker = Literal["tensorboard", "wandb", "trackio", "mlflow"]


def _all_metrics() -> list[EvalMetric]:
    return ["loss", "exact_match", "end_of_turn"]


def _safetensors_only() -> list[ExportFormat]:
    return ["safetensors"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Lora(Strict):
    r: int = Field(default=16, ge=1, le=4096)
    alpha: int | None = Field(default=None, ge=1, description="defaults to 2·r")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    # parameters LoRA wraps directly (PEFT's target_parameters), e.g. a mixture-of-experts
    # model's ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"] (experts are parameters,
    # not nn.Linear modules, so target_modules cannot name them)
    target_parameters: list[str] = Field(default_factory=list)
    # token rows (embedding and lm_head) trained beside the LoRA: tokens of the stage's
    # tokenizer, e.g. ["<|eot_id|>"], or "template" for every special token the chat template
    # writes. A LoRA on the linear layers cannot train these rows, and a base that never learned
    # its template's end-of-turn token answers and never stops (PEFT's trainable_token_indices).
    trainable_tokens: list[str] | Literal["template"] = Field(default_factory=list)
    use_rslora: bool = False
    use_dora: bool = False

    @property
    def lora_alpha(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.r


class Train(Strict):
    max_steps: int | None = Field(default=None, ge=1)
    epochs: float | None = Field(default=None, gt=0)
    lr: float = Field(default=2e-4, gt=0, lt=1)
    lr_multiplier: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    warmup: int = Field(default=0, ge=0, description="warmup steps")
    max_length: int = Field(default=512, ge=8)
    save_steps: int | None = Field(
        default=None, ge=1, description="Trainer checkpoints for crash resume"
    )
    scheduler: str = "cosine"
    weight_decay: float = Field(default=0.0, ge=0)
    logging_steps: int = Field(default=1, ge=1)
    eval_steps: int | None = Field(
        default=None, ge=1,
        description="evaluate eval_data (when given) and sample the probes every N steps",
    )
    gradient_checkpointing: bool = False
    # -- TRL knobs (docs/trackers.md): None/False = TRL's own default; checked by validate
    # against the installed config classes (pipeline/trl_knobs.py)
    optim: str | None = Field(default=None, description="e.g. adamw_torch_fused, paged_adamw_8bit")
    precision: Precision = Field(default="auto", description="auto: what the backend picks")
    max_grad_norm: float | None = Field(default=None, ge=0)
    packing: bool = Field(default=False, description="SFT only")
    neftune_noise_alpha: float | None = Field(default=None, gt=0)
    lr_scheduler_kwargs: dict[str, Any] | None = None
    max_prompt_length: int | None = Field(default=None, ge=1)
    use_liger_kernel: bool = False

    @property
    def effective_lr(self) -> float:
        return self.lr * self.lr_multiplier


class StageBase(Strict):
    name: str = Field(pattern=STAGE_NAME)
    from_: str | None = Field(default=None, alias="from",
                              description="a stage, 'base', a checkpoint path, run:NAME/STAGE")
    note: str = ""
    # Issue 19, starting from a checkpoint made elsewhere (docs/bring-your-own.md): when `from`
    # names an adapter whose recorded base is not the pipeline's `base`, which of the two the
    # adapter is loaded on. Unset, a disagreement is a validate error.
    base_from: Literal["adapter", "pipeline"] | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# Scale-out (docs/distributed.md): `distributed` takes one of these presets (TRL's accelerate
# configs) or the path of an accelerate config file.
DISTRIBUTED_PRESETS = ("ddp", "fsdp2", "zero2", "zero3")


class ScaleOut(Strict):
    """How many processes a training stage runs on. None inherits `[defaults]`; 1 (the default)
    trains in the engine's own process."""

    processes: int | None = Field(default=None, ge=1, le=1024, description="processes per machine")
    distributed: str | None = Field(
        default=None, description="ddp, fsdp2, zero2, zero3 or a config path"
    )
    num_machines: int | None = Field(default=None, ge=1, le=4096)
    machine_rank: int | None = Field(default=None, ge=0)
    main_process_ip: str | None = None
    main_process_port: int | None = Field(default=None, ge=1, le=65535)


# ---- datasets as they come (issue 19; docs/datasets.md) -------------------------------------
# `data` is a path, a glob, `hf:org/name` (the local Hugging Face cache only) or a list of them.
DataRef = str | list[str]


class DataOptions(Strict):
    """Where a stage's rows come from and how they are read; shared by training and eval."""

    split: str | None = Field(default=None, description="hf: split (train, or the only one)")
    eval_split: str | None = Field(default=None, description="hf: split of eval_data")
    subset: str | None = Field(default=None, description="hf: subset (config name)")
    columns: dict[str, str] = Field(default_factory=dict,
                                    description="graftline's column = the data's column")
    on_bad_rows: Literal["refuse", "skip"] = "refuse"


class TrainingStage(StageBase, ScaleOut, DataOptions):
    adapter: Literal["new", "continue"] | None = None
    lora: Lora | None = None
    train: Train = Train()
    data: DataRef
    eval_data: DataRef | None = None
    # the escape hatch: other fields of the stage's TRL config, checked by validate
    trl: dict[str, Any] = Field(default_factory=dict, description="other TRL config fields")


class SFTStage(TrainingStage):
    kind: Literal["sft"]
    assistant_only_loss: bool = False


class DPOStage(TrainingStage):
    kind: Literal["dpo"]
    loss: DPOLoss = "sigmoid"
    beta: float = Field(default=0.1, gt=0)
    precompute_ref: bool = True


class GRPOStage(TrainingStage):
    kind: Literal["grpo"]
    reward: list[str] = Field(default_factory=lambda: ["exact_match"], min_length=1)
    reward_weights: list[float] | None = None
    num_generations: int = Field(default=8, ge=2)
    max_completion_length: int = Field(default=8, ge=1)
    beta: float = Field(default=0.0, ge=0)
    temperature: float = Field(default=1.0, gt=0)

    @field_validator("reward", mode="before")
    @classmethod
    def _one_reward(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class MergeStage(StageBase):
    kind: Literal["merge"]
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class CombineStage(StageBase):
    kind: Literal["combine"]
    adapters: list[str] = Field(min_length=2)
    weights: list[float]
    method: CombineMethod = "cat"
    normalize: bool = False
    svd_rank: int | None = Field(default=None, ge=1)
    density: float | None = Field(default=None, gt=0, le=1)


class GenerateStage(StageBase, DataOptions):
    kind: Literal["generate"]
    prompts: DataRef  # files, globs, lists and hf: as `data` takes them (docs/datasets.md)
    max_new_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    num_samples: int = Field(default=1, ge=1)
    keep: Literal["all", "correct"] = "all"


class EvalStage(StageBase, DataOptions):
    kind: Literal["eval"]
    data: DataRef
    metrics: list[EvalMetric] = Field(default_factory=_all_metrics)
    limit: int | None = Field(default=None, ge=1)


class ExportStage(StageBase):
    kind: Literal["export"]
    out: str
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    formats: list[ExportFormat] = Field(default_factory=_safetensors_only)
    shard_size: str = "5GB"
    force: bool = False
    # GGUF type (implies the gguf format); K-quants by llama.cpp's quantizer (the runtime's)
    gguf_type: Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k",
                       "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m",
                       "q6_k"] | None = None


# Every stage model; narrow with isinstance (TrainingStage covers sft, dpo and grpo).
AnyStage = (
    SFTStage
    | DPOStage
    | GRPOStage
    | MergeStage
    | CombineStage
    | GenerateStage
    | EvalStage
    | ExportStage
)
Stage = Annotated[AnyStage, Field(discriminator="kind")]
STAGE_MODELS: dict[str, type[StageBase]] = {
    "sft": SFTStage,
    "dpo": DPOStage,
    "grpo": GRPOStage,
    "merge": MergeStage,
    "combine": CombineStage,
    "generate": GenerateStage,
    "eval": EvalStage,
    "export": ExportStage,
}


class Header(Strict):
    name: str = Field(pattern=STAGE_NAME)
    base: str = Field(min_length=1, description="local path, hub id, or toy:addition")
    backend: Literal["auto", "hf", "unsloth"] = "auto"
    runs_dir: str = "runs"
    seed: int = 0
    quantization: Literal["none", "4bit", "8bit"] = "none"
    probes: list[str] = Field(default_factory=list, description="probe prompts for checks")
    private: bool = Field(default=True, description="run directory owner-only (0700, files 0600)")
    # trackers, through transformers' own integrations (docs/trackers.md)
    report_to: list[Tracker] = Field(default_factory=list, description="experiment trackers")


class Defaults(ScaleOut):
    lora: Lora = Lora()
    train: Train = Train()
    # merged under every training stage's own `trl`, key by key (the stage wins); each key is
    # checked against each stage's TRL config class
    trl: dict[str, Any] = Field(default_factory=dict, description="TRL config fields for every "
                                "training stage")


class Cleanup(Strict):
    """Disk cleanup between stages, done by the engine: after each stage in `after` (every stage
    when empty) it deletes the run's checkpoints that `keep` does not select, never one that a
    kept checkpoint needs to load or export, nor one that a later stage will read."""

    keep: list[str] = Field(min_length=1, description="`graftline cleanup --keep` words")
    after: list[str] = Field(default_factory=list, description="stage names; empty: every stage")


class Pipeline(Strict):
    pipeline: Header
    defaults: Defaults = Defaults()
    stage: list[Stage] = Field(min_length=1)
    cleanup: Cleanup | None = None

    def by_name(self, name: str) -> AnyStage:
        for stage in self.stage:
            if stage.name == name:
                return stage
        raise KeyError(name)
