"""`--where EXPR`: a small, safe filter over a dead letter's fields.

Python expression syntax over the names in `mailbag.dlq.record.FIELD_NAMES` and literals:
comparisons, `in` / `not in` (also over literal lists and tuples), `and` / `or` / `not`,
`headers["tenant"]`, and string methods such as `reason.startswith("failed")`.
Evaluated by simpleeval, which walks the parsed tree and allows no imports, no dunder
access and no function but the methods of the values themselves: nothing an operator
types can run arbitrary code.

A comparison that cannot be made on a record (a field that is None, a missing header)
makes that record not match, as NULL does in SQL.
"""

from __future__ import annotations

import ast

from simpleeval import AttributeDoesNotExist, EvalWithCompoundTypes, InvalidExpression

from mailbag.broker import Message
from mailbag.broker.errors import ConfigurationError
from mailbag.dlq.record import FIELD_NAMES, DeadLetter


class WhereError(ConfigurationError):
    """The expression is not valid, or uses something the filter does not allow."""


class Where:
    """A compiled `--where` expression: call it with a record to get a bool. Errors in
    the expression surface here, at construction, before any message is touched."""

    def __init__(self, expression: str) -> None:
        self.expression = expression.strip()
        try:
            tree = ast.parse(self.expression, mode="eval")
        except SyntaxError as exc:
            raise WhereError(f"--where {expression!r} is not a valid expression ({exc.msg})") from None
        unknown = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - set(FIELD_NAMES))
        if unknown:
            raise WhereError(
                f"--where {expression!r}: unknown name {unknown[0]!r}; use one of {', '.join(FIELD_NAMES)}"
            )
        self._evaluator = EvalWithCompoundTypes(functions={})
        self._parsed = self._evaluator.parse(self.expression)
        self(DeadLetter.from_message(Message("sample", b"{}"), "sample.dlq"))

    def __call__(self, record: DeadLetter) -> bool:
        self._evaluator.names = record.fields()
        try:
            return bool(self._evaluator.eval(self.expression, previously_parsed=self._parsed))
        except (TypeError, KeyError, IndexError, AttributeDoesNotExist):
            return False
        except InvalidExpression as exc:
            raise WhereError(f"--where {self.expression!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"Where({self.expression!r})"
