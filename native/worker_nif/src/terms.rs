//! JSON <-> Erlang terms, with no tree in between.
//!
//! Arguments: maps (string, atom or integer keys), lists, UTF-8 binaries,
//! integers, floats, `true`, `false`, `nil` and other atoms (as strings).
//! Responses: maps with string keys, lists, binaries, integers, floats,
//! booleans and `nil`.

use crate::atoms;
use crate::error::Error;
use rustler::types::map::MapIterator;
use rustler::{Encoder, Env, NewBinary, Term, TermType};
use worker_runtime::json::{self, Builder, Writer};
use worker_runtime::limits::MAX_INPUT_BYTES;

/// Why a term has no JSON text within the budget.
#[derive(Debug, thiserror::Error)]
pub enum ToJsonError {
    /// The text would be longer than the budget.
    #[error("JSON text larger than {0} bytes")]
    TooLarge(usize),
    /// The term has no JSON form.
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for ToJsonError {
    fn from(reason: String) -> Self {
        ToJsonError::Invalid(reason)
    }
}

impl From<&str> for ToJsonError {
    fn from(reason: &str) -> Self {
        ToJsonError::Invalid(reason.into())
    }
}

impl From<json::EncodeError> for ToJsonError {
    fn from(e: json::EncodeError) -> Self {
        match e {
            json::EncodeError::TooLarge(max) => ToJsonError::TooLarge(max),
            other => ToJsonError::Invalid(other.to_string()),
        }
    }
}

/// Encodes `term` as JSON text of at most `max_bytes`. The walk stops as
/// soon as the text passes the budget, however large the term.
pub fn to_json(term: Term, max_bytes: usize) -> Result<Vec<u8>, ToJsonError> {
    let mut writer = Writer::new(max_bytes);
    write(term, &mut writer)?;
    Ok(writer.into_bytes())
}

fn write(term: Term, w: &mut Writer) -> Result<(), ToJsonError> {
    let e = ToJsonError::from;
    match term.get_type() {
        TermType::Atom => match term.atom_to_string().map_err(|_| "bad atom")?.as_str() {
            "nil" => w.null().map_err(e),
            "true" => w.bool(true).map_err(e),
            "false" => w.bool(false).map_err(e),
            other => w.string(other).map_err(e),
        },
        TermType::Binary => {
            // the budget first: validating UTF-8 reads the whole binary
            let len = term.decode_as_binary().map_or(0, |b| b.len());
            if !w.fits(len + 2) {
                return Err(ToJsonError::TooLarge(w.max_bytes()));
            }
            w.string(utf8(term)?).map_err(e)
        }
        TermType::Integer => {
            if let Ok(i) = term.decode::<i64>() {
                w.i64(i).map_err(e)
            } else if let Ok(u) = term.decode::<u64>() {
                w.u64(u).map_err(e)
            } else {
                Err("integer does not fit in 64 bits".into())
            }
        }
        TermType::Float => w
            .f64(term.decode::<f64>().map_err(|_| "bad float")?)
            .map_err(e),
        TermType::List => {
            w.begin_array().map_err(e)?;
            let mut rest = term;
            while let Ok((head, tail)) = rest.list_get_cell() {
                write(head, w)?;
                rest = tail;
            }
            if !matches!(rest.list_length(), Ok(0)) {
                return Err("improper lists cannot be encoded as JSON".into());
            }
            w.end_array();
            Ok(())
        }
        TermType::Map => {
            // Each entry takes at least `"":0,` in the text. A map whose
            // entries cannot fit goes to the dirty encoder before it is
            // walked: iterating a large map costs time in itself.
            let entries = term.map_size().map_err(|_| "bad map")?;
            if !w.fits(entries.saturating_mul(5).saturating_add(2)) {
                return Err(ToJsonError::TooLarge(w.max_bytes()));
            }
            let iter = MapIterator::new(term).ok_or("bad map")?;
            w.begin_object().map_err(e)?;
            for (key, value) in iter {
                match key.get_type() {
                    TermType::Binary => w.key(utf8(key)?).map_err(e)?,
                    TermType::Atom => {
                        let name = key.atom_to_string().map_err(|_| "bad atom")?;
                        if name == "__struct__" {
                            return Err("structs cannot be encoded as JSON".into());
                        }
                        w.key(&name).map_err(e)?
                    }
                    TermType::Integer => {
                        let text = match key.decode::<i64>() {
                            Ok(i) => i.to_string(),
                            Err(_) => key
                                .decode::<u64>()
                                .map_err(|_| "map key does not fit in 64 bits")?
                                .to_string(),
                        };
                        w.key(&text).map_err(e)?
                    }
                    other => {
                        return Err(
                            format!("map key of type {other:?} cannot be a JSON key").into()
                        );
                    }
                }
                write(value, w)?;
            }
            w.end_object();
            Ok(())
        }
        other => Err(format!("a term of type {other:?} cannot be encoded as JSON").into()),
    }
}

fn utf8<'a>(term: Term<'a>) -> Result<&'a str, ToJsonError> {
    let binary = term
        .decode_as_binary()
        .map_err(|_| ToJsonError::from("bitstrings cannot be encoded as JSON"))?;
    std::str::from_utf8(binary.as_slice())
        .map_err(|_| ToJsonError::from("binary is not valid UTF-8"))
}

/// Decodes JSON text into terms.
pub fn from_json<'a>(env: Env<'a>, text: &[u8]) -> Result<Term<'a>, String> {
    json::decode(text, &mut TermBuilder { env })
}

struct TermBuilder<'a> {
    env: Env<'a>,
}

impl<'a> Builder for TermBuilder<'a> {
    type Value = Term<'a>;

    fn null(&mut self) -> Term<'a> {
        atoms::nil().encode(self.env)
    }

    fn bool(&mut self, value: bool) -> Term<'a> {
        value.encode(self.env)
    }

    fn i64(&mut self, value: i64) -> Term<'a> {
        value.encode(self.env)
    }

    fn u64(&mut self, value: u64) -> Term<'a> {
        value.encode(self.env)
    }

    fn f64(&mut self, value: f64) -> Term<'a> {
        value.encode(self.env)
    }

    fn string(&mut self, value: &str) -> Term<'a> {
        let mut binary = NewBinary::new(self.env, value.len());
        binary.as_mut_slice().copy_from_slice(value.as_bytes());
        binary.into()
    }

    fn array(&mut self, items: Vec<Term<'a>>) -> Term<'a> {
        items.encode(self.env)
    }

    fn object(&mut self, entries: Vec<(Term<'a>, Term<'a>)>) -> Term<'a> {
        let (keys, values): (Vec<Term<'a>>, Vec<Term<'a>>) = entries.iter().copied().unzip();
        match Term::map_from_term_arrays(self.env, &keys, &values) {
            Ok(map) => map,
            // Duplicate keys: the later one wins, as in most JSON parsers.
            Err(_) => entries
                .into_iter()
                .fold(Term::map_new(self.env), |map, (k, v)| {
                    map.map_put(k, v).unwrap_or(map)
                }),
        }
    }
}

/// `{:ok, binary}` with a copy of `bytes`.
pub fn ok_binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut binary = NewBinary::new(env, bytes.len());
    binary.as_mut_slice().copy_from_slice(bytes);
    (atoms::ok(), Term::from(binary)).encode(env)
}

/// `Worker.JSON.encode/1`: `{:ok, text}` or `{:error, reason}`.
#[rustler::nif(schedule = "DirtyCpu")]
fn json_encode<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    match to_json(term, usize::MAX) {
        Ok(bytes) => ok_binary(env, &bytes),
        Err(reason) => Err::<(), _>(Error::Reason(reason.to_string())).encode(env),
    }
}

/// Invocation arguments up to this much JSON text are encoded on a normal
/// scheduler; larger ones on a dirty one.
pub const NORMAL_ENCODE_BYTES: usize = 64 << 10;

/// Invocation arguments as JSON text: `{:ok, text}`,
/// `{:error, {:invalid_args, reason}}`, or `:dirty` when the text is over
/// [`NORMAL_ENCODE_BYTES`], for `args_encode_dirty/1`.
#[rustler::nif]
fn args_encode<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    match to_json(term, MAX_INPUT_BYTES.min(NORMAL_ENCODE_BYTES)) {
        Err(ToJsonError::TooLarge(_)) if MAX_INPUT_BYTES > NORMAL_ENCODE_BYTES => {
            atoms::dirty().encode(env)
        }
        result => args_reply(env, result),
    }
}

/// `args_encode/1` for large arguments, on a dirty scheduler.
#[rustler::nif(schedule = "DirtyCpu")]
fn args_encode_dirty<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    args_reply(env, to_json(term, MAX_INPUT_BYTES))
}

fn args_reply<'a>(env: Env<'a>, result: Result<Vec<u8>, ToJsonError>) -> Term<'a> {
    let reason = match result {
        Ok(bytes) => return ok_binary(env, &bytes),
        Err(ToJsonError::TooLarge(_)) => {
            format!("arguments: JSON text larger than {MAX_INPUT_BYTES} bytes (the input cap)")
        }
        Err(reason) => reason.to_string(),
    };
    Err::<(), _>(Error::InvalidArgs(reason)).encode(env)
}

/// `Worker.JSON.decode/1`: `{:ok, term}` or `{:error, reason}`.
#[rustler::nif(schedule = "DirtyCpu")]
fn json_decode<'a>(env: Env<'a>, text: rustler::Binary<'a>) -> Result<Term<'a>, Error> {
    from_json(env, text.as_slice()).map_err(Error::Reason)
}
