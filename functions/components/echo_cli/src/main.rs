//! Writes its input (the arguments' JSON text, on stdin) back on stdout.
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
