//! A test guest, not an example: an HTTP component (it exports
//! `wasi:http/incoming-handler` and nothing else) that misbehaves as its
//! JSON input asks, for the tests of the worker's limits.
//!
//! * `{"endless_body": true}`: answers 200 and writes its body forever,
//!   64 KiB at a time, ignoring every error (a closed stream included);
//! * `{"stdout": N}`, `{"stderr": N}`: writes N bytes of 16-byte lines to
//!   that stream, handing them to the host in writes as large as it takes,
//!   then answers `"done"`;
//! * `{"raw_stderr": N}`: hands N newlines to stderr in one raw
//!   `output-stream.write`, without asking for a permit first.
use serde_json::Value;
use std::io::{Read, Write};
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Hostile);

struct Hostile;

impl wasip2::exports::http::incoming_handler::Guest for Hostile {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let input = read_body(request);
        if input["endless_body"] == Value::Bool(true) {
            endless(response_out);
        }
        if let Some(n) = input["raw_stderr"].as_u64() {
            let _ = wasip2::cli::stderr::get_stderr().write(&vec![b'\n'; n as usize]);
        }
        for (key, stream) in [("stdout", 1), ("stderr", 2)] {
            if let Some(n) = input[key].as_u64() {
                flood(stream, n as usize);
            }
        }
        answer(response_out, b"\"done\"");
    }
}

fn read_body(request: IncomingRequest) -> Value {
    let body = request.consume().expect("the request body");
    let mut bytes = Vec::new();
    {
        let mut stream = body.stream().expect("its stream");
        stream.read_to_end(&mut bytes).expect("the body read");
    }
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn endless(response_out: ResponseOutparam) -> ! {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().expect("the response body");
    ResponseOutparam::set(response_out, Ok(response));
    let mut out = body.write().expect("its stream");
    let chunk = vec![b'x'; 64 << 10];
    loop {
        // std's Write, which waits for the host's permit (not the raw
        // wasi:io write, which would trap past it)
        let _ = Write::write(&mut out, &chunk);
        let _ = Write::flush(&mut out);
    }
}

/// `n` bytes of 16-byte lines to stdout (1) or stderr (2), in as few
/// writes as the host takes.
fn flood(stream: u32, n: usize) {
    let line = b"flood line 0123\n";
    let text: Vec<u8> = line.iter().copied().cycle().take(n).collect();
    let mut out: Box<dyn Write> = if stream == 1 {
        Box::new(wasip2::cli::stdout::get_stdout())
    } else {
        Box::new(wasip2::cli::stderr::get_stderr())
    };
    let _ = out.write_all(&text);
    let _ = out.flush();
}

fn answer(response_out: ResponseOutparam, text: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"application/json".to_vec()]);
    let response = OutgoingResponse::new(headers);
    let body = response.body().expect("the response body");
    ResponseOutparam::set(response_out, Ok(response));
    {
        let mut out = body.write().expect("its stream");
        let _ = out.write_all(text);
        let _ = out.flush();
    }
    let _ = OutgoingBody::finish(body, None);
}
