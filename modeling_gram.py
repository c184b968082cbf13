"""PyTorch GRAM model: a ViT encoder over 2-second chunks of multi-channel log-mel spectrograms."""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, can_return_tuple

try:  # loaded by transformers as remote code (a package)
    from .configuration_gram import POOLING_STRATEGIES, GramConfig
except ImportError:  # imported directly from the repository root
    from configuration_gram import POOLING_STRATEGIES, GramConfig


def get_2d_sincos_position_embeddings(embed_dim: int, grid_size: tuple[int, int], add_cls_token: bool) -> torch.Tensor:
    """Fixed 2-D sin-cos table of the original (MAE/AudioMAE `get_2d_sincos_pos_embed`), in float64.

    Returns a tensor of shape `(grid_f * grid_t + add_cls_token, embed_dim)`, patches in (freq, time)
    row-major order; the CLS row is zeros. As in the original, the first half of the channels encodes the
    time index and the second half the frequency index.
    """
    grid_f, grid_t = grid_size
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4.0))

    def encode(positions: torch.Tensor) -> torch.Tensor:  # (M,) -> (M, embed_dim / 2)
        angles = positions.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    freq_index, time_index = torch.meshgrid(
        torch.arange(grid_f, dtype=torch.float64), torch.arange(grid_t, dtype=torch.float64), indexing="ij"
    )
    table = torch.cat([encode(time_index), encode(freq_index)], dim=1)
    if add_cls_token:
        table = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), table], dim=0)
    return table


# ------------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------------
@dataclass
class GramModelOutput(ModelOutput):
    r"""
    Output of [`GramModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_steps, frame_embedding_size)`):
            Time-resolved ("raw") embeddings: one vector per time step of patches (20 ms for time patching,
            80 ms for frame patching), the frequency patches of a step concatenated. Steps past a clip's end
            are zero (see `embedding_mask`). Always float32.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, embedding_size)`):
            Clip embedding by the pooling strategy: "raw" (`frame_embedding_size`), "mean" or "cls"
            (`hidden_size`). Always float32.
        embedding_mask (`torch.LongTensor` of shape `(batch_size, num_steps)`):
            1 for the steps of `last_hidden_state` that hold real audio, 0 for padding.
        timestamps (`torch.FloatTensor` of shape `(num_steps,)`):
            Time in milliseconds of the first frame of each step.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            The patch embeddings and the output of each layer, each of shape
            `(batch_size, num_chunks, 1 + num_patches, hidden_size)` (CLS first, zeros for chunks past a
            clip's end).
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
            Attention weights of each layer, each of shape
            `(batch_size, num_chunks, num_heads, 1 + num_patches, 1 + num_patches)`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    embedding_mask: torch.LongTensor | None = None
    timestamps: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ------------------------------------------------------------------------------------------------------
# Embeddings
# ------------------------------------------------------------------------------------------------------
def visible_patch_index(bool_masked_pos: torch.Tensor, num_visible: int | None = None) -> torch.Tensor:
    """Indices `(batch_size, num_visible)` of the unmasked patches, in ascending order.

    Gathering and scattering with them keeps every shape static, where boolean indexing would make them
    data-dependent (and break `torch.compile` graphs). A caller that knows every row keeps `num_visible`
    patches (random masking) passes it, which also skips the check and its device synchronisation.
    """
    if num_visible is None:
        kept = (~bool_masked_pos).sum(dim=1)
        if kept.numel() and not bool(torch.all(kept == kept[0])):
            raise ValueError("bool_masked_pos must mask the same number of patches in every sample.")
        num_visible = int(kept[0]) if kept.numel() else bool_masked_pos.shape[1]
    order = torch.argsort(bool_masked_pos.to(torch.uint8), dim=1, stable=True)  # kept patches first
    return order[:, :num_visible]


class GramPatchEmbeddings(nn.Module):
    """Non-overlapping (freq x time) patches of a chunk, projected by one convolution."""

    def __init__(self, config: GramConfig):
        super().__init__()
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_stride
        )

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        # (N, C, mels, frames) -> (N, D, grid_f, grid_t) -> (N, grid_f * grid_t, D)
        return self.projection(spectrogram).flatten(2).transpose(1, 2)


class GramEmbeddings(nn.Module):
    """Chunk normalisation, patch embedding, fixed sin-cos position embedding and the CLS token."""

    def __init__(self, config: GramConfig):
        super().__init__()
        self.config = config
        self.normalized_shape = (config.num_channels, config.num_mel_bins, config.chunk_frames)
        self.patch_embeddings = GramPatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        # The fixed sin-cos table: a persistent buffer, saved and loaded with the weights, never trained.
        self.register_buffer("position_embeddings", self.sincos_table(config), persistent=True)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    @staticmethod
    def sincos_table(config: GramConfig) -> torch.Tensor:
        """`(1, 1 + num_patches, hidden_size)` float32, CLS row first (zeros)."""
        return get_2d_sincos_position_embeddings(config.hidden_size, config.grid_size, add_cls_token=True).float()[None]

    def normalize(self, chunks: torch.Tensor) -> torch.Tensor:
        """Per-chunk normalisation of the original: LayerNorm without affine over (channels, mels, frames).

        Args:
            chunks (`torch.FloatTensor` of shape `(num_chunks, num_channels, chunk_frames, num_mel_bins)`).

        Returns:
            float32 `(num_chunks, num_channels, num_mel_bins, chunk_frames)`, frequency first as the patches.
        """
        spectrogram = chunks.float().transpose(2, 3)
        return F.layer_norm(spectrogram, self.normalized_shape, eps=self.config.spectrogram_norm_eps)

    def forward(
        self,
        normalized: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        visible_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            normalized (`torch.FloatTensor` of shape `(num_chunks, num_channels, num_mel_bins, chunk_frames)`):
                output of `normalize`.
            bool_masked_pos (`torch.BoolTensor` of shape `(num_chunks, num_patches)`, *optional*): patches to
                drop (True = masked); every chunk must mask the same number of patches.
            visible_index (`torch.LongTensor` of shape `(num_chunks, num_kept_patches)`, *optional*): the kept
                patches as `visible_patch_index` gives them (instead of `bool_masked_pos`).

        Returns:
            `(num_chunks, 1 + num_kept_patches, hidden_size)`, CLS first.
        """
        weight = self.patch_embeddings.projection.weight
        patches = self.patch_embeddings(normalized.to(weight.dtype))  # (N, P, D)
        position = self.position_embeddings.to(patches.dtype)
        patches = patches + position[:, 1:]
        if visible_index is None and bool_masked_pos is not None:
            visible_index = visible_patch_index(bool_masked_pos)
        if visible_index is not None:
            patches = patches.gather(1, visible_index.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        cls = (self.cls_token + position[:, :1]).expand(patches.shape[0], -1, -1)
        return self.dropout(torch.cat([cls, patches], dim=1))


# ------------------------------------------------------------------------------------------------------
# Encoder
# ------------------------------------------------------------------------------------------------------
def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention over `(batch, heads, seq, head_dim)`; returns `(batch, seq, heads, head_dim)`."""
    weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class GramSelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (the layout of `nn.MultiheadAttention.in_proj`),
    through transformers' attention interface (SDPA by default, eager, flash attention)."""

    def __init__(self, config: GramConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def attention_bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        return None

    def attention_interface(self, output_attentions: bool) -> Callable:
        if output_attentions or self.config._attn_implementation == "eager":
            return eager_attention_forward
        return ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        batch, seq_len, _ = hidden_states.shape
        # (B, L, 3D) -> 3 x (B, H, L, hd)
        query, key, value = (
            self.qkv(hidden_states).view(batch, seq_len, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )
        context, weights = self.attention_interface(output_attentions)(
            self,
            query,
            key,
            value,
            self.attention_bias(query.dtype),
            scaling=self.scaling,
            dropout=self.config.attention_probs_dropout_prob if self.training else 0.0,
            is_causal=False,
        )
        return self.proj(context.reshape(batch, seq_len, -1)), weights


class GramWindowedSelfAttention(GramSelfAttention):
    """The MW-MAE decoder's multi-window attention over the `num_patches` tokens of a chunk.

    Head `h` with window `w > 0` attends only within non-overlapping windows of `w` consecutive tokens and adds
    a learnable relative-position bias (one value per offset, `2w - 1` of them); `w = 0` is global attention.
    All heads run as one batched attention with an additive `(heads, seq, seq)` bias built from two buffers
    made once in `__init__` (as timm/Swin keep their index tables), not a loop over heads or windows.

    Flash attention cannot take an additive bias (it would read it as a padding mask): under
    `attn_implementation="flash_attention_2"` this module runs SDPA instead, so the result stays exact.
    """

    def __init__(self, config: GramConfig):
        super().__init__(config)
        self.window_sizes = list(config.decoder_window_sizes)
        if len(self.window_sizes) != self.num_heads:
            raise ValueError(f"Expected {self.num_heads} window sizes, got {self.window_sizes}.")
        self.relative_position_bias_tables = nn.ParameterDict(
            {str(h): nn.Parameter(torch.zeros(2 * w - 1, 1)) for h, w in enumerate(self.window_sizes) if w > 0}
        )
        index, allowed = self.window_layout(self.window_sizes, config.num_patches)
        # Derived from the config: rebuilt, never saved (conversion checks the original's index tables).
        self.register_buffer("bias_index", index, persistent=False)
        self.register_buffer("window_mask", allowed, persistent=False)

    @staticmethod
    def window_layout(window_sizes: list[int], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per head `(heads, seq_len, seq_len)`: each (query, key) pair's entry in the concatenated bias tables
        (the last entry, a zero, for global heads) and whether the pair shares a window."""
        position = torch.arange(seq_len)
        offset = position[:, None] - position[None, :]  # i - j, as the original relative_position_index
        indices, allowed, table_start = [], [], 0
        for window in window_sizes:
            if window > 0:
                indices.append(table_start + (offset + window - 1).clamp(0, 2 * window - 2))
                allowed.append((position[:, None] // window) == (position[None, :] // window))
                table_start += 2 * window - 1
            else:
                indices.append(None)
                allowed.append(torch.ones(seq_len, seq_len, dtype=torch.bool))
        zero_entry = torch.full((seq_len, seq_len), table_start, dtype=torch.long)
        return torch.stack([zero_entry if i is None else i for i in indices]), torch.stack(allowed)

    def attention_bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """Additive attention bias `(1, heads, seq_len, seq_len)`, or None when every head is global."""
        if not self.relative_position_bias_tables:
            return None
        tables = [self.relative_position_bias_tables[str(h)].view(-1) for h, w in enumerate(self.window_sizes) if w > 0]
        flat = torch.cat(tables + [tables[0].new_zeros(1)])
        return flat[self.bias_index].masked_fill(~self.window_mask, float("-inf")).unsqueeze(0).to(dtype)

    def attention_interface(self, output_attentions: bool) -> Callable:
        if self.relative_position_bias_tables and self.config._attn_implementation.startswith("flash"):
            return ALL_ATTENTION_FUNCTIONS.get_interface("sdpa", eager_attention_forward)
        return super().attention_interface(output_attentions)


class GramMLP(nn.Module):
    def __init__(self, config: GramConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        if config.hidden_act != "gelu":
            raise ValueError(f"GRAM uses exact GELU; hidden_act={config.hidden_act!r} is not supported.")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(hidden_states)))))


class GramLayer(nn.Module):
    """Pre-LN transformer block (the original's torchvision `EncoderBlock`; the decoder's with windowed
    attention)."""

    def __init__(self, config: GramConfig, attention_class: type[GramSelfAttention] = GramSelfAttention):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = attention_class(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = GramMLP(config)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        attended, weights = self.attention(self.layernorm_before(hidden_states), output_attentions)
        hidden_states = hidden_states + self.dropout(attended)
        hidden_states = hidden_states + self.mlp(self.layernorm_after(hidden_states))
        return hidden_states, weights


class GramEncoder(nn.Module):
    def __init__(self, config: GramConfig):
        super().__init__()
        self.layer = nn.ModuleList([GramLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        num_layers: int | None = None,
    ):
        """Runs the first `num_layers` layers (all by default)."""
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layer[:num_layers]:
            if self.gradient_checkpointing and self.training:
                checkpoint = getattr(self, "_gradient_checkpointing_func", None) or torch.utils.checkpoint.checkpoint
                hidden_states, weights = checkpoint(layer, hidden_states, output_attentions, use_reentrant=False)
            else:
                hidden_states, weights = layer(hidden_states, output_attentions)
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        return hidden_states, all_hidden, all_attentions


# ------------------------------------------------------------------------------------------------------
# Pretrained model base
# ------------------------------------------------------------------------------------------------------
REMOTE_CODE_FILES = ("configuration_gram.py", "modeling_gram.py", "feature_extraction_gram.py", "pipeline_gram.py")


class GramPreTrainedModel(PreTrainedModel):
    config_class = GramConfig
    base_model_prefix = "gram"
    main_input_name = "input_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True  # the encoder; the decoder's windowed heads run SDPA under flash
    _supports_flex_attn = False
    _supports_attention_backend = True
    _no_split_modules = ["GramLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        # transformers' `init` functions leave tensors loaded from a checkpoint untouched.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # As MAE: a linear layer over flattened patches.
            weight = module.weight
            if not getattr(weight, "_is_hf_initialized", False):
                with torch.no_grad():
                    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, GramEmbeddings):
            init.normal_(module.cls_token, std=std)
            init.copy_(module.position_embeddings, GramEmbeddings.sincos_table(module.config))
        elif isinstance(module, GramDecoder):
            init.normal_(module.mask_token, std=std)
            init.copy_(module.position_embeddings, GramDecoder.sincos_table(module.config))
        if isinstance(module, GramWindowedSelfAttention):
            for table in module.relative_position_bias_tables.values():
                init.trunc_normal_(table, std=std)
            # Derived buffers, never in a checkpoint: always rebuilt (they would be empty after meta-device loading).
            index, allowed = module.window_layout(module.window_sizes, module.config.num_patches)
            module.bias_index.copy_(index)
            module.window_mask.copy_(allowed)

    def set_attn_implementation(self, attn_implementation) -> None:
        """`PreTrainedModel.set_attn_implementation`, also for the decoder, whose layers hold a copy of the config
        (with the decoder's sizes) that transformers does not know about."""
        super().set_attn_implementation(attn_implementation)
        for module in self.modules():
            if isinstance(module, GramDecoder):
                module.layer_config._attn_implementation = self.config._attn_implementation

    def save_pretrained(self, save_directory: str | os.PathLike, *args, push_to_hub: bool = False, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, plus the three remote-code files, so the directory loads with
        `trust_remote_code=True` on its own (also offline). With `push_to_hub=True` the upload goes through
        `push_to_hub`, which saves (code files included) into a fresh folder and uploads all of it."""
        hub_kwargs = {
            key: kwargs.pop(key)
            for key in ("repo_id", "commit_message", "private", "token", "create_pr")
            if key in kwargs
        }
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            here = os.path.dirname(os.path.abspath(__file__))
            for name in REMOTE_CODE_FILES:
                source = os.path.join(here, name)
                if os.path.isfile(source):
                    shutil.copyfile(source, os.path.join(save_directory, name))
        if push_to_hub:
            repo_id = hub_kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            self.push_to_hub(repo_id, **hub_kwargs)


# ------------------------------------------------------------------------------------------------------
# Chunking and pooling (shared by GramModel and the ONNX runner in export_onnx.py)
# ------------------------------------------------------------------------------------------------------
def check_inputs(config: GramConfig, input_values: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Validates the inputs; returns each clip's number of real frames `(batch_size,)`."""
    if not isinstance(input_values, torch.Tensor):
        raise TypeError(f"input_values must be a torch.Tensor, got {type(input_values).__name__}.")
    if not input_values.is_floating_point():
        raise TypeError(f"input_values must be floating point log-mels, got dtype {input_values.dtype}.")
    expected = f"(batch_size, {config.num_channels}, num_frames, {config.num_mel_bins})"
    if input_values.ndim != 4:
        raise ValueError(f"Expected input_values of shape {expected}, got {tuple(input_values.shape)}.")
    batch, channels, frames, mels = input_values.shape
    if channels != config.num_channels or mels != config.num_mel_bins or frames == 0 or batch == 0:
        raise ValueError(
            f"Expected input_values of shape {expected} (this is a {config.audio_format} model), "
            f"got {tuple(input_values.shape)}."
        )
    if attention_mask is None:
        return torch.full((batch,), frames, dtype=torch.long, device=input_values.device)
    if not isinstance(attention_mask, torch.Tensor):
        attention_mask = torch.as_tensor(np.asarray(attention_mask))
    if tuple(attention_mask.shape) != (batch, frames):
        raise ValueError(f"Expected attention_mask of shape {(batch, frames)}, got {tuple(attention_mask.shape)}.")
    mask = attention_mask.to(device=input_values.device).long()
    num_frames = mask.sum(dim=1)
    prefix = torch.arange(frames, device=mask.device) < num_frames[:, None]
    if not torch.equal(mask, prefix.long()):
        raise ValueError("attention_mask must be 1 on a prefix of real frames and 0 on right padding only.")
    if bool((num_frames == 0).any()):
        raise ValueError("Every clip needs at least one real frame; attention_mask has an all-zero row.")
    return num_frames


@dataclass
class ChunkLayout:
    """A batch cut into chunks: `chunks` `(batch, channels, max_chunks, chunk_frames, mels)`, zero past each
    clip's end, and the `(clip_index, chunk_index)` of the chunks that hold audio, in order."""

    chunks: torch.Tensor
    clip_index: torch.Tensor
    chunk_index: torch.Tensor
    num_frames: torch.Tensor
    num_chunks: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.chunks.shape[0]

    @property
    def max_chunks(self) -> int:
        return self.chunks.shape[2]

    @property
    def num_real_chunks(self) -> int:
        return self.clip_index.shape[0]

    def gather(self, start: int, stop: int) -> torch.Tensor:
        """Real chunks `start:stop` as `(stop - start, channels, chunk_frames, mels)`."""
        return self.chunks[self.clip_index[start:stop], :, self.chunk_index[start:stop]]

    def per_clip(self, values: torch.Tensor) -> torch.Tensor:
        """`(num_real_chunks, ...)` -> `(batch, max_chunks, ...)`, zeros for chunks past a clip's end."""
        out = values.new_zeros((self.batch_size, self.max_chunks) + tuple(values.shape[1:]))
        out[self.clip_index, self.chunk_index] = values
        return out


def split_into_chunks(
    config: GramConfig, input_values: torch.Tensor, attention_mask: torch.Tensor | None
) -> ChunkLayout:
    """Validates the inputs and cuts them into `config.chunk_frames`-frame chunks, the last one zero-padded."""
    num_frames = check_inputs(config, input_values, attention_mask)
    chunk_frames = config.chunk_frames
    num_chunks = (num_frames + chunk_frames - 1) // chunk_frames  # (B,)
    batch, channels, frames, mels = input_values.shape
    max_chunks = int(num_chunks.max())
    # One zero-filled copy holds all chunks: frames past a clip's end are zero (the original's padding),
    # whatever the batch was padded with.
    total = max_chunks * chunk_frames
    kept = min(frames, total)
    padded = input_values.new_zeros(batch, channels, total, mels)
    padded[:, :, :kept] = input_values[:, :, :kept]
    if attention_mask is not None:
        frame_is_real = torch.arange(total, device=padded.device) < num_frames[:, None]
        padded.masked_fill_(~frame_is_real[:, None, :, None], 0.0)
    chunk_is_real = torch.arange(max_chunks, device=padded.device) < num_chunks[:, None]  # (B, n)
    clip_index, chunk_index = chunk_is_real.nonzero(as_tuple=True)
    chunks = padded.view(batch, channels, max_chunks, chunk_frames, mels)
    return ChunkLayout(chunks, clip_index, chunk_index, num_frames, num_chunks)


def pool_chunk_tokens(config: GramConfig, tokens: torch.Tensor, layout: ChunkLayout, strategy: str):
    """Time-resolved and pooled embeddings from the encoder tokens of the layout's real chunks.

    Args:
        tokens (`torch.FloatTensor` of shape `(num_real_chunks, 1 + num_patches, hidden_size)`): CLS first.

    Returns:
        `(last_hidden_state, pooler_output, embedding_mask, timestamps)` as in [`GramModelOutput`].
    """
    if strategy not in POOLING_STRATEGIES:
        raise ValueError(f"strategy must be one of {POOLING_STRATEGIES}, got {strategy!r}.")
    tokens = tokens.float()
    # "raw": b (f t) d -> b t (f d) per chunk, chunks concatenated in time: (B, n * grid_t, grid_f * D)
    grid_f, grid_t = config.grid_size
    hidden = tokens.shape[-1]
    steps = layout.per_clip(tokens[:, 1:].reshape(-1, grid_f, grid_t, hidden).transpose(1, 2))
    steps = steps.view(layout.batch_size, layout.max_chunks * grid_t, grid_f * hidden)
    frames_per_step = config.patch_stride[1]
    num_steps = (layout.num_frames + frames_per_step - 1) // frames_per_step  # steps touching real frames
    last_hidden_state = steps[:, : int(num_steps.max())]
    embedding_mask = (torch.arange(last_hidden_state.shape[1], device=steps.device) < num_steps[:, None]).long()
    last_hidden_state.masked_fill_(embedding_mask[..., None] == 0, 0.0)
    if strategy == "raw":
        pooled = last_hidden_state.sum(dim=1) / num_steps[:, None]
    else:
        per_chunk = tokens[:, 0] if strategy == "cls" else tokens[:, 1:].mean(dim=1)
        pooled = layout.per_clip(per_chunk).sum(dim=1) / layout.num_chunks[:, None]
    timestamps = (
        torch.arange(last_hidden_state.shape[1], device=steps.device, dtype=torch.float32) * config.step_duration_ms
    )
    return last_hidden_state, pooled, embedding_mask, timestamps


# ------------------------------------------------------------------------------------------------------
# The encoder model
# ------------------------------------------------------------------------------------------------------
class GramModel(GramPreTrainedModel):
    r"""
    GRAM encoder. Takes log-mel spectrograms of any length, cuts them into `chunk_frames`-frame chunks (the
    last one zero-padded), encodes all chunks of all clips as one batch (in sub-batches of
    `config.chunk_batch_size`) and pools them as the original GRAM does.

    Example:

    ```python
    >>> import torch
    >>> from configuration_gram import GramConfig
    >>> from modeling_gram import GramModel
    >>> config = GramConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    >>> model = GramModel(config).eval()
    >>> input_values = torch.randn(1, 2, 301, 128)  # 3 s of binaural log-mels
    >>> output = model(input_values, strategy="mean")
    >>> output.last_hidden_state.shape, output.pooler_output.shape
    (torch.Size([1, 151, 64]), torch.Size([1, 64]))
    ```
    """

    # A pretraining checkpoint also holds the MW-MAE decoder, which the encoder alone does not use.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]

    def __init__(self, config: GramConfig):
        super().__init__(config)
        self.config = config
        self.embeddings = GramEmbeddings(config)
        self.encoder = GramEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def encode_chunks(
        self,
        chunks: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        num_layers: int | None = None,
    ):
        """Encoder over a batch of chunks, without pooling.

        Args:
            chunks (`torch.FloatTensor` of shape `(num_chunks, num_channels, chunk_frames, num_mel_bins)`).
            bool_masked_pos (`torch.BoolTensor` of shape `(num_chunks, num_patches)`, *optional*).
            num_layers (`int`, *optional*): stop after this many layers (the final LayerNorm still applies).

        Returns:
            `(tokens, hidden_states, attentions)`: tokens `(num_chunks, 1 + num_kept_patches, hidden_size)`
            after the final LayerNorm, CLS first; the per-layer tuples or None.
        """
        return self.encode_normalized(
            self.embeddings.normalize(chunks), bool_masked_pos, output_hidden_states, output_attentions, num_layers
        )

    def encode_normalized(
        self,
        normalized: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        num_layers: int | None = None,
        visible_index: torch.Tensor | None = None,
    ):
        """`encode_chunks` from already normalised chunks `(num_chunks, num_channels, num_mel_bins, chunk_frames)`."""
        embedded = self.embeddings(normalized, bool_masked_pos, visible_index)
        hidden, all_hidden, all_attentions = self.encoder(embedded, output_hidden_states, output_attentions, num_layers)
        return self.layernorm(hidden), all_hidden, all_attentions

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        strategy: str | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        layer: int | None = None,
    ) -> GramModelOutput:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, num_channels, num_frames, num_mel_bins)`):
                Log-mel features from [`GramFeatureExtractor`]; any number of frames.
            attention_mask (`torch.LongTensor` of shape `(batch_size, num_frames)`, *optional*):
                1 for real frames, 0 for padding (right padding only). With it, a clip gets the same
                embeddings alone or in a padded batch.
            strategy (`str`, *optional*): pooling of `pooler_output`: "raw" (mean of the time-resolved
                embeddings over real steps), "mean" (mean over each chunk's patch tokens, then over the clip's
                chunks) or "cls" (each chunk's CLS token, averaged over chunks). Defaults to
                `config.pooling_strategy`.
            output_hidden_states, output_attentions, return_dict: as in `transformers` (`return_dict=False`
                gives the output's non-None fields as a tuple).
            layer (`int`, *optional*): embed from the output of this layer (0 = patch embeddings,
                `num_hidden_layers` = last, the default), with the final LayerNorm applied, as the original's
                `get_audio_representation_from_layer`. Only the layers needed are run.
        """
        strategy = strategy if strategy is not None else self.config.pooling_strategy
        if strategy not in POOLING_STRATEGIES:
            raise ValueError(f"strategy must be one of {POOLING_STRATEGIES}, got {strategy!r}.")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        if layer is not None and not 0 <= layer <= self.config.num_hidden_layers:
            raise ValueError(f"layer must be in [0, {self.config.num_hidden_layers}], got {layer}.")
        layout = split_into_chunks(self.config, input_values, attention_mask)
        tokens, all_hidden, all_attentions = self._encode_in_sub_batches(
            layout, output_hidden_states, output_attentions, layer
        )
        last_hidden_state, pooled, embedding_mask, timestamps = pool_chunk_tokens(self.config, tokens, layout, strategy)
        hidden_states = tuple(layout.per_clip(h) for h in all_hidden) if output_hidden_states else None
        attentions = tuple(layout.per_clip(a) for a in all_attentions) if output_attentions else None
        return GramModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled,
            embedding_mask=embedding_mask,
            timestamps=timestamps,
            hidden_states=hidden_states,
            attentions=attentions,
        )

    def _encode_in_sub_batches(
        self, layout: "ChunkLayout", output_hidden_states: bool, output_attentions: bool, num_layers: int | None = None
    ):
        """Encodes the layout's real chunks, `config.chunk_batch_size` at a time (only a sub-batch is ever
        gathered); returns float32 tokens `(num_real_chunks, 1 + num_patches, hidden_size)` and the layers."""
        size = max(1, int(self.config.chunk_batch_size))
        num = layout.num_real_chunks
        tokens = None
        hidden, attentions = [], []
        for start in range(0, num, size):
            stop = min(start + size, num)
            out, layer_hidden, layer_attentions = self.encode_chunks(
                layout.gather(start, stop), None, output_hidden_states, output_attentions, num_layers
            )
            if tokens is None:
                tokens = torch.empty((num,) + tuple(out.shape[1:]), dtype=torch.float32, device=out.device)
            tokens[start:stop] = out
            hidden.append(layer_hidden)
            attentions.append(layer_attentions)

        def join(parts):  # list over sub-batches of tuples over layers -> tuple over layers
            return tuple(torch.cat(layer, dim=0) for layer in zip(*parts))

        return (
            tokens,
            join(hidden) if output_hidden_states else None,
            join(attentions) if output_attentions else None,
        )


# ------------------------------------------------------------------------------------------------------
# MW-MAE decoder and the pretraining model
# ------------------------------------------------------------------------------------------------------
def decoder_config(config: GramConfig) -> GramConfig:
    """The config of the decoder layers: a copy of the model config with the decoder's sizes (as ViTMAE)."""
    decoder = copy.deepcopy(config)
    decoder.hidden_size = config.decoder_hidden_size
    decoder.num_hidden_layers = config.decoder_num_hidden_layers
    decoder.num_attention_heads = config.decoder_num_attention_heads
    decoder.intermediate_size = config.decoder_intermediate_size
    decoder.layer_norm_eps = config.decoder_layer_norm_eps
    return decoder


@dataclass
class GramForPreTrainingOutput(ModelOutput):
    r"""
    Output of [`GramForPreTraining`].

    Args:
        loss (`torch.FloatTensor` of shape `()`): mean squared error over the masked patches, times the
            number of feature channels (as the original).
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_dim)`): predicted
            values of every patch of the normalised spectrogram, `patch_dim = num_channels x freq x time`.
        mask (`torch.BoolTensor` of shape `(batch_size, num_patches)`): True for the masked patches.
        target (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_dim)`): the normalised
            spectrogram patches the reconstruction is compared with.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): encoder states of the visible patches,
            each `(batch_size, 1 + num_visible_patches, hidden_size)`.
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    mask: torch.BoolTensor | None = None
    target: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class GramDecoder(nn.Module):
    """MW-MAE decoder: visible tokens + mask tokens, fixed sin-cos positions (no CLS), multi-window layers."""

    def __init__(self, config: GramConfig):
        super().__init__()
        self.config = config
        size = config.decoder_hidden_size
        for window in config.decoder_window_sizes:
            if window < 0 or (window and config.num_patches % window):
                raise ValueError(
                    f"Decoder window sizes must be 0 (global) or divide the {config.num_patches} patches of a "
                    f"chunk; got {config.decoder_window_sizes}."
                )
        self.decoder_embed = nn.Linear(config.hidden_size, size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, size))
        self.register_buffer("position_embeddings", self.sincos_table(config), persistent=True)  # fixed, saved
        self.layer_config = layer_config = decoder_config(config)
        self.layers = nn.ModuleList(
            [GramLayer(layer_config, GramWindowedSelfAttention) for _ in range(config.decoder_num_hidden_layers)]
        )
        self.layernorm = nn.LayerNorm(size, eps=config.decoder_layer_norm_eps)
        patch_dim = config.num_channels * config.patch_size[0] * config.patch_size[1]
        self.prediction = nn.Linear(size, patch_dim)

    @staticmethod
    def sincos_table(config: GramConfig) -> torch.Tensor:
        """`(1, num_patches, decoder_hidden_size)` float32 (the decoder has no CLS token)."""
        return get_2d_sincos_position_embeddings(
            config.decoder_hidden_size, config.grid_size, add_cls_token=False
        ).float()[None]

    def forward(
        self, encoded: torch.Tensor, bool_masked_pos: torch.Tensor, visible_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            encoded (`torch.FloatTensor` of shape `(batch_size, 1 + num_visible, hidden_size)`): encoder output.
            bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`).
            visible_index (`torch.LongTensor` of shape `(batch_size, num_visible)`, *optional*): the kept
                patches (`visible_patch_index(bool_masked_pos)` when not given).

        Returns:
            `(batch_size, num_patches, patch_dim)` predictions for every patch.
        """
        visible = self.decoder_embed(encoded[:, 1:])  # the decoder has no CLS token
        batch, num_patches = bool_masked_pos.shape
        if visible_index is None:
            visible_index = visible_patch_index(bool_masked_pos)
        tokens = self.mask_token.to(visible.dtype).expand(batch, num_patches, -1)
        tokens = tokens.scatter(1, visible_index.unsqueeze(-1).expand(-1, -1, visible.shape[-1]), visible)
        hidden = tokens + self.position_embeddings.to(visible.dtype)
        for layer in self.layers:
            hidden, _ = layer(hidden)
        return self.prediction(self.layernorm(hidden))


class GramForPreTraining(GramPreTrainedModel):
    r"""
    GRAM encoder + MW-MAE decoder for masked-spectrogram pretraining. Takes 2-second chunks of log-mels,
    normalises each, masks `config.mask_ratio` of the patches (or the caller's `bool_masked_pos`), encodes
    the visible ones and reconstructs all patches.

    Example:

    ```python
    >>> import torch
    >>> from configuration_gram import GramConfig
    >>> from modeling_gram import GramForPreTraining
    >>> config = GramConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    ...                     decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_intermediate_size=64)
    >>> model = GramForPreTraining(config)
    >>> output = model(torch.randn(4, 2, 200, 128))
    >>> output.reconstruction.shape, int(output.mask.sum(dim=1)[0])
    (torch.Size([4, 100, 512]), 80)
    ```
    """

    def __init__(self, config: GramConfig):
        super().__init__(config)
        self.config = config
        self.gram = GramModel(config)
        self.decoder = GramDecoder(config)
        self.post_init()

    @property
    def num_masked_patches(self) -> int:
        return int(self.config.mask_ratio * self.config.num_patches + 1e-6)

    def patchify(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """`(B, C, mels, frames)` -> `(B, num_patches, C * patch_f * patch_t)`, patches in (freq, time) order."""
        batch, channels, mels, frames = spectrogram.shape
        patch_f, patch_t = self.config.patch_size
        patches = spectrogram.reshape(batch, channels, mels // patch_f, patch_f, frames // patch_t, patch_t)
        return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * patch_f * patch_t)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of `patchify`: `(B, num_patches, patch_dim)` -> `(B, C, mels, frames)`."""
        grid_f, grid_t = self.config.grid_size
        patch_f, patch_t = self.config.patch_size
        channels = self.config.num_channels
        spectrogram = patches.reshape(patches.shape[0], grid_f, grid_t, channels, patch_f, patch_t)
        return spectrogram.permute(0, 3, 1, 4, 2, 5).reshape(
            patches.shape[0], channels, grid_f * patch_f, grid_t * patch_t
        )

    def random_masking(self, batch_size: int, device: torch.device, noise: torch.Tensor | None = None) -> torch.Tensor:
        """`(batch_size, num_patches)` bool mask, True on `num_masked_patches` random patches per sample
        (those with the smallest `noise`, uniform in [0, 1) unless given)."""
        num_patches = self.config.num_patches
        if noise is None:
            noise = torch.rand(batch_size, num_patches, device=device)
        order = noise.argsort(dim=1)
        mask = torch.zeros(batch_size, num_patches, dtype=torch.bool, device=device)
        return mask.scatter(1, order[:, : self.num_masked_patches], True)

    def reconstruction_loss(
        self, reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """MSE per patch, averaged over the masked patches, times the number of feature channels."""
        per_patch = (reconstruction.float() - target.float()).square().mean(dim=-1)
        weights = mask.float()
        return (per_patch * weights).sum() / weights.sum().clamp_min(1.0) * self.config.num_channels

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
    ) -> GramForPreTrainingOutput:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, num_channels, chunk_frames, num_mel_bins)`):
                log-mel chunks (unnormalised: the model normalises each as the original does).
            bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*): True for
                masked patches, the same number in every sample. Defaults to random masking.
            noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*): makes the random
                masking reproducible (the smallest values are masked).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        config = self.config
        expected = (config.num_channels, config.chunk_frames, config.num_mel_bins)
        if (
            not isinstance(input_values, torch.Tensor)
            or input_values.ndim != 4
            or tuple(input_values.shape[1:]) != expected
        ):
            shape = tuple(input_values.shape) if isinstance(input_values, torch.Tensor) else type(input_values).__name__
            raise ValueError(
                f"Expected input_values of shape (batch_size, {', '.join(map(str, expected))}), got {shape}."
            )
        batch = input_values.shape[0]
        if bool_masked_pos is None:
            bool_masked_pos = self.random_masking(batch, input_values.device, noise)
            visible_index = visible_patch_index(bool_masked_pos, config.num_patches - self.num_masked_patches)
        else:
            if bool_masked_pos.shape != (batch, config.num_patches) or bool_masked_pos.dtype != torch.bool:
                raise ValueError(
                    f"Expected bool_masked_pos as a bool tensor of shape {(batch, config.num_patches)}, got "
                    f"{bool_masked_pos.dtype} {tuple(bool_masked_pos.shape)}."
                )
            bool_masked_pos = bool_masked_pos.to(input_values.device)
            visible_index = visible_patch_index(bool_masked_pos)

        normalized = self.gram.embeddings.normalize(input_values)  # (B, C, mels, frames) float32
        target = self.patchify(normalized)
        encoded, hidden_states, _ = self.gram.encode_normalized(
            normalized, output_hidden_states=output_hidden_states, visible_index=visible_index
        )
        reconstruction = self.decoder(encoded, bool_masked_pos, visible_index).float()
        loss = self.reconstruction_loss(reconstruction, target, bool_masked_pos)
        return GramForPreTrainingOutput(
            loss=loss, reconstruction=reconstruction, mask=bool_masked_pos, target=target, hidden_states=hidden_states
        )


# ------------------------------------------------------------------------------------------------------
# Task heads
# ------------------------------------------------------------------------------------------------------
def angular_error_degrees(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between direction vectors `(..., 3)` (normalised here), shape `(...)`."""
    cosine = (F.normalize(predicted.double(), dim=-1) * F.normalize(target.double(), dim=-1)).sum(dim=-1)
    return torch.rad2deg(torch.arccos(cosine.clamp(-1.0, 1.0))).float()


class _GramHeadModel(GramPreTrainedModel):
    """Shared body of the task heads: the encoder (optionally frozen) and its pooled embedding."""

    def __init__(self, config: GramConfig, num_outputs: int):
        super().__init__(config)
        self.config = config
        self.gram = GramModel(config)
        size = config.frame_embedding_size if config.pooling_strategy == "raw" else config.hidden_size
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.head = nn.Linear(size, num_outputs)
        if config.freeze_encoder:
            self.freeze_encoder()
        self.post_init()

    def freeze_encoder(self) -> None:
        """Train the head only (linear probing): the encoder gets no gradients and runs without them."""
        for parameter in self.gram.parameters():
            parameter.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`; a `freeze_encoder` config freezes the loaded encoder again
        (loading re-creates the parameters, trainable)."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if model.config.freeze_encoder:
            model.freeze_encoder()
        return loaded

    def _pooled(self, input_values, attention_mask, output_hidden_states):
        frozen = not any(p.requires_grad for p in self.gram.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            outputs = self.gram(
                input_values,
                attention_mask,
                strategy=self.config.pooling_strategy,
                output_hidden_states=output_hidden_states,
            )
        return self.dropout(outputs.pooler_output), outputs


class GramForAudioClassification(_GramHeadModel):
    r"""
    GRAM with a linear head on the pooled embedding (`config.pooling_strategy`), for single-label,
    multi-label or regression tasks; the loss follows `config.problem_type` as in `transformers` (inferred
    from `num_labels` and the labels' dtype when unset). `config.freeze_encoder=True` trains the head only.
    """

    loss_type = "ForSequenceClassification"

    def __init__(self, config: GramConfig):
        super().__init__(config, config.num_labels)

    @property
    def classifier(self) -> nn.Linear:
        return self.head

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
    ) -> SequenceClassifierOutput:
        r"""
        Args:
            input_values, attention_mask: as in [`GramModel`].
            labels (`torch.LongTensor` of shape `(batch_size,)` or `torch.FloatTensor` of shape
                `(batch_size, num_labels)`, *optional*): class indices (single-label), multi-hot targets
                (multi-label) or values (regression).
        """
        pooled, outputs = self._pooled(input_values, attention_mask, output_hidden_states)
        logits = self.head(pooled)
        loss = None
        if labels is not None:
            problem_type = self.config.problem_type or self.infer_problem_type(labels)
            if problem_type not in ("regression", "single_label_classification", "multi_label_classification"):
                raise ValueError(f"Unknown problem_type {problem_type!r}.")
            if problem_type != "single_label_classification":
                labels = labels.float()
            # transformers' sequence-classification loss, given the resolved problem type (the model's config is
            # left as it is: a batch of labels does not rewrite it).
            loss_config = copy.copy(self.config)
            loss_config.problem_type = problem_type
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=loss_config)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)

    def infer_problem_type(self, labels: torch.Tensor) -> str:
        """As transformers infers it when `config.problem_type` is unset: from `num_labels` and the labels' dtype."""
        if self.config.num_labels == 1:
            return "regression"
        if labels.dtype in (torch.long, torch.int):
            return "single_label_classification"
        return "multi_label_classification"


@dataclass
class GramSoundLocalizationOutput(ModelOutput):
    r"""
    Output of [`GramForSoundLocalization`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): mean squared error between the predicted and the
            true unit direction vectors (as the Nat-HEAR localization tasks regress x, y, z).
        directions (`torch.FloatTensor` of shape `(batch_size, 3)`): predicted direction of arrival, unit vectors.
        angular_error (`torch.FloatTensor` of shape `(batch_size,)`, *optional*): degrees between prediction and
            label, when labels are given.
        hidden_states: as in [`GramModel`], when asked.
    """

    loss: torch.FloatTensor | None = None
    directions: torch.FloatTensor | None = None
    angular_error: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class GramForSoundLocalization(_GramHeadModel):
    r"""
    GRAM with a linear head regressing the direction of arrival as a 3-D unit vector (x, y, z). Labels are
    direction vectors `(batch_size, 3)` (normalised here); the output reports the angular error in degrees.
    """

    def __init__(self, config: GramConfig):
        super().__init__(config, 3)

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
    ) -> GramSoundLocalizationOutput:
        pooled, outputs = self._pooled(input_values, attention_mask, output_hidden_states)
        directions = F.normalize(self.head(pooled).float(), dim=-1)
        loss = angular_error = None
        if labels is not None:
            if labels.shape[-1] != 3:
                raise ValueError(f"Expected direction labels of shape (batch_size, 3), got {tuple(labels.shape)}.")
            target = F.normalize(labels.to(directions.device).float(), dim=-1)
            loss = F.mse_loss(directions, target)
            angular_error = angular_error_degrees(directions.detach(), target)
        return GramSoundLocalizationOutput(
            loss=loss, directions=directions, angular_error=angular_error, hidden_states=outputs.hidden_states
        )


GramConfig.register_for_auto_class()
GramModel.register_for_auto_class("AutoModel")
GramForPreTraining.register_for_auto_class("AutoModelForPreTraining")
GramForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")
# GramForSoundLocalization has no Auto class in transformers: `AutoModel` stays the base model (GramModel) for
# every directory; load the head with GramForSoundLocalization.from_pretrained (see the README).
