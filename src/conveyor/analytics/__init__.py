"""Data models: a read-only connection plus a YAML semantic layer, queried through structured queries or guarded SQL.

Key contracts: `semantic.load_model` never raises for bad content (it lists every problem with its place);
`connect.run_read_only` opens every connection read-only; `guard.guard_sql` admits one read-only SELECT over
the allowed tables and applies a row limit; `query.compile_query` builds SQL with sqlglot, never by pasting values.
"""

MAX_QUESTION_CHARS = 10_000  # a question's length bound, here so the block and API need not import the pipeline
