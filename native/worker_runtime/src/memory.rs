//! Bounds-checked access to guest linear memory.
//!
//! Every pointer and length a guest hands to a host import goes through these
//! helpers before anything is read, written or allocated. Pointers arrive as
//! `i32` and are reinterpreted as unsigned offsets; `ptr + len` is computed in
//! `u64` so it can never wrap.

/// A guest region that does not lie inside linear memory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: region {ptr:#x}+{len} is outside guest memory of {memory_size} bytes")]
pub struct OutOfBounds {
    pub what: &'static str,
    pub ptr: u32,
    pub len: u64,
    pub memory_size: usize,
}

/// Reinterprets a wasm `i32` as the unsigned address or length it stands for.
#[inline]
pub fn addr(value: i32) -> u32 {
    value as u32
}

#[inline]
fn range(
    memory_size: usize,
    what: &'static str,
    ptr: u32,
    len: u64,
) -> Result<std::ops::Range<usize>, OutOfBounds> {
    let end = u64::from(ptr) + len;
    if end > memory_size as u64 {
        return Err(OutOfBounds {
            what,
            ptr,
            len,
            memory_size,
        });
    }
    Ok(ptr as usize..end as usize)
}

/// The guest bytes at `ptr..ptr+len`.
pub fn read<'m>(
    memory: &'m [u8],
    what: &'static str,
    ptr: u32,
    len: u32,
) -> Result<&'m [u8], OutOfBounds> {
    let r = range(memory.len(), what, ptr, u64::from(len))?;
    Ok(&memory[r])
}

/// Copies `bytes` into guest memory at `ptr`.
pub fn write(
    memory: &mut [u8],
    what: &'static str,
    ptr: u32,
    bytes: &[u8],
) -> Result<(), OutOfBounds> {
    let r = range(memory.len(), what, ptr, bytes.len() as u64)?;
    memory[r].copy_from_slice(bytes);
    Ok(())
}

/// Checks that `len` bytes fit at `ptr` without touching memory.
pub fn check(
    memory_size: usize,
    what: &'static str,
    ptr: u32,
    len: u64,
) -> Result<(), OutOfBounds> {
    range(memory_size, what, ptr, len).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inside_memory() {
        let mem: Vec<u8> = (0..16).collect();
        assert_eq!(read(&mem, "x", 4, 3).unwrap(), &[4, 5, 6]);
        assert_eq!(read(&mem, "x", 16, 0).unwrap(), &[] as &[u8]);
        assert_eq!(read(&mem, "x", 0, 16).unwrap().len(), 16);
    }

    #[test]
    fn refuses_regions_past_the_end() {
        let mem = vec![0u8; 16];
        assert!(read(&mem, "x", 15, 2).is_err());
        assert!(read(&mem, "x", 17, 0).is_err());
        assert!(read(&mem, "x", u32::MAX, 1).is_err());
        assert!(read(&mem, "x", 1, u32::MAX).is_err());
        // ptr + len would wrap in 32 bits
        assert!(read(&mem, "x", u32::MAX, u32::MAX).is_err());
        assert!(read(&mem, "x", addr(-1), 0).is_err());
    }

    #[test]
    fn writes_are_all_or_nothing() {
        let mut mem = vec![0u8; 8];
        write(&mut mem, "x", 6, &[1, 2]).unwrap();
        assert_eq!(mem, [0, 0, 0, 0, 0, 0, 1, 2]);
        let err = write(&mut mem, "resp", 7, &[9, 9]).unwrap_err();
        assert_eq!(mem, [0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(err.what, "resp");
        assert!(err.to_string().contains("outside guest memory of 8 bytes"));
    }

    #[test]
    fn check_uses_64_bit_lengths() {
        assert!(check(8, "x", 0, 8).is_ok());
        assert!(check(8, "x", 0, 9).is_err());
        assert!(check(usize::MAX, "x", u32::MAX, u64::MAX - u64::from(u32::MAX)).is_ok());
        assert!(check(8, "x", 1, u64::MAX - 1).is_err());
    }
}
