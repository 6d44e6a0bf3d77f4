"""A response body written as it is produced (a watch, a streamed LIST, a followed log): how
it is framed for the client that asked.

What belongs here: `streamed_response`, the one answer to "how do I send this client a body
whose length I do not know yet", for every aiohttp server in podnet (the API server and the
node agent).

Invariants:
- HTTP/1.1 clients get chunked transfer encoding, so the connection stays usable afterwards.
- HTTP/1.0 has no chunked encoding (RFC 1945; aiohttp refuses it with a RuntimeError, which a
  client saw as a 500): those clients get the bytes as they are, and the body ends where the
  server closes the connection, as Go's net/http answers them.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import HttpVersion11, web


def streamed_response(
    request: web.BaseRequest, headers: Mapping[str, str], status: int = 200
) -> web.StreamResponse:
    """An unprepared response for a body of unknown length, framed for `request`'s version."""
    response = web.StreamResponse(status=status, headers=headers)
    if request.version >= HttpVersion11:
        response.enable_chunked_encoding()
    else:  # the body ends where the connection closes
        response.force_close()
    return response
