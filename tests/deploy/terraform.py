"""infra/*.tf parsed with python-hcl2, and the variables' `validation` conditions evaluated.

No terraform binary is needed. `evaluate` runs a condition the way Terraform would for the
small set of functions infra/variables.tf uses (can, try, regex, cidrhost, cidrsubnet,
cidrnetmask, contains, floor, length, trimspace): the expression is translated token by
token into Python and evaluated with `var` bound to the values under test. Anything else
(another function, a reference other than var.*) raises UnsupportedExpression, so a new kind
of condition makes the tests fail loudly instead of passing unevaluated.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hcl2
from hcl2 import SerializationOptions

from tests.support.servers import ROOT

INFRA = ROOT / "infra"
_OPTIONS = SerializationOptions(
    with_comments=False, explicit_blocks=False, strip_string_quotes=True
)


class UnsupportedExpression(ValueError):
    """The condition uses something this evaluator does not implement."""


@functools.cache
def load(path: Path) -> dict[str, Any]:
    """One file, parsed once per test session (python-hcl2 is slow); do not modify the result."""
    with path.open() as file:
        return hcl2.load(file, serialization_options=_OPTIONS)


def blocks(kind: str) -> dict[str, Any]:
    """Every `kind` block (variable, output, ...) of infra/*.tf by name."""
    found: dict[str, Any] = {}
    for path in sorted(INFRA.glob("*.tf")):
        for entry in load(path).get(kind, []):
            for name, body in entry.items():
                assert name not in found, f"{kind} {name} defined twice"
                found[name] = body
    return found


def resources(kind: str) -> dict[str, dict[str, Any]]:
    """Every resource of type `kind` by name."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(INFRA.glob("*.tf")):
        for entry in load(path).get("resource", []):
            for name, body in entry.get(kind, {}).items():
                found[name] = body
    return found


# --- Terraform's functions, with Terraform's errors as exceptions ---------------------------


def _regex(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise ValueError("pattern did not match")
    return match.group()


def _network(prefix: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(prefix, str) or "/" not in prefix:  # Go's ParseCIDR needs the length
        raise ValueError(f"invalid CIDR address {prefix!r}")
    return ipaddress.ip_network(prefix, strict=False)


def _cidrhost(prefix: str, number: int) -> str:
    return str(_network(prefix)[number])


def _cidrsubnet(prefix: str, newbits: int, netnum: int) -> str:
    network = _network(prefix)
    if network.prefixlen + newbits > network.max_prefixlen or not 0 <= netnum < 2**newbits:
        raise ValueError("insufficient address space")
    return str(list(network.subnets(prefixlen_diff=newbits))[netnum])


def _cidrnetmask(prefix: str) -> str:
    network = _network(prefix)
    if network.version != 4:
        raise ValueError("only IPv4 networks have a netmask")
    return str(network.netmask)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "regex": _regex,
    "cidrhost": _cidrhost,
    "cidrsubnet": _cidrsubnet,
    "cidrnetmask": _cidrnetmask,
    "contains": lambda items, value: value in items,
    "floor": math.floor,
    "length": len,
    "trimspace": str.strip,
}


def _can(thunk: Callable[[], Any]) -> bool:
    try:
        thunk()
    except (ValueError, TypeError, IndexError, re.error):
        return False
    return True


def _try(thunk: Callable[[], Any], *fallbacks: Any) -> Any:
    """try(expr, fallback): `try(` becomes `try_(lambda: `, so the first argument is lazy."""
    try:
        return thunk()
    except (ValueError, TypeError, IndexError, re.error):
        return fallbacks[0]


_TOKEN = re.compile(
    r"""
      (?P<string>"(?:[^"\\$]|\\.|\$(?!\{))*")
    | (?P<op>&&|\|\||!=|==|>=|<=|!)
    | (?P<var>var\.[a-z_][a-z0-9_]*)
    | (?P<call>[a-z_][a-z0-9_]*)\s*\(
    | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    | (?P<other>[\s\d.,()\[\]<>+\-*/%])
    """,
    re.VERBOSE,
)
_OPS = {"&&": " and ", "||": " or ", "!": " not ", "!=": "!=", "==": "==", ">=": ">=", "<=": "<="}


def to_python(condition: str) -> str:
    """A Terraform condition (`${...}` as python-hcl2 gives it) as a Python expression."""
    match = re.fullmatch(r"\$\{(.*)\}", condition, re.DOTALL)
    if match is None:
        raise UnsupportedExpression(f"not an expression: {condition!r}")
    source, out, pos = match[1], [], 0
    while pos < len(source):
        token = _TOKEN.match(source, pos)
        if token is None:
            raise UnsupportedExpression(f"cannot read {source[pos:]!r}")
        pos = token.end()
        kind, text = token.lastgroup, token.group()
        if kind == "string":
            out.append(text)  # HCL's escapes (\\ \" \n \t \uNNNN) are Python's; no ${} here
        elif kind == "op":
            out.append(_OPS[text])
        elif kind == "var":
            out.append(f"var[{text.removeprefix('var.')!r}]")
        elif kind == "call":
            name = token["call"]
            if name in ("can", "try"):
                out.append(f"{name}_(lambda: ")
            elif name in FUNCTIONS:
                out.append(f"{name}(")
            else:
                raise UnsupportedExpression(f"function {name}() is not implemented here")
        elif kind == "word":
            if text not in ("true", "false", "null"):
                raise UnsupportedExpression(f"reference {text!r} (only var.* is evaluated)")
            out.append({"true": "True", "false": "False", "null": "None"}[text])
        else:
            out.append(text)
    return "".join(out)


def evaluate(condition: str, variables: dict[str, Any]) -> bool:
    """The condition's value for `variables`; an error inside it is an error, as in Terraform."""
    namespace = {"__builtins__": {}, "var": variables, "can_": _can, "try_": _try, **FUNCTIONS}
    # eval of our own translation of the repository's HCL, with no builtins: not user input.
    result = eval(to_python(condition), namespace)
    if not isinstance(result, bool):
        raise UnsupportedExpression(f"{condition} is not a boolean: {result!r}")
    return result


def failed_validations(name: str, value: Any) -> list[str]:
    """The error messages of the validations of variable `name` that `value` fails."""
    variable = blocks("variable")[name]
    return [
        rule["error_message"]
        for rule in variable.get("validation", [])
        if not evaluate(rule["condition"], {name: value})
    ]
