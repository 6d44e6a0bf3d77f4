"""CNI errors: the spec's error codes and the one exception every CNI path raises.

A `CniError` becomes the spec's error object `{"cniVersion","code","msg","details"}` on the
plugin's stdout (upstream `pkg/skel` prints it there and exits 1). Codes 1-11 are the spec's;
999 is the Go library's "unknown" code, used for kernel and I/O failures that have no
better-fitting number.
"""

from __future__ import annotations

from typing import Any

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
TRY_AGAIN_LATER = 11
UNKNOWN = 999


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg if not details else f"{msg}: {details}")
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out
