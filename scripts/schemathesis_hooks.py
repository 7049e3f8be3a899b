"""Schemathesis hooks for scripts/schemathesis.sh.

OpenAPI cannot say that a blob's key is the MD5 of its body, nor that a
Content-MD5 header is the base64 of that same digest. Left alone, every
schema-valid upload that Schemathesis makes up would be refused with 400
`digest_mismatch`, and none would ever be stored, so the stateful phase could
never GET, HEAD or DELETE a blob it wrote. This hook makes the one constraint
the schema cannot express hold for the positive cases: it derives the key (and
a Content-MD5 the case carries) from the generated body, in every phase.
Negative cases are left as they were generated.
"""

import base64
import hashlib

import schemathesis

UPLOADS = {("PUT", "/blobs/{md5}"), ("POST", "/blobs/{md5}"), ("POST", "/blobs")}


def _body_bytes(body):
    # Schemathesis wraps generated `format: binary` bytes in a `str` subclass
    # that keeps them in `.data`.
    data = getattr(body, "data", None)
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    return None


@schemathesis.hook
def map_case(context, case):
    return _consistent(case)


@schemathesis.hook
def before_add_examples(context, examples):
    # The examples phase (cases built from the schema's `example`s) runs no map_case.
    examples[:] = [_consistent(case) for case in examples]


def _consistent(case):
    if (case.method.upper(), case.path) not in UPLOADS:
        return case
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return case
    data = _body_bytes(case.body)
    if data is None:
        return case
    digest = hashlib.md5(data).digest()
    if "md5" in (case.path_parameters or {}):
        case.path_parameters = {**case.path_parameters, "md5": digest.hex()}
    names = [name for name in (case.headers or {}) if name.lower() == "content-md5"]
    if names:
        headers = dict(case.headers)
        for name in names:
            headers[name] = base64.b64encode(digest).decode("ascii")
        case.headers = headers
    return case
