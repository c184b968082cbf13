"""An independent re-implementation of the ORIGINAL GRAM inference path (labhamlet/GRAM-T), for tests.

It follows the original code line by line, with the building blocks the original used: torchaudio for the
features, torchvision's ViT `Encoder` with its own parameter names, numpy for the sin-cos table, einops for
the "raw" rearrangement, and the HEAR runtime's Python loop over zero-padded 2-s chunks. Nothing here
imports the package under test. Known bugs of the original are reproduced on purpose (and flagged), so
the tests can show where the package deliberately differs.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torchaudio
from einops import rearrange
from torch import nn
from torchvision.models.vision_transformer import Encoder


# --- src/model/pos_embed.py ------------------------------------------------------------------------
def original_sincos_table(embed_dim: int, grid_size: tuple[int, int], cls_token_num: int) -> np.ndarray:
    grid_h = np.arange(grid_size[0], dtype=np.float64)
    grid_w = np.arange(grid_size[1], dtype=np.float64)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size[0], grid_size[1]])

    def one_dim(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_dim(embed_dim // 2, grid[0]), one_dim(embed_dim // 2, grid[1])], axis=1)
    for _ in range(cls_token_num):
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


# --- src/model/GRAMT.py (encoder path only) ----------------------------------------------------------
class OriginalGramEncoder(nn.Module):
    """The original module's encoder side, with its state-dict key names."""

    def __init__(
        self,
        in_channels=2,
        fshape=128,
        tshape=2,
        hidden=768,
        layers=12,
        heads=12,
        mlp=3072,
        num_mel_bins=128,
        target_length=200,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.encoder_embedding_dim = hidden
        self.grid_size = (num_mel_bins // fshape, target_length // tshape)
        self.encoder = Encoder(
            seq_length=0,
            num_layers=layers,
            num_heads=heads,
            hidden_dim=hidden,
            mlp_dim=mlp,
            dropout=0.0,
            attention_dropout=0.0,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_channels, hidden, kernel_size=(fshape, tshape), stride=(fshape, tshape))
        self.cls_token = nn.Parameter(nn.init.normal_(torch.empty([1, 1, hidden])))
        pos = original_sincos_table(hidden, self.grid_size, cls_token_num=1)
        self.encoder.pos_embedding = nn.Parameter(torch.from_numpy(pos).float().unsqueeze(0), requires_grad=False)
        self.spectrogram_normalize = nn.LayerNorm([in_channels, num_mel_bins, target_length], elementwise_affine=False)
        # Non-trivial biases and norms, so that a wrong mapping cannot pass by accident.
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.requires_grad and ("bias" in name or "ln" in name):
                    p.add_(0.05 * torch.randn_like(p))

    def pass_through_encoder(self, x, B, until_block=None):
        x = x + self.encoder.pos_embedding[:, 1:, :]
        cls_token = self.cls_token.expand(B, -1, -1) + self.encoder.pos_embedding[:, :1, :]
        x = torch.cat((cls_token, x), dim=1)
        x = self.encoder.dropout(x)
        blocks = self.encoder.layers if until_block is None else self.encoder.layers[:until_block]
        for block in blocks:
            x = block(x)
        return self.encoder.ln(x)

    def get_audio_representation(self, x, strategy="mean", until_block=None):
        """get_audio_representation, or get_audio_representation_from_layer with `until_block`."""
        B = x.shape[0]
        x = x.transpose(2, 3)
        x = self.spectrogram_normalize(x)
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = self.pass_through_encoder(x, B, until_block)
        if strategy == "mean":
            return x[:, 1:, :].mean(axis=1)
        if strategy == "cls":
            return x[:, 0, :]
        if strategy == "raw":
            f, _ = self.grid_size
            return rearrange(x[:, 1:, :], "b (f t) d -> b t (f d)", f=f, d=self.encoder_embedding_dim)
        raise ValueError(strategy)


# --- hear_api/runtime.py: RuntimeGRAMT.encode / get_scene_embeddings ------------------------------------
@torch.no_grad()
def original_runtime_encode(
    model: OriginalGramEncoder, x: torch.Tensor, strategy: str, unit_frames: int = 200, until_block=None
):
    cur_frames = x.shape[2]
    pad_frames = unit_frames - (cur_frames % unit_frames)  # BUG (kept): a full extra chunk when divisible
    if pad_frames > 0:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad_frames), mode="constant")
    embeddings = []
    for i in range(x.shape[2] // unit_frames):
        chunk = x[:, :, i * unit_frames : (i + 1) * unit_frames, :]
        embeddings.append(model.get_audio_representation(chunk, strategy, until_block))
    if strategy == "raw":
        out = torch.hstack(embeddings)
        pad_emb_frames = int(embeddings[0].shape[1] * pad_frames / unit_frames)
        if pad_emb_frames > 0:
            out = out[:, :-pad_emb_frames]
        return out
    return torch.stack(embeddings, dim=1)


def original_scene_embedding(model, x, strategy):
    return original_runtime_encode(model, x, strategy).mean(dim=1)


# --- hear_api/ambisonic_feature_extractor.py + feature_helper_gram_t.py -----------------------------------
class OriginalAmbisonicFeatures(nn.Module):
    def __init__(self, sample_rate=32000, n_fft=1024, hop_length=320, f_min=50, n_mels=128):
        super().__init__()
        self.eps = 1e-6
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=n_fft,
            win_length=n_fft,
            hop_length=hop_length,
            power=None,
            center=True,
            pad_mode="reflect",
            onesided=True,
        )
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels, sample_rate, f_min, sample_rate // 2, n_fft // 2 + 1, None, "htk"
        )

    def forward(self, audio):
        spec = self.spectrogram(audio)
        mel_spec = torch.log(self.mel_scale(torch.abs(spec) ** 2.0) + self.eps)
        W, XYZ = spec[:, [0], ...], spec[:, 1:, ...]
        intensity = 2 * torch.real(torch.conj(W) * XYZ)
        energy = self.eps + torch.squeeze(torch.abs(W) ** 2) + torch.sum(torch.abs(XYZ) ** 2, dim=1)
        return torch.cat([mel_spec, self.mel_scale(intensity / energy.unsqueeze(dim=1))], dim=1)


def original_melspec():
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=32000, n_fft=1024, win_length=1024, hop_length=320, f_min=50, f_max=16000, n_mels=128, power=2.0
    )


@torch.no_grad()
def original_features(waveforms, in_channels: int) -> torch.Tensor:
    """FeatureExtractor._wav2fbank of the original runtime, on CPU (the original hard-codes .cuda())."""
    melspec = original_melspec() if in_channels in (1, 2) else OriginalAmbisonicFeatures()
    eps = torch.finfo().eps
    features = []
    for audio in waveforms:
        if audio.ndim == 1:
            audio = audio.unsqueeze(0)
        if audio.shape[0] == 1:
            if in_channels == 2:
                log_mel = (melspec(audio).transpose(2, 1) + eps).log()
                log_mel = torch.cat((log_mel, log_mel), dim=0)
            elif in_channels == 7:
                log_mel = melspec(torch.cat([audio] * 4, dim=0).unsqueeze(0)).transpose(3, 2)[0]
            else:
                log_mel = (melspec(audio.squeeze()).transpose(1, 0).unsqueeze(0) + eps).log()
        elif audio.shape[0] == 2:
            if in_channels == 2:
                log_mel = (melspec(audio).transpose(2, 1) + eps).log()
            elif in_channels == 1:
                log_mel = (melspec(audio.mean(axis=0).unsqueeze(0)).transpose(2, 1) + eps).log()
            else:
                raise ValueError("the original has no working rule for stereo into ambisonics")
        elif audio.shape[0] == 4:
            if in_channels == 2:
                log_mel = (melspec(audio[[0]]).transpose(2, 1) + eps).log()
                log_mel = torch.cat((log_mel, log_mel), dim=0)
            elif in_channels == 7:
                log_mel = melspec(audio.unsqueeze(0)).transpose(3, 2)[0]
            else:
                log_mel = (melspec(audio[[0]]).transpose(2, 1) + eps).log()
        else:
            raise ValueError("channel count")
        features.append(log_mel)
    return torch.nn.utils.rnn.pad_sequence(features, batch_first=True)


# --- Weight names: original -> this package ------------------------------------------------------------
def original_to_package_state_dict(original: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Written independently of convert_checkpoint.py, from the two modules' parameter lists."""
    mapping = {
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "cls_token": "embeddings.cls_token",
        "encoder.pos_embedding": "embeddings.position_embeddings",
        "encoder.ln.weight": "layernorm.weight",
        "encoder.ln.bias": "layernorm.bias",
    }
    per_layer = {
        "ln_1": "layernorm_before",
        "self_attention.in_proj_weight": "attention.qkv.weight",
        "self_attention.in_proj_bias": "attention.qkv.bias",
        "self_attention.out_proj": "attention.proj",
        "ln_2": "layernorm_after",
        "mlp.0": "mlp.fc1",
        "mlp.3": "mlp.fc2",
    }
    for i in range(num_layers):
        for old, new in per_layer.items():
            if old.startswith("self_attention.in_proj"):
                mapping[f"encoder.layers.encoder_layer_{i}.{old}"] = f"encoder.layer.{i}.{new}"
            else:
                for leaf in ("weight", "bias"):
                    mapping[f"encoder.layers.encoder_layer_{i}.{old}.{leaf}"] = f"encoder.layer.{i}.{new}.{leaf}"
    return {mapping[k]: v for k, v in original.items() if k in mapping}


# --- src/model/layers/mwmae.py (decoder side), eval mode, no shifted windows ---------------------------
class OriginalMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


class OriginalWindowedAttentionHead(nn.Module):
    def __init__(self, head_dim, window_size):
        super().__init__()
        self.window_size, self.scale = window_size, head_dim**-0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1, 1)))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), indexing="ij"))
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        relative[:, :, 0] += window_size - 1
        self.register_buffer("relative_position_index", relative.sum(-1))

    def forward(self, q, k, v):
        B, W, C = q.shape
        q, k, v = (
            t.view(B, W // self.window_size, self.window_size, C).view(-1, self.window_size, C) for t in (q, k, v)
        )
        attn = (q @ k.transpose(-2, -1)) * self.scale
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(
            self.window_size, self.window_size, -1
        )
        attn = (attn + bias.permute(2, 0, 1)).softmax(dim=-1)
        x = attn @ v
        return x.view(B, W // self.window_size, self.window_size, -1).view(B, W, -1)


class OriginalAttentionHead(nn.Module):
    def __init__(self, head_dim):
        super().__init__()
        self.scale = head_dim**-0.5

    def forward(self, q, k, v):
        return ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1) @ v


class OriginalWindowedMultiHeadAttention(nn.Module):
    def __init__(self, dim, window_sizes, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attn_heads = nn.ModuleList(
            OriginalAttentionHead(dim // num_heads) if w == 0 else OriginalWindowedAttentionHead(dim // num_heads, w)
            for w in window_sizes
        )
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 3, 0, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        o = torch.cat([self.attn_heads[i](q[i], k[i], v[i]).unsqueeze(0) for i in range(self.num_heads)], dim=0)
        return self.proj(o.permute(1, 2, 0, 3).reshape(B, N, -1))


class OriginalMWMHABlock(nn.Module):
    def __init__(self, dim, num_heads, window_sizes, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.wmha = OriginalWindowedMultiHeadAttention(dim, window_sizes, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = OriginalMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.wmha(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def original_generate_patches(x, fshape, tshape):
    """src/patching/patching_utils.generate_patches (non-overlapping strides)."""
    batch_size, num_channels = x.size()[:2]
    for dim, size in zip((2, 3), (fshape, tshape)):
        x = x.unfold(dim, size, size)
    x = x.permute(0, 2, 3, 1, 4, 5).contiguous()
    return x.view(batch_size, -1, num_channels, fshape, tshape)


class OriginalGram(OriginalGramEncoder):
    """The whole original GRAMT module (encoder + MW-MAE decoder + feature buffers), its key names."""

    def __init__(
        self,
        in_channels=2,
        fshape=128,
        tshape=2,
        hidden=768,
        layers=12,
        heads=12,
        mlp=3072,
        decoder_dim=512,
        decoder_depth=8,
        decoder_heads=8,
        window_sizes=(2, 5, 10, 25, 50, 0, 0, 0),
    ):
        super().__init__(in_channels, fshape, tshape, hidden, layers, heads, mlp)
        self.fshape, self.tshape = fshape, tshape
        self.decoder_embed = nn.Linear(hidden, decoder_dim, bias=True)
        self.register_buffer("mask_token", nn.Parameter(torch.zeros(1, 1, decoder_dim)))
        torch.nn.init.normal_(self.mask_token, std=0.02)
        self.decoder_blocks = nn.ModuleList(
            OriginalMWMHABlock(decoder_dim, decoder_heads, list(window_sizes)) for _ in range(decoder_depth)
        )
        pos = original_sincos_table(decoder_dim, self.grid_size, cls_token_num=0)
        self.register_buffer("decoder_pos_embed", torch.from_numpy(pos).float().unsqueeze(0))
        self.spec_pred = nn.Sequential(nn.Linear(decoder_dim, fshape * tshape * in_channels, bias=True))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.melspec = original_melspec() if in_channels in (1, 2) else OriginalAmbisonicFeatures()
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith(("decoder", "spec_pred")) and p.requires_grad and p.ndim == 1:
                    p.add_(0.05 * torch.randn_like(p))

    def forward(self, x, mask):
        """GRAMT.forward: x (B, C, T, F), mask (B, N) True = masked -> (pred, patches, loss)."""
        B = x.shape[0]
        x = self.spectrogram_normalize(x.transpose(2, 3))
        patches = original_generate_patches(x, self.fshape, self.tshape).flatten(2)
        encoded = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        non_mask = ~mask
        encoded = encoded + self.encoder.pos_embedding[:, 1:, :]
        encoded = encoded[non_mask, :].reshape((B, -1, encoded.shape[-1]))
        cls = self.cls_token.expand(B, -1, -1) + self.encoder.pos_embedding[:, :1, :]
        h = torch.cat((cls, encoded), dim=1)
        for block in self.encoder.layers:
            h = block(h)
        h = self.decoder_embed(self.encoder.ln(h))
        x_ = self.mask_token.repeat(B, mask.shape[1], 1).type_as(h)
        x_[non_mask, :] = h[:, 1:, :].reshape((-1, h.shape[-1]))
        y = x_.reshape((B, -1, h.shape[-1])) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            y = blk(y)
        pred = self.spec_pred(self.decoder_norm(y))
        loss = ((pred - patches) ** 2).mean(dim=-1)
        loss = (loss * mask.int().float()).sum() / mask.int().float().sum() * self.in_channels
        return pred, patches, loss


def original_decoder_to_package_state_dict(original, num_layers, num_decoder_layers):
    """Original GRAMT keys -> GramForPreTraining keys (derived buffers dropped)."""
    state = {f"gram.{k}": v for k, v in original_to_package_state_dict(original, num_layers).items()}
    simple = {
        "decoder_embed": "decoder.decoder_embed",
        "decoder_norm": "decoder.layernorm",
        "spec_pred.0": "decoder.prediction",
    }
    for old, new in simple.items():
        for leaf in ("weight", "bias"):
            state[f"{new}.{leaf}"] = original[f"{old}.{leaf}"]
    state["decoder.mask_token"] = original["mask_token"]
    state["decoder.position_embeddings"] = original["decoder_pos_embed"]
    block_map = {
        "norm1": "layernorm_before",
        "wmha.qkv": "attention.qkv",
        "wmha.proj": "attention.proj",
        "norm2": "layernorm_after",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    for i in range(num_decoder_layers):
        for old, new in block_map.items():
            for leaf in ("weight", "bias"):
                state[f"decoder.layers.{i}.{new}.{leaf}"] = original[f"decoder_blocks.{i}.{old}.{leaf}"]
        prefix = f"decoder_blocks.{i}.wmha.attn_heads."
        for key, value in original.items():
            if key.startswith(prefix) and key.endswith("relative_position_bias_table"):
                head = key[len(prefix) :].split(".")[0]
                state[f"decoder.layers.{i}.attention.relative_position_bias_tables.{head}"] = value
    return state
