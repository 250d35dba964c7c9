"""The control protocol between ``policyctl`` (or policyd-milter) and the daemon.

One JSON object per line (:mod:`.framing`)::

    request  {"v": 1, "cmd": "explain", "args": {"domain": "example.com"}}
    reply    {"v": 1, "ok": true, "result": ...}
             {"v": 1, "ok": false, "error": "no override for example.com", "code": "notfound"}

Requests are typed values (:mod:`.requests`), and so are results (:mod:`.results`, with the
evidence parts in :mod:`.evidence` and the report in :mod:`.report`): the one schema of
the ``policyctl --json`` documents described in man/policyctl.8. The framing names and the
requests are re-exported here, so ``control.Explain`` and ``control.reply_decoder`` work.
"""

from policyd.codec.control import evidence, report, results
from policyd.codec.control.framing import (
    MAX_ERROR,
    MAX_LINE,
    NEED_DATA,
    VERSION,
    ControlProtocolError,
    ErrorCode,
    Failure,
    JsonObject,
    JsonValue,
    LineDecoder,
    Ok,
    Reply,
    decode_reply,
    encode_reply,
    reply_decoder,
)
from policyd.codec.control.requests import (
    DEFAULT_REPORT_SINCE,
    MAX_COMMENT,
    MAX_DURATION,
    MAX_WARM_DOMAINS,
    REQUESTS,
    Check,
    Command,
    Explain,
    Flush,
    OverrideDel,
    OverrideList,
    OverrideSet,
    Probe,
    Reload,
    Report,
    Request,
    RequestType,
    Status,
    Warm,
    decode_request,
    encode_request,
    parse_destination,
    parse_policy,
    request_decoder,
)

__all__ = [
    "DEFAULT_REPORT_SINCE",
    "MAX_COMMENT",
    "MAX_DURATION",
    "MAX_ERROR",
    "MAX_LINE",
    "MAX_WARM_DOMAINS",
    "NEED_DATA",
    "REQUESTS",
    "VERSION",
    "Check",
    "Command",
    "ControlProtocolError",
    "ErrorCode",
    "Explain",
    "Failure",
    "Flush",
    "JsonObject",
    "JsonValue",
    "LineDecoder",
    "Ok",
    "OverrideDel",
    "OverrideList",
    "OverrideSet",
    "Probe",
    "Reload",
    "Reply",
    "Report",
    "Request",
    "RequestType",
    "Status",
    "Warm",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "evidence",
    "parse_destination",
    "parse_policy",
    "reply_decoder",
    "report",
    "request_decoder",
    "results",
]
