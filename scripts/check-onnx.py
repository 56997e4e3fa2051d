#!/usr/bin/env python3
"""Checks a model written by `dtrain export --format onnx` with the ONNX project's own checker, outside .NET.

    python3 scripts/check-onnx.py model.onnx

Needs the `onnx` Python package (Debian/Ubuntu: apt-get install python3-onnx; or pip install onnx). Runs ONNX's
checker with full_check (every node against its operator schema, then strict shape inference), prints the graph's
inputs and outputs with the shapes ONNX infers, and checks that the "dtrain" metadata entry equals MODEL.onnx.json.
Exit status 0 when all holds, 1 when a check fails, 2 when the file or the onnx package is missing.
"""
import json
import sys


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    path = argv[1]
    try:
        import onnx
        from onnx import checker, shape_inference
    except ImportError:
        print("error: the onnx Python package is not installed (Debian/Ubuntu: apt-get install python3-onnx)", file=sys.stderr)
        return 2
    try:
        model = onnx.load(path)
    except OSError as e:
        print(f"error: {path}: {e}", file=sys.stderr)
        return 2
    try:
        checker.check_model(model, full_check=True)
        inferred = shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:  # the checker's own exception types differ between onnx versions
        print(f"FAIL {path}: {e}", file=sys.stderr)
        return 1
    print(f"{path}: ir_version {model.ir_version}, opsets "
          + ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
          + f"; nodes: {', '.join(sorted({n.op_type for n in model.graph.node}))}")

    def describe(v):
        t = v.type.tensor_type
        dims = [d.dim_param or str(d.dim_value) for d in t.shape.dim]
        return f"{v.name} {onnx.TensorProto.DataType.Name(t.elem_type).lower()} ({', '.join(dims)})"

    for v in inferred.graph.input:
        print("  input  " + describe(v))
    for v in inferred.graph.output:
        print("  output " + describe(v))
    meta = {p.key: p.value for p in model.metadata_props}
    if "dtrain" not in meta:
        print(f"FAIL {path}: no \"dtrain\" metadata entry", file=sys.stderr)
        return 1
    info = json.loads(meta["dtrain"])
    try:
        with open(path + ".json", encoding="utf-8") as f:
            beside = json.load(f)
    except OSError as e:
        print(f"FAIL {path}.json: {e}", file=sys.stderr)
        return 1
    if beside != info:
        print(f"FAIL {path}.json differs from the model's \"dtrain\" metadata entry", file=sys.stderr)
        return 1
    names = lambda vs: [v.name for v in vs]
    if [i["name"] for i in info["inputs"]] != names(model.graph.input) or [o["name"] for o in info["outputs"]] != names(model.graph.output):
        print(f"FAIL {path}: the metadata's inputs/outputs are not the graph's", file=sys.stderr)
        return 1
    print(f"  {info['task']}, {info['cell']}, {info['layers']} layer(s), vocabulary {info['vocab_size']} ({info['tokenizer']['kind']}), "
          f"labels {info['labels']}; metadata equals {path}.json")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
