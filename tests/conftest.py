"""Shared test helpers: offline Hub, the tiny configurations, and pairs of (package model, original reference)
with identical weights. The repository root, tests/ and benchmarks/ are on the import path through
pyproject.toml's pytest `pythonpath` (as the package is imported once installed)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from reference_gram import OriginalGram, OriginalGramEncoder  # noqa: E402

from configuration_gram import GramConfig  # noqa: E402
from convert_checkpoint import map_original_keys  # noqa: E402
from modeling_gram import GramModel  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
TINY_DECODER = dict(decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_intermediate_size=128)
VARIANTS = [f"{fmt}-{patching}" for fmt in ("binaural", "ambisonics", "mono") for patching in ("frame", "time")]
STRATEGIES = ["raw", "mean", "cls"]


def tiny_config(variant="binaural-time", **overrides) -> GramConfig:
    return GramConfig.from_variant(variant, **{**TINY, **overrides})


def tiny_pretraining_config(variant="binaural-time", **overrides) -> GramConfig:
    """The tiny encoder with a tiny MW-MAE decoder (8 heads, the variant's windows)."""
    return tiny_config(variant, **{**TINY_DECODER, **overrides})


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))


def original_encoder_sizes(config: GramConfig) -> dict:
    """The original encoder's constructor arguments for `config`'s sizes."""
    return dict(
        in_channels=config.num_channels,
        fshape=config.patch_size[0],
        tshape=config.patch_size[1],
        hidden=config.hidden_size,
        layers=config.num_hidden_layers,
        heads=config.num_attention_heads,
        mlp=config.intermediate_size,
    )


def model_pair(config: GramConfig, seed: int = 0):
    """(GramModel, OriginalGramEncoder) sharing the original's randomly initialised weights."""
    torch.manual_seed(seed)
    original = OriginalGramEncoder(**original_encoder_sizes(config)).eval()
    model = GramModel(config).eval()
    model.load_state_dict(package_state_from_original(original.state_dict(), prefix="gram."), strict=True)
    return model, original


def original_pretraining_model(config: GramConfig, seed: int = 0) -> OriginalGram:
    """The original GRAMT (encoder + MW-MAE decoder) of `config`'s sizes, randomly initialised, with
    relative-position biases large enough that a wrong mapping shows."""
    torch.manual_seed(seed)
    original = OriginalGram(
        **original_encoder_sizes(config),
        decoder_dim=config.decoder_hidden_size,
        decoder_depth=config.decoder_num_hidden_layers,
        decoder_heads=config.decoder_num_attention_heads,
        window_sizes=config.decoder_window_sizes,
    ).eval()
    with torch.no_grad():
        for name, p in original.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0.0, 0.5)
    return original


def make_original(variant: str, seed: int = 0) -> OriginalGram:
    """The tiny original GRAMT of a variant (the converter's tests export it as checkpoints)."""
    return original_pretraining_model(tiny_pretraining_config(variant), seed)


# The converter's flag for the tiny models' head count (not visible in the weights).
HEADS = ["--num-attention-heads", str(TINY["num_attention_heads"])]


def package_state_from_original(original_state: dict, prefix: str = "") -> dict:
    """The original GRAMT's weights under this package's names, through the converter's one key table
    (test_convert_checkpoint cross-checks that table against an independent mapping); with `prefix`, only the
    keys under it, prefix removed (e.g. "gram." for the encoder alone)."""
    mapped, _ = map_original_keys(original_state)
    return {k[len(prefix) :]: v for k, v in mapped.items() if k.startswith(prefix)}


@pytest.fixture(scope="session")
def audio_clips():
    """Deterministic, audio-like test signals at 32 kHz: harmonic tones with onsets plus a little noise."""
    generator = torch.Generator().manual_seed(1234)

    def make(channels: int, seconds: float) -> torch.Tensor:
        n = int(seconds * 32000)
        t = torch.arange(n) / 32000
        signals = []
        for c in range(channels):
            f0 = 220.0 * (1 + c * 0.25)
            tone = sum(torch.sin(2 * torch.pi * f0 * k * t + c) / k for k in range(1, 6))
            envelope = (torch.sin(2 * torch.pi * 1.5 * t + c).clamp_min(0)) ** 2
            noise = 0.02 * torch.randn(n, generator=generator)
            signals.append(0.2 * tone * envelope + noise)
        return torch.stack(signals)

    return make


class FakeHubApi:
    """Stands in for huggingface_hub.HfApi: records calls and what the folder held at upload time."""

    calls = []

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
        self.calls.append(("create_repo", repo_id, private, exist_ok, repo_type))

    def upload_folder(self, folder_path, repo_id, repo_type=None, commit_message=None, ignore_patterns=None):
        import fnmatch

        uploaded = [
            n for n in sorted(os.listdir(folder_path)) if not any(fnmatch.fnmatch(n, p) for p in ignore_patterns or [])
        ]
        self.calls.append(("upload_folder", repo_id, uploaded, repo_type))
