"""Hostile and broken checkpoints: each test builds the attack or mistake by hand, shows it is live where
that can be shown (torch's own loaders fall for it), and checks the converter refuses it with a one-line
error, runs nothing, writes nothing and reads no byte before names and shapes are validated."""

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import pytest
import torch
from conftest import HEADS, make_original
from safetensors.torch import save_file

import convert_checkpoint
import safe_checkpoint
from convert_checkpoint import main
from safe_checkpoint import CheckpointError, read_checkpoint


# ----------------------------------------------------------------------------------------------------------
# Hand-assembled pickles
# ----------------------------------------------------------------------------------------------------------
def unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def global_(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def zip_checkpoint(path, data_pkl: bytes, records: dict[str, bytes] | None = None, root="archive", **zip_kwargs):
    with zipfile.ZipFile(path, "w", **zip_kwargs) as archive:
        archive.writestr(f"{root}/data.pkl", data_pkl)
        archive.writestr(f"{root}/byteorder", "little")
        for key, data in (records or {}).items():
            archive.writestr(f"{root}/data/{key}", data)
    return path


def tensor_pickle(shape, stride, numel, offset=0, storage=b"FloatStorage", key="0") -> bytes:
    """{'w': _rebuild_tensor_v2(<storage key, numel>, offset, shape, stride, False, OrderedDict())}"""

    def ints(values):
        return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"

    pid = (
        b"("
        + unicode("storage")
        + global_("torch", storage.decode())
        + unicode(key)
        + unicode("cpu")
        + b"J"
        + struct.pack("<i", numel)
        + b"tQ"
    )
    args = (
        b"("
        + pid
        + b"J"
        + struct.pack("<i", offset)
        + ints(shape)
        + ints(stride)
        + b"\x89"
        + global_("collections", "OrderedDict")
        + b")Rt"
    )
    return b"\x80\x02}(" + unicode("w") + global_("torch._utils", "_rebuild_tensor_v2") + args + b"Ru."


def legacy_patch_attack() -> bytes:
    """A legacy (pre-zip) torch pickle that BUILDs `dump_patches` onto an allowed function and passes it in a
    ('module', obj, source, text) persistent id: torch's legacy loader then writes a .patch file."""
    out = io.BytesIO()
    for header in (
        0x1950A86A20F9469CFC6C,
        1001,
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
    ):
        pickle.dump(header, out, protocol=2)
    body = b"\x80\x02" + global_("torch._utils", "_rebuild_parameter_with_state") + b"q\x00"
    body += b"}(" + unicode("dump_patches") + b"\x88ub0"  # BUILD: set an attribute on the function
    body += b"(" + unicode("module") + b"h\x00" + unicode("a.py") + unicode("ATTACKER TEXT\n") + b"tQ0"
    body += b"}(" + unicode("state_dict") + b"}u."
    out.write(body)
    pickle.dump([], out, protocol=2)
    return out.getvalue()


def run_converter(capsys, checkpoint, output, *extra):
    code = main(["--checkpoint", str(checkpoint), "--output-dir", str(output), *HEADS, *extra])
    err = capsys.readouterr().err
    return code, err


# ----------------------------------------------------------------------------------------------------------
# Critical: nothing in the file runs or writes
# ----------------------------------------------------------------------------------------------------------
def test_legacy_pickle_file_write_attack_is_live_for_torch_and_refused_here(tmp_path, capsys):
    checkpoint = tmp_path / "evil.pt"
    checkpoint.write_bytes(legacy_patch_attack())
    victim = tmp_path / "victim"
    victim.mkdir()
    # The attack is real: torch's legacy loader writes the attacker's text into the working directory.
    subprocess.run(
        [sys.executable, "-c", f"import torch; torch.load({str(checkpoint)!r}, weights_only=False)"],
        cwd=victim,
        capture_output=True,
        check=False,
    )
    written = list(victim.iterdir())
    assert written and "ATTACKER TEXT" in written[0].read_text()
    written[0].unlink()

    os.chdir(victim)
    code, err = run_converter(capsys, checkpoint, tmp_path / "out")
    assert code == 2 and "legacy (pre-zip" in err.splitlines()[-1] and "Traceback" not in err
    assert list(victim.iterdir()) == [] and not (tmp_path / "out").exists()
    assert not hasattr(torch._utils._rebuild_parameter_with_state, "dump_patches")


@pytest.mark.parametrize(
    "payload, message",
    [
        # BUILD on an allowed function (zip format this time)
        (
            b"\x80\x02"
            + global_("torch._utils", "_rebuild_parameter_with_state")
            + b"}("
            + unicode("dump_patches")
            + b"\x88ub.",
            "sets the state of a _Global",
        ),
        # the ('module', obj, source, text) persistent id
        (
            b"\x80\x02("
            + unicode("module")
            + global_("torch._utils", "_rebuild_parameter")
            + unicode("a.py")
            + unicode("x")
            + b"tQ.",
            "external object of kind 'module'",
        ),
        # SETITEM onto a function
        (
            b"\x80\x02" + global_("torch._utils", "_rebuild_tensor") + unicode("k") + unicode("v") + b"s.",
            "sets items on a _Global",
        ),
        # os.system through REDUCE: becomes an inert placeholder, never called
        (b"\x80\x02" + global_("os", "system") + unicode("touch PWNED") + b"\x85R.", "no state dict"),
        # a storage type called directly (uninitialised memory in torch) instead of a record of the file
        (
            b"\x80\x02}("
            + unicode("w")
            + global_("torch._utils", "_rebuild_tensor_v2")
            + b"("
            + global_("torch", "FloatStorage")
            + b"J\x00\x10\x00\x00\x85RJ\x00\x00\x00\x00J\x00\x10\x00\x00\x85K\x01\x85\x89"
            + global_("collections", "OrderedDict")
            + b")RtRu.",
            "not a storage record",
        ),
        # EXT opcodes, INST/OBJ and other opcodes checkpoints never use
        (b"\x80\x02\x82\x01.", "opcode"),
        (b"\x80\x02(" + b"ios\nsystem\n" + b".", "opcode"),
    ],
)
def test_pickle_tricks_in_zip_checkpoints_are_refused(payload, message, tmp_path, capsys):
    checkpoint = zip_checkpoint(tmp_path / "evil.ckpt", payload)
    os.chdir(tmp_path)
    code, err = run_converter(capsys, checkpoint, tmp_path / "out")
    assert code == 2 and message in err, err
    assert sorted(os.listdir(tmp_path)) == ["evil.ckpt"]
    assert not hasattr(torch._utils._rebuild_parameter_with_state, "dump_patches")


def test_torchscript_archives_are_refused(tmp_path, capsys):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    code, err = run_converter(capsys, tmp_path / "scripted.pt", tmp_path / "out")
    assert code == 2 and "TorchScript" in err


def test_deep_nesting_is_refused_before_it_can_overflow_the_stack(tmp_path, capsys):
    # A million nested 1-tuples used as a dict key: hashing it would recurse a million levels deep.
    payload = b"\x80\x02}" + b"N" + b"\x85" * 1_000_000 + b"Ns."
    code, err = run_converter(capsys, zip_checkpoint(tmp_path / "deep.ckpt", payload), tmp_path / "out")
    assert code == 2 and "nests containers more than" in err


# ----------------------------------------------------------------------------------------------------------
# High: every byte comes from the file
# ----------------------------------------------------------------------------------------------------------
def test_record_sizes_must_match_and_conversions_are_byte_identical(tmp_path, capsys):
    # A record shorter than its storage declares: refused (no padding with whatever memory holds).
    short = zip_checkpoint(tmp_path / "short.ckpt", tensor_pickle((4,), (1,), numel=4), {"0": b"\x00" * 8})
    with pytest.raises(CheckpointError, match="holds 8 bytes; its tensors declare 16"):
        read_checkpoint(str(short))[0]["w"].load()
    # A view reaching past its storage: refused when described.
    with pytest.raises(CheckpointError, match="past the end"):
        read_checkpoint(
            str(
                zip_checkpoint(
                    tmp_path / "past.ckpt", tensor_pickle((4,), (1,), numel=4, offset=2), {"0": b"\x00" * 16}
                )
            )
        )

    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"state_dict": make_original("binaural-time").state_dict()}, checkpoint)
    assert run_converter(capsys, checkpoint, tmp_path / "a")[0] == 0
    assert run_converter(capsys, checkpoint, tmp_path / "b")[0] == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_storage_views_and_dtypes_are_rebuilt_exactly(tmp_path):
    base = torch.randn(6, 5)
    state = {
        "t": base.t(),
        "slice": base[1:4, ::2],
        "bf16": base.bfloat16(),
        "int": torch.arange(7),
        "bool": base > 0,
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5),
    }
    for key, value in state.items():  # one file each: the views share their base's storage
        torch.save({key: value}, tmp_path / f"{key}.pt")
        loaded = read_checkpoint(str(tmp_path / f"{key}.pt"))[0][key].load()
        assert loaded.dtype == value.dtype and torch.equal(loaded, value), key
    # An expanded view reuses storage elements: never a weight, refused (a tiny record cannot pose as a big tensor).
    torch.save({"expand": torch.ones(3).expand(4, 3)}, tmp_path / "expand.pt")
    with pytest.raises(CheckpointError, match="reuses storage elements"):
        read_checkpoint(str(tmp_path / "expand.pt"))


# ----------------------------------------------------------------------------------------------------------
# Medium: bounded before allocating, clear errors for broken checkpoints
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_byte_reads(monkeypatch):
    def refuse(self):
        raise AssertionError("a tensor was read before its name and shape were validated")

    monkeypatch.setattr(safe_checkpoint.TensorSpec, "load", refuse)


def test_stride_zero_tensors_with_huge_shapes_are_refused_unread(tmp_path, no_byte_reads):
    checkpoint = zip_checkpoint(
        tmp_path / "huge.ckpt", tensor_pickle((1 << 20, 1 << 20), (0, 0), numel=1), {"0": b"\0" * 4}
    )
    with pytest.raises(CheckpointError, match="more than the"):
        read_checkpoint(str(checkpoint))


def _state_with(modify):
    state = {k: v.clone() for k, v in make_original("binaural-frame").state_dict().items()}
    modify(state)
    return state


@pytest.mark.parametrize(
    "modify, message",
    [
        # 3,000 layers: refused from the names, nothing read or built
        (
            lambda s: s.update(
                {f"encoder.layers.encoder_layer_{i}.ln_1.weight": torch.zeros(64) for i in range(2, 3000)}
            ),
            "num_hidden_layers must be in",
        ),
        (
            lambda s: s.update({"encoder.layers.encoder_layer_99.ln_1.weight": torch.zeros(64)}),
            "missing encoder layer \\[2,",
        ),
        (lambda s: s.update({"patch_embed.proj.weight": torch.zeros(8192, 2, 16, 8)}), "Shape mismatches|not fit"),
        # a huge tensor posed by a zero-stride view of one element
        (
            lambda s: s.update({"patch_embed.proj.weight": torch.zeros(1).expand(8192, 2, 16, 8)}),
            "reuses storage elements",
        ),
        (lambda s: s.pop("encoder.layers.encoder_layer_0.mlp.0.weight"), "no 'gram.encoder.layer.0.mlp.fc1.weight'"),
    ],
)
def test_architecture_is_validated_before_any_tensor_is_read(modify, message, tmp_path, capsys, no_byte_reads):
    torch.save({"state_dict": _state_with(modify)}, tmp_path / "ckpt.pt")
    code, err = run_converter(capsys, tmp_path / "ckpt.pt", tmp_path / "out")
    assert code == 2 and pytest.importorskip("re").search(message, err), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_heads_not_dividing_the_width_nan_weights_and_non_string_keys(tmp_path, capsys):
    torch.save({"state_dict": _state_with(lambda s: None)}, tmp_path / "ok.pt")
    code, err = (
        main(
            ["--checkpoint", str(tmp_path / "ok.pt"), "--output-dir", str(tmp_path / "o"), "--num-attention-heads", "5"]
        ),
        capsys.readouterr().err,
    )
    assert code == 2 and "must be divisible by num_attention_heads (5)" in err

    def poison(s):
        s["encoder.layers.encoder_layer_1.mlp.3.weight"][0, 0] = float("nan")

    torch.save({"state_dict": _state_with(poison)}, tmp_path / "nan.pt")
    code, err = run_converter(capsys, tmp_path / "nan.pt", tmp_path / "o")
    assert code == 2 and "gram.encoder.layer.1.mlp.fc2.weight holds NaN or Inf" in err

    torch.save({"state_dict": {**_state_with(lambda s: None), 3: torch.zeros(1)}}, tmp_path / "keys.pt")
    code, err = run_converter(capsys, tmp_path / "keys.pt", tmp_path / "o")
    assert code == 2 and "not strings" in err
    assert not (tmp_path / "o").exists()


def test_upper_case_safetensors_and_zip_bombs(tmp_path, capsys):
    original = make_original("mono-time")
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(tmp_path / "MODEL.SAFETENSORS"))
    assert run_converter(capsys, tmp_path / "MODEL.SAFETENSORS", tmp_path / "out")[0] == 0

    # A deflated record that declares 16 bytes but inflates to 100 MB: read up to what it declares, then refused.
    bomb = tmp_path / "bomb.ckpt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", tensor_pickle((4,), (1,), numel=4))
        archive.writestr("archive/data/0", b"\0" * (100 << 20))
    raw = bytearray(bomb.read_bytes())
    for signature in (b"PK\x03\x04", b"PK\x01\x02"):  # rewrite the declared size of data/0 in both headers
        start = 0
        while (start := raw.find(signature, start)) >= 0:
            name_at = start + (30 if signature == b"PK\x03\x04" else 46)
            size_at = start + (22 if signature == b"PK\x03\x04" else 24)
            name_len = struct.unpack("<H", raw[start + (26 if signature == b"PK\x03\x04" else 28) :][:2])[0]
            if raw[name_at : name_at + name_len] == b"archive/data/0":
                raw[size_at : size_at + 4] = struct.pack("<I", 16)
            start += 4
    bomb.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="is compressed"):
        read_checkpoint(str(bomb))[0]["w"].load()


# ----------------------------------------------------------------------------------------------------------
# Hub push and output-directory mistakes
# ----------------------------------------------------------------------------------------------------------
def test_push_without_network_is_one_clear_line(tmp_path, capsys, monkeypatch):
    class OfflineApi:
        def create_repo(self, *args, **kwargs):
            raise ConnectionError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(convert_checkpoint, "HfApi", OfflineApi)
    torch.save({"state_dict": make_original("mono-time").state_dict()}, tmp_path / "ckpt.pt")
    code, err = run_converter(capsys, tmp_path / "ckpt.pt", tmp_path / "out", "--push-to-hub", "me/x")
    errors = [line for line in err.split("\n") if line.startswith("error")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1
    assert "Upload to me/x failed (ConnectionError" in errors[0]
    assert (tmp_path / "out" / "model.safetensors").exists()  # the conversion itself is kept


def test_output_directory_mistakes_never_cost_a_file(tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    checkpoint = work / "ckpt.pt"
    torch.save({"state_dict": make_original("mono-time").state_dict()}, checkpoint)
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for target, message in [
        (".", "working directory"),
        ("..", "working directory or one of its parents"),
        (str(work), "working directory"),
    ]:
        code, err = run_converter(capsys, checkpoint, target, "--overwrite")
        assert code == 2 and message in err
    monkeypatch.chdir(tmp_path)
    code, err = run_converter(capsys, checkpoint, work, "--overwrite")  # holds the input
    assert code == 2 and "contains the input" in err
    (tmp_path / "file").write_text("x")
    assert "is not a directory" in run_converter(capsys, checkpoint, tmp_path / "file")[1]
    assert "is not a directory" in run_converter(capsys, checkpoint, tmp_path / "file" / "sub")[1]
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    assert "dangling symbolic link" in run_converter(capsys, checkpoint, tmp_path / "dangling")[1]
    assert sorted(os.listdir(work)) == ["ckpt.pt", "notes.txt"] and (work / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["dangling", "file", "work"]


def test_outputs_follow_the_umask(tmp_path, capsys):
    torch.save({"state_dict": make_original("mono-time").state_dict()}, tmp_path / "ckpt.pt")
    previous = os.umask(0o022)
    try:
        assert run_converter(capsys, tmp_path / "ckpt.pt", tmp_path / "out")[0] == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert all((tmp_path / "out" / name).stat().st_mode & 0o777 == 0o644 for name in os.listdir(tmp_path / "out"))


INTERRUPTIBLE = """
import time
import gram_io
with gram_io.staged_directory({output!r}, "test", overwrite=True) as staging:
    for i in range(40):
        (staging / f"part{{i}}.txt").write_text("new" * 1000)
        time.sleep(0.005)
"""


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_interrupts_leave_the_old_or_the_new_output_complete(sig, tmp_path):
    import signal
    import time

    output = tmp_path / "out"
    script = INTERRUPTIBLE.format(output=str(output))
    env = dict(os.environ)  # gram_io from the installed package (make setup installs it editable)
    subprocess.run([sys.executable, "-c", script], check=True, env=env)  # a complete previous output
    for delay in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4):
        process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL, env=env)
        time.sleep(0.5 + delay)  # interpreter start-up, then somewhere inside the writes or the swap
        process.send_signal(getattr(signal, sig))
        process.wait()
        names = sorted(os.listdir(output))
        assert names == sorted([".gram-output.json", *(f"part{i}.txt" for i in range(40))]), names
        assert {(output / n).read_text() for n in names if n.startswith("part")} == {"new" * 1000}
        if sig == "SIGINT":  # a clean interrupt leaves no hidden staging directory behind
            assert sorted(os.listdir(tmp_path)) == ["out"]


def test_unwritable_parent_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    import gram_io

    torch.save({"state_dict": make_original("mono-time").state_dict()}, tmp_path / "ckpt.pt")
    (tmp_path / "locked").mkdir()
    real_access = os.access
    monkeypatch.setattr(
        gram_io.os, "access", lambda path, mode: False if str(path).endswith("locked") else real_access(path, mode)
    )
    monkeypatch.setattr(convert_checkpoint, "load_untrusted_checkpoint", lambda *a: pytest.fail("read before checking"))
    code, err = run_converter(capsys, tmp_path / "ckpt.pt", tmp_path / "locked" / "out")
    assert code == 2 and "no permission to write in" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------------------
# Found by the attack review: amplification, aliasing, type confusion, escapes, hostile output markers
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "payload, message",
    [
        # a DAG of shared 2-tuples, 26 levels deep (6 bytes per level), as a dict key: hashing visits 2^26 paths
        (b"\x80\x02}" + b")q\x000" + b"h\x00h\x00\x86q\x000" * 26 + b"h\x00Ns.", "tuple of more than 10000 items"),
        # one byte per new object (EMPTY_SET, POP): a 2 MB pickle would otherwise make ~400 MB of sets
        (b"\x80\x02" + b"\x8f0" * 1_100_000 + b"N.", "more than 1000000 objects"),
        # two memoised strings joined into a new global name per 5 bytes
        (
            b"\x80\x02"
            + unicode("m" * 200)
            + b"q\x00"
            + unicode("n" * 200)
            + b"q\x01"
            + b"h\x00h\x01\x930" * 1_100_000
            + b"N.",
            "more than 1000000 objects|MB of memory",
        ),
        # ints beyond 64 bits (a pickle could otherwise fill a dict with keys whose hashes all collide)
        (b"\x80\x02}" + b"\x8a\x09" + b"\x01" * 9 + b"Ns.", "integer too large"),
        # DICT with an odd number of items would silently drop a key
        (b"\x80\x02(" + unicode("a") + b"d.", "odd number of dictionary items"),
    ],
)
def test_bounded_interpretation(payload, message, tmp_path):
    import time

    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(str(zip_checkpoint(tmp_path / "x.ckpt", payload)))
    assert time.perf_counter() - start < 30


def test_storage_aliasing_and_non_float_weights_are_refused(tmp_path, capsys):
    # one record declared twice with different sizes: the view would be checked against the larger one
    two = (
        b"\x80\x02}("
        + unicode("a")
        + tensor_pickle((4,), (1,), numel=4)[10:-2]
        + unicode("b")
        + tensor_pickle((8,), (1,), numel=8)[10:-2]
        + b"u."
    )
    with pytest.raises(CheckpointError, match="declared twice"):
        read_checkpoint(str(zip_checkpoint(tmp_path / "two.ckpt", two, {"0": b"\0" * 32})))
    # int64 / bool storages posing as weights: refused, not cast to float
    state = _state_with(lambda s: s.update({"cls_token": torch.full(s["cls_token"].shape, 2**62, dtype=torch.int64)}))
    torch.save({"state_dict": state}, tmp_path / "ints.pt")
    code, err = run_converter(capsys, tmp_path / "ints.pt", tmp_path / "out")
    assert code == 2 and "holds torch.int64 values; GRAM weights are floating-point" in err


def test_error_lines_escape_terminal_control_sequences(tmp_path, capsys):
    evil_key = "\x1b[2K\r\x1b[32mConverted OK\x1b[8m" + "x" * 5000 + ".mel_scale.fb"
    state = _state_with(lambda s: s.update({evil_key: torch.zeros(3)}))
    torch.save({"state_dict": state}, tmp_path / "evil.pt")
    code, err = run_converter(capsys, tmp_path / "evil.pt", tmp_path / "out")
    error_line = [line for line in err.split("\n") if line.startswith("error:")][0]
    assert code == 2 and "\x1b" not in err and "\\x1b[32mConverted OK" in error_line and len(error_line) < 2100


@pytest.mark.parametrize("marker", ["traversal", "fifo", "not-a-list"])
def test_a_hostile_output_marker_never_deletes_outside_files(marker, tmp_path, capsys):
    torch.save({"state_dict": make_original("mono-time").state_dict()}, tmp_path / "ckpt.pt")
    output = tmp_path / "out"
    assert run_converter(capsys, tmp_path / "ckpt.pt", output)[0] == 0
    (tmp_path / "victim.txt").write_text("keep me")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "victim.txt").write_text("keep me too")
    os.symlink(tmp_path / "elsewhere", output / "link")
    listed = json.loads((output / ".gram-output.json").read_text())["files"]
    (output / ".gram-output.json").unlink()
    if marker == "traversal":
        (output / ".gram-output.json").write_text(
            json.dumps(
                {
                    "tool": "x",
                    "files": [*listed, "link", "../victim.txt", str(tmp_path / "victim.txt"), "link/victim.txt"],
                }
            )
        )
    elif marker == "fifo":
        os.mkfifo(output / ".gram-output.json")
    else:
        (output / ".gram-output.json").write_text(json.dumps({"files": [*listed, 3]}))
    code, err = run_converter(capsys, tmp_path / "ckpt.pt", output, "--overwrite")
    assert code == 2 and "no GRAM command wrote" in err
    assert (tmp_path / "victim.txt").read_text() == "keep me"
    assert (tmp_path / "elsewhere" / "victim.txt").read_text() == "keep me too"


def test_removal_of_an_old_output_never_follows_links(tmp_path):
    import gram_io

    old = tmp_path / "old"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "victim.txt").write_text("keep me")
    (old / "sub").mkdir(parents=True)
    (old / "sub" / "a.txt").write_text("ours")
    os.symlink(tmp_path / "elsewhere", old / "link")
    gram_io._remove_own_files(old, ["sub/a.txt", "link", "link/victim.txt", "../elsewhere/victim.txt"])
    assert not old.exists() and (tmp_path / "elsewhere" / "victim.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------------------------------------
# Found by the second attack review
# ----------------------------------------------------------------------------------------------------------
def test_tuple_keys_memo_growth_and_huge_safetensors_headers_are_bounded(tmp_path):
    # 2,001 tuple keys: tuple hashes can be made to collide, so their number is bounded
    keys = b"".join(b"(J" + struct.pack("<i", i) + b"J\x00\x00\x00\x00tN" for i in range(2001))
    with pytest.raises(CheckpointError, match="more than 2000 tuples"):
        read_checkpoint(str(zip_checkpoint(tmp_path / "keys.ckpt", b"\x80\x02}(" + keys + b"u.")))
    # one byte per memo entry (MEMOIZE of the same value)
    with pytest.raises(CheckpointError, match="memo entries"):
        read_checkpoint(str(zip_checkpoint(tmp_path / "memo.ckpt", b"\x80\x04N" + b"\x94" * 1_100_000 + b".")))
    header = b"{" + b" " * (17 << 20) + b"}"
    (tmp_path / "big.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CheckpointError, match="safetensors header"):
        read_checkpoint(str(tmp_path / "big.safetensors"))


def test_weights_sharing_one_record_are_refused(tmp_path, capsys):
    state = _state_with(lambda s: None)
    shared = state["encoder.layers.encoder_layer_0.mlp.0.weight"]
    state["encoder.layers.encoder_layer_1.mlp.0.weight"] = shared  # two weights, one record of the file
    torch.save({"state_dict": state}, tmp_path / "shared.pt")
    code, err = run_converter(capsys, tmp_path / "shared.pt", tmp_path / "out")
    assert code == 2 and "weights share storage" in err


def test_float64_values_beyond_float32_are_refused(tmp_path, capsys):
    def overflow(s):
        s["encoder.layers.encoder_layer_0.mlp.0.weight"] = s["encoder.layers.encoder_layer_0.mlp.0.weight"].double()
        s["encoder.layers.encoder_layer_0.mlp.0.weight"][0, 0] = 1e300  # finite in float64, Inf in float32

    torch.save({"state_dict": _state_with(overflow)}, tmp_path / "f64.pt")
    code, err = run_converter(capsys, tmp_path / "f64.pt", tmp_path / "out")
    assert code == 2 and "holds NaN or Inf values (in float32)" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "key, message",
    [
        ("decoder_blocks.0.wmha.attn_heads." + "7" * 5000 + ".relative_position_index", "relative-position index"),
        ("decoder_blocks.9.wmha.attn_heads.0.relative_position_index", "the decoder has 2 blocks"),
        ("x.y.mel_scale.fb", None),
    ],
)
def test_derived_buffers_are_bounded_and_must_belong(key, message, tmp_path, capsys):
    def add(s):
        if message is None:  # many filterbanks (each read and compared): more than a checkpoint holds
            for i in range(5):
                s[f"a{i}.mel_scale.fb"] = torch.zeros(513, 128)
        else:
            s[key] = torch.zeros(3, 3, dtype=torch.long)

    torch.save({"state_dict": _state_with(add)}, tmp_path / "ckpt.pt")
    code, err = run_converter(capsys, tmp_path / "ckpt.pt", tmp_path / "out")
    assert code == 2 and "Traceback" not in err and (message or "Unexpected feature buffers") in err


def test_a_marker_nested_too_deep_is_not_ours(tmp_path):
    import gram_io

    (tmp_path / ".gram-output.json").write_text("[" * 200_000)
    assert gram_io.read_marker(tmp_path) is None


# ----------------------------------------------------------------------------------------------------------
# Found by the third attack review
# ----------------------------------------------------------------------------------------------------------
def test_overlapping_records_are_refused_whatever_the_python_version(tmp_path):
    """Two central-directory entries pointing at one record's bytes (a small file posing as many large records;
    Python's zipfile only checks this since 3.11.8)."""
    path = zip_checkpoint(tmp_path / "x.ckpt", tensor_pickle((4,), (1,), numel=4), {"0": b"\0" * 16, "1": b"\0" * 16})
    raw = bytearray(path.read_bytes())
    offsets = {}
    start = 0
    while (start := raw.find(b"PK\x01\x02", start)) >= 0:  # central directory entries
        name_length = struct.unpack("<H", raw[start + 28 : start + 30])[0]
        offsets[bytes(raw[start + 46 : start + 46 + name_length])] = start
        start += 4
    record_0 = struct.unpack("<I", raw[offsets[b"archive/data/0"] + 42 :][:4])[0]
    raw[offsets[b"archive/data/1"] + 42 : offsets[b"archive/data/1"] + 46] = struct.pack("<I", record_0)
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="records overlap"):
        read_checkpoint(str(path))


def test_heavy_tuple_keys_and_many_strings_are_bounded(tmp_path):
    import time

    # 20 keys (T, i) sharing one 9,000-item tuple T: few keys, but each comparison would walk all of T
    big = b"(" + b"N" * 9000 + b"tq\x00"
    keys = b"".join(b"h\x00J" + struct.pack("<i", i) + b"\x86N" for i in range(20))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="100000 tuple items"):
        read_checkpoint(str(zip_checkpoint(tmp_path / "keys.ckpt", b"\x80\x02" + big + b"0}(" + keys + b"u.")))
    # 1.1 M two-character strings: objects (and their memory) are counted like containers
    strings = b"\x8c\x02ab0" * 1_100_000
    with pytest.raises(CheckpointError, match="more than 1000000 objects"):
        read_checkpoint(str(zip_checkpoint(tmp_path / "strings.ckpt", b"\x80\x04" + strings + b"N.")))
    assert time.perf_counter() - start < 30


# ----------------------------------------------------------------------------------------------------------
# Found by the fourth attack review
# ----------------------------------------------------------------------------------------------------------
def test_error_lines_cannot_print_fake_lines(tmp_path, capsys):
    # a global whose module name holds a newline, reduced to a placeholder that comes back in the message
    payload = b"\x80\x04" + unicode("x\nConverted /etc/passwd -> /tmp/x") + unicode("y") + b"\x93)R."
    code, err = run_converter(capsys, zip_checkpoint(tmp_path / "x.ckpt", payload), tmp_path / "out")
    assert code == 2 and "\nConverted" not in err and "\\nConverted" in err


def test_two_weights_viewing_the_same_bytes_are_refused(tmp_path):
    big = torch.arange(128.0)
    torch.save({"a": big[:64], "b": big[:64]}, tmp_path / "views.pt")
    with pytest.raises(CheckpointError, match="read the same bytes"):
        read_checkpoint(str(tmp_path / "views.pt"))


def test_head_count_flags_are_bounded_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", "x", "--output-dir", str(tmp_path / "o"), "--decoder-num-attention-heads", str(10**12)])
    assert exit_info.value.code == 2 and "must be in [1, 256]" in capsys.readouterr().err


def test_empty_folders_of_the_user_count_as_content(tmp_path, capsys):
    torch.save({"state_dict": make_original("mono-time").state_dict()}, tmp_path / "ckpt.pt")
    (tmp_path / "out" / "keep" / "me").mkdir(parents=True)
    code, err = run_converter(capsys, tmp_path / "ckpt.pt", tmp_path / "out")
    assert code == 2 and "exists and is not empty" in err and (tmp_path / "out" / "keep" / "me").is_dir()


# ----------------------------------------------------------------------------------------------------------
# Found by the fifth attack review
# ----------------------------------------------------------------------------------------------------------
def test_state_dict_size_and_keys_are_checked_before_building_specs(tmp_path):
    import time

    # 120,000 entries all naming one memoised tensor: ~7 pickle bytes each, far more to describe
    entry = b"h\x01"
    body = b"".join(b"J" + struct.pack("<i", i) + entry for i in range(120_000))
    tensor = tensor_pickle((4,), (1,), numel=4)[10:-2]  # the REDUCE of the tensor, without the dict around it
    payload = b"\x80\x02}q\x00(" + unicode("w") + tensor + b"q\x01" + body + b"u."
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="entries, more than 100000|not strings"):
        read_checkpoint(str(zip_checkpoint(tmp_path / "many.ckpt", payload, {"0": b"\0" * 16})))
    assert time.perf_counter() - start < 20


def test_odd_names_never_crash_or_print_fake_lines(tmp_path, capsys):
    torch.save({"state_dict": make_original("mono-time").state_dict()}, tmp_path / "ckpt.pt")
    code, err = run_converter(capsys, tmp_path / "ckpt.pt", tmp_path / "o**x")  # glob characters in the name
    assert code == 0 and (tmp_path / "o**x" / "model.safetensors").exists()
    odd = tmp_path / "x\nerror: fake\x1b[31m.pt"
    os.rename(tmp_path / "ckpt.pt", odd)
    code = main(["--checkpoint", str(odd), "--output-dir", str(tmp_path / "o2"), *HEADS])
    captured = capsys.readouterr()
    assert (
        code == 0 and "\nerror: fake" not in captured.out + captured.err and "\x1b" not in captured.out + captured.err
    )


def test_a_marker_cannot_claim_a_users_empty_folder(tmp_path, capsys):
    torch.save({"state_dict": make_original("mono-time").state_dict()}, tmp_path / "ckpt.pt")
    output = tmp_path / "out"
    assert run_converter(capsys, tmp_path / "ckpt.pt", output)[0] == 0
    (output / "userempty").mkdir()
    marker = json.loads((output / ".gram-output.json").read_text())
    (output / ".gram-output.json").write_text(json.dumps({**marker, "files": [*marker["files"], "userempty"]}))
    code, err = run_converter(capsys, tmp_path / "ckpt.pt", output, "--overwrite")
    assert code == 2 and "did not write: userempty" in err and (output / "userempty").is_dir()


# ----------------------------------------------------------------------------------------------------------
# Found by the sixth attack review
# ----------------------------------------------------------------------------------------------------------
def test_set_tables_are_charged_and_ghost_files_claim_no_folder(tmp_path, capsys):
    # 300,000 sets of 60 small ints: ~130 pickle bytes each, kilobytes of hash table each
    one_set = b"\x8f(" + b"".join(b"K" + bytes([i]) for i in range(60)) + b"\x90"
    with pytest.raises(CheckpointError, match="MB of memory"):
        read_checkpoint(str(zip_checkpoint(tmp_path / "sets.ckpt", b"\x80\x04" + one_set * 300_000 + b"N.")))

    torch.save({"state_dict": make_original("mono-time").state_dict()}, tmp_path / "ckpt.pt")
    output = tmp_path / "out"
    assert run_converter(capsys, tmp_path / "ckpt.pt", output)[0] == 0
    (output / "user_empty_folder").mkdir()
    marker = json.loads((output / ".gram-output.json").read_text())
    ghost = {**marker, "files": [*marker["files"], "user_empty_folder/ghost"]}
    (output / ".gram-output.json").write_text(json.dumps(ghost))
    code, err = run_converter(capsys, tmp_path / "ckpt.pt", output, "--overwrite")
    assert code == 2 and "user_empty_folder" in err and (output / "user_empty_folder").is_dir()


# ----------------------------------------------------------------------------------------------------------
# Found by the seventh attack review
# ----------------------------------------------------------------------------------------------------------
def test_long_global_names_are_charged_and_nul_paths_are_one_line(tmp_path, capsys):
    # two memoised 4-byte-character strings joined into a new ~2 KB name per 5 pickle bytes
    payload = (b"\x80\x04" + unicode("\U0001f600" * 250) + b"q\x000" + unicode("\U0001f600") + b"q\x010](" +
               b"h\x00h\x01\x93" * 900_000 + b"e.")  # fmt: skip
    with pytest.raises(CheckpointError, match="MB of memory"):
        read_checkpoint(str(zip_checkpoint(tmp_path / "names.ckpt", payload)))
    torch.save({"state_dict": make_original("mono-time").state_dict()}, tmp_path / "ckpt.pt")
    code, err = run_converter(capsys, tmp_path / "ckpt.pt", str(tmp_path / "o") + "\0x")
    assert code == 2 and "NUL byte" in err and "Traceback" not in err


def test_non_utf8_output_names_are_refused_before_any_work(tmp_path, capsys):
    torch.save({"state_dict": make_original("mono-time").state_dict()}, tmp_path / "ckpt.pt")
    code, err = run_converter(capsys, tmp_path / "ckpt.pt", os.fsdecode(os.fsencode(tmp_path) + b"/\xff\xfe"))
    assert code == 2 and "not valid UTF-8" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------------------
# Found by the ninth attack review
# ----------------------------------------------------------------------------------------------------------
def test_unreadable_folders_are_never_taken_for_empty(tmp_path, capsys, monkeypatch):
    import gram_io

    torch.save({"state_dict": make_original("mono-time").state_dict()}, tmp_path / "ckpt.pt")
    (tmp_path / "precious").mkdir()
    real_walk = os.walk

    def walk_without_permission(top, onerror=None, **kwargs):  # what a mode-000 folder gives a non-root user
        if onerror is not None:
            onerror(PermissionError(13, "Permission denied", str(top)))
        return real_walk(top, onerror=onerror, **kwargs)

    monkeypatch.setattr(gram_io.os, "walk", walk_without_permission)
    code, err = run_converter(capsys, tmp_path / "ckpt.pt", tmp_path / "precious")
    assert code == 2 and "Cannot read" in err and (tmp_path / "precious").is_dir()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_input_linked_from_inside_the_output_is_refused(tmp_path, capsys):
    torch.save({"state_dict": make_original("mono-time").state_dict()}, tmp_path / "real.pt")
    output = tmp_path / "out"
    assert run_converter(capsys, tmp_path / "real.pt", output)[0] == 0
    os.symlink(tmp_path / "real.pt", output / "ckpt.pt")
    code, err = run_converter(capsys, output / "ckpt.pt", output, "--overwrite")
    assert code == 2 and "contains the input" in err and (output / "ckpt.pt").is_symlink()
