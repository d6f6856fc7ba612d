"""What read-only SQL may do: the guard in front of the live SQL bridge and ``creditflow query``.

chDB runs in the worker's own process with the worker's rights, and ClickHouse's ``readonly``
setting does not stop every way out of it: the scalar ``file()`` function and ``INTO OUTFILE``
work in readonly mode, and some table functions (``s3``) reach the network before readonly is
checked. So a statement is admitted only when

1. it is one statement whose first keyword reads (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, EXISTS);
2. no function named in it reaches files, URLs, other servers or the shell (``FORBIDDEN_FUNCTIONS``
   and ``FORBIDDEN_PREFIXES``), whatever its case, quoting, or the comments between name and paren;
3. it has no clause that writes files or changes settings (``INTO OUTFILE``, ``FROM INFILE``,
   ``SETTINGS``): the limits are the bridge's, not the caller's;
4. no ``{name:Identifier}`` placeholder turns a bound value into a name;
5. every table function it reads from is on ``ALLOWED_TABLE_FUNCTIONS`` (generators and views of
   the database itself): an allow-list, so a table function a later engine adds is refused.

The text is read by a tokenizer that lexes like ClickHouse (quotes with backslash escapes and
doubled quotes, backticks, ``--``/``#``/``/* */`` comments, ``$tag$`` heredocs, ``$`` inside
names); where it might differ from ClickHouse it errs towards seeing more code. A lexer can still
be wrong, so the text is never run as written (``vet``): the engine is handed it as a *bound value*
to ``formatQuerySingleLine``, which parses exactly one statement and prints it back in canonical
form (no comments or heredocs, names quoted when they need it). That canonical text is checked
again by the same rules, its ``EXPLAIN AST`` is checked for forbidden functions and for table
functions off the allow-list (``check_ast``), and it is what runs, in a session with
``readonly=1``, which refuses writes, DDL and changes of settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

READ_ONLY_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS"})

# Table functions and scalar functions that read or write outside the database: files, URLs and
# object stores, other database servers, processes. Compared lower-cased.
FORBIDDEN_FUNCTIONS = frozenset({
    "file", "filecluster", "url", "urlcluster", "s3", "s3cluster", "s3queue", "gcs", "oss", "cosn",
    "hdfs", "hdfscluster", "azureblobstorage", "azureblobstoragecluster", "remote", "remotesecure",
    "cluster", "clusterallreplicas", "mysql", "postgresql", "mongodb", "redis", "sqlite", "jdbc", "odbc",
    "executable", "executablepool", "input", "iceberg", "deltalake", "hudi", "paimon", "arrowflight",
    "ytsaurus", "catboostevaluate", "naivebayesclassifier", "dictionary",
    # ClickHouse's AI functions send text to an LLM provider's endpoint.
    "aigenerate", "aiclassify", "aiembed", "aiextract", "aifilter", "airedact", "aisimilarity", "aitranslate",
})
# Families of the above (icebergS3, deltaLakeAzure, urlCluster, ...), matched by prefix so a new
# variant in a later ClickHouse is refused too.
FORBIDDEN_PREFIXES = ("file", "url", "s3", "hdfs", "azure", "iceberg", "deltalake", "hudi", "paimon",
                      "remote", "cluster", "mysql", "postgres", "mongo", "redis", "sqlite", "jdbc", "odbc",
                      "executable", "arrowflight", "ytsaurus", "gcs", "oss", "cosn", "kafka", "nats", "rabbitmq")
# Scalar functions the prefixes above would catch that compute on their arguments only.
PURE_DESPITE_PREFIX = frozenset({"urlhierarchy", "urlpathhierarchy", "kafkamurmurhash"})
# Table functions a statement may read from: generators and views of this database's own tables.
# Everything else is refused, so a table function added in a later ClickHouse or chDB (chDB's
# ``python``, ``arrowstream``; ``bigquery``, ``eval``) never becomes a way out. Compared lower-cased.
ALLOWED_TABLE_FUNCTIONS = frozenset({
    "numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "generateseries", "primes", "values",
    "view", "null", "generaterandom", "merge",
})
# Keywords refused anywhere outside strings and comments.
FORBIDDEN_KEYWORDS = {
    "OUTFILE": "INTO OUTFILE writes files on the server",
    "INFILE": "FROM INFILE reads files on the server",
    "SETTINGS": "a SETTINGS clause could lift the result and time limits; they are the server's",
}


class SqlRefused(ValueError):
    """The statement is not admitted; the message says why, in one line."""


class Kind(StrEnum):
    WORD = "word"          # bare word: keyword, identifier, function name
    QUOTED = "quoted"      # "identifier" or `identifier`
    STRING = "string"      # 'literal' or $tag$heredoc$tag$
    NUMBER = "number"
    PUNCT = "punct"


@dataclass(frozen=True)
class Token:
    kind: Kind
    text: str  # for WORD/QUOTED: the identifier's name (unquoted); otherwise the source text
    start: int
    end: int


# ClickHouse reads `$` inside a name (x$y$ is one identifier); only a leading `$` opens a heredoc.
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_NUMBER = re.compile(r"(?:0[xX][0-9A-Fa-f_]+|0[bB][01_]+|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eEpP][+-]?\d+)?)")
_HEREDOC = re.compile(r"\$([A-Za-z0-9_]*)\$")
_UNESCAPE = re.compile(r"\\(.)", re.S)


def _quoted_end(sql: str, start: int) -> int:
    """Index just past the quoted run starting at ``start`` (backslash escapes any character, a
    doubled quote is one quote); SqlRefused when it never ends."""
    quote = sql[start]
    i = start + 1
    n = len(sql)
    while i < n:
        c = sql[i]
        if c == "\\":
            i += 2
            continue
        if c == quote:
            if i + 1 < n and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    raise SqlRefused(f"unterminated {quote} quote at position {start}")


def tokenize(sql: str) -> list[Token]:
    """The statement's tokens, comments and whitespace dropped."""
    tokens: list[Token] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i) or c == "#":
            nl = sql.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            if close < 0:
                raise SqlRefused(f"unterminated comment at position {i}")
            i = close + 2
        elif c in "'\"`":
            end = _quoted_end(sql, i)
            body = sql[i + 1:end - 1].replace(c * 2, c)
            body = _UNESCAPE.sub(lambda m: m.group(1), body)
            tokens.append(Token(Kind.STRING if c == "'" else Kind.QUOTED, body, i, end))
            i = end
        elif c == "$" and (m := _HEREDOC.match(sql, i)):
            tag = m.group(0)
            close = sql.find(tag, m.end())
            if close < 0:
                raise SqlRefused(f"unterminated heredoc {tag} at position {i}")
            tokens.append(Token(Kind.STRING, sql[m.end():close], i, close + len(tag)))
            i = close + len(tag)
        elif m := _WORD.match(sql, i):
            tokens.append(Token(Kind.WORD, m.group(0), i, m.end()))
            i = m.end()
        elif c.isdigit() or (c == "." and i + 1 < n and sql[i + 1].isdigit()):
            m2 = _NUMBER.match(sql, i)
            end = m2.end() if m2 and m2.end() > i else i + 1
            tokens.append(Token(Kind.NUMBER, sql[i:end], i, end))
            i = end
        else:
            tokens.append(Token(Kind.PUNCT, c, i, i + 1))
            i += 1
    return tokens


def forbidden_function(name: str) -> bool:
    low = name.lower()
    return low in FORBIDDEN_FUNCTIONS or (low.startswith(FORBIDDEN_PREFIXES) and low not in PURE_DESPITE_PREFIX)


@dataclass(frozen=True)
class Admitted:
    """An admitted statement: its text without a trailing FORMAT clause or semicolon, the format
    that clause named (None when there was none) and its first keyword."""

    sql: str
    fmt: str | None
    keyword: str


def admit(sql: str) -> Admitted:
    """The statement if it may run read-only on the server, else SqlRefused saying why."""
    tokens = tokenize(sql)
    while tokens and tokens[-1].kind is Kind.PUNCT and tokens[-1].text == ";":
        tokens.pop()
    if not tokens:
        raise SqlRefused("empty query")
    if any(t.kind is Kind.PUNCT and t.text == ";" for t in tokens):
        raise SqlRefused("expected exactly one statement")
    first = next((t for t in tokens if not (t.kind is Kind.PUNCT and t.text == "(")), tokens[0])
    keyword = first.text.upper() if first.kind is Kind.WORD else ""
    if keyword not in READ_ONLY_KEYWORDS:
        raise SqlRefused(f"only read-only statements ({', '.join(sorted(READ_ONLY_KEYWORDS))}) are allowed, "
                         f"got {keyword or first.text!r}")
    fmt: str | None = None
    end = len(tokens)
    if (len(tokens) >= 3 and tokens[-2].kind is Kind.WORD and tokens[-2].text.upper() == "FORMAT"
            and tokens[-1].kind in (Kind.WORD, Kind.QUOTED)):
        fmt, end = tokens[-1].text, len(tokens) - 2
    body = tokens[:end]
    for i, tok in enumerate(body):
        nxt = body[i + 1] if i + 1 < len(body) else None
        # A word after a dot is a qualified name (system.settings), never a clause.
        clause = tok.kind is Kind.WORD and not (i > 0 and body[i - 1].text == ".")
        upper = tok.text.upper()
        if clause and upper in ("OUTFILE", "INFILE"):
            raise SqlRefused(f"{upper} is refused: {FORBIDDEN_KEYWORDS[upper]}")
        if clause and upper == "SETTINGS" and nxt is not None and nxt.kind in (Kind.WORD, Kind.QUOTED) and (
                i + 2 < len(body) and body[i + 2].text == "="):
            raise SqlRefused(f"SETTINGS is refused: {FORBIDDEN_KEYWORDS[upper]}")
        if clause and upper == "FORMAT" and nxt is not None and nxt.kind in (Kind.WORD, Kind.QUOTED):
            raise SqlRefused("a FORMAT clause may only end the statement")
        called = i + 1 < len(body) and body[i + 1].kind is Kind.PUNCT and body[i + 1].text == "("
        if tok.kind in (Kind.WORD, Kind.QUOTED) and called and forbidden_function(tok.text):
            raise SqlRefused(f"function {tok.text}() is refused: it reaches files, URLs, other servers or "
                             "the shell")
        if (tok.kind in (Kind.WORD, Kind.QUOTED) and tok.text.lower() == "identifier" and i > 0
                and body[i - 1].text == ":"):
            raise SqlRefused("{name:Identifier} placeholders are refused: bound values stay values")
    return Admitted(sql[:body[-1].end].strip(), fmt, keyword)


_AST_FUNCTION = re.compile(r"^\s*Function (\S+)", re.M)
_AST_NODE = re.compile(r"^( *)(\S+)(?: (\S+))?")


def ast_function_names(explain_ast: str) -> set[str]:
    """Every function name in ClickHouse's ``EXPLAIN AST`` output (table functions included)."""
    return set(_AST_FUNCTION.findall(explain_ast))


def ast_table_functions(explain_ast: str) -> set[str]:
    """The table functions in ``EXPLAIN AST`` output: functions whose parent node (one space less
    indented) is a ``TableExpression``. Scalar functions never sit there."""
    found: set[str] = set()
    parents: list[tuple[int, str]] = []  # (depth, node) of the current line's ancestors
    for line in explain_ast.splitlines():
        m = _AST_NODE.match(line)
        if m is None:
            continue
        depth, node = len(m.group(1)), m.group(2)
        while parents and parents[-1][0] >= depth:
            parents.pop()
        if node == "Function" and m.group(3) and parents and parents[-1][1] == "TableExpression":
            found.add(m.group(3))
        parents.append((depth, node))
    return found


def check_ast(explain_ast: str) -> None:
    """SqlRefused when the engine's own parse of the statement calls a forbidden function or reads
    from a table function off the allow-list."""
    bad = sorted(name for name in ast_function_names(explain_ast) if forbidden_function(name))
    if bad:
        raise SqlRefused(f"function {bad[0]}() is refused: it reaches files, URLs, other servers or the shell")
    unlisted = sorted(n for n in ast_table_functions(explain_ast) if n.lower() not in ALLOWED_TABLE_FUNCTIONS)
    if unlisted:
        raise SqlRefused(f"table function {unlisted[0]}() is refused: only "
                         f"{', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))} may be read from")


# The engine's canonical form of one statement, asked with the statement bound as a value (a
# String parameter), so the text is parsed and printed, never run. Multi-statements fail to parse.
CANONICAL_SQL = "SELECT formatQuerySingleLine({statement:String})"

_MUST_ESCAPE = re.compile(r"([\\'`\t\n])")


def escaped(value: str) -> str:
    """``value`` in the escaped text form ClickHouse reads a bound parameter from, as
    clickhouse-connect sends it: a raw tab or newline would end the value."""
    return _MUST_ESCAPE.sub(r"\\\1", value)


class StatementError(Exception):
    """The engine could not read the statement (a syntax error, say): ClickHouse's message, without
    the ``formatQuerySingleLine`` question it was asked in."""


def unwrapped(message: str) -> str:
    """``message`` without ClickHouse's ``In scope SELECT formatQuerySingleLine(...)`` part, which
    names the guard's question rather than the caller's statement."""
    start = message.find("In scope SELECT formatQuerySingleLine(")
    if start < 0:
        return message
    name = re.search(r"\(([A-Z_]+)\)\s*$", message)
    return message[:start].rstrip(": .") + "." + (f" ({name.group(1)})" if name else "")


def vet(admitted: Admitted, canonical_of: Callable[[str], str], explain_ast: Callable[[str], str]) -> str:
    """The statement to run: the engine's own canonical reading of ``admitted``, checked again.

    ``canonical_of(text)`` answers ``CANONICAL_SQL`` with ``text`` bound as the statement;
    ``explain_ast(sql)`` answers ``EXPLAIN AST sql`` with the caller's parameters. The text reaches
    the engine first only as a value, so a lexing difference between the guard and ClickHouse
    cannot smuggle in a second statement or a clause the guard did not see: the canonical text has
    no comments or heredocs, is checked by the same rules, and is what runs."""
    try:
        canonical = canonical_of(admitted.sql).strip()
    except Exception as exc:
        if "formatQuerySingleLine" not in str(exc):
            raise
        raise StatementError(unwrapped(str(exc))) from None
    again = admit(canonical)
    if again.fmt is not None:
        raise SqlRefused("the engine reads a FORMAT clause inside the statement; end it with FORMAT or "
                         "use default_format")
    check_ast(explain_ast(again.sql))
    return again.sql
