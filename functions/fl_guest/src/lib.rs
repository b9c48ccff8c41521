//! A FunLess guest wrapper with the same ABI as FunLess's fl-wasm-rs.
//!
//! A function is `fn(serde_json::Value) -> Result<serde_json::Value, FlError>`
//! registered with [`fl_function!`], which exports `__invoke` (and
//! `__runtime_version`, as fl-wasm-rs does). Build with
//! `cargo build --release --target wasm32-wasip1`.

use serde_json::Value;
use std::fmt;

#[link(wasm_import_module = "fl_imps")]
extern "C" {
    fn __get_input_data(ptr: *mut u8);
    fn __insert_response(ptr: *const u8, len: usize);
    fn __insert_error(ptr: *const u8, len: usize);
    fn __console_log(ptr: *const u8, len: usize);
    #[allow(clippy::too_many_arguments)]
    fn __http_request(
        response_ptr: *mut u8,
        response_len_ptr: *mut u32,
        status_ptr: *mut u16,
        method: u8,
        uri_ptr: *const u8,
        uri_len: usize,
        header_ptr: *const u8,
        header_len: usize,
        body_ptr: *const u8,
        body_len: usize,
    );
}

/// Why a function failed; its text reaches the caller as `{:exec_error, text}`.
#[derive(Debug)]
pub enum FlError {
    ExecError(String),
}

impl fmt::Display for FlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlError::ExecError(m) => write!(f, "error while executing function: {m}"),
        }
    }
}

pub type FlResult = Result<Value, FlError>;

/// Registers `main` as the function's entry point.
#[macro_export]
macro_rules! fl_function {
    ($main:path) => {
        #[no_mangle]
        pub extern "C" fn __runtime_version() -> i32 {
            1
        }

        #[no_mangle]
        pub extern "C" fn __invoke(req_len: i32) -> i32 {
            $crate::invoke(req_len, $main)
        }
    };
}

#[doc(hidden)]
pub fn invoke(req_len: i32, main: fn(Value) -> FlResult) -> i32 {
    let input = input_data(req_len.max(0) as usize);
    let json = match serde_json::from_slice(&input) {
        Ok(json) => json,
        Err(_) => {
            insert_error("input JSON not well-formatted");
            return 1;
        }
    };
    match main(json) {
        Ok(value) => {
            insert_response(&value.to_string());
            0
        }
        Err(e) => {
            insert_error(&e.to_string());
            1
        }
    }
}

fn input_data(len: usize) -> Vec<u8> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    // SAFETY: the host writes exactly `len` bytes at the pointer.
    unsafe {
        __get_input_data(buf.as_mut_ptr());
        buf.set_len(len);
    }
    buf
}

fn insert_response(text: &str) {
    unsafe { __insert_response(text.as_ptr(), text.len()) }
}

fn insert_error(text: &str) {
    unsafe { __insert_error(text.as_ptr(), text.len()) }
}

/// A debug line, sent to the worker's log.
pub fn console_log(text: &str) {
    unsafe { __console_log(text.as_ptr(), text.len()) }
}

pub mod http {
    /// The ABI gives the host no buffer capacity; this wrapper reserves this
    /// much and refuses longer bodies (the host will still have written them).
    pub const RESPONSE_CAPACITY: usize = 1 << 20;

    pub enum Method {
        Get = 0,
        Post = 1,
        Put = 2,
        Delete = 3,
    }

    pub struct Response {
        pub status: u16,
        pub body: String,
    }

    /// Performs a request through the host. Status 0 means it failed.
    pub fn request(method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Response {
        let headers: Vec<String> = headers.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        let headers = headers.join("\n");
        let mut buf: Vec<u8> = Vec::with_capacity(RESPONSE_CAPACITY);
        let mut len: u32 = 0;
        let mut status: u16 = 0;
        unsafe {
            super::__http_request(
                buf.as_mut_ptr(),
                &mut len,
                &mut status,
                method as u8,
                url.as_ptr(),
                url.len(),
                headers.as_ptr(),
                headers.len(),
                body.as_ptr(),
                body.len(),
            );
        }
        let len = (len as usize).min(RESPONSE_CAPACITY);
        // SAFETY: the host wrote `len` bytes at the buffer.
        unsafe { buf.set_len(len) };
        Response {
            status,
            body: String::from_utf8_lossy(&buf).into_owned(),
        }
    }
}
