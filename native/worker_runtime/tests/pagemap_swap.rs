//! A pool slot reset by Wasmtime 48.0.8's PAGEMAP_SCAN misses a touched
//! page that was swapped out, so the next guest in the slot reads what the
//! last one wrote (fixed upstream in 48.0.11, which the registry cannot
//! resolve here). The worker turns the scan off wherever swap is
//! configured (`engine::pagemap_scan`). This test shows both sides on a
//! pool like the worker's: it needs root, to add a swap file of its own
//! for the time of the test (and says so, and passes, where it cannot).

use std::process::Command;
use wasmtime::{
    Config, Enabled, Engine, Instance, InstanceAllocationStrategy, Module, PoolingAllocationConfig,
    Store,
};

const SECRET: i32 = 0x5EC12E7;

/// A swap file, on while it lives.
struct Swap(std::path::PathBuf);

impl Swap {
    fn on() -> Result<Swap, String> {
        let path = std::env::temp_dir().join(format!("fl-test-swap-{}", std::process::id()));
        let run = |cmd: &str, args: &[&str]| -> Result<(), String> {
            let out = Command::new(cmd)
                .args(args)
                .output()
                .map_err(|e| format!("{cmd}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr)))
            }
        };
        let file = path.to_str().unwrap().to_owned();
        let file = file.as_str();
        run(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={file}"),
                "bs=1M",
                "count=64",
                "status=none",
            ],
        )?;
        run("chmod", &["600", file])?;
        run("mkswap", &[file])?;
        let swap = Swap(path);
        run("swapon", &[file])?;
        Ok(swap)
    }
}

impl Drop for Swap {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg(&self.0).output();
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the second guest in the one slot of a pool reads where the first
/// wrote its secret, after that page was swapped out.
fn left_behind(scan: Enabled) -> i32 {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_memories(1)
        .total_core_instances(1)
        .total_tables(1)
        .max_memory_size(1 << 20)
        .linear_memory_keep_resident(1 << 20)
        .pagemap_scan(scan);
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config).unwrap();
    let wat = r#"(module
        (memory (export "memory") 1)
        (func (export "write") (param i32) (i32.store (i32.const 0) (local.get 0)))
        (func (export "read") (result i32) (i32.load (i32.const 0))))"#;
    let module = Module::new(&engine, wat::parse_str(wat).unwrap()).unwrap();

    let mut store = Store::new(&engine, ());
    let instance = Instance::new(&mut store, &module, &[]).unwrap();
    let write = instance
        .get_typed_func::<i32, ()>(&mut store, "write")
        .unwrap();
    write.call(&mut store, SECRET).unwrap();
    let memory = instance.get_memory(&mut store, "memory").unwrap();
    let page = memory.data_ptr(&store);
    // SAFETY: the first page of a live memory, which the kernel only
    // moves to swap; its contents stay the same to every reader.
    let paged = unsafe { libc::madvise(page.cast(), 4096, libc::MADV_PAGEOUT) };
    assert_eq!(paged, 0, "madvise(MADV_PAGEOUT)");
    drop(store);

    let mut store = Store::new(&engine, ());
    let instance = Instance::new(&mut store, &module, &[]).unwrap();
    let read = instance
        .get_typed_func::<(), i32>(&mut store, "read")
        .unwrap();
    read.call(&mut store, ()).unwrap()
}

#[test]
fn with_swap_the_worker_resets_kept_pages_whole() {
    if !PoolingAllocationConfig::is_pagemap_scan_available() {
        eprintln!("skipped: no PAGEMAP_SCAN on this kernel, nothing to leak");
        return;
    }
    let swap = match Swap::on() {
        Ok(swap) => swap,
        Err(why) => {
            eprintln!("skipped: no swap file could be added ({why})");
            return;
        }
    };
    // the worker's choice, with swap on
    assert_eq!(worker_runtime::engine::pagemap_scan(), Enabled::No);
    assert_eq!(left_behind(Enabled::No), 0);
    // what it avoids: the scan, with swap, leaves the secret to the next
    // guest (when this fails, the Wasmtime in use has the fix: the scan may
    // be used with swap again)
    let leaked = left_behind(Enabled::Auto);
    drop(swap);
    assert_eq!(worker_runtime::engine::pagemap_scan(), Enabled::Auto);
    assert_eq!(leaked, SECRET, "the next guest read {leaked:#x}");
}
