//! A test guest, not an example: a command component that writes its input
//! (the arguments' JSON text, on stdin) back on stdout (the benchmark's
//! echo, beside `test/guests/echo`).
use std::io::{Read, Write};

fn main() {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .expect("stdin is readable");
    std::io::stdout()
        .write_all(&input)
        .expect("stdout is writable");
}
