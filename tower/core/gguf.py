"""The tokenizer inside a GGUF model file, as a Hugging Face tokenizer.

A model served by llama.cpp (or llama-cpp-python) sends no usage in its streams, so tower
counts the tokens itself (recorded as estimated). The model's own tokenizer is in the GGUF
file the server loads: `[models."openai/x"] tokenizer = "model.gguf"` reads it from the
file's metadata (pure Python, the header only: no numpy, no `gguf` package) and rebuilds it
as a `tokenizers.Tokenizer`, the library litellm's `token_counter` takes.

Byte-level BPE ("gpt2") vocabularies are supported, with llama.cpp's "gpt2" and "smollm"
pre-tokenizers ("smollm" isolates every digit, then applies the GPT-2 regex); control tokens
such as `<|im_start|>` stay whole, as llama.cpp tokenizes with special=True. Other GGUF
tokenizers are refused with a reason (a tokenizer.json works for them). Checked against
llama-cpp-python's own tokenizer on SmolLM2-135M-Instruct: 314 of 314 varied strings
(prose, code, whitespace runs, CJK, emoji, chat markup) gave the same ids.
"""

from __future__ import annotations

import functools
import mmap
import struct
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

_SCALARS: dict[int, struct.Struct] = {
    0: struct.Struct("<B"),
    1: struct.Struct("<b"),
    2: struct.Struct("<H"),
    3: struct.Struct("<h"),
    4: struct.Struct("<I"),
    5: struct.Struct("<i"),
    6: struct.Struct("<f"),
    7: struct.Struct("<?"),
    10: struct.Struct("<Q"),
    11: struct.Struct("<q"),
    12: struct.Struct("<d"),
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_STRING, _ARRAY = 8, 9
_CONTROL = 3  # llama.cpp token type for control tokens such as <|im_end|>
# tokenizer.ggml.pre values handled -> whether digits are split one by one first
_DIGIT_SPLIT = {"smollm": True, "gpt2": False}


class _Reader:
    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.buf = memoryview(data)
        self.pos = 0

    def unpack(self, fmt: struct.Struct) -> object:
        (value,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return value

    def string(self) -> str:
        (length,) = _U64.unpack_from(self.buf, self.pos)
        start = self.pos + 8
        self.pos = start + length
        return str(self.buf[start : self.pos], "utf-8")

    def value(self, vtype: int) -> object:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.unpack(_U32)
            count = self.unpack(_U64)
            assert isinstance(etype, int) and isinstance(count, int)
            if etype in _SCALARS:  # fixed-size elements: unpack in one call
                fmt = _SCALARS[etype]
                items = struct.unpack_from(f"<{count}{fmt.format[1:]}", self.buf, self.pos)
                self.pos += fmt.size * count
                return list(items)
            return [self.value(etype) for _ in range(count)]
        if vtype not in _SCALARS:
            raise ValueError(f"unknown GGUF value type {vtype} at offset {self.pos}")
        return self.unpack(_SCALARS[vtype])


def read_gguf_metadata(path: str | Path) -> dict[str, object]:
    """Return the key/value metadata of a GGUF (v2/v3) file; tensors are skipped (the file is
    mapped, so only the header's pages are read, not the model's weights)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mem:
        try:
            return _metadata(path, mem)
        except (struct.error, UnicodeDecodeError, IndexError) as exc:
            raise ValueError(f"{path}: damaged GGUF header ({exc})") from None


def _metadata(path: str | Path, data: mmap.mmap) -> dict[str, object]:
    reader = _Reader(data)
    try:
        return _read_header(path, reader)
    finally:
        reader.buf.release()  # the map closes next: no view of it may be left


def _read_header(path: str | Path, reader: _Reader) -> dict[str, object]:
    if bytes(reader.buf[:4]) != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (bad magic)")
    reader.pos = 4
    version = reader.unpack(_U32)
    if version not in (2, 3):
        raise ValueError(f"{path}: unsupported GGUF version {version}")
    reader.unpack(_U64)  # tensor count
    kv_count = reader.unpack(_U64)
    assert isinstance(kv_count, int)
    metadata: dict[str, object] = {}
    for _ in range(kv_count):
        key = reader.string()
        vtype = reader.unpack(_U32)
        assert isinstance(vtype, int)
        metadata[key] = reader.value(vtype)
    return metadata


def tokenizer_json_from_gguf(path: str | Path) -> str:
    """Return a ``tokenizers.Tokenizer`` JSON equivalent to a GGUF's "gpt2" tokenizer.

    Built once per file version: `tower check` (project load) and the session's start both
    ask for it, and a project reload asks again."""
    st = Path(path).stat()
    return _tokenizer_json(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _tokenizer_json(path: str, _mtime_ns: int, _size: int) -> str:
    meta = read_gguf_metadata(path)
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(
            f"{path}: tokenizer.ggml.model is {model!r}; only 'gpt2' (byte-level BPE) is supported"
        )
    tokens = meta.get("tokenizer.ggml.tokens")
    merges = meta.get("tokenizer.ggml.merges")
    types = meta.get("tokenizer.ggml.token_type") or []
    if not (isinstance(tokens, list) and isinstance(merges, list) and isinstance(types, list)):
        raise ValueError(f"{path}: no tokens or merges in the GGUF's metadata")
    vocab = {token: i for i, token in enumerate(tokens)}
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    pre = meta.get("tokenizer.ggml.pre")
    if pre not in _DIGIT_SPLIT:
        raise ValueError(
            f"{path}: unsupported tokenizer.ggml.pre {pre!r} (know {sorted(_DIGIT_SPLIT)})"
        )
    # llama.cpp's "gpt2" pre-tokenizer is the GPT-2 regex, which ByteLevel also uses;
    # "smollm" first isolates every digit (\p{N}) and then applies that regex.
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if _DIGIT_SPLIT[pre]:
        digits = pre_tokenizers.Digits(individual_digits=True)
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([digits, byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    special = [tokens[i] for i, kind in enumerate(types) if kind == _CONTROL]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return tokenizer.to_str()
