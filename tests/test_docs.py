"""The repository's documentation stands alone and stays true to the code.

README.md and docs/*.md never cite the team's private spec (``../shared``), every relative link in
them resolves to a file of the repository (and a ``#fragment`` into a Markdown file to one of its
headings or anchors), every op has its section in docs/ops.md (``softgen ops`` links it), every
subcommand's ``--help`` ends with an example, ``--target``/``--algorithm`` help name every target
file, group and algorithm from the registries, and ``Kernel.plan``'s repr is one line per sweep.
No kernel is compiled except one small one for the plan.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

import softgen
from softgen import cli, ops, passes
from softgen.targets import all_targets, group_names

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")    # [text](target), not images' alt text
ANCHOR = re.compile(r"<a id=\"([^\"]+)\"></a>")


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped (but - and _),
    spaces to hyphens."""
    text = re.sub(r"`|\*\*?", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = path.read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)    # no headings inside code blocks
    heads = [_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)]
    return set(heads) | set(ANCHOR.findall(text))


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return LINK.findall(text)


def test_docs_exist_and_never_cite_the_private_spec():
    assert (ROOT / "docs" / "ops.md").is_file() and (ROOT / "docs" / "accuracy.md").is_file()
    for path in DOCS:
        text = path.read_text()
        for bad in ("../shared", "shared/spec", "ALGORITHMS.md"):
            assert bad not in text, f"{path.name} cites {bad!r}: users do not have it"
        assert not re.search(r"\bspec(?:'s)? ?§?\d", text), f"{path.name} cites 'spec N': point to docs/ops.md"


def test_relative_links_resolve():
    checked = 0
    for path in DOCS:
        for target in _links(path):
            if re.match(r"[a-z]+:", target):      # http:, https:, mailto:
                continue
            file, _, frag = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            assert dest.exists(), f"{path.name}: link {target!r} names no file of the repository"
            assert ROOT in dest.parents or dest == ROOT, f"{path.name}: link {target!r} leaves the repository"
            if frag and dest.suffix == ".md":
                assert frag in _anchors(dest), f"{path.name}: link {target!r}: no heading or anchor {frag!r}"
            checked += 1
    assert checked > 20


def test_every_op_has_its_section_in_docs_ops():
    anchors = _anchors(ROOT / "docs" / "ops.md")
    missing = [name for name in ops.OPS if name not in anchors]
    assert not missing, f"docs/ops.md has no anchor for {missing} (softgen ops links docs/ops.md#<op>)"


def test_ops_command_points_to_docs(capsys):
    assert cli.main(["ops"]) == 0
    out = capsys.readouterr().out
    assert "docs/ops.md#softmax" in out and "docs/accuracy.md" in out
    assert not re.search(r"\bspec ?§?\d", out), "softgen ops cites the private spec"
    assert "three-phase, streaming" in out    # attention's algorithms


def _subparsers(parser: argparse.ArgumentParser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subparsers(sub, (*path, name))


def test_every_subcommand_help_has_an_example():
    subs = list(_subparsers(cli._parser()))
    names = {" ".join(p) for p, _ in subs}
    assert {"build", "emit", "explain", "ops", "targets", "bench", "tune", "cache", "cache list"} <= names
    for path, sub in subs:
        text = sub.format_help()
        m = re.search(r"^examples?:\n((?:  softgen .+\n?)+)", text, flags=re.M)
        assert m, f"'softgen {' '.join(path)} --help' has no example"
        assert f"softgen {path[0]}" in m.group(1), f"the example of {' '.join(path)} runs another command"


@pytest.mark.parametrize("cmd", ["build", "emit", "explain"])
def test_target_and_algorithm_help_list_the_registries(cmd):
    sub = dict(_subparsers(cli._parser()))[(cmd,)]
    helps = {a.dest: a.help for a in sub._actions}
    files = sorted(p.stem for p in (ROOT / "targets").glob("*.toml"))
    assert {"neon", "avx2", "avx512", "scalar"} <= set(files)
    text = " ".join(sub.format_help().split())       # as printed, wrapping undone
    for name in [*files, *all_targets()]:
        assert re.search(rf"\b{re.escape(name)}\b", helps["target"]), f"--target help lacks {name}"
        assert name in text
    for g in group_names():
        assert g in helps["target"], f"--target help lacks the group {g}"
    for alg in [*passes.ALGORITHMS, *passes.MATRIX_ALGORITHMS, "auto"]:
        assert re.search(rf"(?<![\w-]){re.escape(alg)}(?![\w-])", helps["algorithm"]), \
            f"--algorithm help lacks {alg}"


def test_plan_repr_is_one_line_per_sweep():
    k = softgen.compile("softmax", algorithm="three-pass-reload", target="scalar")
    lines = repr(k.plan).splitlines()
    assert lines[0] == "Plan(softmax: 3 sweeps, 3R + 2W = 20 B/element, 1 exp/element)"
    assert [ln.split(":")[0] for ln in lines[1:]] == ["  sweep 0", "  sweep 1", "  sweep 2"]
    assert "writes y (store)" in lines[2] and "reads y (reload)" in lines[3]


def test_ci_runs_the_readme_test_command():
    """.ci/run runs the README's test command (line 2 of its first code block) as written: the same
    install and the same pytest arguments, ending the line (``-n auto``: the duration the README
    states is that of this command)."""
    readme = (ROOT / "README.md").read_text()
    line = re.search(r"```sh\n[^\n]*\n([^\n]*)\n", readme).group(1)
    install, _, run = line.split("#")[0].strip().partition(" && ")
    assert install == "pip install -e '.[test]'" and run.startswith("python -m pytest"), line
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(rf"^{re.escape(install)} && (.* && )?{re.escape(run)}$", ci, flags=re.M), \
        f".ci/run does not run the README's test command {line!r}"
