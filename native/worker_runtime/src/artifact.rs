//! Artifacts: a compiled module's machine code, written to be loaded later
//! without compiling again, and sealed so that nothing else loads.
//!
//! Wasmtime runs the machine code of an artifact as it is: loading bytes
//! that did not come from its own serializer runs whatever they hold. So an
//! artifact carries a MAC (HMAC-SHA256) under this node's artifact key, and
//! [`open`] checks it before Wasmtime sees a byte: only what [`seal`] wrote
//! with the same key loads; anything else, a torn or damaged file included,
//! is refused.
//!
//! The key is random. By default it lives as long as the process; a worker
//! keeps it in a file of its data directory ([`use_key_file`], readable by
//! its own user only), so that its artifacts load again after a restart.
//! Whoever can read that file can seal an artifact, and can as well replace
//! the worker's own program.

use crate::Error;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::io::Write;
use std::path::Path;
use std::sync::RwLock;

/// How a sealed artifact starts.
const MAGIC: &[u8; 4] = b"FLA1";
const MAC_BYTES: usize = 32;
const KEY_BYTES: usize = 32;

static KEY: RwLock<Option<hmac::Key>> = RwLock::new(None);

/// The artifact key: the one given, else a random one made now for the
/// life of the process.
fn key() -> Result<hmac::Key, Error> {
    if let Some(key) = KEY.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return Ok(key.clone());
    }
    let mut slot = KEY.write().unwrap_or_else(|e| e.into_inner());
    if let Some(key) = slot.as_ref() {
        return Ok(key.clone());
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, &random_key()?);
    *slot = Some(key.clone());
    Ok(key)
}

fn random_key() -> Result<[u8; KEY_BYTES], Error> {
    let mut bytes = [0u8; KEY_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Unavailable("no randomness for the artifact key".into()))?;
    Ok(bytes)
}

/// Seals artifacts with the key in `path` from now on, making the file (a
/// new random key, mode 0600) when it is missing or is not a key. Artifacts
/// sealed with another key no longer load. A file that is there but cannot
/// be read is an error, and the key in use stays: replacing it would make
/// every artifact stale for a fault that may pass.
pub fn use_key_file(path: &Path) -> Result<(), Error> {
    let failed = |what: &str, e: std::io::Error| {
        Error::Unavailable(format!("artifact key {}: {what}: {e}", path.display()))
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) if bytes.len() == KEY_BYTES => bytes,
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(failed("cannot read it", e));
        }
        Ok(_) | Err(_) => {
            let key = random_key()?;
            write_key(path, &key).map_err(|e| failed("cannot write it", e))?;
            key.to_vec()
        }
    };
    *KEY.write().unwrap_or_else(|e| e.into_inner()) =
        Some(hmac::Key::new(hmac::HMAC_SHA256, &bytes));
    Ok(())
}

/// Writes a key atomically: a temporary file of the owner's alone, synced,
/// renamed over `path`, and the directory synced.
fn write_key(path: &Path, key: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(key)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `payload` (Wasmtime's serialized module), sealed with the artifact key.
pub(crate) fn seal(payload: &[u8]) -> Result<Vec<u8>, Error> {
    let mac = hmac::sign(&key()?, payload);
    let mut sealed = Vec::with_capacity(MAGIC.len() + MAC_BYTES + payload.len());
    sealed.extend_from_slice(MAGIC);
    sealed.extend_from_slice(mac.as_ref());
    sealed.extend_from_slice(payload);
    Ok(sealed)
}

/// The payload of an artifact [`seal`] wrote with the artifact key; any
/// other bytes are refused.
pub(crate) fn open(sealed: &[u8]) -> Result<&[u8], Error> {
    let refused = || {
        Error::invalid_module(
            "the artifact is not sealed with this node's artifact key: it was not \
             written by this worker, or it is damaged",
        )
    };
    let rest = sealed.strip_prefix(MAGIC).ok_or_else(refused)?;
    if rest.len() < MAC_BYTES {
        return Err(refused());
    }
    let (mac, payload) = rest.split_at(MAC_BYTES);
    hmac::verify(&key()?, payload, mac).map_err(|_| refused())?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the key is process-wide.
    #[test]
    fn only_what_was_sealed_with_the_key_opens() {
        let sealed = seal(b"machine code").unwrap();
        assert_eq!(open(&sealed).unwrap(), b"machine code");

        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(open(&flipped).is_err());
        assert!(open(b"machine code").is_err());
        assert!(open(&sealed[..20]).is_err());
        let mut forged = MAGIC.to_vec();
        forged.extend_from_slice(&[0; MAC_BYTES]);
        forged.extend_from_slice(b"machine code");
        assert!(open(&forged).is_err());

        // a key file: made when missing, then used; the old seal no longer opens
        let dir = std::env::temp_dir().join(format!("fl-artifact-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("artifact_key");
        let _ = std::fs::remove_file(&path);
        use_key_file(&path).unwrap();
        let key = std::fs::read(&path).unwrap();
        assert_eq!(key.len(), KEY_BYTES);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(open(&sealed).is_err());
        let resealed = seal(b"machine code").unwrap();
        // the same file again: the same key
        use_key_file(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), key);
        assert_eq!(open(&resealed).unwrap(), b"machine code");
        // a file that is not a key is replaced
        std::fs::write(&path, b"short").unwrap();
        use_key_file(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), KEY_BYTES);
        assert!(open(&resealed).is_err());
        // a key file that cannot be read is an error, and the key in use stays
        let kept = seal(b"machine code").unwrap();
        let unreadable = dir.join("a_directory");
        std::fs::create_dir_all(&unreadable).unwrap();
        let refused = use_key_file(&unreadable).unwrap_err().to_string();
        assert!(refused.contains("cannot read it"), "{refused}");
        assert!(unreadable.is_dir());
        assert_eq!(open(&kept).unwrap(), b"machine code");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
