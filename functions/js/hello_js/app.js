// An HTTP component (exports wasi:http/incoming-handler), built by
// componentize-js: the worker sends `POST /` with the arguments (JSON) as
// the body, and takes the body of a 2xx answer as the result.
//
// "Ada" or {"name": "Ada"} answers {"message": "Hello, Ada!"}; anything
// else {"message": "Hello, World!"}.
//
// Build it with `bash scripts/componentize js` (the tools from
// scripts/setup), or by hand, with wit/ holding world.wit and the WASI WIT
// as deps/:
//
//     componentize-js app.js --wit wit -n hello-js -o hello_js.wasm
import {
  Fields,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from 'wasi:http/types@0.2.12';

const encoder = new TextEncoder();

/** The whole body of an incoming request, as text. */
function readBody(request) {
  const body = request.consume();
  const stream = body.stream();
  const chunks = [];
  for (;;) {
    try {
      chunks.push(stream.blockingRead(65536n));
    } catch (e) {
      if (e?.payload?.tag === 'closed') break;
      throw e;
    }
  }
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    all.set(chunk, at);
    at += chunk.length;
  }
  return new TextDecoder().decode(all);
}

/** Sends a 200 response with the value as its JSON body. */
function json(responseOut, value) {
  const headers = Fields.fromList([['content-type', encoder.encode('application/json')]]);
  const response = new OutgoingResponse(headers);
  response.setStatusCode(200);
  const body = response.body();
  ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
  const stream = body.write();
  const bytes = encoder.encode(JSON.stringify(value));
  // blocking-write-and-flush takes at most 4096 bytes at a time
  for (let at = 0; at < bytes.length; at += 4096) {
    stream.blockingWriteAndFlush(bytes.subarray(at, at + 4096));
  }
  stream[Symbol.dispose]?.();
  OutgoingBody.finish(body, undefined);
}

export const incomingHandler = {
  handle(request, responseOut) {
    let args = null;
    try {
      args = JSON.parse(readBody(request));
    } catch {
      // not JSON: answer as for no name
    }
    let name = 'World';
    if (typeof args === 'string') {
      name = args;
    } else if (typeof args?.name === 'string') {
      name = args.name;
    }
    json(responseOut, { message: `Hello, ${name}!` });
  },
};
