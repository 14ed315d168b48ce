"""The ``--where`` language of ``fusion reshard``: a small expression parser that builds a pyarrow compute
expression over a shard parquet's columns, so thresholds are applied without running any user code.

    clip_score/clip_cosine >= 0.28 and (category == 'SynthText' or text/qa_turns >= 2)
    image_total/total >= 1.1 and not detail_score/ssim_a is null
    category in ('SynthColor', 'SynthCount') and qa_rules/qa_failed == 0

Names are columns (``key``, ``category``, ``split``, ``description``, ...) or score names, with or without
their ``score/`` prefix. Operators: ``or``, ``and``, ``not``, comparisons (``== != < <= > >=``), ``is [not]
null``, ``[not] in (...)``, ``+``, ``-`` and ``*`` (no division: ``/`` belongs to score names); literals are
numbers, quoted strings, ``true`` and ``false``. A sample whose score is missing (null) fails a comparison.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.tables import SCORE_PREFIX


class WhereError(ValueError):
    """A ``--where`` expression that cannot be parsed or names an unknown column."""


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+(?:[eE][+-]?\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|,|\+|-|\*)
  | (?P<name>[A-Za-z_][A-Za-z0-9_./]*)
""", re.VERBOSE)
KEYWORDS = {"and", "or", "not", "is", "null", "in", "true", "false"}
COMPARISONS = {"==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater,
               ">=": pc.greater_equal}


@dataclass(frozen=True)
class Token:
    kind: str  # number, string, op, name, keyword, end
    text: str
    position: int


def tokenize(text: str) -> list[Token]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            raise WhereError(f"unexpected character {text[position]!r} at position {position} of {text!r}")
        kind = match.lastgroup
        if kind != "space":
            value = match.group()
            if kind == "name" and value.lower() in KEYWORDS:
                kind, value = "keyword", value.lower()
            tokens.append(Token(kind, value, position))
        position = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str, schema: pa.Schema) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0
        self.columns = set(schema.names)

    # --- helpers ---
    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def accept(self, kind: str, text: str | None = None) -> Token | None:
        token = self.current
        if token.kind == kind and (text is None or token.text == text):
            self.index += 1
            return token
        return None

    def expect(self, kind: str, text: str | None = None) -> Token:
        token = self.accept(kind, text)
        if token is None:
            wanted = text or kind
            got = self.current.text or "the end"
            raise WhereError(f"expected {wanted!r} at position {self.current.position} of {self.text!r}, got {got!r}")
        return token

    # --- grammar ---
    def parse(self) -> pc.Expression:
        expression = self.disjunction()
        self.expect("end")
        return expression

    def disjunction(self) -> pc.Expression:
        left = self.conjunction()
        while self.accept("keyword", "or"):
            left = pc.or_kleene(left, self.conjunction())
        return left

    def conjunction(self) -> pc.Expression:
        left = self.negation()
        while self.accept("keyword", "and"):
            left = pc.and_kleene(left, self.negation())
        return left

    def negation(self) -> pc.Expression:
        if self.accept("keyword", "not"):
            return pc.invert(self.negation())
        return self.comparison()

    def comparison(self) -> pc.Expression:
        left = self.sum()
        if self.accept("keyword", "is"):
            negated = self.accept("keyword", "not") is not None
            self.expect("keyword", "null")
            test = pc.is_null(left)
            return pc.invert(test) if negated else test
        negated = False
        if self.current.kind == "keyword" and self.current.text == "not" and \
                self.tokens[self.index + 1].text == "in":
            self.index += 1
            negated = True
        if self.accept("keyword", "in"):
            values = self.literal_list()
            test = pc.is_in(left, value_set=pa.array(values))
            return pc.invert(test) if negated else test
        if self.current.kind == "op" and self.current.text in COMPARISONS:
            operator = COMPARISONS[self.expect("op").text]
            return operator(left, self.sum())
        return left

    def literal_list(self) -> list:
        self.expect("op", "(")
        values = [self.literal()]
        while self.accept("op", ","):
            values.append(self.literal())
        self.expect("op", ")")
        if len({type(v) for v in values}) > 1:
            raise WhereError(f"the values of an 'in' list must all be numbers or all strings in {self.text!r}")
        return values

    def literal(self):
        token = self.current
        if token.kind == "number":
            self.index += 1
            return float(token.text)
        if token.kind == "string":
            self.index += 1
            return _unquote(token.text)
        raise WhereError(f"expected a number or a string at position {token.position} of {self.text!r}")

    def sum(self) -> pc.Expression:
        left = self.product()
        while self.current.kind == "op" and self.current.text in "+-":
            operator = pc.add if self.expect("op").text == "+" else pc.subtract
            left = operator(left, self.product())
        return left

    def product(self) -> pc.Expression:
        left = self.unary()
        while self.accept("op", "*"):
            left = pc.multiply(left, self.unary())
        return left

    def unary(self) -> pc.Expression:
        if self.accept("op", "-"):
            return pc.negate(self.unary())
        return self.atom()

    def atom(self) -> pc.Expression:
        token = self.current
        if self.accept("op", "("):
            inner = self.disjunction()
            self.expect("op", ")")
            return inner
        if token.kind in ("number", "string"):
            return pc.scalar(self.literal())
        if self.accept("keyword", "true"):
            return pc.scalar(True)
        if self.accept("keyword", "false"):
            return pc.scalar(False)
        if self.accept("name"):
            return pc.field(self.column(token))
        raise WhereError(f"unexpected {token.text or 'end'!r} at position {token.position} of {self.text!r}")

    def column(self, token: Token) -> str:
        for name in (token.text, f"{SCORE_PREFIX}{token.text}"):
            if name in self.columns:
                return name
        scores = sorted(c.removeprefix(SCORE_PREFIX) for c in self.columns if c.startswith(SCORE_PREFIX))
        raise WhereError(f"unknown column or score {token.text!r} in {self.text!r}; scores of this dataset: "
                         f"{', '.join(scores) or 'none'}")


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def compile_where(text: str, schema: pa.Schema) -> pc.Expression:
    """The pyarrow expression of ``text`` over tables of ``schema``; raises ``WhereError`` naming the fault."""
    if not text.strip():
        raise WhereError("the --where expression is empty")
    return _Parser(text, schema).parse()


def evaluate_where(expression: pc.Expression, table: pa.Table) -> list[bool]:
    """Which rows pass (null counts as not passing)."""
    import pyarrow.dataset as ds

    mask = ds.dataset(table).to_table(columns={"passed": expression}).column("passed")
    if not pa.types.is_boolean(mask.type):
        raise WhereError(f"the --where expression gives {mask.type} values, not true/false")
    return [bool(v) for v in pc.fill_null(mask, False).to_pylist()]
