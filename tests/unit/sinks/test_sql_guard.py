"""The read-only guard of live SQL and `creditflow query`: what passes, and every way around it
that we know of."""

from __future__ import annotations

import pytest

from sinks.sql_guard import (
    SqlRefused,
    StatementError,
    admit,
    ast_function_names,
    ast_table_functions,
    check_ast,
    escaped,
    tokenize,
    unwrapped,
    vet,
)


@pytest.mark.parametrize("sql", [
    "SELECT 1", "  with x AS (SELECT 1) SELECT * FROM x", "-- hi\nSHOW TABLES", "(SELECT 1)", "DESCRIBE events",
    "EXPLAIN SELECT 1", "SELECT 1;", "EXISTS TABLE events", "SELECT name, value, readonly FROM system.settings",
    "SELECT 'file(\\'/etc/passwd\\')' AS s", "SELECT format('{} {}', 'a', 'b')", "SELECT count() FROM numbers(10)",
    "SELECT * FROM v_credits_by_feature WHERE day >= {since:Date}", "SELECT $$file('x')$$",
    "SELECT 1 /* url('http://x') */", "SELECT `url` FROM t", "SELECT input_tokens FROM events",
    "SELECT URLHierarchy('https://a.example/b/c')", "SELECT kafkaMurmurHash('acct-1') % 6",
])
def test_read_only_statements_pass(sql: str) -> None:
    assert admit(sql).sql


def test_a_trailing_format_clause_is_taken_off_and_named() -> None:
    admitted = admit("SELECT 1 AS x\n FORMAT Native")
    assert (admitted.sql, admitted.fmt, admitted.keyword) == ("SELECT 1 AS x", "Native", "SELECT")
    assert admit("SELECT 1 FORMAT JSON;").fmt == "JSON"
    assert admit("SELECT 1").fmt is None


@pytest.mark.parametrize("sql", [
    "INSERT INTO t VALUES (1)", "DROP TABLE events", "SELECT 1;\nDROP TABLE events;", "", " ; ",
    "ALTER TABLE events DELETE WHERE 1", "/* SELECT */ TRUNCATE events", "SYSTEM SHUTDOWN",
    "SET readonly = 0", "CREATE TABLE x ENGINE = File(TSV) AS SELECT 1", "KILL QUERY WHERE 1",
])
def test_statements_that_write_are_refused(sql: str) -> None:
    with pytest.raises(SqlRefused):
        admit(sql)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT * FROM FiLe('/etc/passwd', 'LineAsString')",
    "SELECT * FROM file /* hide */ ('/etc/passwd', 'LineAsString')",
    "SELECT * FROM file -- hide\n ('/etc/passwd', 'LineAsString')",
    "SELECT * FROM file # hide\n ('/etc/passwd', 'LineAsString')",
    "SELECT * FROM `file`('/etc/passwd', 'LineAsString')",
    'SELECT * FROM "FILE"(\'/etc/passwd\', \'LineAsString\')',
    "SELECT file('/etc/passwd')",
    "SELECT 1 UNION ALL SELECT length(file('/etc/passwd'))",
    "SELECT * FROM url('http://127.0.0.1:1/', 'CSV', 'a String')",
    "SELECT * FROM s3('http://127.0.0.1:1/b/k', 'CSV', 'a String')",
    "SELECT * FROM icebergS3('http://127.0.0.1:1/b/k')",
    "SELECT * FROM hdfs('hdfs://x/y', 'TSV', 'a String')",
    "SELECT * FROM remote('127.0.0.1:9000', system.one)",
    "SELECT * FROM remoteSecure('127.0.0.1:9440', system.one)",
    "SELECT * FROM cluster('default', system.one)",
    "SELECT * FROM mysql('h:3306', 'db', 't', 'u', 'p')",
    "SELECT * FROM postgresql('h:5432', 'db', 't', 'u', 'p')",
    "SELECT * FROM jdbc('jdbc:x', 't')", "SELECT * FROM odbc('DSN=x', 't')",
    "SELECT * FROM executable('cat /etc/passwd', 'TSV', 'a String')",
    "SELECT * FROM input('a String')", "SELECT * FROM azureBlobStorage('x', 'c', 'b')",
    "SELECT * FROM sqlite('/etc/x.db', 't')", "DESCRIBE file('/etc/passwd')",
    "EXPLAIN SELECT * FROM file('/etc/passwd')",
    "SELECT 1 INTO OUTFILE '/tmp/x'", "SELECT 1 into /*x*/ outfile '/tmp/x'",
    "SELECT 1 SETTINGS max_result_rows = 0", "SELECT 1 settings `readonly`=0",
    "SELECT 1 FORMAT TSV UNION ALL SELECT 2",
    "SELECT * FROM {t:Identifier}", "SELECT {f: identifier}('x')",
    "SELECT 'unterminated", "SELECT 1 /* unterminated", "SELECT $a$ never closed",
    # ClickHouse nests /* */ comments; the guard ends a comment at the first */ and so sees more code.
    "SELECT 1 /* /* */ file('/etc/passwd') */",
    # ClickHouse's AI functions call an LLM provider's endpoint.
    "SELECT aiGenerate('hi')", "SELECT aiEmbed('x', map('credentials', 'c'))", "SELECT AIclassify('x', ['a'])",
])
def test_ways_out_are_refused(sql: str) -> None:
    with pytest.raises(SqlRefused):
        admit(sql)


def test_the_refusal_says_which_function_and_why() -> None:
    with pytest.raises(SqlRefused, match=r"function FiLe\(\) is refused: it reaches files"):
        admit("SELECT * FROM FiLe /**/ ('/etc/passwd')")


def test_quoted_names_and_strings_are_unquoted_like_clickhouse() -> None:
    texts = [(t.kind.value, t.text) for t in tokenize("SELECT `a``b`, \"c\\\"d\", 'e''f', 'g\\'h'")]
    assert texts == [("word", "SELECT"), ("quoted", "a`b"), ("punct", ","), ("quoted", 'c"d'), ("punct", ","),
                     ("string", "e'f"), ("punct", ","), ("string", "g'h")]


EXPLAIN_AST = """SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Function count (children 1)
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      Function FiLe (children 1)
       ExpressionList (children 1)
        Literal 'x'
"""


def test_the_engines_own_parse_is_checked_too() -> None:
    assert ast_function_names(EXPLAIN_AST) == {"count", "FiLe"}
    with pytest.raises(SqlRefused, match="FiLe"):
        check_ast(EXPLAIN_AST)
    check_ast(EXPLAIN_AST.replace("FiLe", "numbers"))


# ClickHouse reads `$` inside an identifier (x$y$ is one name); a guard that read `$y$` as the start
# of a heredoc string would hide everything up to the next `$y$` from itself.
@pytest.mark.parametrize("sql", [
    "SELECT 1 AS x$y$ INTO OUTFILE '/tmp/x' FORMAT TSV -- $y$",
    "SELECT 1 AS x$y$; SELECT file('/etc/passwd') -- $y$",
    "SELECT 1 AS x$y$, file('/etc/passwd') AS z$y$",
    "SELECT 1 AS x$y$ SETTINGS readonly = 0 -- $y$",
])
def test_dollar_signs_inside_names_hide_nothing(sql: str) -> None:
    with pytest.raises(SqlRefused):
        admit(sql)


def test_a_dollar_sign_inside_a_name_is_part_of_the_name() -> None:
    assert [t.text for t in tokenize("SELECT x$y$ FROM t")] == ["SELECT", "x$y$", "FROM", "t"]
    assert [(t.kind.value, t.text) for t in tokenize("SELECT $y$a$y$")] == [("word", "SELECT"), ("string", "a")]


def _table_function_ast(name: str) -> str:
    return EXPLAIN_AST.replace("FiLe", name)


@pytest.mark.parametrize("name", ["python", "Python", "arrowstream", "bigquery", "eval", "format", "loop",
                                  "fuzzJSON", "timeSeriesData", "prometheusQuery", "somethingNewInTheNextRelease"])
def test_table_functions_off_the_allow_list_are_refused(name: str) -> None:
    with pytest.raises(SqlRefused, match=f"table function {name}\\(\\)"):
        check_ast(_table_function_ast(name))


@pytest.mark.parametrize("name", ["numbers", "numbers_mt", "zeros", "generate_series", "values", "view", "null",
                                  "generateRandom", "merge", "primes"])
def test_table_functions_on_the_allow_list_pass(name: str) -> None:
    check_ast(_table_function_ast(name))


def test_a_scalar_function_is_not_taken_for_a_table_function() -> None:
    scalar = """SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Function formatDateTime (children 1)
     ExpressionList (children 2)
      Function now (children 1)
      Literal '%F'
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      TableIdentifier events
"""
    check_ast(scalar)
    assert ast_table_functions(scalar) == set()
    assert ast_table_functions(_table_function_ast("view")) == {"view"}


class FakeEngine:
    """Answers vet()'s two questions as ClickHouse would, recording them."""

    def __init__(self, canonical: str, ast: str = EXPLAIN_AST.replace("FiLe", "numbers")) -> None:
        self.canonical, self.ast = canonical, ast
        self.asked: list[tuple[str, str]] = []

    def canonical_of(self, statement: str) -> str:
        self.asked.append(("canonical", statement))
        return self.canonical + "\n"

    def explain_ast(self, sql: str) -> str:
        self.asked.append(("explain", sql))
        return self.ast


def _vet(sql: str, engine: FakeEngine) -> str:
    return vet(admit(sql), engine.canonical_of, engine.explain_ast)


def test_vet_runs_the_engines_own_reading_of_the_statement() -> None:
    engine = FakeEngine("SELECT count() FROM numbers(3) WHERE number > {n:UInt8}")
    sql = _vet("select count()\nfrom numbers(3) where number > {n:UInt8} -- hi", engine)
    assert sql == "SELECT count() FROM numbers(3) WHERE number > {n:UInt8}"
    # The statement reaches the engine as a value first; then its canonical form is explained.
    assert engine.asked == [("canonical", "select count()\nfrom numbers(3) where number > {n:UInt8}"),
                            ("explain", sql)]


def test_a_bound_statement_is_escaped_as_clickhouse_reads_parameters() -> None:
    assert escaped("a\tb\nc\\d'e`f") == "a\\\tb\\\nc\\\\d\\'e\\`f"
    assert escaped("SELECT 1") == "SELECT 1"


@pytest.mark.parametrize("canonical", [
    "SELECT 1 AS `x$y$` INTO OUTFILE '/tmp/x' FORMAT TSV", "SELECT 1 FORMAT TSV", "SELECT file('/etc/passwd')",
    "SELECT 1 SETTINGS readonly = 0", "INSERT INTO t VALUES (1)",
])
def test_vet_refuses_what_the_engine_reads_differently(canonical: str) -> None:
    with pytest.raises(SqlRefused):
        _vet("SELECT 1", FakeEngine(canonical))


def test_vet_refuses_a_table_function_the_engine_finds() -> None:
    with pytest.raises(SqlRefused, match="python"):
        _vet("SELECT * FROM t", FakeEngine("SELECT * FROM t", _table_function_ast("python")))


def test_a_statement_the_engine_cannot_read_is_reported_in_its_own_words() -> None:
    def canonical_of(statement: str) -> str:
        raise RuntimeError("Code: 62. DB::Exception: Syntax error: failed at position 18 (end of query): . "
                           "Expected one of: table: In scope SELECT formatQuerySingleLine('SELECT 1 FROM'). "
                           "(SYNTAX_ERROR)")

    with pytest.raises(StatementError) as err:
        vet(admit("SELECT 1 FROM"), canonical_of, lambda sql: "")
    assert str(err.value) == ("Code: 62. DB::Exception: Syntax error: failed at position 18 (end of query): . "
                              "Expected one of: table. (SYNTAX_ERROR)")
    assert unwrapped("Code: 60. DB::Exception: Unknown table. (UNKNOWN_TABLE)") == \
        "Code: 60. DB::Exception: Unknown table. (UNKNOWN_TABLE)"
