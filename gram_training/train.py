"""Pretrain GRAM with Hugging Face `Trainer`: masked-patch reconstruction of naturalistic spatial scenes.

    python -m gram_training.train --output_dir runs/gram --variant binaural-time \
        --audio_dir AUDIO --rir_dir RIRS --noise_dir NOISE [--hf_dataset NAME ...] [--init_from DIR]

Defaults are the published recipe (AdamW lr 2e-4, betas (0.9, 0.95), weight decay 0.01, cosine schedule
with 10k warm-up steps, 500k steps, gradient clipping at 1.0, batches of 96 scenes x 16 crops, bf16 and
`torch.compile` when a CUDA GPU is present). Every `TrainingArguments` option works (`--resume_from_checkpoint`,
`--push_to_hub`, `--save_steps`, ...). Several GPUs or machines: launch the same command with `torchrun`
or `accelerate launch`; each process (and each DataLoader worker) reads its own shard of the audio.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from configuration_gram import AMBISONICS_FORMATS, GRAM_VARIANTS, GramConfig, ambisonics_conversion
from feature_extraction_gram import GramFeatureExtractor
from gram_training.data import HubSource, SceneDataset, collate_scenes
from gram_training.scenes import SceneBuilder, SceneConfig
from modeling_gram import GramForPreTraining

logger = logging.getLogger(__name__)

# Sizes beside ViT-B: "tiny" runs the whole pipeline in seconds on a CPU (tests, demos, smoke runs).
MODEL_SIZES = {
    "base": {},
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        decoder_hidden_size=64,
        decoder_num_hidden_layers=2,
        decoder_intermediate_size=128,
    ),
}


@dataclass
class ModelArguments:
    variant: str = field(default="binaural-time", metadata={"help": f"one of {', '.join(GRAM_VARIANTS)}"})
    model_size: str = field(default="base", metadata={"help": f"one of {', '.join(MODEL_SIZES)}"})
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "a saved GramForPreTraining directory (e.g. a converted original checkpoint) to go on pretraining"
        },
    )
    mask_ratio: float = field(default=0.8, metadata={"help": "share of patches masked per sample"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa (flash/efficient kernels) or eager"})


@dataclass
class DataArguments:
    rir_dir: str = field(metadata={"help": "folder of multi-channel impulse responses (.npy (C, taps), wav, flac)"})
    audio_dir: str | None = field(default=None, metadata={"help": "folder of source audio (wav/flac/ogg/mp3/npy)"})
    hf_dataset: str | None = field(
        default=None, metadata={"help": "a `datasets` name or builder (e.g. parquet), streamed"}
    )
    hf_config: str | None = None
    hf_split: str = "train"
    hf_audio_column: str = "audio"
    hf_data_files: list[str] | None = field(default=None, metadata={"help": "data files for a builder such as parquet"})
    hf_local_paths: bool = field(
        default=False,
        metadata={
            "help": "read dataset records that hold only a local file path (off: a dataset cannot open files of this machine)"
        },
    )
    noise_dir: str | None = field(default=None, metadata={"help": "folder of noise clips; no noise if not given"})
    noise_rir_dir: str | None = field(
        default=None, metadata={"help": "impulse responses for the noise (default: rir_dir)"}
    )
    rir_ambisonics_format: str | None = field(
        default=None,
        metadata={
            "help": "ambisonic models: the convention of the impulse responses (ambix, fuma, soundspaces), converted "
            "to the model's layout; read from the rirs.json that gram-simulate writes beside the folder when not given"
        },
    )
    snr_db_min: float = 5.0
    snr_db_max: float = 40.0
    clean_ratio: float = field(default=0.0, metadata={"help": "share of scenes without noise"})
    level_dbfs: float = field(default=-14.0, metadata={"help": "RMS level of the dry source and noise (dB full scale)"})
    clip_seconds: float = 10.0
    crops_per_clip: int = 16


def _has_cuda() -> bool:
    return torch.cuda.is_available()


@dataclass
class GramPretrainingArguments(TrainingArguments):
    """`TrainingArguments` with the published GRAM defaults; a batch is `per_device_train_batch_size` scenes,
    each giving `crops_per_clip` model samples."""

    output_dir: str | None = field(default="gram-pretraining", metadata={"help": "checkpoints and the final model"})
    per_device_train_batch_size: int = 96
    learning_rate: float = 2e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    weight_decay: float = 0.01
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 10000
    max_steps: int = 500000
    max_grad_norm: float = 1.0
    bf16: bool = field(
        default=False, metadata={"help": "bf16 mixed precision (the command line turns it on with CUDA)"}
    )
    torch_compile: bool = field(
        default=False, metadata={"help": "torch.compile (the command line turns it on with CUDA)"}
    )
    save_steps: float = 10000
    logging_steps: float = 100
    remove_unused_columns: bool = False
    ddp_find_unused_parameters: bool | None = False


class DistinctRandomStreams(TrainerCallback):
    """Trainer seeds every process alike; the scenes (SNR, clean draws, crops) and the masks, drawn from
    torch's global generator on the device, should differ between processes. Resumed runs still restore
    each process's own saved generator state after this."""

    def on_train_begin(self, args, state, control, **kwargs):
        if args.world_size > 1:
            torch.manual_seed(args.seed + args.process_index)


class NonFiniteTrainingError(FloatingPointError):
    """The loss or the gradients stopped being finite: training stops before a NaN model can be saved."""


class StopOnNonFiniteGradients(TrainerCallback):
    """Checks the gradients once per optimizer step (after accumulation and before clipping and the update)."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads and not torch.stack([torch.isfinite(g).all() for g in grads]).all():
            bad = [
                name for name, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
            ]
            raise NonFiniteTrainingError(
                f"Non-finite gradients at step {state.global_step + 1} (in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
                "training stopped, nothing was saved for this step. Lower the learning rate or check the data."
            )


class GramPretrainer(Trainer):
    """HF `Trainer` whose loss builds the scenes on the training device before the model sees them."""

    def __init__(self, *args, scene_builder: SceneBuilder, **kwargs):
        super().__init__(*args, **kwargs)
        self.scene_builder = scene_builder
        self.add_callback(DistinctRandomStreams())
        self.add_callback(StopOnNonFiniteGradients())

    def get_train_dataloader(self) -> DataLoader:
        # The dataset shards itself over processes and workers (gram_training.data.shard_position), so the
        # loader is not handed to accelerate, which would have every process read all data (or rank 0
        # read and dispatch it). Batches reach the device through Trainer._prepare_inputs.
        if self.train_dataset is None:
            raise ValueError("GramPretrainer needs a train_dataset.")
        args, workers = self.args, self.args.dataloader_num_workers
        return DataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=args.dataloader_pin_memory and torch.cuda.is_available(),
            persistent_workers=args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with torch.no_grad():
            input_values = self.scene_builder(inputs)
        outputs = model(input_values=input_values)
        if not torch.isfinite(outputs.loss.detach()):
            raise NonFiniteTrainingError(
                f"Non-finite loss ({outputs.loss.item()}) at step {self.state.global_step + 1}; training stopped before "
                "the model could be saved. The scenes were finite, so the model diverged: lower the learning rate."
            )
        return (outputs.loss, outputs) if return_outputs else outputs.loss


def build_config(model_args: ModelArguments) -> GramConfig:
    if model_args.model_size not in MODEL_SIZES:
        raise ValueError(f"model_size must be one of {', '.join(MODEL_SIZES)}, got {model_args.model_size!r}.")
    return GramConfig.from_variant(
        model_args.variant, mask_ratio=model_args.mask_ratio, **MODEL_SIZES[model_args.model_size]
    )


def build_model(model_args: ModelArguments) -> GramForPreTraining:
    if model_args.init_from:
        model = GramForPreTraining.from_pretrained(
            model_args.init_from, attn_implementation=model_args.attn_implementation
        )
        model.config.mask_ratio = model_args.mask_ratio
        return model
    config = build_config(model_args)
    config._attn_implementation = model_args.attn_implementation
    return GramForPreTraining(config)


def build_dataset(data_args: DataArguments, config: GramConfig, seed: int) -> SceneDataset:
    if (data_args.audio_dir is None) == (data_args.hf_dataset is None):
        raise ValueError("Give exactly one audio source: --audio_dir or --hf_dataset.")
    source = data_args.audio_dir or HubSource(
        data_args.hf_dataset,
        data_args.hf_split,
        data_args.hf_audio_column,
        data_args.hf_config,
        data_args.hf_data_files,
        seed=seed,
        local_paths=data_args.hf_local_paths,
    )
    channels = config.audio_channels
    conversion = None
    if config.audio_format == "ambisonics":
        rir_format = data_args.rir_ambisonics_format or simulated_ambisonics_layout(data_args.rir_dir)
        conversion = np.asarray(ambisonics_conversion(rir_format, config.ambisonics_layout), dtype=np.float32)
    return SceneDataset(
        source,
        data_args.rir_dir,
        channels,
        data_args.noise_dir,
        data_args.noise_rir_dir,
        config.sampling_rate,
        data_args.clip_seconds,
        seed,
        rir_conversion=conversion,
    )


def simulated_ambisonics_layout(rir_dir: str) -> str:
    """The layout `gram-simulate` recorded in the rirs.json beside `rir_dir`; ambisonic impulse responses of
    unknown convention are refused rather than guessed."""
    record = Path(rir_dir).resolve().parent / "rirs.json"
    try:
        layout = json.loads(record.read_text()).get("ambisonics_layout") if record.is_file() else None
    except (OSError, ValueError, AttributeError):
        layout = None
    if layout not in AMBISONICS_FORMATS:
        raise ValueError(
            f"Unknown convention of the ambisonic impulse responses in {rir_dir}: pass --rir_ambisonics_format "
            f"({', '.join(AMBISONICS_FORMATS)}); gram-simulate records it in rirs.json."
        )
    return layout


def with_gpu_defaults(argv: list[str], cuda: bool) -> list[str]:
    """The paper's bf16 and torch.compile, on a CUDA machine, unless the command line sets them.
    (HfArgumentParser ignores dataclass default factories for flags, so this is done on the arguments.)"""
    if not cuda:
        return argv
    given = {arg.split("=")[0] for arg in argv}
    extra = [item for flag in ("--bf16", "--torch_compile") if flag not in given for item in (flag, "true")]
    return argv + extra


def parse_args(argv=None) -> tuple[ModelArguments, DataArguments, GramPretrainingArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, GramPretrainingArguments))
    argv = sys.argv[1:] if argv is None else list(argv)
    if not (len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml"))):
        argv = with_gpu_defaults(argv, _has_cuda())
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        loader = parser.parse_json_file if argv[0].endswith(".json") else parser.parse_yaml_file
        return loader(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv=None) -> GramPretrainer:
    model_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)  # the model's initial weights too (Trainer seeds only once it exists)
    model = build_model(model_args)
    config = model.config
    feature_extractor = GramFeatureExtractor.from_config(config)
    scene_config = SceneConfig(
        sampling_rate=config.sampling_rate,
        clip_seconds=data_args.clip_seconds,
        snr_db_min=data_args.snr_db_min,
        snr_db_max=data_args.snr_db_max,
        clean_ratio=data_args.clean_ratio,
        level_dbfs=data_args.level_dbfs,
        crops_per_clip=data_args.crops_per_clip,
        crop_frames=config.chunk_frames,
    )
    dataset = build_dataset(data_args, config, training_args.seed)
    trainer = GramPretrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=collate_scenes,
        processing_class=feature_extractor,
        scene_builder=SceneBuilder(feature_extractor, scene_config),
    )
    resume = training_args.resume_from_checkpoint
    if resume == "latest":
        resume = get_last_checkpoint(training_args.output_dir)
        if resume is None:
            raise ValueError(f"--resume_from_checkpoint latest: no checkpoint in {training_args.output_dir}.")
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # the final model, loadable with AutoModel / AutoModelForPreTraining
    if trainer.is_world_process_zero():
        print(
            f"Saved the final model to {os.path.abspath(training_args.output_dir)} (load it with AutoModel / "
            "AutoModelForPreTraining.from_pretrained(..., trust_remote_code=True))."
        )
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="GRAM pretraining")
    return trainer


def cli() -> int:
    try:
        main()
    except (NonFiniteTrainingError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
