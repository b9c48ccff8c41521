"""A WASI 0.3 HTTP handler in Python: the 0.3 twin of hello_py.

The worker sends the arguments as the JSON body of `POST /`: a name, or
{"name": ...}. The handler answers 200 with {"message": "Hello, <name>!"}.
`handle` is async; the body is written by a task of its own, once the
host has the response and reads it.
"""

import json

import componentize_py_async_support
import wit_world
from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.wasi_http_types import Fields, Request, Response


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        body = await read_all(request)
        try:
            args = json.loads(body)
        except ValueError:
            args = None
        if isinstance(args, dict):
            args = args.get("name")
        name = args if isinstance(args, str) else "World"
        answer = json.dumps({"message": f"Hello, {name}!"}).encode()

        writer, contents = wit_world.byte_stream()
        _, trailers = wit_world.result_option_wasi_http_types_fields_wasi_http_types_error_code_future(
            lambda: Ok(None)
        )
        headers = Fields.from_list([("content-type", b"application/json")])
        response, _ = Response.new(headers, contents, trailers)
        componentize_py_async_support.spawn(write_all(writer, answer))
        return response


async def read_all(request: Request) -> bytes:
    _, done = wit_world.result_unit_wasi_http_types_error_code_future(lambda: Ok(None))
    reader, _ = Request.consume_body(request, done)
    body = b""
    with reader:
        while not reader.writer_dropped:
            body += await reader.read(16 * 1024)
    return body


async def write_all(writer, data: bytes) -> None:
    with writer:
        await writer.write_all(data)
