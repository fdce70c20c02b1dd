"""Classic VNN-LIB 1.0 property files (VNN-COMP 2021-2023 style): our own reader and writer.

A file declares inputs ``X_0 .. X_{n-1}`` and outputs ``Y_0 .. Y_{m-1}`` (indices into the C-order flattening of
the network's input and output) and asserts a formula over them; the property is the *violation*: the file is
``sat`` when some input satisfies every assertion (a counterexample exists), ``unsat`` when none does.

The reader supports ``declare-const``, ``assert`` of ``and`` / ``or`` / ``<=`` / ``>=`` / ``<`` / ``>`` / ``=``
over linear terms (numbers, variables, ``+``, ``-``, ``*`` by a constant). The formula is expanded into a
disjunction of conjunctions; in each, constraints on a single ``X`` are input bounds, constraints on ``Y`` are
output constraints ``A y <= c``. The result is a list of :class:`Property`: one input box each, with the output
conjunctions that share it. Strict and non-strict comparisons are solved alike (proving the closed version
unsat proves the strict one); a property with a strict output comparison is marked ``strict``, so that a
counterexample must satisfy every output row strictly on the float model (a tie is never reported ``sat``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robustcheck.errors import InputError

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_VAR = re.compile(r"^([XY])_(\d+)$")


@dataclass
class Property:
    """Violation: some ``x`` in ``[lo, hi]`` whose outputs ``y`` satisfy ``A y <= c`` for one ``(A, c)`` in ``disjuncts``.

    Attributes:
        lo, hi: ``(n,)`` float64 input box (flat, C order).
        disjuncts: ``[(A (m, K), c (m,)), ...]``; an empty ``A`` (no rows) is violated by any input.
        strict: re-validation of a counterexample on the float model demands ``A y < c`` (classification
            robustness: a tie is not a misclassification) instead of ``A y <= c``.
        label: the class that must win (robustness properties), else ``None``.
        name: for messages and result lines.
    """

    lo: np.ndarray
    hi: np.ndarray
    disjuncts: list[tuple[np.ndarray, np.ndarray]]
    strict: bool = False
    label: int | None = None
    name: str = "property"
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        return int(self.disjuncts[0][0].shape[1]) if self.disjuncts else 0


def robustness_property(
    lo: np.ndarray, hi: np.ndarray, label: int, num_classes: int, name: str = "robustness"
) -> Property:
    """ "Some input in the box is classified as another class": one disjunct ``y_label - y_j <= 0`` per ``j``."""
    disjuncts = []
    for j in range(num_classes):
        if j == label:
            continue
        row = np.zeros((1, num_classes))
        row[0, label], row[0, j] = 1.0, -1.0
        disjuncts.append((row, np.zeros(1)))
    return Property(np.asarray(lo, np.float64), np.asarray(hi, np.float64), disjuncts, True, label, name)


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------
Linear = dict[str, float]  # variable -> coefficient, "" -> constant
Atom = Linear  # meaning: sum(coef * var) + const <= 0 (< 0 when it holds the key _STRICT)
#: marker key of an atom read from a strict comparison (``<`` / ``>``).
_STRICT = "<"
Dnf = list[list[Atom]]


def _parse_sexprs(text: str, where: str) -> list[object]:
    text = "\n".join(line.split(";", 1)[0] for line in text.splitlines())  # comments
    stack: list[list[object]] = [[]]
    for token in _TOKEN.findall(text):
        if token == "(":
            stack.append([])
        elif token == ")":
            if len(stack) == 1:
                raise InputError(f"{where}: unbalanced ')'")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(token)
    if len(stack) != 1:
        raise InputError(f"{where}: unbalanced '(' (truncated file?)")
    return stack[0]


def _linear(term: object, where: str) -> Linear:
    if isinstance(term, str):
        if _VAR.match(term):
            return {term: 1.0}
        try:
            return {"": float(term)}
        except ValueError:
            raise InputError(f"{where}: unknown term {term!r}") from None
    if not isinstance(term, list) or not term:
        raise InputError(f"{where}: empty term")
    op, args = term[0], [_linear(a, where) for a in term[1:]]
    if op == "+":
        return _add(*args)
    if op == "-":
        if len(args) == 1:
            return _scale(args[0], -1.0)
        return _add(args[0], *[_scale(a, -1.0) for a in args[1:]])
    if op == "*":
        consts = [a for a in args if set(a) <= {""}]
        others = [a for a in args if not set(a) <= {""}]
        if len(others) > 1:
            raise InputError(f"{where}: non-linear product {_show(term)}")
        factor = math.prod(a.get("", 0.0) for a in consts)
        return _scale(others[0], factor) if others else {"": factor}
    raise InputError(f"{where}: unsupported operator {op!r} in {_show(term)}")


def _add(*parts: Linear) -> Linear:
    out: Linear = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _scale(part: Linear, factor: float) -> Linear:
    return {k: v * factor for k, v in part.items()}


def _show(term: object) -> str:
    return term if isinstance(term, str) else "(" + " ".join(_show(t) for t in term) + ")"  # type: ignore[union-attr]


def _formula(expr: object, where: str) -> Dnf:
    """A formula as a disjunction of conjunctions of atoms ``linear <= 0``."""
    if not isinstance(expr, list) or not expr:
        raise InputError(f"{where}: expected a formula, got {_show(expr)}")
    op = expr[0]
    if op == "and":
        result: Dnf = [[]]
        for sub in expr[1:]:
            result = [a + b for a in result for b in _formula(sub, where)]
        return result
    if op == "or":
        return [conj for sub in expr[1:] for conj in _formula(sub, where)]
    if op in ("<=", "<", ">=", ">", "="):
        if len(expr) != 3:
            raise InputError(f"{where}: {op} takes two terms: {_show(expr)}")
        left, right = _linear(expr[1], where), _linear(expr[2], where)
        diff = _add(left, _scale(right, -1.0))  # left - right
        marker = {_STRICT: 1.0} if op in ("<", ">") else {}
        if op in ("<=", "<"):
            return [[{**diff, **marker}]]
        if op in (">=", ">"):
            return [[{**_scale(diff, -1.0), **marker}]]
        return [[diff, _scale(diff, -1.0)]]
    raise InputError(f"{where}: unsupported formula {_show(expr)}")


def read_vnnlib(
    path: str | Path, num_inputs: int | None = None, num_outputs: int | None = None
) -> list[Property]:
    """Parse a VNN-LIB 1.0 file into properties (see the module docstring); sizes are checked when given."""
    path = Path(path)
    where = f"VNN-LIB file {str(path)!r}"
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read {where}: {exc.strerror or exc}") from None
    declared: set[str] = set()
    formula: Dnf = [[]]
    for expr in _parse_sexprs(text, where):
        if not isinstance(expr, list) or not expr:
            raise InputError(f"{where}: unexpected {_show(expr)} at top level")
        if expr[0] == "declare-const":
            if len(expr) != 3 or not isinstance(expr[1], str) or not _VAR.match(expr[1]):
                raise InputError(f"{where}: expected (declare-const X_i Real) or Y_i, got {_show(expr)}")
            declared.add(expr[1])
        elif expr[0] == "assert":
            if len(expr) != 2:
                raise InputError(f"{where}: assert takes one formula: {_show(expr)}")
            formula = [a + b for a in formula for b in _formula(expr[1], where)]
        else:
            raise InputError(f"{where}: unsupported command {expr[0]!r}")
    n = 1 + max((int(_VAR.match(v).group(2)) for v in declared if v.startswith("X")), default=-1)  # type: ignore[union-attr]
    m = 1 + max((int(_VAR.match(v).group(2)) for v in declared if v.startswith("Y")), default=-1)  # type: ignore[union-attr]
    if num_inputs is not None and n != num_inputs:
        raise InputError(f"{where} declares {n} inputs X_i, the network takes {num_inputs}")
    if num_outputs is not None and m != num_outputs:
        raise InputError(f"{where} declares {m} outputs Y_i, the network has {num_outputs}")
    return _group(formula, n, m, declared, where, path.stem)


def _group(formula: Dnf, n: int, m: int, declared: set[str], where: str, stem: str) -> list[Property]:
    groups: dict[tuple[bytes, bytes], Property] = {}
    for conj in formula:
        lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
        rows, rhs = [], []
        strict = False
        for atom in conj:
            names = [k for k, v in atom.items() if k not in ("", _STRICT) and v != 0.0]
            for name in names:
                if name not in declared:
                    raise InputError(f"{where}: {name} is used but not declared")
            const = atom.get("", 0.0)
            if names and all(k.startswith("X") for k in names):
                if len(names) != 1:
                    raise InputError(
                        f"{where}: only bounds on single inputs are supported, got a constraint on {names}"
                    )
                i, coef = int(names[0][2:]), atom[names[0]]
                if coef > 0:
                    hi[i] = min(hi[i], -const / coef)
                else:
                    lo[i] = max(lo[i], -const / coef)
            elif names and all(k.startswith("Y") for k in names):
                row = np.zeros(m)
                for k in names:
                    row[int(k[2:])] += atom[k]
                rows.append(row)
                rhs.append(-const)
                strict = strict or _STRICT in atom
            elif names:
                raise InputError(
                    f"{where}: constraints mixing inputs and outputs are not supported ({names})"
                )
            elif const > 0 or (const == 0 and _STRICT in atom):  # a false constant atom: no such conjunction
                break
        else:
            if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
                missing = [f"X_{i}" for i in np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi)))][:5]
                raise InputError(f"{where}: inputs {missing} have no lower or upper bound")
            if (lo > hi).any():
                continue  # empty box: this conjunction cannot be satisfied
            key = (lo.tobytes(), hi.tobytes())
            spec = (np.array(rows).reshape(len(rows), m), np.array(rhs, dtype=np.float64))
            if key not in groups:
                groups[key] = Property(lo, hi, [], False, None, f"{stem}#{len(groups)}")
            groups[key].disjuncts.append(spec)
            # one strictness per property: strict if any output comparison is (never a tie reported as sat)
            groups[key].strict = groups[key].strict or strict
    return list(groups.values())


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------
def _num(value: float) -> str:
    return repr(float(value))


def _row_text(row: np.ndarray, bound: float, strict: bool) -> str:
    """One output row ``row @ Y <= bound`` (``<`` when ``strict``) as VNN-LIB text."""
    terms = [f"(* {_num(v)} Y_{k})" if v != 1.0 else f"Y_{k}" for k, v in enumerate(row) if v != 0.0]
    total = terms[0] if len(terms) == 1 else f"(+ {' '.join(terms)})"
    return f"({'<' if strict else '<='} {total} {_num(bound)})"


def write_vnnlib(path: str | Path, prop: Property, comment: str = "") -> Path:
    """Write ``prop`` as a VNN-LIB 1.0 file (input box, then the output disjunction, with ``<`` for a ``strict``
    property so that reading it back keeps the strictness); returns the path."""
    path = Path(path)
    n, m = len(prop.lo), prop.num_outputs
    lines = [f"; {line}" for line in comment.splitlines()] if comment else []
    lines += [f"(declare-const X_{i} Real)" for i in range(n)]
    lines += [f"(declare-const Y_{k} Real)" for k in range(m)]
    for i in range(n):
        lines.append(f"(assert (>= X_{i} {_num(prop.lo[i])}))")
        lines.append(f"(assert (<= X_{i} {_num(prop.hi[i])}))")
    conjunctions = []
    for spec, rhs in prop.disjuncts:
        atoms = [_row_text(row, bound, prop.strict) for row, bound in zip(spec, rhs, strict=True)]
        conjunctions.append(atoms[0] if len(atoms) == 1 else f"(and {' '.join(atoms)})")
    if len(conjunctions) == 1:
        lines.append(f"(assert {conjunctions[0]})")
    elif conjunctions:
        lines.append("(assert (or")
        lines += [f"    {c}" for c in conjunctions]
        lines.append("))")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_result(
    path: str | Path, status: str, x: np.ndarray | None = None, y: np.ndarray | None = None
) -> Path:
    """A VNN-COMP result file: ``sat`` / ``unsat`` / ``timeout`` / ``unknown``; for ``sat`` the assignment follows."""
    if status not in ("sat", "unsat", "timeout", "unknown"):
        raise ValueError(f"bad VNN-COMP result {status!r}")
    path = Path(path)
    lines = [status]
    if status == "sat":
        if x is None or y is None:
            raise ValueError("a sat result needs the counterexample input and output")
        pairs = [f"(X_{i} {_num(v)})" for i, v in enumerate(np.ravel(x))] + [
            f"(Y_{k} {_num(v)})" for k, v in enumerate(np.ravel(y))
        ]
        lines.append("(" + "\n ".join(pairs) + ")")
    path.write_text("\n".join(lines) + "\n")
    return path


def read_result(path: str | Path) -> tuple[str, dict[str, float]]:
    """Read a result file written by :func:`write_result`: status and the assignment (empty unless ``sat``)."""
    text = Path(path).read_text()
    status = text.split(None, 1)[0] if text.strip() else "unknown"
    values = {name: float(v) for name, v in re.findall(r"\(([XY]_\d+)\s+([^\s()]+)\)", text)}
    return status, values
