"""The SQL guard: admits one read-only SELECT over a topic's tables, and nothing else, with a row limit applied.

The SQL is parsed with sqlglot in the connection's dialect and checked on the tree, not on the text:

- exactly one statement, and it is a query (SELECT, set operations, CTEs that only read);
- no node anywhere that writes or changes the session (INSERT/UPDATE/DELETE/MERGE, DDL, SELECT INTO,
  FOR UPDATE, COPY, ATTACH, PRAGMA, SET, INSTALL/LOAD, CALL, EXPORT, ...), including inside a CTE;
- every table is one of `allowed_tables` (or a CTE visible where it is used), so system catalogs
  (`information_schema`, `pg_catalog`, `sqlite_master`, `duckdb_settings()`) are out;
- no table functions or file/network readers (`read_csv`, `glob`, `read_text`, `pg_read_file`, `dblink`,
  `query()`): a function sqlglot does not know is refused unless it is on a short list of harmless ones;
- no control or invisible Unicode characters (zero-width, bidi overrides), which hide what a reader sees.

The connection is read-only as well (`connect.py`): the guard is the first line, not the only one.
"""

from __future__ import annotations

import re
import unicodedata

import sqlglot
from sqlglot import exp

from conveyor.errors import ValidationError

MAX_SQL_CHARS = 20_000
MAX_NODES = 5_000
# sqlglot parses and prints recursively: ~40 nested parentheses already exhaust Python's default recursion limit.
# Deeper brackets are refused before parsing (cheap, and a clear reason); other deep nesting (NOT NOT ..., nested
# CASE) is caught as RecursionError wherever sqlglot runs.
MAX_NESTING = 24
NESTED_TOO_DEEPLY = "the SQL is nested too deeply"


class SqlRefused(ValidationError):
    """SQL the guard will not run (not a single read-only SELECT over the allowed tables); the API answers 422."""

    code = "sql_refused"


def _classes(*names: str) -> tuple[type[exp.Expr], ...]:
    return tuple(getattr(exp, n) for n in names if isinstance(getattr(exp, n, None), type))


# Nodes that write, change the session or reach outside the database, wherever they appear in the tree.
_FORBIDDEN_NODES = _classes(
    "Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "AlterColumn", "TruncateTable", "Command",
    "Copy", "Into", "Lock", "Pragma", "Set", "SetItem", "Use", "Attach", "Detach", "Install", "Export", "Transaction",
    "Commit", "Rollback", "Describe", "Show", "Summarize", "Analyze", "Execute", "Cache", "Uncache", "Refresh",
    "LoadData", "Grant", "Revoke", "Comment", "Kill", "ReadCSV", "ReadParquet", "Placeholder",
)  # fmt: skip

# Functions sqlglot parses as `Anonymous` (it has no class for them) that only compute on their arguments.
_SAFE_ANONYMOUS = frozenset(
    {
        "strftime", "strptime", "date", "datetime", "julianday", "unixepoch", "time", "printf", "format",
        "date_part", "datepart", "datediff", "date_diff", "date_add", "date_sub", "make_date", "last_day",
        "dayname", "monthname", "yearweek", "isodow", "dayofweek", "dayofmonth", "dayofyear", "weekofyear",
        "epoch", "epoch_ms", "to_char", "to_date", "to_timestamp", "age", "justify_days", "extract",
        "round", "floor", "ceil", "ceiling", "abs", "sign", "sqrt", "power", "pow", "exp", "ln", "log", "log10",
        "log2", "mod", "greatest", "least", "trunc", "nullif", "coalesce", "ifnull", "nvl", "iif", "typeof",
        "lower", "upper", "length", "trim", "ltrim", "rtrim", "substr", "substring", "replace", "instr",
        "concat", "concat_ws", "left", "right", "lpad", "rpad", "initcap", "split_part", "strpos", "position",
        "string_agg", "group_concat", "listagg", "median", "mode", "quantile", "quantile_cont", "quantile_disc",
        "percentile_cont", "percentile_disc", "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop",
        "var_samp", "corr", "covar_pop", "covar_samp", "arg_max", "arg_min", "max_by", "min_by", "bool_and",
        "bool_or", "every", "count_if", "countif", "sum_if", "first", "last", "any_value", "row_number", "rank",
        "dense_rank", "ntile", "lag", "lead", "first_value", "last_value", "nth_value", "percent_rank",
        "cume_dist", "fsum", "favg", "total", "list", "array_agg", "date_trunc", "datetrunc", "time_bucket",
    }
)  # fmt: skip

_BAD_CATEGORIES = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}

# Functions that build a value as large as a number they are given. DuckDB's memory_limit does not count one
# value's allocation (`repeat('a', 1500000000)` took 1.5 GB of the server's memory for 26 s), so the sizes must be
# whole-number literals up to MAX_GENERATED. A format string's width (`printf('%999999999d', 1)`) likewise.
MAX_GENERATED = 10_000
_SIZE_ARGS: dict[str, tuple[str, ...]] = {
    "Repeat": ("times",),
    "Pad": ("expression",),
    "Space": ("this",),
    "GenerateSeries": ("start", "end", "step"),
}
_FORMAT_FUNCTIONS = frozenset({"printf", "format"})
_BIG_WIDTH = re.compile(r"\d{6,}|\*")


def guard_sql(sql: str, *, dialect: str, allowed_tables: set[str], max_rows: int) -> str:
    """Returns `sql` as one read-only SELECT over `allowed_tables` with a LIMIT of at most `max_rows`.

    Raises SqlRefused, with the reason, for anything else.
    """
    if max_rows < 1:
        raise ValidationError("max_rows must be at least 1")
    _check_text(sql)
    try:
        return _guard_parsed(sql, dialect, allowed_tables, max_rows)
    except RecursionError:
        raise SqlRefused(NESTED_TOO_DEEPLY) from None


MAX_TREE_DEPTH = 100  # a compiled query is ~10 deep; NOT NOT … or nested CASE past this is refused, whatever the
# recursion limit of the process (some libraries raise it, and then sqlglot parses what it otherwise cannot)


def tree_depth(tree: exp.Expr) -> int:
    """The depth of a parsed SQL tree, counted without recursion."""
    deepest = 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_TREE_DEPTH:  # past the bound the answer is known: stop walking
            stack.extend((child, depth + 1) for child in node.iter_expressions())
    return deepest


def nesting_depth(sql: str) -> int:
    """The deepest nesting of brackets in `sql`, outside quoted strings and identifiers."""
    depth = deepest = 0
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in "'\"`":
            quote = ch
        elif ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth = max(0, depth - 1)
    return deepest


def _guard_parsed(sql: str, dialect: str, allowed_tables: set[str], max_rows: int) -> str:
    if nesting_depth(sql) > MAX_NESTING:
        raise SqlRefused(f"{NESTED_TOO_DEEPLY} (over {MAX_NESTING} levels of brackets)")
    try:
        statements = sqlglot.parse(sql, read=dialect)
    except sqlglot.errors.SqlglotError as err:
        raise SqlRefused(f"the SQL does not parse: {str(err).splitlines()[0][:300]}") from None
    statements = [s for s in statements if s is not None]
    if len(statements) != 1:
        raise SqlRefused(f"exactly one statement is allowed, got {len(statements)}")
    tree = statements[0]
    if not isinstance(tree, exp.Query):
        raise SqlRefused(f"only a SELECT is allowed, not {type(tree).__name__.upper()}")
    if tree_depth(tree) > MAX_TREE_DEPTH:
        raise SqlRefused(NESTED_TOO_DEEPLY)
    nodes = list(tree.walk())
    if len(nodes) > MAX_NODES:
        raise SqlRefused(f"the SQL is too complex (over {MAX_NODES} parts)")
    allowed = {t.lower() for t in allowed_tables}
    for node in nodes:
        _check_node(node, allowed)
    _apply_limit(tree, max_rows)
    return tree.sql(dialect=dialect, comments=False)


def check_expression(tree: exp.Expr) -> str | None:
    """Why a model's own SQL expression (a field, a join condition) is unsafe, or None when it only computes.

    The same rules as for queries, with no tables at all: fields and joins name columns, never tables.
    """
    if tree_depth(tree) > MAX_TREE_DEPTH:
        return NESTED_TOO_DEEPLY
    try:
        for node in tree.walk():
            _check_node(node, set())
    except SqlRefused as refused:
        return refused.message
    except RecursionError:
        return NESTED_TOO_DEEPLY
    return None


def _check_text(sql: str) -> None:
    if not sql.strip():
        raise SqlRefused("the SQL is empty")
    if len(sql) > MAX_SQL_CHARS:
        raise SqlRefused(f"the SQL is over {MAX_SQL_CHARS} characters")
    for ch in sql:
        if ch in "\t\n\r":
            continue
        category = unicodedata.category(ch)
        if category in _BAD_CATEGORIES or (category == "Zs" and ch != " "):
            raise SqlRefused(f"the SQL holds an invisible or control character U+{ord(ch):04X}")


def _check_node(node: exp.Expr, allowed: set[str]) -> None:
    if isinstance(node, _FORBIDDEN_NODES):
        raise SqlRefused(f"{type(node).__name__.upper()} is not allowed: only reading queries run")
    if isinstance(node, exp.Table):
        _check_table(node, allowed)
    elif isinstance(node, exp.Func) and type(node).__name__ in _SIZE_ARGS:
        _check_sizes(node)
    elif isinstance(node, exp.Anonymous | exp.Format):
        name = node.sql_name().lower() if isinstance(node, exp.Format) else str(node.name).lower()
        if name not in _SAFE_ANONYMOUS:
            raise SqlRefused(f"function {name}() is not allowed")
        if name in _FORMAT_FUNCTIONS:
            _check_format(name, node)
    elif isinstance(node, exp.Func) and isinstance(node.parent, exp.Table | exp.From | exp.Join | exp.Lateral):
        raise SqlRefused(f"table function {node.sql_name().lower()}() is not allowed")


def _check_sizes(node: exp.Func) -> None:
    for arg in _SIZE_ARGS[type(node).__name__]:
        value = node.args.get(arg)
        if value is None:
            continue
        number = _literal_int(value)
        if number is None or abs(number) > MAX_GENERATED:
            name = ("lpad" if node.args.get("is_left") else "rpad") if isinstance(node, exp.Pad) else node.sql_name()
            raise SqlRefused(f"{name.lower()}() takes a size that must be a whole number up to "
                             f"{MAX_GENERATED}")  # fmt: skip


def _check_format(name: str, node: exp.Func) -> None:
    pattern = node.this if isinstance(node, exp.Format) else (node.expressions or [None])[0]
    if not (isinstance(pattern, exp.Literal) and pattern.is_string):
        raise SqlRefused(f"{name}() needs a literal format string")
    if _BIG_WIDTH.search(pattern.this):
        raise SqlRefused(f"{name}() widths must be literal and under {MAX_GENERATED}")


def _check_table(table: exp.Table, allowed: set[str]) -> None:
    if not isinstance(table.this, exp.Identifier):
        raise SqlRefused(f"table functions are not allowed ({table.this.sql()[:80]})")
    qualified = ".".join(p.name for p in table.parts).lower()
    if table.catalog or table.db:
        if qualified not in allowed:
            raise SqlRefused(f"table {qualified!r} is not one of this topic's tables")
        return
    name = table.name.lower()
    if name in _visible_ctes(table):
        return
    if name not in allowed:
        raise SqlRefused(f"table {name!r} is not one of this topic's tables ({', '.join(sorted(allowed))})")


def _visible_ctes(table: exp.Table) -> set[str]:
    """CTE names in scope at `table`: enclosing WITHs' CTEs defined before it (itself too when recursive)."""
    names: set[str] = set()
    child: exp.Expr = table
    node = table.parent
    while node is not None:
        if isinstance(node, exp.With):
            ctes = list(node.expressions)
            index = ctes.index(child) if child in ctes else len(ctes)
            upto = index + 1 if node.args.get("recursive") else index
            names.update(c.alias_or_name.lower() for c in ctes[:upto])
        else:
            with_ = node.args.get("with_") or node.args.get("with")
            if isinstance(with_, exp.With) and with_ is not child:
                names.update(c.alias_or_name.lower() for c in with_.expressions)
        child, node = node, node.parent
    return names


def _apply_limit(tree: exp.Query, max_rows: int) -> None:
    current = tree.args.get("limit")
    if isinstance(current, exp.Limit):
        value = _literal_int(current.expression)
    elif isinstance(current, exp.Fetch):  # FETCH FIRST n ROWS ONLY: the same bound, written the standard way
        value = _literal_int(current.args.get("count"))
    else:
        value = None
    bound = value if value is not None and value <= max_rows else max_rows
    tree.set("limit", exp.Limit(expression=exp.Literal.number(bound)))


def _literal_int(node: exp.Expr | None) -> int | None:
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return int(node.this)
        except ValueError:
            return None
    return None
