"""Values of a MONAI bundle config, resolved as data: references followed, small expressions computed safely.

Why: most real bundles write the fields CTDeepSeg needs indirectly: ``"keys": "@image_key"``, ``"pixdim":
"@pixdim"`` where ``pixdim`` is ``"$[1.5, 1.5, 1.5] if @displayable_configs#highres else [3.0, 3.0, 3.0]"``,
``"out_channels": "$len(@label_names) + 1"``. MONAI evaluates these with Python's ``eval``, which would run
whatever a downloaded file says. Here ``@id#key`` and ``%file#id`` references are looked up, and a ``$``
expression is parsed with ``ast`` and computed only if it is made of literals, references, arithmetic,
comparisons, ``and`` / ``or`` / ``not``, ``x if c else y``, indexing and a few pure functions (``len``, ``min``,
``max``, ``abs``, ``round``, ``int``, ``float``, ``sum``, ``list``, ``tuple``, ``bool``). Anything else
(attribute access, imports, calls of other names, lambdas, comprehensions) is refused with a message naming it.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CTDeepSegError

_FUNCTIONS = {
    "len": len,
    "min": min,
    "max": max,
    "abs": abs,
    "round": round,
    "int": int,
    "float": float,
    "sum": sum,
    "list": list,
    "tuple": tuple,
    "bool": bool,
}
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_REFERENCE = re.compile(r"@[A-Za-z_][\w#]*")
_MAX_SIZE = 1_000_000  # no expression builds a sequence or a number bigger than this (a ** 10 ** 10 ...)
_MAX_DEPTH = 16


@dataclass(frozen=True)
class BundleConfig:
    """One bundle config file and the folder it came from (for ``%`` references to its sibling files)."""

    data: dict
    folder: Path
    name: str

    @classmethod
    def read(cls, path: Path) -> BundleConfig:
        """A JSON or YAML config, as data (YAML through ``safe_load``, which builds only plain types)."""
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise CTDeepSegError(
                    f"{path}: reading YAML configs needs PyYAML; install it with Check dependencies "
                    "(or `pip install pyyaml`)."
                ) from None
            try:
                data = yaml.safe_load(path.read_text())
            except yaml.YAMLError as error:
                raise CTDeepSegError(f"{path}: is not valid YAML ({error}).") from None
        else:
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise CTDeepSegError(f"{path}: is not valid JSON ({error.msg} at line {error.lineno}).") from None
        if not isinstance(data, dict):
            raise CTDeepSegError(f"{path}: a bundle config must be a mapping of names to values.")
        return cls(data, path.parent, str(path))

    def lookup(self, identifier: str, where: str) -> Any:
        """The raw entry at ``a#b#0`` (dict keys and list indices separated by ``#``)."""
        node: Any = self.data
        for part in identifier.split("#"):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise CTDeepSegError(f"{where}: refers to @{identifier}, which {self.name} does not define.")
        return node

    def value(self, raw: Any, where: str, depth: int = 0) -> Any:
        """``raw`` with every reference and expression inside it resolved to plain data."""
        if depth > _MAX_DEPTH:
            raise CTDeepSegError(f"{where}: references nest too deeply (a cycle?).")
        if isinstance(raw, str) and raw.startswith("@"):
            return self.value(self.lookup(raw[1:], where), f"{where} -> {raw}", depth + 1)
        if isinstance(raw, str) and raw.startswith("%"):
            return self._other_file(raw, where, depth)
        if isinstance(raw, str) and raw.startswith("$"):
            return self._evaluate(raw[1:], where, depth)
        if isinstance(raw, dict):
            return {key: self.value(item, f"{where}.{key}", depth + 1) for key, item in raw.items()}
        if isinstance(raw, list):
            return [self.value(item, where, depth + 1) for item in raw]
        return raw

    def _other_file(self, raw: str, where: str, depth: int) -> Any:
        file_name, _, identifier = raw[1:].partition("#")
        path = (self.folder.parent / file_name).resolve()
        inside = path.is_relative_to(self.folder.parent.resolve())
        if not inside or path.suffix not in (".json", ".yaml", ".yml") or not path.is_file():
            raise CTDeepSegError(f"{where}: {raw!r} names {file_name}, not a config inside the bundle.")
        other = BundleConfig.read(path)
        return other.value(other.lookup(identifier, where) if identifier else other.data, where, depth + 1)

    def _evaluate(self, expression: str, where: str, depth: int) -> Any:
        references: dict[str, Any] = {}

        def placeholder(match: re.Match) -> str:
            key = f"_ref{len(references)}_"
            references[key] = self.value(match.group(0), where, depth + 1)
            return key

        text = _REFERENCE.sub(placeholder, expression.strip())
        try:
            tree = ast.parse(text, mode="eval").body
        except SyntaxError:
            raise CTDeepSegError(f"{where}: {expression!r} is not an expression CTDeepSeg can read.") from None
        return _Evaluator(expression, where, references).run(tree)


class _Evaluator:
    def __init__(self, expression: str, where: str, names: dict[str, Any]) -> None:
        self.expression = expression
        self.where = where
        self.names = names

    def refuse(self, what: str) -> CTDeepSegError:
        return CTDeepSegError(
            f"{self.where}: {self.expression!r} uses {what}, which CTDeepSeg does not evaluate "
            "(bundles are read as data; no code from a downloaded file is run)."
        )

    def checked(self, value: Any) -> Any:
        size = len(value) if isinstance(value, (str, list, tuple, dict)) else 0
        if size > _MAX_SIZE or (isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > 1e12):
            raise self.refuse("a value too large to be a setting")
        return value

    def run(self, node: ast.AST) -> Any:
        return self.checked(self.visit(node))

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id]
            raise self.refuse(f"the name {node.id!r}")
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.run(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Dict) and all(key is not None for key in node.keys):
            return {self.run(key): self.run(item) for key, item in zip(node.keys, node.values)}
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.run(node.left), self.run(node.right)
            if isinstance(node.op, ast.Pow) and isinstance(right, (int, float)) and abs(right) > 64:
                raise self.refuse("a power above 64")
            return self.checked(_BINARY[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self.run(node.operand))
        if isinstance(node, ast.BoolOp):
            values = [self.run(item) for item in node.values]
            if isinstance(node.op, ast.And):
                return all(values) and values[-1]
            return next((value for value in values if value), values[-1])
        if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            left = self.run(node.left)
            for op, comparator in zip(node.ops, node.comparators):
                right = self.run(comparator)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self.run(node.body) if self.run(node.test) else self.run(node.orelse)
        if isinstance(node, ast.Subscript):
            container = self.run(node.value)
            index = node.slice
            if isinstance(index, ast.Slice):
                key = slice(
                    *(None if part is None else self.run(part) for part in (index.lower, index.upper, index.step))
                )
            else:
                key = self.run(index)
            try:
                return container[key]
            except (IndexError, KeyError, TypeError):
                raise self.refuse(f"an index {key!r} that does not exist") from None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
            if node.keywords:
                raise self.refuse("keyword arguments")
            return self.checked(_FUNCTIONS[node.func.id](*(self.run(argument) for argument in node.args)))
        if isinstance(node, ast.Call):
            return self._refuse_call(node)
        raise self.refuse(type(node).__name__)

    def _refuse_call(self, node: ast.Call) -> Any:
        try:
            name = ast.unparse(node.func)
        except (AttributeError, ValueError):  # pragma: no cover (ast.unparse exists from Python 3.9)
            name = "a call"
        raise self.refuse(f"a call of {name}")
