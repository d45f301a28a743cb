"""Command line: ``softgen targets | ops | build | emit | explain``.

Errors are one line on stderr: exit code 2 for usage errors (bad flags, unknown op/target/
algorithm, invalid names or parameters), 1 for failures (compiler errors, unwritable output).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import ops, passes
from ._version import __version__
from .abi import ECPU
from .backends import BACKENDS, get_backend
from .errors import SoftgenError, UsageError
from .kernel import compile as compile_kernel
from .targets import host_arch, targets


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other usage error
        sub = self.prog.partition(" ")[2]
        raise UsageError(f"{sub}: {message}" if sub else message)


class _Once(argparse.Action):
    """A parameter option given twice is a usage error, not 'the last one wins'."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(f"parameter {option_string} given twice")
        setattr(namespace, self.dest, values)


def _kernel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--op", default="softmax", help="op to generate (default: softmax; see 'softgen ops')")
    p.add_argument("--algorithm", default="auto",
                   help="auto | three-pass-recompute | three-pass-reload | two-pass | online")
    p.add_argument("--target", default="host", help="host or a target from 'softgen targets' (default: host)")
    default = "c"   # the registered backends (softgen.backends); compile rejects others, naming them
    p.add_argument("--backend", default=default, metavar="{" + ",".join(BACKENDS) + "}", help=" | ".join(
        f"{b.name} ({b.description}{', default' if b.name == default else ''})" for b in BACKENDS.values()))
    p.add_argument("--name", help="C symbol and file stem (a C identifier)")
    p.add_argument("--scale", type=float, action=_Once, help="softmax(scale * x); scale > 0")
    p.add_argument("--temperature", type=float, action=_Once, help="softmax(x / temperature); temperature > 0")
    p.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                   help="any op parameter (repeatable)")
    p.add_argument("--unroll", type=int, action=_Once, help="schedule: vectors per main-loop iteration")
    p.add_argument("--accumulators", type=int, action=_Once, help="schedule: independent accumulators")
    p.add_argument("--block", type=int, action=_Once, help="schedule: elements per compensated reduction block")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="softgen", description="Generate softmax-family kernels for CPUs.")
    ap.add_argument("--version", action="version", version=f"softgen {__version__}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    t = sub.add_parser("targets", help="list targets and whether this CPU runs them")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    o = sub.add_parser("ops", help="list ops, their parameters and algorithms")
    o.add_argument("--json", action="store_true", help="machine-readable output")
    b = sub.add_parser("build", help="generate, compile and export lib<name>.so + <name>.h + <name>.json")
    _kernel_args(b)
    b.add_argument("-o", "--output", default="build", help="output directory (default: ./build)")
    b.add_argument("--cc", help="C compiler command (default: $CC or cc)")
    b.add_argument("--json", action="store_true", help="print the manifest as JSON")
    e = sub.add_parser("emit", help="print the generated C or TensorIR (or the assembly)")
    _kernel_args(e)
    e.add_argument("--asm", action="store_true", help="print the assembly the compiler makes")
    e.add_argument("--tir", action="store_true", help="backend tvm: print the TensorIR script (the default)")
    e.add_argument("--wrapper", action="store_true", help="backend tvm: print the C entry-point wrapper")
    e.add_argument("--cc", help="C compiler command for --asm")
    x = sub.add_parser("explain", help="show the IR, the rewrites, the pass plan and bytes moved")
    _kernel_args(x)
    x.add_argument("--json", action="store_true", help="machine-readable output")
    return ap


def _params(args) -> dict:
    params = {}
    for item in args.param:
        key, sep, val = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--param expects NAME=VALUE, got {item!r}")
        if key in params:
            raise UsageError(f"parameter {key} given twice (--param {key}=...)")
        try:
            params[key] = float(val)
        except ValueError:
            if key not in ops.get_op(args.op).choices:   # string-valued (e.g. variant=norm): the op checks it
                raise UsageError(f"--param {key}: {val!r} is not a number") from None
            params[key] = val
    for key in ("scale", "temperature"):
        if getattr(args, key) is not None:
            if key in params:
                raise UsageError(f"parameter {key} given twice (--{key} and --param {key}=...)")
            params[key] = getattr(args, key)
    return params


def _kernel(args):
    sched = {k: getattr(args, k) for k in ("unroll", "accumulators", "block") if getattr(args, k) is not None}
    return compile_kernel(args.op, algorithm=args.algorithm, target=args.target, name=args.name,
                   schedule=sched or None, backend=args.backend, **_params(args))


def _cmd_targets(args) -> None:
    rows = targets()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        mark = "runs here" + (" (host default)" if r["host_default"] else "") if r["runnable"] \
            else "cross/emulated only: missing " + ", ".join(r["missing"])
        print(f"{r['name']:<8} {r['lanes']:>2} lanes  {r['summary']:<58} {mark}")


def _cmd_ops(args) -> None:
    rows = []
    for op in ops.OPS.values():
        algs = ["direct"] if op.kind == "matrix" else \
            passes.applicable_algorithms(ops.build_program(op.name))
        rows.append({"name": op.name, "kind": op.kind, "params": op.params, "doc": op.doc,
                     "algorithms": algs})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        ps = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        axes = " [matrix op: the last two axes]" if r["kind"] == "matrix" else ""
        print(f"{r['name']}({ps}){axes}\n    {r['doc']}\n    algorithms: {', '.join(r['algorithms'])}")


def _cmd_build(args) -> None:
    k = _kernel(args)
    try:
        paths = k.export(args.output, cc=args.cc)
    except OSError as e:
        raise SoftgenError(f"cannot write to {args.output!r}: {e.strerror}") from None
    if not k.runnable:   # one line on stderr (--json keeps stdout pure JSON)
        here = f"called here, {k.name}() returns {k.name.upper()}_{ECPU.suffix} ({ECPU})" \
            if k.target.arch in ("any", host_arch()) else f"lib{k.name}.so is an {k.target.arch} library"
        print(f"softgen: note: this machine can build target {k.target.name} but not run it (missing: "
              f"{', '.join(k.target.missing_features())}); {here}", file=sys.stderr)
    if args.json:
        print(paths["manifest"].read_text(), end="")
        return
    print(f"{k.name}: {k.op} / {k.algorithm} / {k.target.name} / {k.schedule}")
    for key, p in paths.items():
        print(f"  {key:<9} {p}")


def _cmd_emit(args) -> None:
    if (args.tir or args.wrapper) and get_backend(args.backend).c_source:
        raise UsageError("--tir and --wrapper need --backend "
                         + " or ".join(b.name for b in BACKENDS.values() if not b.c_source))
    if sum((args.asm, args.tir, args.wrapper)) > 1:
        raise UsageError("give at most one of --asm, --tir, --wrapper")
    k = _kernel(args)
    sys.stdout.write(k.asm(args.cc) if args.asm else k.wrapper if args.wrapper else k.source)


def _cmd_explain(args) -> None:
    k = _kernel(args)
    if args.json:
        print(json.dumps(k.explain(as_json=True), indent=2))
        return
    sys.stdout.write(k.explain())


COMMANDS = {"targets": _cmd_targets, "ops": _cmd_ops, "build": _cmd_build, "emit": _cmd_emit,
            "explain": _cmd_explain}


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        COMMANDS[args.cmd](args)
        return 0
    except UsageError as e:
        print(f"softgen: error: {e}", file=sys.stderr)
        return 2
    except SoftgenError as e:
        msg = str(e).strip().splitlines() or [type(e).__name__]
        more = " (set SOFTGEN_DEBUG=1 for details)" if len(msg) > 1 else ""
        print(f"softgen: error: {msg[0]}{more}", file=sys.stderr)
        if more and os.environ.get("SOFTGEN_DEBUG"):
            print("\n".join(msg[1:]), file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
