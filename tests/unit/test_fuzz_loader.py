"""Property-based fuzzing of the loader: any input ends in a spec or a SpecError — never another exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
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


# Every way YAML 1.1 (PyYAML's dialect) writes a number, and the near misses its resolvers still claim: bases and
# underscores, signs, exponents (1e3 has no dot, so YAML 1.1 reads it as a string), infinities and NaN, sexagesimal
# (1:30 is 90), timestamps, numbers too long to print, and the quoted and boolean forms a number field must refuse.
NUMBER_FORMS = [
    "0",
    "-0",
    "+12",
    "017",
    "0o17",
    "0x1F",
    "-0x1f",
    "0b101",
    "+0b1_0",
    "1_000",
    "1__0",
    "0__",
    "0x_",
    "0b_",
    "-0x_",
    "1e3",
    "1.0e+3",
    "1.0E-3",
    "16.0",
    "1.5",
    ".5",
    "-.5",
    "1_0.0_1",
    "1.",
    ".inf",
    "-.inf",
    "+.Inf",
    ".INF",
    ".nan",
    ".NaN",
    "1:30",
    "-1:30",
    "190:20:30",
    "1:30.5",
    "1:60",
    "1" + "0" * 400,
    "-1" + "0" * 400,
    "1" + "0" * 5000,
    "0x" + "f" * 3990,
    "0x" + "f" * 5000,
    "1" + ":59" * 1300,
    "1" + ":59" * 3000,
    "1" + "0" * 400 + ".0",
    "2026-12-04",
    "2026-13-45",
    "2026-02-30",
    "2026-12-04 25:61:61",
    "2001-12-14t21:59:43.10-05:00",
    "~",
    "null",
    "true",
    "yes",
    "no",
    "on",
    "off",
    "'12'",
    '"0x1F"',
    "[1]",
    "{a: 1}",
]
# The integer and boolean fields, by path (a path whose parent an example lacks is skipped for that example).
NUMERIC_FIELDS = [
    ("machine", "gpu", "count"),
    ("machine", "spot"),
    ("disks", "boot_gb"),
    ("disks", "data", "size_gb"),
    ("disks", "data", "docker_data_root"),
    ("software", "driver", "branch"),
    ("software", "cuda", "install"),
    ("software", "reboot"),
    ("cloud", "cpus"),
    ("cloud", "memory_gb"),
    ("cloud", "trusted_launch"),
    ("ssh", "allow_world"),
    ("kubernetes", "node_pools", 0, "node_count"),
    ("kubernetes", "nvshare", "virtual_devices"),
    ("labels", "team"),
]
MARK = "@@NUMBER@@"


def _with_number(example: Path, field: tuple[Any, ...], literal: str) -> bytes | None:
    """`example` with `literal` written, verbatim, as the value of `field`; None when the example lacks its parent."""
    document = yaml.safe_load(example.read_text())
    node = document
    for part in field[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    if not isinstance(node, dict):
        return None
    node[field[-1]] = MARK
    return yaml.safe_dump(document, width=10**9).replace(f"'{MARK}'", literal).encode()


@pytest.mark.parametrize("literal", NUMBER_FORMS, ids=lambda text: text[:24])
def test_every_yaml_number_form_in_every_numeric_field(literal: str) -> None:
    for example in EXAMPLES:
        for field in NUMERIC_FIELDS:
            data = _with_number(example, field, literal)
            if data is not None:
                _load_and_resolve(data)


DIGITS = {10: "0123456789", 16: "0123456789abcdefABCDEF", 8: "01234567", 2: "01"}


@st.composite
def number_literals(draw: st.DrawFn) -> str:
    """A YAML number as a person (or a slip) might write it: any sign, base, underscores, exponent or sexagesimal
    part, no digits at all, or thousands of them."""
    kind = draw(st.sampled_from(["int", "float", "sexagesimal"]))
    sign = draw(st.sampled_from(["", "-", "+"]))
    if kind == "sexagesimal":
        count = draw(st.one_of(st.integers(1, 8), st.integers(1000, 3000)))
        parts = draw(st.lists(st.integers(0, 99), min_size=count, max_size=count))
        return sign + str(draw(st.integers(1, 10**6))) + "".join(f":{part}" for part in parts)
    if kind == "float":
        mantissa = draw(st.floats(allow_nan=False, allow_infinity=False).map(lambda f: repr(abs(f))))
        exponent = draw(st.sampled_from(["", "e3", "e+3", "E-30", "e+400", "e-400"]))
        return sign + mantissa + exponent
    base, prefix = draw(st.sampled_from([(10, ""), (16, "0x"), (8, "0"), (8, "0o"), (2, "0b")]))
    digits = draw(
        st.one_of(
            st.text(alphabet=DIGITS[base], max_size=30),
            st.integers(3990, 5000).map(lambda n: DIGITS[base][-1] * n),
        )
    )
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(digits)))
        digits = digits[:cut] + "_" + digits[cut:]
    return sign + prefix + digits


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EXAMPLES), st.sampled_from(NUMERIC_FIELDS), number_literals())
def test_generated_numbers_in_numeric_fields(example: Path, field: tuple[Any, ...], literal: str) -> None:
    data = _with_number(example, field, literal)
    if data is not None:
        _load_and_resolve(data)
