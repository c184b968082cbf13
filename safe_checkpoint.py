"""Reading untrusted checkpoint files without running anything they contain.

A PyTorch checkpoint is a zip archive holding a pickle (`data.pkl`) plus one raw byte record per storage.
A pickle is a small program; `torch.load` runs it with Python's unpickler, which can call any importable
function, set attributes on objects (BUILD) and, for legacy files, hand data to torch's module-source
checks that write files. None of that machinery is used here:

* the pickle is executed by `_PickleMachine`, a bounded interpreter of the opcodes `torch.save` and
  Lightning emit. Globals are names, never imported objects. Exactly four names are understood (an ordered
  dict and torch's tensor/parameter rebuild functions), and they build *descriptions* of tensors
  (`TensorSpec`) — dtype, shape, strides, which record — not tensors. Any other global, call or object
  becomes an inert placeholder; BUILD and item assignment only touch the interpreter's own containers.
* tensor bytes are read from the archive only when a `TensorSpec` is materialised, after the caller has
  checked names and shapes; each storage record must hold exactly the bytes its description declares,
  and the CRC of the record is verified, so every byte of every tensor comes from the file.
* legacy (non-zip) pickles and TorchScript archives are refused: the original GRAM code saves with
  PyTorch Lightning 2.4 / torch 2.5 (labhamlet/GRAM-T requirements.txt), whose `torch.save` writes the
  zip format (the default since torch 1.6), and its Hub weights are safetensors.

safetensors files are read with the `safetensors` library (a JSON header and raw bytes; no code), with
the same two-step protocol: specs first, bytes on demand.
"""

from __future__ import annotations

import math
import re
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, Callable

import torch

# Bounds on what a checkpoint may contain, far above any GRAM checkpoint (ViT-B + Adam: ~1 MB of pickle,
# ~600 storages, largest tensor 2.4 M elements), far below what could exhaust memory or the C stack.
MAX_PICKLE_BYTES = 64 << 20
MAX_NESTING = 100
MAX_HASHABLE_WEIGHT = 10_000  # items of a tuple/frozenset counted with repetition: bounds hashing a DAG
MAX_OBJECTS = 1_000_000  # containers, placeholders and names the pickle may create
MAX_RECORDS = 200_000
MAX_STATE_ENTRIES = 100_000  # a ViT-B GRAM state dict has ~300
MAX_TENSOR_ELEMENTS = 1 << 28  # 1 GiB of float32
MAX_TENSOR_DIMS = 8
MAX_INT_BYTES = 8  # 64-bit: larger ints let a pickle build dict keys whose hashes all collide
# Tuples have deterministic hashes that can be made to collide: inserting n colliding keys costs n^2
# comparisons, so tuple (and frozenset) keys and set items are few (a checkpoint uses none or a handful).
MAX_TUPLE_KEYS = 2000
MAX_KEY_WEIGHT = 100_000  # ... and small in all: comparing two colliding keys visits all their items
MAX_PICKLE_MEMORY = 512 << 20  # estimated bytes of everything the pickle creates (objects, strings)
_OBJECT_COST = 64  # rough size of a small Python object, charged per object created
MAX_SAFETENSORS_HEADER = 16 << 20  # a GRAM checkpoint's header is ~30 kB


class CheckpointError(ValueError):
    """The file is not a checkpoint this package can read safely; the message says why."""


STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor described by a checkpoint, not yet read: `load()` reads its bytes from the file."""

    shape: torch.Size
    dtype: torch.dtype
    _load: Callable[[], torch.Tensor]
    record: str | None = None  # the archive record holding its bytes (zip checkpoints)
    record_bytes: int = 0
    span: tuple[int, int] | None = None  # the elements of the record it covers, [first, last + 1)

    def load(self) -> torch.Tensor:
        try:
            tensor = self._load()
        except CheckpointError:
            raise
        except (RuntimeError, TypeError, ValueError, OverflowError, MemoryError) as error:
            raise CheckpointError(
                f"A tensor of shape {tuple(self.shape)} cannot be read ({type(error).__name__})."
            ) from None
        if tensor.shape != self.shape or tensor.dtype != self.dtype:  # pragma: no cover - internal invariant
            raise CheckpointError("A record did not give the tensor its description declares.")
        return tensor


# ------------------------------------------------------------------------------------------------------
# The pickle interpreter
# ------------------------------------------------------------------------------------------------------
class _Global:
    """A `module.name` reference. Never resolved to a Python object."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _Inert:
    """Whatever an unknown global, call or object would have made. Accepts state and items, does nothing."""

    __slots__ = ("origin",)

    def __init__(self, origin: str):
        self.origin = origin


class _StateDict(dict):
    """What `collections.OrderedDict()` makes here: a plain dict (its BUILD state, `_metadata`, is dropped)."""


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


_MARK = object()


def _int_tuple(value, what: str) -> tuple[int, ...]:
    if (
        not isinstance(value, tuple)
        or len(value) > MAX_TENSOR_DIMS
        or not all(type(v) is int and 0 <= v <= MAX_TENSOR_ELEMENTS for v in value)
    ):
        raise CheckpointError(
            f"Tensor {what} must be a tuple of at most {MAX_TENSOR_DIMS} ints in [0, {MAX_TENSOR_ELEMENTS}]."
        )
    return value


def _overlaps(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """True when two elements of the view share a storage element (stride 0, or interleaved strides): every
    element of a weight must be its own bytes of the file, so a tiny record cannot pose as a huge tensor."""
    reach = 0  # the largest offset reachable with the dimensions seen so far
    for size, step in sorted((d for d in zip(shape, stride) if d[0] > 1), key=lambda d: d[1]):
        if step <= reach:
            return True
        reach += (size - 1) * step
    return False


def _rebuild_tensor(storage, offset, shape, stride, *_ignored) -> _TensorRef:
    """Validated twin of `torch._utils._rebuild_tensor(_v2)`: the view must lie inside its storage."""
    if not isinstance(storage, _StorageRef):
        raise CheckpointError("A tensor refers to something that is not a storage record of the file.")
    shape, stride = _int_tuple(shape, "shape"), _int_tuple(stride, "stride")
    if type(offset) is not int or offset < 0 or len(shape) != len(stride):
        raise CheckpointError("A tensor has an invalid storage offset or mismatched shape and strides.")
    numel = math.prod(shape)
    if numel > MAX_TENSOR_ELEMENTS:
        raise CheckpointError(f"A tensor declares {numel} elements, more than the {MAX_TENSOR_ELEMENTS} allowed.")
    if numel and offset + sum((n - 1) * s for n, s in zip(shape, stride)) >= storage.numel:
        raise CheckpointError(f"A tensor of shape {shape} reaches past the end of its storage record {storage.key}.")
    if numel and _overlaps(shape, stride):
        raise CheckpointError(
            f"A tensor of shape {shape} with strides {stride} reuses storage elements (torch.save never "
            "writes such views of weights); refused."
        )
    return _TensorRef(storage, offset, shape, stride)


def _rebuild_parameter(data, *_ignored) -> _TensorRef:
    if not isinstance(data, _TensorRef):
        raise CheckpointError("A parameter wraps something that is not a tensor.")
    return data


def _ordered_dict(*args) -> _StateDict:
    if args:
        raise CheckpointError("OrderedDict with constructor arguments is not supported.")
    return _StateDict()


_CALLABLES: dict[str, Callable[..., Any]] = {
    "collections.OrderedDict": _ordered_dict,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
}
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


class _PickleMachine:
    """Runs the subset of pickle opcodes (protocols 0-5, binary forms) that torch.save and Lightning use."""

    def __init__(self, data: bytes):
        if len(data) > MAX_PICKLE_BYTES:
            raise CheckpointError(f"The checkpoint's pickle is {len(data)} bytes, more than {MAX_PICKLE_BYTES}.")
        self.data, self.pos = data, 0
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}
        self.depth: dict[int, tuple[int, int]] = {}  # id -> (nesting depth, weight) of tuples/frozensets built here
        self.keep_alive: list[Any] = []  # ids in `depth` stay valid
        self.objects = 0
        self.memory = 0
        self.tuple_keys = 0
        self.key_weight = 0
        self.storages: dict[str, _StorageRef] = {}

    # -- reading the byte stream --
    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise CheckpointError("The checkpoint's pickle is truncated.")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def line(self) -> str:
        end = self.data.find(b"\n", self.pos, self.pos + 512)
        if end < 0:
            raise CheckpointError("The checkpoint's pickle has an unterminated GLOBAL name.")
        text = self.take(end - self.pos).decode("utf-8", "strict")
        self.pos += 1
        return text

    # -- stack helpers --
    def pop(self):
        if not self.stack or self.stack[-1] is _MARK:
            raise CheckpointError("The checkpoint's pickle pops an empty stack.")
        return self.stack.pop()

    def pop_mark(self) -> list:
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index] is _MARK:
                items = self.stack[index + 1 :]
                del self.stack[index:]
                return items
        raise CheckpointError("The checkpoint's pickle has no MARK where one is needed.")

    def top(self):
        if not self.stack or self.stack[-1] is _MARK:
            raise CheckpointError("The checkpoint's pickle has an empty stack where a value is needed.")
        return self.stack[-1]

    def new(self, value, payload: int = 0):
        """Counts every object the pickle makes, and its estimated memory: a few bytes of pickle must not make
        gigabytes of objects or strings."""
        self.objects += 1
        self.memory += _OBJECT_COST + payload
        if self.objects > MAX_OBJECTS:
            raise CheckpointError(f"The checkpoint's pickle creates more than {MAX_OBJECTS} objects.")
        if self.memory > MAX_PICKLE_MEMORY:
            raise CheckpointError(
                f"The checkpoint's pickle would take more than {MAX_PICKLE_MEMORY >> 20} MB of memory."
            )
        return value

    def hashable(self, items, kind: type):
        """A tuple or frozenset, whose depth and total size (items counted with repetition, as hashing and
        comparing visit them) are bounded: a shared sub-tuple used twice per level would make hashing a
        100-deep key take 2^100 steps."""
        known = [self.depth.get(id(item), (0, 1)) for item in items]
        depth = 1 + max((d for d, _ in known), default=0)
        weight = 1 + sum(w for _, w in known)
        if depth > MAX_NESTING:
            raise CheckpointError(f"The checkpoint nests containers more than {MAX_NESTING} deep.")
        if weight > MAX_HASHABLE_WEIGHT:
            raise CheckpointError(f"The checkpoint builds a tuple of more than {MAX_HASHABLE_WEIGHT} items in all.")
        value = self.new(kind(items))
        self.depth[id(value)] = (depth, weight)
        self.keep_alive.append(value)
        return value

    def count_tuple_keys(self, keys) -> None:
        """Keys whose hashes a pickle can make collide (tuples, frozensets, value-hashed records) are few, and
        small in all, so that inserting them stays cheap even when every comparison walks a whole key."""
        for key in keys:
            if isinstance(key, (tuple, frozenset, _StorageRef, _TensorRef)):
                self.tuple_keys += 1
                self.key_weight += self.depth.get(id(key), (0, 16))[1]
        if self.tuple_keys > MAX_TUPLE_KEYS or self.key_weight > MAX_KEY_WEIGHT:
            raise CheckpointError(
                f"The checkpoint uses more than {MAX_TUPLE_KEYS} tuples (or {MAX_KEY_WEIGHT} tuple items) as keys or "
                "set items."
            )

    def setitem(self, container, key, value) -> None:
        if isinstance(container, _Inert):
            return
        if type(container) not in (dict, _StateDict):
            raise CheckpointError(f"The checkpoint's pickle sets items on a {type(container).__name__}.")
        self.count_tuple_keys([key])
        self.memory += 2 * _OBJECT_COST  # the entry itself (a hash slot and references)
        try:
            container[key] = value
        except TypeError:
            raise CheckpointError("The checkpoint's pickle uses an unhashable dictionary key.") from None

    @staticmethod
    def extend(container, items) -> None:
        if isinstance(container, _Inert):
            return
        if type(container) is not list:
            raise CheckpointError(f"The checkpoint's pickle appends to a {type(container).__name__}.")
        container.extend(items)

    def call(self, function, args):
        if not isinstance(args, tuple):
            raise CheckpointError("The checkpoint's pickle calls something with non-tuple arguments.")
        if isinstance(function, _Global):
            target = _CALLABLES.get(function.name)
            if target is None:
                return _Inert(function.name)
            try:
                return target(*args)
            except TypeError:
                raise CheckpointError(f"Unexpected arguments to {function.name} in the checkpoint.") from None
        if isinstance(function, _Inert):
            return _Inert(function.origin)
        raise CheckpointError(f"The checkpoint's pickle calls a {type(function).__name__}.")

    def persistent(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            kind = pid[0] if isinstance(pid, tuple) and pid and isinstance(pid[0], str) else type(pid).__name__
            raise CheckpointError(
                f"The checkpoint refers to an external object of kind {kind[:40]!r}; only storage "
                "records are accepted (this is not a plain torch.save state dict)."
            )
        _, storage_type, key, _location, numel = pid
        dtype = None
        if isinstance(storage_type, _Global) and storage_type.name.startswith("torch."):
            dtype = STORAGE_DTYPES.get(storage_type.name[len("torch.") :])
        if dtype is None:
            name = storage_type.name if isinstance(storage_type, _Global) else type(storage_type).__name__
            raise CheckpointError(f"Unsupported storage type {name[:60]!r} in the checkpoint.")
        if (
            not (isinstance(key, str) and _STORAGE_KEY.fullmatch(key))
            or type(numel) is not int
            or not 0 <= numel <= 1 << 34
        ):
            raise CheckpointError("A storage record of the checkpoint has an invalid name or size.")
        ref = _StorageRef(key, dtype, numel)
        if self.storages.setdefault(key, ref) != ref:
            raise CheckpointError(f"Storage record {key} is declared twice with different dtypes or sizes.")
        return ref

    # -- the interpreter --
    def run(self):
        data = self.data
        while True:
            if self.pos >= len(data):
                raise CheckpointError("The checkpoint's pickle ends without STOP.")
            # Every opcode holds at least a reference somewhere (stack, memo, a container): charged too.
            self.memory += 24
            if self.memory > MAX_PICKLE_MEMORY:
                raise CheckpointError(
                    f"The checkpoint's pickle would take more than {MAX_PICKLE_MEMORY >> 20} MB of memory."
                )
            op = data[self.pos : self.pos + 1]
            self.pos += 1
            stack = self.stack
            if op == b"\x80":  # PROTO
                if self.take(1)[0] > 5:
                    raise CheckpointError("Unsupported pickle protocol.")
            elif op == b"\x95":  # FRAME: framing is only a hint for buffered readers
                self.take(8)
            elif op == b".":  # STOP
                value = self.pop()
                if stack:
                    raise CheckpointError("The checkpoint's pickle leaves values on the stack.")
                return value
            elif op == b"(":
                stack.append(_MARK)
            elif op == b"0":
                self.pop()
            elif op == b"1":
                self.pop_mark()
            elif op == b"2":
                stack.append(self.top())
            elif op == b"N":
                stack.append(None)
            elif op == b"\x88":
                stack.append(True)
            elif op == b"\x89":
                stack.append(False)
            elif op == b"J":
                stack.append(self.unpack("<i"))
            elif op == b"K":
                stack.append(self.take(1)[0])
            elif op == b"M":
                stack.append(self.unpack("<H"))
            elif op in (b"\x8a", b"\x8b"):  # LONG1, LONG4
                size = self.take(1)[0] if op == b"\x8a" else self.unpack("<i")
                if not 0 <= size <= MAX_INT_BYTES:
                    raise CheckpointError("The checkpoint holds an integer too large to be a checkpoint value.")
                stack.append(int.from_bytes(self.take(size), "little", signed=True))
            elif op == b"G":
                stack.append(self.unpack(">d"))
            elif op in (b"X", b"\x8c", b"\x8d"):  # BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                size = {
                    b"X": lambda: self.unpack("<I"),
                    b"\x8c": lambda: self.take(1)[0],
                    b"\x8d": lambda: self.unpack("<Q"),
                }[op]()
                try:
                    stack.append(self.new(self.take(size).decode("utf-8", "surrogatepass"), 4 * size))
                except UnicodeDecodeError:
                    raise CheckpointError("The checkpoint holds an invalid UTF-8 string.") from None
            elif op in (b"B", b"C", b"\x8e"):  # BINBYTES, SHORT_BINBYTES, BINBYTES8
                size = {
                    b"B": lambda: self.unpack("<I"),
                    b"C": lambda: self.take(1)[0],
                    b"\x8e": lambda: self.unpack("<Q"),
                }[op]()
                stack.append(self.new(self.take(size), size))
            elif op in (b"T", b"U"):  # BINSTRING, SHORT_BINSTRING (Python 2 str)
                size = self.unpack("<i") if op == b"T" else self.take(1)[0]
                stack.append(self.new(self.take(size).decode("latin-1"), size))
            elif op == b")":
                stack.append(())
            elif op == b"t":
                stack.append(self.hashable(self.pop_mark(), tuple))
            elif op in (b"\x85", b"\x86", b"\x87"):  # TUPLE1..3
                count = op[0] - 0x84
                if len(stack) < count or any(item is _MARK for item in stack[-count:]):
                    raise CheckpointError("The checkpoint's pickle builds a tuple from an empty stack.")
                items = stack[-count:]
                del stack[-count:]
                stack.append(self.hashable(items, tuple))
            elif op == b"]":
                stack.append(self.new([]))
            elif op == b"l":
                stack.append(self.new(self.pop_mark()))
            elif op == b"a":
                value = self.pop()
                self.extend(self.top(), [value])
            elif op == b"e":
                items = self.pop_mark()
                self.extend(self.top(), items)
            elif op == b"}":
                stack.append(self.new({}))
            elif op == b"d":
                items = self.pop_mark()
                if len(items) % 2:
                    raise CheckpointError("The checkpoint's pickle has an odd number of dictionary items.")
                container: dict = self.new({})
                for key, value in zip(items[::2], items[1::2]):
                    self.setitem(container, key, value)
                stack.append(container)
            elif op == b"s":
                value, key = self.pop(), self.pop()
                self.setitem(self.top(), key, value)
            elif op == b"u":
                items = self.pop_mark()
                if len(items) % 2:
                    raise CheckpointError("The checkpoint's pickle has an odd number of dictionary items.")
                container = self.top()
                for key, value in zip(items[::2], items[1::2]):
                    self.setitem(container, key, value)
            elif op == b"\x8f":  # EMPTY_SET
                stack.append(self.new(set()))
            elif op == b"\x90":  # ADDITEMS
                items = self.pop_mark()
                container = self.top()
                if type(container) is not set:
                    raise CheckpointError("The checkpoint's pickle adds set items to a non-set.")
                self.count_tuple_keys(items)
                self.memory += 2 * _OBJECT_COST * len(items)  # hash-table slots, as for dict entries
                try:
                    container.update(items)
                except TypeError:
                    raise CheckpointError("The checkpoint's pickle puts an unhashable value in a set.") from None
            elif op == b"\x91":  # FROZENSET
                items = self.pop_mark()
                self.count_tuple_keys(items)
                self.memory += 2 * _OBJECT_COST * len(items)
                try:
                    stack.append(self.hashable(items, frozenset))
                except TypeError:
                    raise CheckpointError("The checkpoint's pickle puts an unhashable value in a set.") from None
            elif op in (b"q", b"r", b"\x94"):  # BINPUT, LONG_BINPUT, MEMOIZE
                index = self.take(1)[0] if op == b"q" else self.unpack("<I") if op == b"r" else len(self.memo)
                self.memo[index] = self.top()
                self.memory += 2 * _OBJECT_COST  # a memo entry is a dict entry
                if len(self.memo) > MAX_OBJECTS:
                    raise CheckpointError(f"The checkpoint's pickle keeps more than {MAX_OBJECTS} memo entries.")
            elif op in (b"h", b"j"):  # BINGET, LONG_BINGET
                index = self.take(1)[0] if op == b"h" else self.unpack("<I")
                if index not in self.memo:
                    raise CheckpointError("The checkpoint's pickle reads an unset memo entry.")
                stack.append(self.memo[index])
            elif op == b"c":  # GLOBAL
                module, name = self.line(), self.line()
                stack.append(self.new(_Global(f"{module}.{name}"), 4 * (len(module) + len(name))))
            elif op == b"\x93":  # STACK_GLOBAL
                name, module = self.pop(), self.pop()
                if not (isinstance(module, str) and isinstance(name, str)) or len(module) + len(name) > 512:
                    raise CheckpointError("The checkpoint's pickle names a global with non-strings or a huge name.")
                stack.append(self.new(_Global(f"{module}.{name}"), 4 * (len(module) + len(name))))
            elif op == b"R":  # REDUCE
                args, function = self.pop(), self.pop()
                stack.append(self.new(self.call(function, args)))
            elif op in (b"\x81", b"\x92"):  # NEWOBJ, NEWOBJ_EX: instances of classes are never made
                if op == b"\x92":
                    self.pop()
                self.pop()
                cls = self.pop()
                if not isinstance(cls, (_Global, _Inert)):
                    raise CheckpointError("The checkpoint's pickle instantiates a non-class.")
                stack.append(self.new(_Inert(cls.name if isinstance(cls, _Global) else cls.origin)))
            elif op == b"b":  # BUILD: object state. Only our placeholders and dicts accept it, and ignore it.
                self.pop()
                target = self.top()
                if not isinstance(target, (_Inert, _StateDict)):
                    raise CheckpointError(
                        f"The checkpoint's pickle sets the state of a {type(target).__name__}; refused."
                    )
            elif op == b"Q":  # BINPERSID
                stack.append(self.new(self.persistent(self.pop())))
            else:
                raise CheckpointError(
                    f"The checkpoint's pickle uses opcode {op!r}, which checkpoints never need; refused."
                )


# ------------------------------------------------------------------------------------------------------
# File formats
# ------------------------------------------------------------------------------------------------------
def sniff_format(path: str) -> str:
    """'zip' (torch.save), 'safetensors', 'legacy-pickle' or 'unknown', from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 9:
        header_size = struct.unpack("<Q", head[:8])[0]
        if 2 <= header_size <= 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "legacy-pickle"
    return "unknown"


def _check_record_layout(archive: zipfile.ZipFile, names: list[str]) -> None:
    """Every record's bytes are its own: names are unique and the records' data lie one after another without
    overlapping (as torch.save writes them). Overlapping entries would let a small file pose as many large
    records; older Pythons' zipfile (before 3.11.8 / 3.12.2) does not check this itself."""
    if len(set(names)) != len(names):
        raise CheckpointError("The archive holds two records with the same name.")
    infos = sorted(archive.infolist(), key=lambda info: info.header_offset)
    handle = archive.fp
    end_of_records = archive.start_dir
    for info, following in zip(infos, infos[1:] + [None]):
        handle.seek(info.header_offset)
        header = handle.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise CheckpointError(f"Record {info.filename[:80]!r} has no valid local header.")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        data_end = info.header_offset + 30 + name_length + extra_length + info.compress_size
        limit = following.header_offset if following is not None else end_of_records
        if data_end > limit:
            raise CheckpointError("The archive's records overlap: not a torch.save checkpoint.")


def _zip_root(archive: zipfile.ZipFile) -> str:
    names = archive.namelist()
    if not names or len(names) > MAX_RECORDS:
        raise CheckpointError(f"The archive holds {len(names)} records; a checkpoint holds 1 to {MAX_RECORDS}.")
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or f"{next(iter(roots))}/data.pkl" not in names:
        raise CheckpointError("The zip archive is not a torch.save checkpoint (no single <root>/data.pkl).")
    root = roots.pop()
    _check_record_layout(archive, names)
    if any(name.startswith((f"{root}/code/", f"{root}/constants.pkl")) for name in names):
        raise CheckpointError(
            "This is a TorchScript archive (torch.jit.save); save the weights with "
            "torch.save(model.state_dict(), path) and convert that."
        )
    return root


def _read_record(
    archive: zipfile.ZipFile, name: str, expected_size: int | None = None, limit: int = MAX_PICKLE_BYTES
) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError(f"The archive has no record {name!r}.") from None
    if expected_size is not None and info.file_size != expected_size:
        raise CheckpointError(f"Record {name!r} holds {info.file_size} bytes; its tensors declare {expected_size}.")
    if info.file_size > limit:
        raise CheckpointError(f"Record {name!r} declares {info.file_size} bytes, more than allowed ({limit}).")
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        # torch.save stores records uncompressed; a compressed one could inflate far beyond the file's size
        raise CheckpointError(f"Record {name!r} is compressed; torch.save writes uncompressed records.")
    try:
        data = archive.read(info)  # checks the CRC and the declared size
    except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as error:
        raise CheckpointError(f"Record {name!r} is corrupt ({error}).") from None
    except MemoryError:
        raise CheckpointError(f"Not enough memory to read record {name!r} ({info.file_size} bytes).") from None
    if len(data) != info.file_size:
        raise CheckpointError(f"Record {name!r} is truncated.")
    return data


def _zip_specs(path: str) -> dict[str, Any]:
    """The unpickled object of a torch.save zip file, with tensors as `TensorSpec`s."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"Not a readable zip archive ({error}).") from None
    root = _zip_root(archive)
    byteorder = f"{root}/byteorder"
    if byteorder in archive.namelist() and _read_record(archive, byteorder, limit=16) not in (b"little",):
        raise CheckpointError("The checkpoint was saved on a big-endian machine; re-save it on a little-endian one.")
    obj = _PickleMachine(_read_record(archive, f"{root}/data.pkl")).run()
    storages: dict[str, tuple[torch.dtype, torch.Tensor]] = {}

    def storage_bytes(ref: _StorageRef) -> torch.Tensor:
        if ref.key not in storages:
            size = ref.numel * torch.empty((), dtype=ref.dtype).element_size()
            raw = bytearray(_read_record(archive, f"{root}/data/{ref.key}", size, limit=4 * MAX_TENSOR_ELEMENTS))
            flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
            storages[ref.key] = (ref.dtype, flat)
        dtype, flat = storages[ref.key]
        if dtype != ref.dtype:
            raise CheckpointError(f"Storage record {ref.key} is used with two dtypes.")
        return flat.view(ref.dtype) if flat.numel() else torch.empty(0, dtype=ref.dtype)

    def spec(ref: _TensorRef) -> TensorSpec:
        def load() -> torch.Tensor:
            base = storage_bytes(ref.storage)
            if not math.prod(ref.shape):
                return torch.empty(ref.shape, dtype=ref.storage.dtype)
            view = torch.as_strided(base, ref.shape, ref.stride, ref.offset)
            return view.clone(memory_format=torch.contiguous_format)

        size = ref.storage.numel * torch.empty((), dtype=ref.storage.dtype).element_size()
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
        span = (ref.offset, last + 1) if math.prod(ref.shape) else None
        return TensorSpec(torch.Size(ref.shape), ref.storage.dtype, load, ref.storage.key, size, span)

    # Only the state dict is turned into specs: the rest (hyper-parameters, loop and optimizer state) stays
    # inert data that is dropped, and nothing is walked recursively. Its size and keys are checked first: a spec
    # costs far more than the few pickle bytes an entry may take.
    state = obj.get("state_dict") if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) else obj
    if isinstance(state, dict):
        if len(state) > MAX_STATE_ENTRIES:
            raise CheckpointError(f"The state dict has {len(state)} entries, more than {MAX_STATE_ENTRIES}.")
        if not all(isinstance(key, str) for key in state):
            raise CheckpointError("The state dict has keys that are not strings.")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = {**obj, "state_dict": _specs_of(obj["state_dict"], spec)}
    elif isinstance(obj, dict):
        obj = _specs_of(obj, spec)
    return obj


def _specs_of(state: dict, spec: Callable[[_TensorRef], TensorSpec]) -> dict:
    return {key: spec(value) if isinstance(value, _TensorRef) else value for key, value in state.items()}


def _safetensors_specs(path: str) -> dict[str, TensorSpec]:
    from safetensors import safe_open

    with open(path, "rb") as f:
        header_size = struct.unpack("<Q", f.read(8))[0]
    if header_size > MAX_SAFETENSORS_HEADER:
        raise CheckpointError(f"The safetensors header is {header_size} bytes, more than {MAX_SAFETENSORS_HEADER}.")
    handle = safe_open(path, framework="pt")
    specs = {}
    for key in handle.keys():
        shape = torch.Size(_int_tuple(tuple(handle.get_slice(key).get_shape()), "shape"))
        if math.prod(shape) > MAX_TENSOR_ELEMENTS:
            raise CheckpointError(f"Tensor {key[:80]!r} declares more than {MAX_TENSOR_ELEMENTS} elements.")
        dtype_name = handle.get_slice(key).get_dtype()
        dtype = {
            "F32": torch.float32,
            "F64": torch.float64,
            "F16": torch.float16,
            "BF16": torch.bfloat16,
            "I64": torch.int64,
            "I32": torch.int32,
            "I16": torch.int16,
            "I8": torch.int8,
            "U8": torch.uint8,
            "BOOL": torch.bool,
        }.get(dtype_name)
        if dtype is None:
            raise CheckpointError(f"Tensor {key!r} has an unsupported dtype {dtype_name}.")
        specs[key] = TensorSpec(shape, dtype, lambda key=key: handle.get_tensor(key))
    return specs


def read_checkpoint(path: str) -> tuple[dict[str, TensorSpec], str]:
    """The tensors of a checkpoint as `{name: TensorSpec}` plus a description of the source kind.

    Lightning checkpoints give their "state_dict"; everything else in them (hyper-parameters, loop and
    optimizer state) is parsed as inert data and dropped. Raises `CheckpointError` for anything else.
    """
    kind = sniff_format(path)
    try:
        if kind == "safetensors":
            return _safetensors_specs(path), "safetensors"
        if kind == "legacy-pickle":
            raise CheckpointError(
                "This is a legacy (pre-zip, torch < 1.6) pickle. It is refused: reading it needs torch's legacy "
                "loader, which can be made to write files. Original GRAM checkpoints are zip-format; load this one "
                "in a trusted environment and re-save it with torch.save(state_dict, path)."
            )
        if kind != "zip":
            raise CheckpointError("Unknown file format: neither a torch.save zip archive nor safetensors.")
        obj = _zip_specs(path)
    except CheckpointError:
        raise
    except Exception as error:  # safetensors header errors and the like (their text may quote the file: escaped later)
        raise CheckpointError(f"{type(error).__name__}: {error}") from None
    description = "torch.save zip archive"
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj, description = obj["state_dict"], description + ", Lightning checkpoint"
    if not isinstance(obj, dict) or not obj:
        found = repr(obj.origin[:80]) if isinstance(obj, _Inert) else type(obj).__name__
        raise CheckpointError(f"The file holds no state dict (found {found}).")
    bad_keys = [key for key in obj if not isinstance(key, str)]
    if bad_keys:
        raise CheckpointError(f"The state dict has {len(bad_keys)} key(s) that are not strings.")
    others = sorted(key for key, value in obj.items() if not isinstance(value, TensorSpec))
    if others:
        raise CheckpointError(f"The state dict has entries that are not tensors: {[k[:80] for k in others[:10]]}")
    # Views are non-overlapping one by one; across tensors, the weights may not hold more bytes than the records
    # they come from (else a small file could pose as a huge model by reusing one record for every weight).
    spans: dict[str, list[tuple[int, int]]] = {}
    for spec in obj.values():
        if spec.record is not None and spec.span is not None:
            spans.setdefault(spec.record, []).append(spec.span)
    for record, intervals in spans.items():
        intervals.sort()
        if any(start < previous_end for (_, previous_end), (start, _) in zip(intervals, intervals[1:])):
            raise CheckpointError(
                f"Two weights read the same bytes of record {record}: weights share storage, which GRAM "
                "checkpoints never do."
            )
    records = {spec.record: spec.record_bytes for spec in obj.values() if spec.record is not None}
    declared = sum(
        spec.shape.numel() * torch.empty((), dtype=spec.dtype).element_size()
        for spec in obj.values()
        if spec.record is not None
    )
    if declared > sum(records.values()):
        raise CheckpointError(
            f"The state dict's tensors declare {declared} bytes but their records hold "
            f"{sum(records.values())}: tensors share storage, which GRAM checkpoints never do."
        )
    return obj, description
