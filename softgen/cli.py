"""Command line: ``softgen targets | ops | build | emit | explain | bench | cache``.

Errors are one line on stderr: exit code 2 for usage errors (bad flags, unknown op/target/
algorithm, invalid names or parameters), 1 for failures (compiler errors, unwritable output).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

from . import benchmark, machine, ops, passes, runtime, tunedb
from ._version import __version__
from .abi import ECPU
from .backends import BACKENDS, get_backend
from .errors import SoftgenError, UsageError
from .kernel import compile as compile_kernel
from .numerics.constants import EXP_VARIANTS
from .schedule import ATTENTION_KNOBS, INT_FIELDS, KNOB_DEFAULTS, KNOB_HELP
from .targets import all_targets, group_names, groups, host_arch, targets
from .tune import DEFAULT_BUDGET, DEFAULT_SIZES, N_MAX as TUNE_N_MAX, tune


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other usage error
        sub = self.prog.partition(" ")[2]
        raise UsageError(f"{sub}: {message}" if sub else message)


class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions and help as usual; keeps an epilog's example lines as written."""

    def _fill_text(self, text, width, indent):
        if text.startswith("example"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _examples(*lines: str) -> dict:
    """The ``epilog`` of a subcommand: its examples, one command per line."""
    head = "example:" if len(lines) == 1 else "examples:"
    return {"epilog": head + "".join(f"\n  {ln}" for ln in lines), "formatter_class": _Formatter}


DOCS = "docs/ops.md"   # in the repository: each op's definition, algorithms, edge cases, accuracy


def _algorithm_help() -> str:
    """Every algorithm, from the registries (passes.ALGORITHMS, passes.MATRIX_ALGORITHMS)."""
    row = " | ".join(passes.ALGORITHMS)
    attention = " | ".join(a for a in passes.MATRIX_ALGORITHMS if a != "direct")
    return (f"auto (default: a size-aware dispatcher) | {row} | attention: {attention}; "
            "which apply to an op: 'softgen ops'")


def _target_help() -> str:
    """Every target file (targets/*.toml and $SOFTGEN_TARGETS_PATH) and group, from the registry.
    A target file that does not load is reported when a command uses targets, not by --help."""
    try:
        names, grps = ", ".join(all_targets()), ", ".join(group_names())
    except SoftgenError as e:
        names, grps = f"the target files do not load: {e}", "x86-64, aarch64"
    return (f"host (the best target this CPU runs), a target ({names}; see "
            f"'softgen targets'), an architecture group ({grps}: every ISA of it "
            "in one library, picked at load; SOFTGEN_ISA caps the pick) or a comma list of targets "
            "of one architecture (avx2,avx512) (default: host)")


class _Once(argparse.Action):
    """A parameter option given twice is a usage error, not 'the last one wins'."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(f"parameter {option_string} given twice")
        setattr(namespace, self.dest, values)


def _kernel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--op", default="softmax", help="op to generate (default: softmax; see 'softgen ops')")
    p.add_argument("--algorithm", default="auto", help=_algorithm_help())
    p.add_argument("--target", default="host", help=_target_help())
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
    p.add_argument("--split", type=int, action=_Once,
                   help="schedule: rows of n >= SPLIT run in chunks (the split form; 0: never)")
    p.add_argument("--chunk", type=int, action=_Once, help="schedule: elements per chunk of a split row")
    _knob_args(p)
    p.add_argument("--causal", action="store_true", help="attention: bottom-right causal mask (param causal=1)")
    p.add_argument("--normalizer", action=_Once, help="attention: the normalizer (softmax, stablemax)")
    p.add_argument("--br", type=int, action=_Once, help="attention schedule: query rows per block (streaming)")
    p.add_argument("--bc", type=int, action=_Once, help="attention schedule: keys per block (streaming)")
    p.add_argument("--wide", type=int, action=_Once,
                   help="attention schedule: at most this many keys take one block, exact two-pass (softmax; 0 off)")


KNOBS_HELP = ("The C backend's schedule knobs (softgen.Schedule; 'softgen tune' picks them for algorithm=auto). "
              "A knob the backend does not lower, the target lacks (--stream: avx2, avx512) or that changes "
              "nothing in the kernel (--lazymax: three-pass-reload of softmax only) is refused. With "
              "--algorithm auto the knobs given are set in every variant of the dispatcher (refused only "
              "when they change none of them); like any schedule flag they make auto use the cost model, "
              "not this machine's tuning records.")


def _knob_args(p: argparse.ArgumentParser) -> None:
    """One flag per knob of ``schedule.KNOB_TABLE``: a switch for a bool knob, else a value (exp:
    one of ``EXP_VARIANTS``)."""
    g = p.add_argument_group("schedule knobs", KNOBS_HELP)
    for knob, default in KNOB_DEFAULTS.items():
        if isinstance(default, bool):
            g.add_argument(f"--{knob}", action="store_const", const=True, help=KNOB_HELP[knob])
        elif knob == "exp":
            g.add_argument(f"--{knob}", action=_Once, choices=EXP_VARIANTS, help=KNOB_HELP[knob])
        else:
            g.add_argument(f"--{knob}", type=int, action=_Once, metavar=knob[0].upper(), help=KNOB_HELP[knob])


DEFAULT_OUTPUT = "softgen-out"   # softgen build's output directory (./build is setuptools')


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="softgen", description="Generate softmax-family kernels for CPUs. Each op's definition, "
                 f"algorithms, edge cases and accuracy: {DOCS} in the softgen repository.",
                 **_examples("softgen build                     # softmax, auto, this CPU -> ./softgen-out/",
                             "softgen ops                       # the ops, their parameters and algorithms",
                             "softgen <command> --help          # each command's options and an example"))
    ap.add_argument("--version", action="version", version=f"softgen {__version__}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    t = sub.add_parser("targets", help="list targets and whether this CPU runs them",
                       **_examples("softgen targets --json"))
    t.add_argument("--json", action="store_true", help="machine-readable output")
    o = sub.add_parser("ops", help="list ops, their parameters and algorithms",
                       description=f"List the ops, their parameters and algorithms; each op's definition, "
                                   f"edge cases and accuracy: {DOCS} in the softgen repository.",
                       **_examples("softgen ops --json"))
    o.add_argument("--json", action="store_true", help="machine-readable output")
    b = sub.add_parser("build", help="generate, compile and export lib<name>.so + <name>.h + <name>.json "
                                     "+ pkg-config and CMake package files",
                       description="Export lib<name>.so, <name>.h, <name>.json, <name>.c, <name>.pc and "
                                   "<name>Config.cmake/<name>ConfigVersion.cmake (imported target "
                                   "softgen::<name>) into the output directory. The default name spells the "
                                   "op, its parameters not at their defaults, the algorithm, target and schedule.",
                       **_examples("softgen build --op softmax --temperature 0.5 --static -o softgen-out/ "
                                   "&& PKG_CONFIG_PATH=softgen-out pkg-config --cflags --libs "
                                   "softgen_f32_softmax_scale2_auto__<target>_<schedule>",
                                   "softgen build --op log_softmax --algorithm two-pass --target x86-64 "
                                   "--name my_log_softmax",
                                   "softgen build --algorithm three-pass-reload --lazymax --exp t32 --unroll 4 "
                                   "--accumulators 2   # a tuned kernel: schedule knobs"))
    _kernel_args(b)
    b.add_argument("-o", "--output", default=DEFAULT_OUTPUT,
                   help=f"output directory (default: ./{DEFAULT_OUTPUT}; not ./build, which setuptools uses)")
    b.add_argument("--static", action="store_true", help="also write the static archive lib<name>.a "
                   "(link it with -lpthread -lm; the CMake target softgen::<name>_static)")
    b.add_argument("--force", action="store_true", help="replace a different kernel of the same name in the "
                   "output directory (without it, build refuses; the same kernel again is always fine)")
    b.add_argument("--cc", help="C compiler command (default: $CC or cc)")
    b.add_argument("--json", action="store_true", help="print the manifest as JSON")
    e = sub.add_parser("emit", help="print the generated C or TensorIR (or the assembly)",
                       **_examples("softgen emit --op softmax --algorithm online --target avx2",
                                   "softgen emit --op log_softmax --target neon --asm"))
    _kernel_args(e)
    e.add_argument("--asm", action="store_true", help="print the assembly the compiler makes")
    e.add_argument("--tir", action="store_true", help="backend tvm: print the TensorIR script (the default; "
                   "an auto dispatcher prints its dispatch unit by default, every variant's script with --tir)")
    e.add_argument("--wrapper", action="store_true", help="backend tvm: print the C entry-point wrapper "
                   "(an auto dispatcher: every variant's)")
    e.add_argument("--cc", help="C compiler command for --asm")
    x = sub.add_parser("explain", help="show the IR, the rewrites, the pass plan and bytes moved",
                       **_examples("softgen explain --op softmax --algorithm three-pass-reload",
                                   "softgen explain --op attention --causal --json"))
    _kernel_args(x)
    x.add_argument("--json", action="store_true", help="machine-readable output")
    _bench_args(sub)
    _tune_args(sub)
    _cache_parser(sub)
    return ap


def _tune_args(sub) -> None:
    tp = sub.add_parser("tune", help="measure the fastest variant per size class on this machine and "
                                     "record it for algorithm=auto (the tuning database)",
                        **_examples("softgen tune --op softmax --target avx2 --sizes 4K,256K --budget 20s",
                                    "softgen tune --op gaussian_kernel --shapes 1024x1024x64"))
    tp.add_argument("--op", default="softmax", help="row op to tune (default: softmax), or a matrix op "
                                                    "with GEMMs (gaussian_kernel, newton_pinv): its GEMM tile")
    tp.add_argument("--sizes", help=f"single rows: {benchmark.SIZES_FORM} (default: {DEFAULT_SIZES} and the L3 edge)")
    tp.add_argument("--shapes", help=f"batches: {benchmark.SHAPES_FORM}; matrix ops: the op's dims joined "
                                     f"by x (gaussian_kernel n x m x d: 1024x1024x64; newton_pinv m: 256)")
    tp.add_argument("--budget", default=f"{DEFAULT_BUDGET:g}s",
                    help=f"time for everything, compiling included: 60s, 2m or seconds (default {DEFAULT_BUDGET:g}s)")
    tp.add_argument("--target", default="host",
                    help="a runnable target (default: host), or a group as 'softgen build' takes it (x86-64, "
                         "aarch64, avx2,avx512): each member this CPU runs, the budget split between them")
    tp.add_argument("--backend", default="c", help="backend (default: c)")
    tp.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                    help="an op parameter (repeatable)")
    tp.add_argument("--scale", type=float, action=_Once, help="softmax(scale * x); scale > 0")
    tp.add_argument("--temperature", type=float, action=_Once, help="softmax(x / temperature); temperature > 0")
    tp.add_argument("--json", action="store_true", help="print the records as JSON")
    tp.add_argument("--quiet", action="store_true", help="no progress bar")


def _bench_args(sub) -> None:
    bp = sub.add_parser("bench", help="time softgen's kernels against NumPy/PyTorch/ONNX Runtime and the copy bandwidth",
                        **_examples("softgen bench --op softmax --sizes 256K,1M,16M --all --against numpy,torch",
                                    "softgen bench --shapes 4096x512 --target avx2,avx512 --json out.json",
                                    "softgen bench --sizes 64K --target avx2+avx512,x86-64"))
    bp.add_argument("--op", default="softmax", help="row op to time (default: softmax; peers implement softmax)")
    bp.add_argument("--sizes", help=f"single rows: {benchmark.SIZES_FORM} (default: {benchmark.DEFAULT_SIZES})")
    bp.add_argument("--shapes", help=f"batches: {benchmark.SHAPES_FORM}")
    bp.add_argument("--against", default=",".join(benchmark.PEERS),
                    help=f"peers, comma-separated from {','.join(benchmark.PEERS)}, or none "
                         "(default: all; those not installed are skipped, saying why)")
    bp.add_argument("--all", action="store_true", help="every applicable algorithm, not only auto's choice")
    bp.add_argument("--target", default="host",
                    help="what to time: entries separated by commas, each its own library, timed side "
                         "by side (default: host). An entry is a target (host, avx2, ...), a group "
                         "name (x86-64, aarch64: one library over every ISA of the architecture, which "
                         "runs this CPU's best member) or targets joined by + (avx2+avx512: one library "
                         "over exactly those). So --target avx2,avx512 times two libraries (a list), "
                         "--target x86-64 or avx2+avx512 one (a group); 'softgen build --target "
                         "avx2,avx512' builds the one library bench spells avx2+avx512")
    bp.add_argument("--backend", default="c", help="backend(s), comma-separated (default: c)")
    bp.add_argument("--plot", metavar="PNG", help="ns/element vs size plot (needs matplotlib)")
    bp.add_argument("--json", metavar="PATH", help="write everything (machine, config, rows) as JSON")
    bp.add_argument("--budget", type=float, default=0.3, help="seconds per variant per size (default 0.3)")
    bp.add_argument("--min-time", type=float, default=0.02, help="seconds per sample (default 0.02)")
    bp.add_argument("--rounds", default="5-25", help="min-max interleaved rounds (default 5-25)")
    bp.add_argument("--no-copy", action="store_true", help="skip the streaming-copy bandwidth measurement")
    bp.add_argument("--no-check", action="store_true", help="skip the accuracy check against NumPy")
    bp.add_argument("--quiet", action="store_true", help="no progress bar")


def _cache_parser(sub) -> None:
    c = sub.add_parser("cache", help="the kernel cache and the tuning database: list, show, clear, prune, "
                                     "export, import",
                       **_examples("softgen cache list", "softgen cache clear --kernels"))
    cs = c.add_subparsers(dest="cache_cmd", metavar="ACTION", parser_class=_Parser)
    cs.required = True
    cl = cs.add_parser("list", help="kernel cache entries, size and cap; tuning records per op/target/machine",
                      **_examples("softgen cache list --json"))
    cl.add_argument("--json", action="store_true", help="machine-readable output")
    sh = cs.add_parser("show", help="this machine's tuning records of an op, as a table",
                      **_examples("softgen cache show softmax --target avx2"))
    sh.add_argument("op", help="op name (see 'softgen ops')")
    sh.add_argument("--target", help="only this target")
    sh.add_argument("--backend", help="only this backend")
    sh.add_argument("--json", action="store_true", help="the records as JSON")
    cc = cs.add_parser("clear", help="remove every kernel cache entry and every tuning record",
                      **_examples("softgen cache clear --tuning"))
    which = cc.add_mutually_exclusive_group()
    which.add_argument("--kernels", action="store_true", help="only the kernel cache")
    which.add_argument("--tuning", action="store_true", help="only the tuning database")
    pr = cs.add_parser("prune", help="kernel cache down to its cap (SOFTGEN_CACHE_MAX_MB); tuning records "
                                     "of other softgen or kernel-source versions",
                      **_examples("softgen cache prune --other-machines"))
    pr.add_argument("--other-machines", action="store_true", help="also the tuning records of other machines")
    ex = cs.add_parser("export", help="write the tuning records (every machine's) as JSON lines",
                      **_examples("softgen cache export records.jsonl --op softmax"))
    ex.add_argument("file", help="output file")
    ex.add_argument("--op", help="only this op's records")
    im = cs.add_parser("import", help="add the tuning records of a JSON-lines file (kept with their own "
                                      "machine identity: another machine's are never used here)",
                      **_examples("softgen cache import records.jsonl"))
    im.add_argument("file", help="a file written by 'softgen cache export'")


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
    if getattr(args, "causal", False):
        if "causal" in params:
            raise UsageError("parameter causal given twice (--causal and --param causal=...)")
        params["causal"] = 1
    for key in ("scale", "temperature", "normalizer"):
        if getattr(args, key, None) is not None:
            if key in params:
                raise UsageError(f"parameter {key} given twice (--{key} and --param {key}=...)")
            params[key] = getattr(args, key)
    return params


SCHEDULE_FLAGS = INT_FIELDS + tuple(KNOB_DEFAULTS) + ATTENTION_KNOBS


def _kernel(args):
    sched = {k: getattr(args, k) for k in SCHEDULE_FLAGS if getattr(args, k, None) is not None}
    be = get_backend(args.backend)
    for knob in sched:
        if knob in KNOB_DEFAULTS and knob not in be.schedule_knobs:
            raise UsageError(f"--{knob}: backend {be.name} does not lower schedule knobs "
                             f"({', '.join(KNOB_DEFAULTS)}); they are the C backend's")
    k = compile_kernel(args.op, algorithm=args.algorithm, target=args.target, name=args.name,
                       schedule=sched or None, backend=args.backend, **_params(args))
    _check_knobs(k, be, [knob for knob in sched if knob in KNOB_DEFAULTS])
    return k


def _check_knobs(k, be, given: list[str]) -> None:
    """Refuse a given knob that changes nothing in row kernel ``k``: in none of its kernels (a
    dispatcher's variants, a multi-ISA library's members'; matrix kernels refuse knobs in compile)."""
    leaves = [v for m in (getattr(k, "members", ()) or (k,)) for v in (m.variants or (m,))]
    auto = any(m.variants for m in (getattr(k, "members", ()) or (k,)))
    for knob in given:
        whys = [be.knob_refusals(leaf.program, leaf.schedule).get(knob, "") for leaf in leaves]
        if all(whys):
            where = "any variant of the auto dispatcher" if auto else f"{k.op} / {k.algorithm}"
            raise UsageError(f"--{knob} changes nothing in {where}: {whys[0]}")


def _cmd_targets(args) -> None:
    rows = targets()
    grps = groups()
    if args.json:   # groups: rows with "members" (best first) and "pick" (what a library picks here)
        lanes = {r["name"]: r["lanes"] for r in rows}
        print(json.dumps(rows + [{"name": g["name"], "summary": f"group: {', '.join(g['members'])} in one library",
                                  "lanes": lanes[g["members"][0]], "arch": g["arch"], "runnable": g["runnable"],
                                  "missing": g["missing"],
                                  "host_default": False, "members": g["members"], "pick": g["pick"]}
                                 for g in grps], indent=2))
        return
    for r in rows:
        mark = "runs here" + (" (host default)" if r["host_default"] else "") if r["runnable"] \
            else "cross/emulated only: missing " + ", ".join(r["missing"])
        print(f"{r['name']:<8} {r['lanes']:>2} lanes  {r['summary']:<58} {mark}")
    for g in grps:   # --target <group>, or a comma list of targets of one architecture
        mark = f"runs here, picks {g['pick']}" if g["runnable"] else "cross/emulated only"
        print(f"{g['name']:<8} group     {', '.join(g['members']) + ' in one library, picked at load':<58} {mark}")


def _cmd_ops(args) -> None:
    rows = []
    for op in ops.OPS.values():
        if op.kind == "row":
            algs = passes.applicable_algorithms(ops.build_program(op.name))
        elif op.kind == "attention":   # its phases as written, or the flash-style rewrite
            algs = [a for a in passes.MATRIX_ALGORITHMS if a != "direct"]
        else:
            algs = ["direct"]
        rows.append({"name": op.name, "kind": op.kind, "params": op.params, "doc": op.doc,
                     "algorithms": algs, "docs": f"{DOCS}#{op.name}"})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        ps = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        axes = " [matrix op: the last two axes]" if r["kind"] != "row" else ""
        print(f"{r['name']}({ps}){axes}\n    {r['doc']}\n    algorithms: {', '.join(r['algorithms'])}"
              f"\n    docs: {r['docs']}")
    print(f"\nDefinitions, algorithms, edge cases, accuracy and papers: {DOCS} and docs/accuracy.md "
          "in the softgen repository.")


def _progress():
    """A stage printer for long builds when stderr is a terminal (``[  1.2s] stage`` lines),
    else None (quiet: pipes, logs, CI)."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        return None
    if not tty:
        return None
    start = time.monotonic()

    def say(line: str) -> None:
        print(f"softgen: [{time.monotonic() - start:6.1f}s] {line}", file=sys.stderr, flush=True)
    return say


def _cmd_build(args) -> None:
    say = _progress()
    if say:
        say(f"generating {args.op} for target {args.target} (backend {args.backend})")
    k = _kernel(args)
    try:
        paths = k.export(args.output, cc=args.cc, static=args.static, overwrite=args.force, progress=say)
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
    if say:
        say("done")
    print(f"{k.name}: {k.op} / {k.algorithm} / {k.target.name} / {k.schedule}")
    for key, p in paths.items():
        print(f"  {key:<13} {p}")


def _cmd_emit(args) -> None:
    if (args.tir or args.wrapper) and get_backend(args.backend).c_source:
        raise UsageError("--tir and --wrapper need --backend "
                         + " or ".join(b.name for b in BACKENDS.values() if not b.c_source))
    if sum((args.asm, args.tir, args.wrapper)) > 1:
        raise UsageError("give at most one of --asm, --tir, --wrapper")
    k = _kernel(args)
    if k.variants and (args.tir or args.wrapper):   # a dispatcher (source: its dispatch unit, C)
        sys.stdout.write("\n".join(v.wrapper if args.wrapper else v.source for v in k.variants))
        return
    sys.stdout.write(k.asm(args.cc) if args.asm else k.wrapper if args.wrapper else k.source)


def _cmd_explain(args) -> None:
    k = _kernel(args)
    if args.json:
        print(json.dumps(k.explain(as_json=True), indent=2))
        return
    sys.stdout.write(k.explain())


def _bench_entry(spec: str):
    """One entry of bench's --target: a name (target, host or group), or a list of targets for a
    group of exactly those, spelled a+b (a comma separates entries there)."""
    if "+" not in spec:
        return spec
    members = spec.split("+")
    if not all(members):
        raise UsageError(f"bench: --target entry {spec!r}: join target names with + (e.g. avx2+avx512)")
    return members


def _bench_config(args) -> benchmark.BenchConfig:
    shapes = (benchmark.parse_sizes(args.sizes) if args.sizes is not None else []) + \
        (benchmark.parse_shapes(args.shapes) if args.shapes is not None else [])
    lo, sep, hi = args.rounds.partition("-")
    try:
        rounds = (int(lo), int(hi or lo))
    except ValueError:
        raise UsageError(f"--rounds: {args.rounds!r} is not N or MIN-MAX (e.g. 5-25)") from None
    names = [_bench_entry(t) for t in args.target.split(",") if t]
    backends = [b for b in args.backend.split(",") if b]
    for b in backends:
        get_backend(b)                       # an unknown name is a UsageError naming the registered ones
    if not names or not backends:
        raise UsageError("bench: --target and --backend need at least one name")
    return benchmark.BenchConfig(
        op=args.op, shapes=shapes or benchmark.parse_sizes(benchmark.DEFAULT_SIZES),
        against=benchmark.parse_against(args.against), all=args.all, targets=names, backends=backends,
        copy=not args.no_copy, check=not args.no_check, min_time=args.min_time, budget=args.budget,
        min_rounds=rounds[0], max_rounds=rounds[1], progress=not args.quiet)


def _cmd_bench(args) -> None:
    benchmark.single_threaded()              # before torch / onnxruntime are imported
    cfg = _bench_config(args)
    benchmark.validate(cfg)
    json_path = benchmark.check_output(args.json, "--json") if args.json else None
    plot_path = benchmark.check_output(args.plot, "--plot") if args.plot else None
    if plot_path is not None:
        benchmark.require_matplotlib()       # fail before measuring, not after
    res = benchmark.run(cfg)
    print(benchmark.format_report(res), flush=True)
    try:
        if json_path is not None:
            json_path.write_text(benchmark.to_json(res))
        if plot_path is not None:
            benchmark.plot(res, plot_path)
    except OSError as e:
        raise SoftgenError(f"cannot write {e.filename!r}: {e.strerror}") from None


def _cmd_tune(args) -> None:
    res = tune(args.op, target=args.target, sizes=args.sizes, shapes=args.shapes, budget_s=args.budget,
               backend=args.backend, progress=not args.quiet, **_params(args))
    if args.json:
        print(json.dumps({"interrupted": res.interrupted, "wall_seconds": round(res.wall_seconds, 2),
                          "records": [r.as_json() for r in res.records], "notes": res.notes}, indent=2))
    else:
        print(res.report(), flush=True)
    if res.interrupted:
        raise KeyboardInterrupt


def _mib(nbytes: float) -> str:
    return "unlimited" if nbytes == float("inf") else f"{nbytes / 2 ** 20:.1f} MiB"


def _cache_list(args) -> None:
    entries, cap = runtime.cache_entries(), runtime.cache_cap()
    total = sum(e.size for e in entries)
    db = tunedb.default()
    summary = tunedb.summary(db)
    if args.json:
        print(json.dumps({"kernels": {"dir": str(runtime.cache_dir()), "entries": len(entries), "bytes": total,
                                      "cap_bytes": None if cap == float("inf") else int(cap)},
                          "tuning": {"path": str(db.path), "groups": summary}}, indent=2))
        return
    print(f"kernel cache {runtime.cache_dir()}: {len(entries)} entries, {_mib(total)} of {_mib(cap)} "
          f"(cap: {runtime.CACHE_MAX_ENV})")
    print(f"tuning database {db.path}: {sum(g['records'] for g in summary)} records")
    if summary:
        print(f"  {'op':<20} {'target':<8} {'backend':<7} {'records':>7} {'current':>7}  machine")
    for g in summary:
        here = " (this machine)" if g["this"] else ""
        print(f"  {g['op']:<20} {g['target']:<8} {g['backend']:<7} {g['records']:>7} {g['current']:>7}  "
              f"{g['fingerprint']} {g['model_name']}{here}")


def _cache_show(args) -> None:
    ops.get_op(args.op)   # an unknown op is a usage error naming the known ones
    recs = tunedb.records(args.op, args.target, args.backend)
    current = {"softgen_version": __version__, "source_version": tunedb.source_version()}
    if args.json:
        print(json.dumps([r.as_json() for r in recs], indent=2))
        return
    if not recs:
        print(f"no tuning records of {args.op} for this machine ({machine.fingerprint()})")
        return
    print(f"{'target':<8} {'backend':<7} {'n':>19} {'rows':>15} {'algorithm':<22} {'threads':>7} "
          f"{'ns/elem':>8} {'noise':>6} {'reps':>5}  schedule / params")
    for r in sorted(recs, key=lambda r: (r.target, r.backend, r.n_min, r.rows_min)):
        stale = "" if all(getattr(r, k) == v for k, v in current.items()) else "  [stale]"
        sched = ",".join(f"{k}={v}" for k, v in sorted(r.schedule.items())) or "-"
        params = ",".join(f"{k}={v}" for k, v in sorted(r.params.items()))
        n_hi, rows_hi = (("inf" if v >= TUNE_N_MAX else v) for v in (r.n_max, r.rows_max))   # softgen tune's open ends
        print(f"{r.target:<8} {r.backend:<7} {f'{r.n_min}..{n_hi}':>19} {f'{r.rows_min}..{rows_hi}':>15} "
              f"{r.algorithm:<22} {r.threads:>7} {r.ns_per_element:>8.3f} {r.noise:>6.1%} {r.repetitions:>5}  "
              f"{sched} / {params}{stale}")


def _cache_clear(args) -> None:
    if not args.tuning:
        removed = runtime.prune_cache(cap=0)
        pch = runtime.clear_precompiled()
        print(f"kernel cache: removed {len(removed)} entries ({_mib(sum(e.size for e in removed))})"
              + (f" and the precompiled headers ({_mib(pch)})" if pch else ""))
    if not args.kernels:
        print(f"tuning database: removed {tunedb.clear()} records")


def _cache_prune(args) -> None:
    removed = runtime.prune_cache()
    print(f"kernel cache: removed {len(removed)} least recently used entries "
          f"({_mib(sum(e.size for e in removed))}; cap {_mib(runtime.cache_cap())})")
    print(f"tuning database: removed {tunedb.prune(other_machines=args.other_machines)} records")


def _cache_export(args) -> None:
    if args.op is not None:
        ops.get_op(args.op)
    n = tunedb.export_jsonl(args.file, op=args.op)
    print(f"wrote {n} tuning records to {args.file}")


def _cache_import(args) -> None:
    print(f"imported {tunedb.import_jsonl(args.file)} tuning records from {args.file}")


CACHE_ACTIONS = {"list": _cache_list, "show": _cache_show, "clear": _cache_clear, "prune": _cache_prune,
                 "export": _cache_export, "import": _cache_import}


def _cmd_cache(args) -> None:
    with warnings.catch_warnings(record=True) as caught:   # e.g. a damaged tuning database, recreated
        warnings.simplefilter("always", tunedb.TuningDBWarning)
        try:
            CACHE_ACTIONS[args.cache_cmd](args)
        finally:
            for w in caught:
                print(f"softgen: warning: {w.message}", file=sys.stderr)


COMMANDS = {"targets": _cmd_targets, "ops": _cmd_ops, "build": _cmd_build, "emit": _cmd_emit,
            "explain": _cmd_explain, "bench": _cmd_bench, "tune": _cmd_tune, "cache": _cmd_cache}


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
