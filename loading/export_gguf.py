"""
Writing GGUF files that llama.cpp (and so ollama) runs, from a position-free map (export.py; docs/export.md).

    fold            a copy of a model's GGUF file in which a scalar per (site, layer[, head]) is part of the weights:
                    an output scaled by f is its last linear map (or Gemma's post-norm) scaled by f
    control_vector  a llama.cpp control vector: one vector per layer, added to the residual stream after the layer
    dequantized     a copy of a GGUF file with every tensor in F32: llama.cpp then computes in F32 as we do (it
                    quantises activations only for quantised weights), so it checks an export to float rounding

Where a factor f goes, per layer N (GGUF names; a matrix is stored [inputs, outputs], innermost first, so it is
read here as torch's (outputs, inputs)):
    head      blk.N.attn_output.weight, head h's columns (inputs h·hs ... (h+1)·hs − 1): z_h·f_h goes through them
    attn_out  blk.N.attn_output.weight and .bias (if any); Gemma: blk.N.post_attention_norm.weight
    mlp_out   blk.N.ffn_down.weight and .bias (if any);      Gemma: blk.N.post_ffw_norm.weight
Gemma reads attn_out and mlp_out after its post-norms (gpt2.py): a post-norm is x/rms(x)·g, with g = 1 + w
stored in the file (llama.cpp's converter adds the 1; its graph multiplies by the stored weight), so g·f is exact.
A tensor that two sites touch (head and attn_out) gets both factors. The changed tensors are written in F32 (or
F16), dequantised first; every other tensor and all the metadata are copied byte for byte.

A control vector, as llama.cpp's reader (common_control_vector_load) takes it: architecture "controlvector",
one F32 1-D tensor "direction.N" of n_embd numbers per layer N ≥ 1, added to the output of layer N (its graph's
build_cvec after the block; layer 0 has none: the reader refuses direction.0). Our `resid` of layer N is that
output, so our layer N is its N.
"""

import os
import struct
import tempfile

import numpy as np
import torch

from gpt2 import UserError
from loading.checkpoints import _dequantize, gguf_file
from running.runfolder import write_atomically

FOLDS = ("head", "attn_out", "mlp_out")   # the sites whose scalars fold into weights


def targets(names: set, site: str, layer: int) -> list[str]:
    """The tensors of `layer` that carry site's factor (see above), those the file has."""
    post = {"attn_out": "post_attention_norm", "mlp_out": "post_ffw_norm"}.get(site)
    if post and f"blk.{layer}.{post}.weight" in names:                 # Gemma: the post-norm's g
        return [f"blk.{layer}.{post}.weight"]
    matrix = "ffn_down" if site == "mlp_out" else "attn_output"
    kinds = ("weight",) if site == "head" else ("weight", "bias")
    return [f"blk.{layer}.{matrix}.{k}" for k in kinds if f"blk.{layer}.{matrix}.{k}" in names]


def fold(src: str, out: str, factors: dict, dtype: str = "F32") -> list[str]:
    """Write `out`: the GGUF file `src` with factors {(site, layer): f} folded in, f a number (attn_out, mlp_out) or
    one per head (head, (nh,)); factors of exactly 1 change nothing. Returns the names of the changed tensors."""
    meta, reader = gguf_file(src)
    names = {t.name for t in reader.tensors}
    n_head = int(meta[f"{meta['general.architecture']}.attention.head_count"])
    changed = {}
    for (site, layer), f in sorted(factors.items()):
        f = torch.as_tensor(f, dtype=torch.float64)
        if site not in FOLDS:
            raise UserError(f"a scalar at {site} does not fold into the weights; {', '.join(FOLDS)} do")
        if bool((f == 1).all()):
            continue
        for name in targets(names, site, layer) or [f"blk.{layer}.attn_output.weight"]:
            if name not in names:
                raise UserError(f"{src} has no tensor {name} to fold layer {layer}'s {site} scalars into")
            t = changed.get(name)
            if t is None:
                t = _dequantize(next(x for x in reader.tensors if x.name == name), src).double()
            if site == "head":                                           # (D, nh·hs): head h's columns
                t = (t.view(t.shape[0], n_head, -1) * f.view(1, n_head, 1)).view(t.shape)
            else:
                t = t * f
            changed[name] = t
    arrays = {n: t.float().numpy().astype(np.float16 if dtype == "F16" else np.float32) for n, t in changed.items()}
    write_atomically(out, lambda file: copy_with(reader, arrays, file))
    return sorted(arrays)


def dequantized(src: str, out: str) -> None:
    """Write `out`: the GGUF file `src` with every tensor dequantised to F32, the metadata as it was."""
    meta, reader = gguf_file(src)
    arrays = {t.name: _dequantize(t, src).float().numpy() for t in reader.tensors}
    write_atomically(out, lambda file: copy_with(reader, arrays, file))


def copy_with(reader, arrays: dict, file) -> None:
    """The GGUF file of `reader` with the tensors in `arrays` ({name: float32 or float16 array, rows first})
    replaced, written to the open binary `file`: the header and the metadata as they were, the tensor table
    with the new types and offsets, every tensor's data aligned to the file's alignment."""
    from gguf import GGMLQuantizationType
    align = reader.alignment
    file.write(b"GGUF" + struct.pack("<IQQ", reader.version, len(reader.tensors), reader.n_kv))
    file.write(reader.buf[24:reader.kv_end].tobytes())                   # the metadata, byte for byte
    blobs, offset = [], 0
    for t in reader.tensors:
        if t.name in arrays:
            a = arrays[t.name]
            kind = GGMLQuantizationType.F16 if a.dtype == np.float16 else GGMLQuantizationType.F32
            data = a.tobytes()
        else:
            kind, data = t.tensor_type, t.data                           # memory-mapped bytes, untouched
        name = t.name.encode()
        file.write(struct.pack("<Q", len(name)) + name + struct.pack(f"<I{len(t.shape)}Q", len(t.shape), *t.shape))
        file.write(struct.pack("<IQ", int(kind), offset))
        blobs.append(data)
        offset += -(-len(memoryview(data).cast("B")) // align) * align
    file.write(b"\0" * (-file.tell() % align))
    for data in blobs:
        view = memoryview(data).cast("B")
        file.write(view)
        file.write(b"\0" * (-len(view) % align))


def control_vector(out: str, directions: dict, model_hint: str) -> None:
    """Write `out`, a llama.cpp control vector: directions {layer N >= 1: (n_embd,) vector} as F32 "direction.N";
    the metadata repeng's files have (controlvector.model_hint, controlvector.layer_count)."""
    import gguf
    if 0 in directions:
        raise UserError("llama.cpp's control vectors have no layer 0 (its reader refuses direction.0)")

    with tempfile.TemporaryDirectory() as tmp:                          # small: written whole, then put in place
        w = gguf.GGUFWriter(os.path.join(tmp, "cv.gguf"), arch="controlvector")
        w.add_string("controlvector.model_hint", model_hint)
        w.add_uint32("controlvector.layer_count", len(directions))
        for layer, v in sorted(directions.items()):
            w.add_tensor(f"direction.{layer}", torch.as_tensor(v).float().numpy())
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(os.path.join(tmp, "cv.gguf"), "rb") as f:
            data = f.read()
    write_atomically(out, data)
