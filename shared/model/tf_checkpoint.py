"""Read a TensorFlow checkpoint (a "tensor bundle": PREFIX.index + PREFIX.data-NNNNN-of-NNNNN)
into numpy arrays, without TensorFlow.

Hand-written over `protobuf` because no maintained light reader exists (PyPI's only one,
tensorflow-checkpoint-reader 0.2.2, is a 2023 "in development" snapshot of generated protos).
The format, as tensorflow/core/util/tensor_bundle writes it:
- PREFIX.index is a LevelDB-style SSTable (tensorflow/core/lib/io/table): data blocks of
  prefix-compressed key/value entries, an index block of their handles, a 48-byte footer ending
  in a magic number; every block is followed by a compression byte and a masked CRC32C. Keys are
  tensor names; the empty key holds a BundleHeaderProto (shard count, endianness), every other
  value a BundleEntryProto (dtype, shape, shard, offset, size, masked CRC32C of the bytes).
- PREFIX.data-SSSSS-of-NNNNN holds the raw little-endian tensor bytes at those offsets.
Every CRC is checked (google-crc32c), so a truncated or damaged file is named, never loaded.
"""
from __future__ import annotations

import os
import struct
from collections import OrderedDict

import numpy as np

_MAGIC = 0xDB4775248B80FB57
_FOOTER = 48
_TRAILER = 5  # compression type byte + masked crc32c
_MASK_DELTA = 0xA282EAD8

# tensorflow/core/framework/types.proto DataType -> numpy dtype (the types weights come in)
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
           9: np.int64, 10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
_BFLOAT16 = 14
_STRING = 7

# tensor_bundle.proto, tensor_shape.proto and versions.proto: the messages a bundle's index holds.
_PROTO = """
name: "jla_tensor_bundle.proto" package: "jla_tensorflow" syntax: "proto3"
message_type { name: "TensorShapeProto"
  nested_type { name: "Dim"
    field { name: "size" number: 1 label: LABEL_OPTIONAL type: TYPE_INT64 }
    field { name: "name" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING } }
  field { name: "dim" number: 2 label: LABEL_REPEATED type: TYPE_MESSAGE
          type_name: ".jla_tensorflow.TensorShapeProto.Dim" }
  field { name: "unknown_rank" number: 3 label: LABEL_OPTIONAL type: TYPE_BOOL } }
message_type { name: "VersionDef"
  field { name: "producer" number: 1 label: LABEL_OPTIONAL type: TYPE_INT32 }
  field { name: "min_consumer" number: 2 label: LABEL_OPTIONAL type: TYPE_INT32 }
  field { name: "bad_consumers" number: 3 label: LABEL_REPEATED type: TYPE_INT32 } }
message_type { name: "BundleHeaderProto"
  field { name: "num_shards" number: 1 label: LABEL_OPTIONAL type: TYPE_INT32 }
  field { name: "endianness" number: 2 label: LABEL_OPTIONAL type: TYPE_INT32 }
  field { name: "version" number: 3 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".jla_tensorflow.VersionDef" } }
message_type { name: "BundleEntryProto"
  field { name: "dtype" number: 1 label: LABEL_OPTIONAL type: TYPE_INT32 }
  field { name: "shape" number: 2 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".jla_tensorflow.TensorShapeProto" }
  field { name: "shard_id" number: 3 label: LABEL_OPTIONAL type: TYPE_INT32 }
  field { name: "offset" number: 4 label: LABEL_OPTIONAL type: TYPE_INT64 }
  field { name: "size" number: 5 label: LABEL_OPTIONAL type: TYPE_INT64 }
  field { name: "crc32c" number: 6 label: LABEL_OPTIONAL type: TYPE_FIXED32 }
  field { name: "slices" number: 7 label: LABEL_REPEATED type: TYPE_BYTES } }
"""
_MESSAGES = {}


class TFCheckpointError(ValueError):
    """A TF checkpoint that cannot be read; the message names the file (and tensor)."""


def _message(name):
    if not _MESSAGES:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
        pool = descriptor_pool.DescriptorPool()
        pool.Add(text_format.Parse(_PROTO, descriptor_pb2.FileDescriptorProto()))
        for message in ("BundleHeaderProto", "BundleEntryProto"):
            _MESSAGES[message] = message_factory.GetMessageClass(
                pool.FindMessageTypeByName("jla_tensorflow." + message))
    return _MESSAGES[name]()


def _masked_crc32c(data: bytes) -> int:
    import google_crc32c
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _varint(buf, pos, where):
    result, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise TFCheckpointError(f"{where}: malformed varint at byte {pos}")
        byte = buf[pos]
        result |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return result, pos
        shift += 7


def _block(data, offset, size, where):
    """The contents of the block at (offset, size), its trailer's CRC checked."""
    end = offset + size + _TRAILER
    if offset < 0 or end > len(data):
        raise TFCheckpointError(f"{where}: block at byte {offset} (+{size}) runs past the end of "
                                f"the file ({len(data)} bytes): truncated")
    contents, kind = data[offset:offset + size], data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if _masked_crc32c(data[offset:offset + size + 1]) != stored:
        raise TFCheckpointError(f"{where}: block at byte {offset} fails its CRC32C: damaged")
    if kind != 0:  # 1 = snappy: TF stores a block uncompressed unless snappy saves 1/8
        raise TFCheckpointError(f"{where}: block at byte {offset} is compressed (type {kind}); "
                                f"only uncompressed tables can be read")
    return contents


def _entries(block, where):
    """(key, value) pairs of one block (prefix-compressed keys, restart array at the end)."""
    if len(block) < 4:
        raise TFCheckpointError(f"{where}: block of {len(block)} bytes is too short")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * restarts
    if limit < 0:
        raise TFCheckpointError(f"{where}: block restart array is larger than the block")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos, where)
        unshared, pos = _varint(block, pos, where)
        size, pos = _varint(block, pos, where)
        if shared > len(key) or pos + unshared + size > limit:
            raise TFCheckpointError(f"{where}: malformed block entry at byte {pos}")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + size]
        pos += size


def read_index(index_path):
    """{tensor name: BundleEntryProto} and the BundleHeaderProto of PREFIX.index."""
    with open(index_path, "rb") as f:
        data = f.read()
    if len(data) < _FOOTER:
        raise TFCheckpointError(f"{index_path}: {len(data)} bytes, shorter than a table footer: "
                                f"truncated or not a TF checkpoint index")
    (magic,) = struct.unpack_from("<Q", data, len(data) - 8)
    if magic != _MAGIC:
        raise TFCheckpointError(f"{index_path}: no table magic number at the end: truncated or "
                                f"not a TF checkpoint index")
    pos = len(data) - _FOOTER
    _, pos = _varint(data, pos, index_path)  # metaindex handle (unused by bundles)
    _, pos = _varint(data, pos, index_path)
    index_offset, pos = _varint(data, pos, index_path)
    index_size, pos = _varint(data, pos, index_path)
    header, entries = None, OrderedDict()
    for _, handle in _entries(_block(data, index_offset, index_size, index_path), index_path):
        offset, at = _varint(handle, 0, index_path)
        size, _ = _varint(handle, at, index_path)
        for key, value in _entries(_block(data, offset, size, index_path), index_path):
            name = key.decode("utf-8", "replace")
            message = _message("BundleHeaderProto" if key == b"" else "BundleEntryProto")
            try:
                message.ParseFromString(value)
            except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
                raise TFCheckpointError(f"{index_path}: entry {name!r} is not a valid "
                                        f"protobuf ({exc})") from exc
            if key == b"":
                header = message
            else:
                entries[name] = message
    if header is None:
        raise TFCheckpointError(f"{index_path}: no bundle header (empty key): not a TF "
                                f"checkpoint index")
    return header, entries


def read_tf_checkpoint(prefix) -> "OrderedDict[str, np.ndarray]":
    """Every tensor of the bundle PREFIX (PREFIX.index + data files), by its TF name."""
    prefix = os.fspath(prefix)
    index_path = prefix + ".index"
    header, entries = read_index(index_path)
    if header.endianness != 0:
        raise TFCheckpointError(f"{index_path}: a big-endian bundle; only little-endian ones "
                                f"can be read")
    sizes, out = {}, OrderedDict()
    for name, entry in entries.items():
        if entry.dtype == _STRING:  # TF2's object graph and other strings are no weights
            continue
        if entry.slices:
            raise TFCheckpointError(f"{index_path}: tensor {name!r} is saved in slices "
                                    f"(partitioned variable); not supported")
        shape = tuple(int(d.size) for d in entry.shape.dim)
        dtype = _DTYPES.get(entry.dtype, np.uint16 if entry.dtype == _BFLOAT16 else None)
        if dtype is None:
            raise TFCheckpointError(f"{index_path}: tensor {name!r} has TF dtype {entry.dtype}, "
                                    f"not a numeric type this reader knows")
        path = f"{prefix}.data-{entry.shard_id:05d}-of-{header.num_shards:05d}"
        if path not in sizes:
            if not os.path.isfile(path):
                raise TFCheckpointError(f"{path}: data file not found (tensor {name!r} is in it)")
            sizes[path] = os.path.getsize(path)
        end = entry.offset + entry.size
        if end > sizes[path]:
            raise TFCheckpointError(f"{path}: tensor {name!r} needs bytes {entry.offset}..{end} "
                                    f"but the file has {sizes[path]}: truncated")
        with open(path, "rb") as f:
            f.seek(entry.offset)
            raw = f.read(entry.size)
        if _masked_crc32c(raw) != entry.crc32c:
            raise TFCheckpointError(f"{path}: tensor {name!r} fails its CRC32C: damaged")
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if len(raw) != expected:
            raise TFCheckpointError(f"{path}: tensor {name!r} has {len(raw)} bytes, its shape "
                                    f"{shape} needs {expected}")
        array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
        if entry.dtype == _BFLOAT16:  # the upper half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        out[name] = array.astype(array.dtype.newbyteorder("="))
    return out
