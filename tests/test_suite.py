"""The test suite's own machinery (tests/conftest.py): how pytest-xdist distributes it and what
the quick subset holds."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import pytest_xdist_make_scheduler, quick

ROOT = Path(__file__).resolve().parents[1]


def _config(*args):
    opts = {"dist": "load", "tx": ["popen", "popen"], "numprocesses": 2, "maxschedchunk": None}
    return SimpleNamespace(rootpath=ROOT, invocation_params=SimpleNamespace(args=("-n", "auto", *args)),
                           getoption=lambda name, default=None: opts.get(name, default),
                           getvalue=lambda name: opts.get(name), option=SimpleNamespace(**opts))


def test_files_with_module_scoped_builds_run_on_one_worker():
    pytest.importorskip("xdist")
    sched = pytest_xdist_make_scheduler(_config(), None)
    assert sched._split_scope("tests/test_api.py::test_other_dtypes_are_a_type_error[bool]") == "tests/test_api.py"
    one = "tests/test_kernels.py::test_long_row_2_pow_20[softmax-online-avx2-c]"
    assert sched._split_scope(one) == one           # no module fixture: any worker
    assert pytest_xdist_make_scheduler(_config("--dist", "loadfile"), None) is None   # asked for


def _item(nodeid, **params):
    return SimpleNamespace(nodeid=nodeid, callspec=SimpleNamespace(params=params),
                           get_closest_marker=lambda name: None)


def test_the_quick_subset_is_this_cpus_c_kernels_in_process():
    host = "tests/test_kernels.py::test_edge_case_contract[softmax-online-host-c]"
    assert quick(_item(host, op="softmax", alg="online", target="host", backend="c"))
    assert not quick(_item(host.replace("-c]", "-tvm]"), target="host", backend="tvm"))
    assert not quick(_item(host.replace("host", "neon"), target="neon", backend="c"))
    assert not quick(_item("tests/test_cli.py::test_ops"))
    assert not quick(_item("tests/test_kernels.py::test_backends_agree[host-softmax-online]", target="host"))
