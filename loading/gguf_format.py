"""
Reading a GGUF file (llama.cpp's one-file format): its metadata and where each tensor's bytes are.

gguf.GGUFReader does the same, but builds a numpy view for every element of every array, which takes
most of a minute for a 262,144-token vocabulary (Gemma's: tokens, scores and types); this reads the
arrays in one pass each and is as fast as the file can be read. The layout (GGUF version 2 and 3):

    "GGUF", version (u32), tensor count (u64), metadata count (u64)
    metadata    key (string), value type (u32), value      string: length (u64) + UTF-8 bytes
                                                           array: element type (u32), count (u64), elements
    tensors     name (string), n_dims (u32), dims (u64 each, innermost first), type (u32), offset (u64)
    padding to general.alignment (32), then the tensors' data, each at its offset

Tensors are returned as GGUFTensor: name, tensor_type (gguf.GGMLQuantizationType), shape (innermost first,
as GGUFReader gives it) and data, the raw bytes memory-mapped, (rows, bytes per row).
"""

import struct
from dataclasses import dataclass

import numpy as np

# value type -> (struct format, numpy dtype) for the fixed-size ones; 8 is a string, 9 an array
SCALARS = {0: ("<B", np.uint8), 1: ("<b", np.int8), 2: ("<H", np.uint16), 3: ("<h", np.int16), 4: ("<I", np.uint32),
           5: ("<i", np.int32), 6: ("<f", np.float32), 7: ("<?", np.bool_), 10: ("<Q", np.uint64),
           11: ("<q", np.int64), 12: ("<d", np.float64)}
STRING, ARRAY = 8, 9


@dataclass
class GGUFTensor:
    name: str
    tensor_type: object      # gguf.GGMLQuantizationType
    shape: list[int]         # innermost first
    data: np.ndarray         # uint8, (rows, bytes per row), memory-mapped


class GGUFFile:
    """metadata {key: value} (arrays as lists) and tensors [GGUFTensor] of a GGUF file. ValueError (or
    struct.error) if the file is not GGUF or is cut short."""

    def __init__(self, path: str):
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        self.buf = np.memmap(path, dtype=np.uint8, mode="r")
        if bytes(self.buf[:4]) != b"GGUF":
            raise ValueError("no GGUF magic")
        self.pos = 4
        version, n_tensors, n_kv = self._unpack("<IQQ")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version}")
        self.metadata = {}
        for _ in range(n_kv):
            key = self._string()
            (kind,) = self._unpack("<I")
            self.metadata[key] = self._value(kind)
        self.version, self.n_kv, self.kv_end = version, n_kv, self.pos   # the metadata's bytes: buf[24:kv_end]
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            (n_dims,) = self._unpack("<I")
            shape = list(self._unpack(f"<{n_dims}Q"))
            kind, offset = self._unpack("<IQ")
            infos.append((name, shape, GGMLQuantizationType(kind), offset))
        align = self.alignment = int(self.metadata.get("general.alignment", 32))
        start = -(-self.pos // align) * align
        self.tensors = []
        for name, shape, kind, offset in infos:
            block, size = GGML_QUANT_SIZES[kind]
            row_bytes = shape[0] // block * size
            rows = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            begin = start + offset
            if begin + rows * row_bytes > len(self.buf):
                raise ValueError(f"tensor {name} ends past the end of the file")
            data = self.buf[begin:begin + rows * row_bytes].reshape(rows, row_bytes)
            self.tensors.append(GGUFTensor(name, kind, shape, data))

    def _unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def _string(self) -> str:
        (n,) = self._unpack("<Q")
        if self.pos + n > len(self.buf):
            raise ValueError("a string runs past the end of the file")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8")
        self.pos += n
        return s

    def _value(self, kind: int):
        if kind == STRING:
            return self._string()
        if kind == ARRAY:
            item, n = self._unpack("<IQ")
            if item == STRING:
                return [self._string() for _ in range(n)]
            if item in SCALARS:  # one read for the whole array
                dtype = np.dtype(SCALARS[item][1]).newbyteorder("<")
                values = np.frombuffer(self.buf, dtype=dtype, count=n, offset=self.pos)
                self.pos += n * dtype.itemsize
                return values.tolist()
            return [self._value(item) for _ in range(n)]
        if kind not in SCALARS:
            raise ValueError(f"unknown metadata value type {kind}")
        (value,) = self._unpack(SCALARS[kind][0])
        return value
