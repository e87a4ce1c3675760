"""Property-based fuzzing of the loader: any input ends in a spec or a SpecError — never another exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devserver.errors import SpecError
from devserver.loader import load_spec_bytes
from devserver.plan import resolve

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
VOCABULARY = [
    "name",
    "cloud",
    "provider",
    "gce",
    "azure",
    "aws",
    "openstack",
    "local",
    "zone",
    "project",
    "machine",
    "gpu",
    "model",
    "count",
    "type",
    "spot",
    "os",
    "disks",
    "boot_gb",
    "data",
    "size_gb",
    "ssh",
    "public_keys",
    "allowed_cidrs",
    "software",
    "driver",
    "branch",
    "flavour",
    "source",
    "cuda",
    "version",
    "kubernetes",
    "node_pools",
    "labels",
    "region",
    "location",
    "t4",
    "h100",
    "0.0.0.0/0",
    "distro",
    "cuda-repo",
    "open",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(VOCABULARY),
)
keys = st.one_of(st.sampled_from(VOCABULARY), st.text(max_size=12), st.integers(-5, 5), st.booleans())
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=6)),
    max_leaves=40,
)


def _load_and_resolve(data: bytes) -> None:
    try:
        spec = load_spec_bytes(data, "fuzz")
        resolve(spec, "fuzz")
    except SpecError as exc:
        # The property: only SpecError escapes, and always a well-formed one.
        problems = exc.problems
        assert problems, "a SpecError must carry at least one problem"
        assert all(problem.message and problem.render() for problem in problems)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes(data: bytes) -> None:
    _load_and_resolve(data)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_random_documents(document: Any) -> None:
    _load_and_resolve(yaml.safe_dump(document).encode())


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*prefix, index))
    return out


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(EXAMPLES), st.data())
def test_mutated_examples(example: Path, data: st.DataObject) -> None:
    document = yaml.safe_load(example.read_text())
    path = data.draw(st.sampled_from(_paths(document)[1:]))
    replacement = data.draw(documents)
    node = document
    for part in path[:-1]:
        node = node[part]
    if data.draw(st.booleans()) and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = replacement
    _load_and_resolve(yaml.safe_dump(document).encode())


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("{}[]:-&*!|>'\"#%@`, \n\tab0")), max_size=200))
def test_yaml_syntax_soup(text: str) -> None:
    _load_and_resolve(text.encode())
