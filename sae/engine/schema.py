"""One schema layer for every file attnscope reads: a file's JSON is checked against a small declarative spec and
any mismatch is one `FileFormatError` naming the file, the field (a path such as `shards[2].rows`) and what was
expected. Torch-free; no dependency.

Why a small module rather than pydantic or msgspec: the formats are few and small (a cache manifest, labels,
findings' figure data, SAE and training configs), the checks we need are strict (a JSON string "false" is not a
boolean, 0 rows is not a cache, NaN is not a number) and the message must be one line in the user's terms; a
library would add a dependency for that and its errors would still need translating. Each spec is a value:
`Int(min=1)`, `Str()`, `Bool()`, `Float(finite=True)`, `Optional(spec)`, `List(spec)`, `Dict(spec)`,
`Obj({"field": spec, ...}, optional={...})`, `OneOf("a", "b")`, and `check(data, spec, file)` returns the data.

`read_json(path, what)` reads a regular file (no FIFO, device or huge file: `safe_io.read_text_file`), refuses
NaN/Infinity literals and nesting deeper than `MAX_DEPTH`, and gives one line for JSON that does not parse.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from sae.engine.errors import AttnscopeError

MAX_DEPTH = 64


class FileFormatError(AttnscopeError, ValueError):
    """A file attnscope reads does not hold what its format says: names the file, the field and what was expected."""

    def __init__(self, file: str | Path, where: str, expected: str, got: Any = None, has_got: bool = True) -> None:
        self.file, self.where, self.expected, self.got, self.has_got = str(file), where, expected, got, has_got
        field_part = f" field {where}:" if where else ""
        got_part = f", got {_show(got)}" if has_got else ""
        super().__init__(f"{file}:{field_part} expected {expected}{got_part}")


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, str):
        return repr(v[:40] + ("..." if len(v) > 40 else ""))
    if isinstance(v, (int, float)):
        return repr(v)[:40]
    return {"dict": "an object", "list": "a list"}.get(type(v).__name__, type(v).__name__)


# ---- specs ----------------------------------------------------------------------------------------------------


class Spec:
    expected = "a value"

    def check(self, v: Any, where: str, file: str) -> Any:  # pragma: no cover - overridden
        return v

    def fail(self, v: Any, where: str, file: str, expected: str | None = None) -> FileFormatError:
        return _ERROR.get()(file, where, expected or self.expected, v)


@dataclass
class Int(Spec):
    min: int | None = None
    max: int | None = None

    @property
    def expected(self) -> str:  # type: ignore[override]
        if self.min is not None and self.max is not None:
            return f"a whole number from {self.min} to {self.max}"
        if self.min is not None:
            return f"a whole number >= {self.min}"
        return "a whole number"

    def check(self, v: Any, where: str, file: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
                v = int(v)
            else:
                raise self.fail(v, where, file)
        if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
            raise self.fail(v, where, file)
        return v


@dataclass
class Float(Spec):
    min: float | None = None
    max: float | None = None
    finite: bool = True

    @property
    def expected(self) -> str:  # type: ignore[override]
        lim = f" >= {self.min:g}" if self.min is not None else ""
        lim += f" <= {self.max:g}" if self.max is not None else ""
        return f"a {'finite ' if self.finite else ''}number{lim}"

    def check(self, v: Any, where: str, file: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(v, where, file)
        try:
            f = float(v)
        except OverflowError:
            raise self.fail(v, where, file) from None
        if (self.finite and not math.isfinite(f)) or (self.min is not None and f < self.min) or (
                self.max is not None and f > self.max):
            raise self.fail(v, where, file)
        return f


@dataclass
class Str(Spec):
    nonempty: bool = False
    max_len: int = 1 << 20
    expected = "text"

    def check(self, v: Any, where: str, file: str) -> str:
        if not isinstance(v, str) or (self.nonempty and not v.strip()) or len(v) > self.max_len:
            raise self.fail(v, where, file, "non-empty text" if self.nonempty else "text")
        return v


@dataclass
class Bool(Spec):
    expected = "true or false (a JSON boolean, not text)"

    def check(self, v: Any, where: str, file: str) -> bool:
        if not isinstance(v, bool):
            raise self.fail(v, where, file)
        return v


class OneOf(Spec):
    def __init__(self, *choices: Any) -> None:
        self.choices = choices

    @property
    def expected(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(_show(c) for c in self.choices)

    def check(self, v: Any, where: str, file: str) -> Any:
        if isinstance(v, bool) or v not in self.choices or not isinstance(v, (str, int, float, type(None))):
            raise self.fail(v, where, file)
        return v


class Either(Spec):
    """The first of several specs that accepts the value (`Either(Float(), List(Float()))`)."""

    def __init__(self, *options: Spec) -> None:
        self.options = options

    @property
    def expected(self) -> str:  # type: ignore[override]
        return " or ".join(o.expected for o in self.options)

    def check(self, v: Any, where: str, file: str) -> Any:
        for o in self.options:
            try:
                return o.check(v, where, file)
            except FileFormatError:
                continue
        raise self.fail(v, where, file)


@dataclass
class Optional(Spec):
    inner: Spec = field(default_factory=Spec)

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"{self.inner.expected} or null"

    def check(self, v: Any, where: str, file: str) -> Any:
        if v is None:
            return None
        if not isinstance(v, (dict, list)):  # a scalar of the wrong kind: say that null was allowed too
            try:
                return self.inner.check(v, where, file)
            except FileFormatError as exc:
                if exc.where != where:
                    raise
                raise self.fail(v, where, file) from None
        return self.inner.check(v, where, file)


@dataclass
class List(Spec):
    item: Spec = field(default_factory=Spec)
    min_len: int = 0
    max_len: int | None = None

    @property
    def expected(self) -> str:  # type: ignore[override]
        n = f" of at least {self.min_len}" if self.min_len else ""
        return f"a list{n} ({self.item.expected} each)"

    def check(self, v: Any, where: str, file: str) -> list[Any]:
        if not isinstance(v, list) or len(v) < self.min_len or (self.max_len is not None and len(v) > self.max_len):
            raise self.fail(v, where, file)
        return [self.item.check(x, f"{where}[{i}]", file) for i, x in enumerate(v)]


@dataclass
class Dict(Spec):
    value: Spec = field(default_factory=Spec)

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"an object ({self.value.expected} each)"

    def check(self, v: Any, where: str, file: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(v, where, file)
        return {k: self.value.check(x, f"{where}.{k}" if where else str(k), file) for k, x in v.items()}


@dataclass
class Obj(Spec):
    """An object with `required` fields (spec each) and `optional` ones (spec, default); other keys are kept."""

    required: dict[str, Spec] = field(default_factory=dict)
    optional: dict[str, tuple[Spec, Any]] = field(default_factory=dict)
    expected = "an object"

    def check(self, v: Any, where: str, file: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(v, where, file)
        out = dict(v)
        for name, spec in self.required.items():
            at = f"{where}.{name}" if where else name
            if name not in v:
                raise _ERROR.get()(file, at, f"{spec.expected} (the field is missing)", has_got=False)
            out[name] = spec.check(v[name], at, file)
        for name, (spec, default) in self.optional.items():
            at = f"{where}.{name}" if where else name
            out[name] = spec.check(v[name], at, file) if name in v else default
        return out


# the error type a reader raises: FileFormatError, or a subclass its callers already catch (e.g. SAEConfigError),
# raised as that type from the start (never re-wrapped)
_ERROR: ContextVar[type[FileFormatError]] = ContextVar("schema_error", default=FileFormatError)


@contextmanager
def raising(error: type[FileFormatError]) -> Iterator[None]:
    """Within the block, every schema failure is raised as `error` (a FileFormatError subclass)."""
    token = _ERROR.set(error)
    try:
        yield
    finally:
        _ERROR.reset(token)


def check(data: Any, spec: Spec, file: str | Path, where: str = "", error: type[FileFormatError] = FileFormatError
          ) -> Any:
    """`data` checked against `spec` (normalised: whole floats to ints, optional fields filled); `error` (a
    FileFormatError, or a subclass a reader's callers already catch, e.g. `SAEConfigError`) otherwise: one line
    naming the file, the field and what was expected."""
    with raising(error):
        return spec.check(data, where, str(file))


# ---- reading JSON ---------------------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def depth(v: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of parsed JSON (iterative: a 10,000-deep list is no RecursionError); stops past `limit`."""
    deepest, stack = 0, [(v, 1)]
    while stack:
        x, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(x, dict):
            stack.extend((y, d + 1) for y in x.values())
        elif isinstance(x, list):
            stack.extend((y, d + 1) for y in x)
    return deepest


def parse_json(text: str, file: str | Path) -> Any:
    """JSON text -> data; FileFormatError for text that does not parse, NaN/Infinity, or nesting past MAX_DEPTH."""
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise _ERROR.get()(file, "", f"JSON nested at most {MAX_DEPTH} levels deep", has_got=False) from None
    except ValueError as exc:
        why = str(exc).splitlines()[0][:80] if str(exc) else "not JSON"
        raise _ERROR.get()(file, "", f"valid JSON ({why})", has_got=False) from None
    if depth(data) > MAX_DEPTH:
        raise _ERROR.get()(file, "", f"JSON nested at most {MAX_DEPTH} levels deep", has_got=False)
    return data


def read_json(path: str | Path, what: str = "file", spec: Spec | None = None,
              error: type[FileFormatError] = FileFormatError) -> Any:
    """Read and parse a JSON file, then check it against `spec`. FileNotFoundError passes through; everything else
    is one line (UnreadableFileError for a FIFO/device/permission, `error` for the content, bytes that are not UTF-8 included)."""
    from sae.engine.safe_io import read_file_bytes

    raw = read_file_bytes(path, what)  # FIFO, device, permission: UnreadableFileError (the file, not its content)
    with raising(error):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:  # the content: the reader's own error type
            raise _ERROR.get()(path, "", f"UTF-8 text (byte {exc.start} is not)", has_got=False) from None
        data = parse_json(text, path)
    return data if spec is None else check(data, spec, path, error=error)
