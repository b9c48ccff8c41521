// A test guest, not an example: functions/js/hello_js (an HTTP component,
// exporting wasi:http/incoming-handler, built by componentize-js: the
// worker sends `POST /` with the arguments, JSON, as the body, and takes the
// body of a 2xx answer as the result) with the hooks the tests call.
//
// * "Ada" or {"name": "Ada"} answers {"message": "Hello, Ada!"}; anything
//   else {"message": "Hello, World!"}, as the example does;
// * {"status": n} answers status n with a line of text as the body
//   ({"status": n, "body": "..."} with that text instead);
// * {"panic": "why"} throws an error with that message: the engine prints
//   it on stderr and traps;
// * {"print": "text"} writes the text to stdout (console.log) and stderr
//   (console.error), then answers as for a name;
// * {"spin": true} loops forever;
// * {"sleep_ms": n} waits n milliseconds (setTimeout), then answers
//   {"slept_ms": n};
// * {"grow_mb": n} allocates and fills n MiB, then answers {"grew_mb": n};
// * {"fetch": URL} sends `GET URL` with the global fetch (through
//   wasi:http/outgoing-handler) and answers {"status": S, "body": B}, or
//   502 with the error as text.
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

/** Sends the response: status, content-type, and the text as its body. */
function respond(responseOut, status, contentType, text) {
  const headers = Fields.fromList([['content-type', encoder.encode(contentType)]]);
  const response = new OutgoingResponse(headers);
  response.setStatusCode(status);
  const body = response.body();
  ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
  const stream = body.write();
  const bytes = encoder.encode(text);
  // blocking-write-and-flush takes at most 4096 bytes at a time
  for (let at = 0; at < bytes.length; at += 4096) {
    stream.blockingWriteAndFlush(bytes.subarray(at, at + 4096));
  }
  stream[Symbol.dispose]?.();
  OutgoingBody.finish(body, undefined);
}

function json(responseOut, value) {
  respond(responseOut, 200, 'application/json', JSON.stringify(value));
}

export const incomingHandler = {
  async handle(request, responseOut) {
    let args = null;
    try {
      args = JSON.parse(readBody(request));
    } catch {
      // not JSON: answer as for no name
    }
    const hooks = args !== null && typeof args === 'object' ? args : {};

    if (typeof hooks.status === 'number') {
      const text = typeof hooks.body === 'string'
        ? hooks.body
        : `answering with status ${hooks.status}, as asked\n`;
      respond(responseOut, hooks.status, 'text/plain; charset=utf-8', text);
      return;
    }
    if (typeof hooks.panic === 'string') {
      throw new Error(hooks.panic);
    }
    if (typeof hooks.print === 'string') {
      console.log(hooks.print);
      console.error(hooks.print);
    }
    if (hooks.spin === true) {
      for (;;) {
        // no way out
      }
    }
    if (typeof hooks.sleep_ms === 'number') {
      await new Promise((resolve) => setTimeout(resolve, hooks.sleep_ms));
      json(responseOut, { slept_ms: hooks.sleep_ms });
      return;
    }
    if (typeof hooks.grow_mb === 'number') {
      const block = new Uint8Array(hooks.grow_mb * 1024 * 1024).fill(1);
      json(responseOut, { grew_mb: block.length / (1024 * 1024) });
      return;
    }
    if (typeof hooks.fetch === 'string') {
      let answer;
      try {
        const response = await fetch(hooks.fetch);
        answer = { status: response.status, body: await response.text() };
      } catch (e) {
        respond(responseOut, 502, 'text/plain; charset=utf-8', String(e));
        return;
      }
      json(responseOut, answer);
      return;
    }

    const name = typeof args === 'string' ? args : typeof hooks.name === 'string' ? hooks.name : 'World';
    json(responseOut, { message: `Hello, ${name}!` });
  },
};
