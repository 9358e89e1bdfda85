"""Schemathesis hooks for test_service_schema.py's live run (loaded through SCHEMATHESIS_HOOKS)."""
import schemathesis


@schemathesis.hook
def filter_case(context, case) -> bool:
    """Skip requests naming two different streams (?stream= and X-Stream-Id): the server refuses them with
    a 422 saying so, a rule between two parameters that OpenAPI has no way to state, so schemathesis
    would take them for valid requests wrongly refused."""
    query = (case.query or {}).get("stream")
    header = {k.lower(): v for k, v in (case.headers or {}).items()}.get("x-stream-id")
    return query is None or header is None or str(query) == str(header)
