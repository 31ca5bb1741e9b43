"""Schemathesis hooks of scripts/fuzz.sh (loaded through `hooks` in scripts/schemathesis.toml).

openapi.yaml states every input rule of the API that JSON Schema can state, so Schemathesis'
`positive_data_acceptance` check (ST202: a schema-valid request must not be rejected) holds
for every operation, with four exceptions in scripts/schemathesis.toml: `create_migration`,
`run_precheck`, `list_migrations` and `create_batch` (whose items are create bodies) may answer
a schema-valid request 422, because a few rules are beyond JSON Schema. The check below keeps that allowance to exactly those rules: a 422 to a
schema-valid request on these operations must name nothing else.
"""

import re

import schemathesis

# The libphonenumber rules a pattern cannot state: whether a number lies in a range its
# country assigned to phone lines (messages of `E164::parse`, `src/domain/values.rs`).
PHONE = ("not a valid number for its country", "not a phone number", "not in E.164 form")

# Per operation: the JSON pointer of each rule beyond the schema, and how its message starts.
RULES_THE_SCHEMA_CANNOT_STATE = {
    "create_migration": {
        "/phone_number": PHONE,
        # A rule across two fields.
        "/destination_waba_id": ("must differ from source_waba_id",),
        # The size of the JSON text.
        "/metadata": ("at most 4 KiB of JSON",),
    },
    "run_precheck": {
        "/phone_number": PHONE,
        "/destination_waba_id": ("must differ from source_waba_id",),
    },
    "list_migrations": {
        "/query/phone_number": PHONE,
    },
    # Each item is a create body (pointers `/migrations/{index}/…`, normalised below), and a
    # number may appear once per batch (uniqueItems cannot say "unique by one property").
    "create_batch": {
        "/migrations/*/phone_number": PHONE + (re.compile(r"\S+ is also item \d+ of this batch"),),
        "/migrations/*/destination_waba_id": ("must differ from source_waba_id",),
        "/migrations/*/metadata": ("at most 4 KiB of JSON",),
        # A `text/csv` body is a string to JSON Schema: its header and rows (pointers
        # `/rows/{row}` and `/rows/{row}/{column}`) are all beyond it.
        "/rows/*": (re.compile(r"(?s).*"),),
    },
}

# An item's index in a batch's pointer, and a CSV row's cell.
ITEM = re.compile(r"^/migrations/\d+/")
ROW = re.compile(r"^/rows/\d+(/.*)?$")

# Problems without `errors[]` that depend on earlier requests, not on this one.
STATEFUL_CODES = {
    # The same Idempotency-Key with another body.
    "create_migration": ("idempotency_key_reused",),
    "create_batch": ("idempotency_key_reused",),
}


def allowed(rules, error):
    pointer = ROW.sub("/rows/*", ITEM.sub("/migrations/*/", str(error.get("pointer", ""))))
    message = str(error.get("message", ""))
    rule = rules.get(pointer)
    return rule is not None and any(
        p.match(message) if isinstance(p, re.Pattern) else message.startswith(p) for p in rule
    )


@schemathesis.check
def rejected_only_for_rules_the_schema_cannot_state(ctx, response, case):
    """A 422 to a schema-valid request names only rules the schema cannot state."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    operation = case.operation.definition.raw.get("operationId")
    rules = RULES_THE_SCHEMA_CANNOT_STATE.get(operation)
    if rules is None:
        # Elsewhere positive_data_acceptance already reports the 422 (ST202).
        return None
    try:
        problem = response.json()
    except ValueError:
        raise AssertionError("422 without a JSON problem body") from None
    code = problem.get("code")
    if code in STATEFUL_CODES.get(operation, ()):
        return None
    errors = problem.get("errors") or []
    if code != "validation_failed" or not errors:
        raise AssertionError(f"Schema-valid request rejected with 422 `{code}`")
    stray = [f"{e.get('pointer')}: {e.get('message')}" for e in errors if not allowed(rules, e)]
    if stray:
        raise AssertionError(
            "Schema-valid request rejected for a rule the schema could state:\n  "
            + "\n  ".join(stray)
        )
    return None
