#!/usr/bin/env python3
"""Reads a dataset written by `dtrain prepare` (format in docs/data.md) with numpy memory maps.

    python3 scripts/read_dataset.py DIR            # a summary
    python3 scripts/read_dataset.py DIR --json     # every split's ids (and records/labels) as JSON: small datasets only
    python3 scripts/read_dataset.py DIR --verify   # also check every file's SHA-256 (format version 2: each block's too)

As a module: `ds = open_dataset(DIR)`; `ds.train.tokens()` is the training token stream (a language model), and
`ds.train.records()` yields (ids, label) pairs (classification). Shards stay memory-mapped: nothing is read whole.
"""
import hashlib
import json
import os
import sys

import numpy as np

FORMAT, VERSIONS = "dtrain-dataset", (1, 2)  # version 2 adds block_bytes and block_sha256 to every shard file
# The shards' ids: fixed width, little-endian; dtrain writes the narrowest that holds the vocabulary.
DTYPES = {"uint8": np.dtype("u1"), "uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


class Split:
    def __init__(self, root, entry, dtype):
        self.tokens_total, self.records_total = entry["tokens"], entry.get("records", 0)
        self.shards = []
        for s in entry["shards"]:
            tokens = _map(root, s["tokens"], dtype)
            offsets = _map(root, s["offsets"], np.dtype("<u8")) if s.get("offsets") else None
            labels = _map(root, s["labels"], np.dtype("<i4")) if s.get("labels") else None
            self.shards.append((tokens, offsets, labels))

    def tokens(self):
        """The split's whole token stream (concatenates the shards: for a language model's stream)."""
        return np.concatenate([t for t, _, _ in self.shards]) if self.shards else np.zeros(0, np.int64)

    def records(self):
        """(ids, label) for every record in order (classification)."""
        for tokens, offsets, labels in self.shards:
            for k in range(len(labels)):
                yield tokens[offsets[k]:offsets[k + 1]], int(labels[k])


class Dataset:
    def __init__(self, root, verify=False):
        with open(os.path.join(root, "manifest.json"), encoding="utf-8") as f:
            self.manifest = m = json.load(f)
        if m.get("format") != FORMAT:
            raise ValueError(f"{root}: not a dtrain dataset")
        if m.get("version") not in VERSIONS:
            raise ValueError(f"{root}: format version {m.get('version')} is unknown (this reader knows {', '.join(map(str, VERSIONS))})")
        if verify:
            _verify(root, m)
        if m.get("token_dtype") not in DTYPES:
            raise ValueError(f"{root}: token_dtype {m.get('token_dtype')!r} is unknown (this reader knows {', '.join(DTYPES)})")
        dtype = DTYPES[m["token_dtype"]]
        with open(os.path.join(root, m["tokenizer"]["name"]), encoding="utf-8") as f:
            self.tokenizer = json.load(f)  # {"kind", "lowercase", "tokens"}: id i is tokens[i]
        self.labels = m["labels"]
        self.train = Split(root, m["train"], dtype)
        self.validation = Split(root, m["validation"], dtype)


def open_dataset(root, verify=False):
    return Dataset(root, verify)


def _map(root, entry, dtype):
    path = os.path.join(root, entry["name"])
    size = os.path.getsize(path)
    if size != entry["bytes"]:
        raise ValueError(f"{root}: {entry['name']} is {size} bytes, the manifest says {entry['bytes']}")
    return np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype)


def _verify(root, m):
    files = [m["tokenizer"]]
    for split in ("train", "validation"):
        for s in m[split]["shards"]:
            files += [s[k] for k in ("tokens", "offsets", "labels") if s.get(k)]
    for entry in files:
        h = hashlib.sha256()
        size = entry.get("block_bytes") or (1 << 20)  # version 2: read by the manifest's blocks, each checked
        blocks = entry.get("block_sha256")
        with open(os.path.join(root, entry["name"]), "rb") as f:
            for i, block in enumerate(iter(lambda: f.read(size), b"")):
                h.update(block)
                if blocks is not None and (i >= len(blocks) or hashlib.sha256(block).hexdigest() != blocks[i]):
                    end = i * size + len(block) - 1
                    raise ValueError(f"{root}: {entry['name']} block {i} (bytes {i * size}-{end}) does not match its SHA-256")
        if h.hexdigest() != entry["sha256"]:
            raise ValueError(f"{root}: {entry['name']} does not match its SHA-256")
        if blocks is not None and len(blocks) != -(-entry["bytes"] // size):
            raise ValueError(f"{root}: {entry['name']} lists {len(blocks)} block SHA-256, its {entry['bytes']} bytes make {-(-entry['bytes'] // size)}")


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    ds = open_dataset(argv[1], verify="--verify" in argv)
    m = ds.manifest
    if "--json" in argv:
        out = {"vocab": ds.tokenizer["tokens"], "labels": ds.labels}
        for name, split in (("train", ds.train), ("validation", ds.validation)):
            if m["settings"]["task"] == "classification":
                out[name] = [[ids.tolist(), label] for ids, label in split.records()]
            else:
                out[name] = split.tokens().tolist()
        json.dump(out, sys.stdout)
        return 0
    print(f"{argv[1]}: {m['settings']['task']}, {m['settings']['tokenizer']['kind']} tokenizer, "
          f"vocabulary {m['vocab_size']} ({m['token_dtype']})")
    for name, split in (("train", ds.train), ("validation", ds.validation)):
        print(f"  {name}: {split.tokens_total} tokens, {split.records_total} records, {len(split.shards)} shard(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
