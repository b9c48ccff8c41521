//! Makes bulk memory instructions preemptible.
//!
//! Wasmtime runs one `memory.fill` or `memory.copy` as one libcall that epoch
//! interruption cannot stop: a guest filling 512 MiB holds its thread (a BEAM
//! scheduler) for over a second. [`make_interruptible`] rewrites a module
//! before it is compiled so that every such instruction on memory 0 becomes a
//! call to a helper appended to the module, which does the same work in
//! chunks of [`CHUNK`] bytes in a loop. Wasmtime checks the epoch at every
//! loop header, so the guest can be preempted between chunks.
//!
//! The rewrite is two passes over the module: [`plan`] counts the types and
//! functions (so the helpers get the first free indices) and finds the byte
//! ranges of the instructions to replace; [`Rewriter`] then re-encodes the
//! module with wasm-encoder's [`Reencode`], splicing `call $helper` into
//! those ranges and appending one type and the two helpers. Nothing else
//! moves: no existing index shifts, function bodies without bulk
//! instructions and custom sections are copied byte for byte.

use std::borrow::Cow;

use wasm_encoder::reencode::{Error, Reencode, utils};
use wasm_encoder::{
    BlockType, CodeSection, Function, FunctionSection, InstructionSink, SectionId, TypeSection,
    ValType,
};
use wasmparser::{Encoding, FunctionBody, Operator, Parser, Payload, TypeRef};

/// Bytes done by one `memory.fill` or `memory.copy` between two epoch checks.
pub const CHUNK: u32 = 1 << 20;

/// Rewrites every `memory.fill` and `memory.copy` on memory 0 into a call to a
/// function appended to the module that does the same work in chunks of
/// CHUNK bytes, in a loop (Wasmtime checks the epoch at every loop header, so
/// the guest can be preempted between chunks). Returns the input unchanged
/// (Cow::Borrowed) when the module has no such instruction.
///
/// Also unchanged: components (see [`make_component_interruptible`]),
/// modules without memory, and modules whose memory 0 is a 64-bit memory.
/// Fails when the module does not parse, and when it has such an
/// instruction on another memory, which nothing could interrupt.
pub fn make_interruptible(wasm: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    make_interruptible_with_chunk(wasm, CHUNK)
}

/// [`make_interruptible`] for every core module inside a component, nested
/// components included. Returns the input unchanged when no module changes.
/// Fails only when the component's sections do not parse.
pub fn make_component_interruptible(wasm: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    rewrite_component(wasm, CHUNK, 0)
}

/// Components nested deeper than this are refused: no real one comes
/// close, and each level is a frame of the walk.
const MAX_NESTING: usize = 100;

/// The core module section of a component, and a nested component's.
const CORE_MODULE_SECTION: u8 = 1;
const COMPONENT_SECTION: u8 = 4;

fn rewrite_component(wasm: &[u8], chunk: u32, depth: usize) -> Result<Cow<'_, [u8]>, String> {
    let bad = || "bulk memory rewrite: the component's sections do not parse".to_string();
    if depth > MAX_NESTING {
        return Err(format!(
            "components nested more than {MAX_NESTING} deep are not supported"
        ));
    }
    if wasm.len() < 8 {
        return Ok(Cow::Borrowed(wasm));
    }
    let mut sections = Vec::new();
    let mut at = 8;
    let mut changed = false;
    while at < wasm.len() {
        let id = wasm[at];
        let (size, leb) = read_u32(&wasm[at + 1..]).ok_or_else(bad)?;
        let start = at + 1 + leb;
        let end = start
            .checked_add(size as usize)
            .filter(|&e| e <= wasm.len())
            .ok_or_else(bad)?;
        let content = &wasm[start..end];
        let rewritten = match id {
            CORE_MODULE_SECTION => make_interruptible_with_chunk(content, chunk)?,
            COMPONENT_SECTION => rewrite_component(content, chunk, depth + 1)?,
            _ => Cow::Borrowed(content),
        };
        changed |= matches!(rewritten, Cow::Owned(_));
        sections.push((id, rewritten));
        at = end;
    }
    if !changed {
        return Ok(Cow::Borrowed(wasm));
    }
    let mut out = wasm[..8].to_vec();
    for (id, content) in sections {
        out.push(id);
        let len = u32::try_from(content.len()).map_err(|_| bad())?;
        write_u32(&mut out, len);
        out.extend_from_slice(&content);
    }
    Ok(Cow::Owned(out))
}

/// An unsigned LEB128 u32 and its length in bytes.
fn read_u32(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut value: u64 = 0;
    for (i, &byte) in bytes.iter().take(5).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return u32::try_from(value).ok().map(|v| (v, i + 1));
        }
    }
    None
}

fn write_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// [`make_interruptible`] with a chunk of `chunk` bytes (at least 1).
pub(crate) fn make_interruptible_with_chunk(
    wasm: &[u8],
    chunk: u32,
) -> Result<Cow<'_, [u8]>, String> {
    let Some(plan) = plan(wasm)? else {
        return Ok(Cow::Borrowed(wasm));
    };
    let mut rewriter = Rewriter {
        plan,
        chunk: chunk.max(1),
        next_body: 0,
        types_done: false,
        functions_done: false,
        code_done: false,
    };
    let mut module = wasm_encoder::Module::new();
    rewriter
        .parse_core_module(&mut module, Parser::new(0), wasm)
        .map_err(|e| match e {
            Error::ParseError(e) => format!("bulk memory rewrite: {e}"),
            e => format!("bulk memory rewrite: {e}"),
        })?;
    Ok(Cow::Owned(module.finish()))
}

/// Offset of the fill helper from the first free function index; the copy
/// helper follows it.
const FILL: u32 = 0;
const COPY: u32 = 1;

/// A bulk instruction to replace: its byte range within its function body
/// (counted from the start of the body, i.e. of its locals) and the helper
/// (`FILL` or `COPY`) to call instead.
struct Site {
    start: usize,
    end: usize,
    helper: u32,
}

/// What the first pass learns about the module.
struct Plan {
    /// Entries in the type index space: the helpers' type goes right after.
    types: u32,
    /// Imported plus defined functions: the helpers go right after.
    functions: u32,
    /// Log2 of memory 0's page size (16 unless custom page sizes are used).
    page_log2: u32,
    /// The sites of every defined function body, in order.
    sites: Vec<Vec<Site>>,
}

/// Reads the module once: returns `None` when there is nothing to rewrite.
fn plan(wasm: &[u8]) -> Result<Option<Plan>, String> {
    let parse_error = |e: wasmparser::BinaryReaderError| format!("bulk memory rewrite: {e}");
    let mut types = 0u32;
    let mut functions = 0u32;
    let mut memory0 = None;
    let mut sites = Vec::new();
    let mut any = false;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(parse_error)? {
            Payload::Version {
                encoding: Encoding::Component,
                ..
            } => return Ok(None),
            Payload::TypeSection(reader) => {
                for group in reader {
                    let len = group.map_err(parse_error)?.types().len();
                    types = types.saturating_add(u32::try_from(len).unwrap_or(u32::MAX));
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    match import.map_err(parse_error)?.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => {
                            functions = functions.saturating_add(1);
                        }
                        // Imported memories come first in the index space.
                        TypeRef::Memory(ty) => {
                            memory0.get_or_insert(ty);
                        }
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                functions = functions.saturating_add(reader.count());
            }
            Payload::MemorySection(reader) => {
                for ty in reader {
                    let ty = ty.map_err(parse_error)?;
                    memory0.get_or_insert(ty);
                }
            }
            Payload::CodeSectionEntry(body) => {
                // Without memory a bulk instruction cannot validate, and on a
                // 64-bit memory the helpers would need i64 operands: leave
                // such modules alone.
                match memory0 {
                    Some(ty) if !ty.memory64 => {}
                    _ => return Ok(None),
                }
                let found = find_sites(&body)?;
                any |= !found.is_empty();
                sites.push(found);
            }
            _ => {}
        }
    }
    Ok(match memory0 {
        Some(ty) if any => Some(Plan {
            types,
            functions,
            page_log2: ty.page_size_log2.unwrap_or(16),
            sites,
        }),
        _ => None,
    })
}

/// The `memory.fill 0` and `memory.copy 0 0` instructions of one body.
fn find_sites(body: &FunctionBody<'_>) -> Result<Vec<Site>, String> {
    let parse_error = |e: wasmparser::BinaryReaderError| format!("bulk memory rewrite: {e}");
    let base = body.range().start;
    let mut reader = body.get_operators_reader().map_err(parse_error)?;
    let mut sites = Vec::new();
    while !reader.eof() {
        let start = reader.original_position();
        let helper = match reader.read().map_err(parse_error)? {
            Operator::MemoryFill { mem: 0 } => FILL,
            Operator::MemoryCopy {
                dst_mem: 0,
                src_mem: 0,
            } => COPY,
            // Only memory 0 gets the chunked helpers; on another memory one
            // instruction could fill or copy hundreds of MiB with no epoch
            // check in between. (A function's store holds one memory, and
            // a component's modules each use one.)
            Operator::MemoryFill { .. } | Operator::MemoryCopy { .. } => {
                return Err(format!(
                    "memory.fill and memory.copy are supported on memory 0 only \
                     (at offset {start:#x})"
                ));
            }
            _ => continue,
        };
        sites.push(Site {
            start: (start - base) as usize,
            end: (reader.original_position() - base) as usize,
            helper,
        });
    }
    Ok(sites)
}

/// The second pass: a [`Reencode`] that keeps every index and section, and
/// only replaces the planned sites and appends the helpers.
struct Rewriter {
    plan: Plan,
    chunk: u32,
    /// Index of the next defined function body, into `plan.sites`.
    next_body: usize,
    /// Whether the helpers' type, functions and bodies were emitted (they are
    /// appended to the existing sections, or make new sections if missing).
    types_done: bool,
    functions_done: bool,
    code_done: bool,
}

impl Rewriter {
    /// Appends the helpers' type, `(i32, i32, i32) -> ()`, shared by both.
    fn append_type(&mut self, types: &mut TypeSection) {
        types.ty().function([ValType::I32; 3], []);
        self.types_done = true;
    }

    fn append_functions(&mut self, functions: &mut FunctionSection) {
        functions.function(self.plan.types);
        functions.function(self.plan.types);
        self.functions_done = true;
    }

    fn append_code(&mut self, code: &mut CodeSection) {
        code.function(&fill_helper(self.chunk, self.plan.page_log2));
        code.function(&copy_helper(self.chunk, self.plan.page_log2));
        self.code_done = true;
    }
}

impl Reencode for Rewriter {
    type Error = String;

    fn parse_type_section(
        &mut self,
        types: &mut TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), Error<String>> {
        utils::parse_type_section(self, types, section)?;
        self.append_type(types);
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<(), Error<String>> {
        utils::parse_function_section(self, functions, section)?;
        self.append_functions(functions);
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), Error<String>> {
        utils::parse_code_section(self, code, section)?;
        self.append_code(code);
        Ok(())
    }

    /// Copies the body, with `call $helper` in place of each planned site.
    fn parse_function_body(
        &mut self,
        code: &mut CodeSection,
        func: FunctionBody<'_>,
    ) -> Result<(), Error<String>> {
        let index = self.next_body;
        self.next_body += 1;
        let sites = self
            .plan
            .sites
            .get(index)
            .ok_or_else(|| Error::UserError("more function bodies than planned".into()))?;
        let bytes = func.as_bytes();
        if sites.is_empty() {
            code.raw(bytes);
            return Ok(());
        }
        // The sites were found by parsing these very bytes: their ranges are
        // in bounds and in order.
        let mut out = Vec::with_capacity(bytes.len() + 4 * sites.len());
        let mut copied = 0;
        for site in sites {
            out.extend_from_slice(&bytes[copied..site.start]);
            InstructionSink::new(&mut out).call(self.plan.functions + site.helper);
            copied = site.end;
        }
        out.extend_from_slice(&bytes[copied..]);
        code.raw(&out);
        Ok(())
    }

    /// Custom sections (`name` included) are copied as they are: no index
    /// they mention moves.
    fn parse_custom_section(
        &mut self,
        module: &mut wasm_encoder::Module,
        section: wasmparser::CustomSectionReader<'_>,
    ) -> Result<(), Error<String>> {
        module.section(&utils::custom_section(self, section));
        Ok(())
    }

    /// Emits the type, function or code section for the helpers at its place
    /// when the module has none (only possible in a module that will not
    /// validate anyway, since bulk instructions live in function bodies).
    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<SectionId>,
        before: Option<SectionId>,
    ) -> Result<(), Error<String>> {
        let next = before.map_or(u8::MAX, order);
        if !self.types_done && next > order(SectionId::Type) {
            let mut types = TypeSection::new();
            self.append_type(&mut types);
            module.section(&types);
        }
        if !self.functions_done && next > order(SectionId::Function) {
            let mut functions = FunctionSection::new();
            self.append_functions(&mut functions);
            module.section(&functions);
        }
        if !self.code_done && next > order(SectionId::Code) {
            let mut code = CodeSection::new();
            self.append_code(&mut code);
            module.section(&code);
        }
        Ok(())
    }
}

/// Position of a section in a module's binary order (not its id).
fn order(id: SectionId) -> u8 {
    match id {
        SectionId::Custom => 0,
        SectionId::Type => 1,
        SectionId::Import => 2,
        SectionId::Function => 3,
        SectionId::Table => 4,
        SectionId::Memory => 5,
        SectionId::Tag => 6,
        SectionId::Global => 7,
        SectionId::Export => 8,
        SectionId::Start => 9,
        SectionId::Element => 10,
        SectionId::DataCount => 11,
        SectionId::Code => 12,
        SectionId::Data => 13,
    }
}

// The helpers' parameters, in the instructions' operand order, and their
// one local.
const D: u32 = 0;
const VAL: u32 = 1;
const S: u32 = 1;
const N: u32 = 2;
const OOB: u32 = 3;

/// Traps as the original instruction would when `local[at] + n` exceeds
/// memory 0's size in bytes for any `at` (computed in i64, so nothing
/// wraps), before anything is written; then zeroes the parameters when
/// that was so, with `select`s.
///
/// The trap is an out-of-bounds load (at 2^32, past any 32-bit memory),
/// which Wasmtime bounds like any access, rather than the instruction's
/// libcall, whose bounds check has no Spectre guard in Wasmtime 48.0.8
/// (GHSA-2w65-gj86-pqc2, fixed in 48.0.11, which cannot be had here). The
/// `select`s (conditional moves) give every bulk operation below only
/// in-bounds addresses even when the branch is mispredicted.
fn trap_or_mask(s: &mut InstructionSink<'_>, at: &[u32], page_log2: u32) {
    s.i32_const(0);
    for &at in at {
        s.local_get(at).i64_extend_i32_u();
        s.local_get(N).i64_extend_i32_u().i64_add();
        s.memory_size(0).i64_extend_i32_u();
        s.i64_const(i64::from(page_log2)).i64_shl();
        s.i64_gt_u().i32_or();
    }
    s.local_set(OOB);
    s.local_get(OOB).if_(BlockType::Empty);
    s.i32_const(-1)
        .i32_load8_u(wasm_encoder::MemArg {
            offset: 1,
            align: 0,
            target: wasm_encoder::MemArgTarget::Memory(0),
            ordering: None,
        })
        .drop()
        .unreachable();
    s.end();
    for &param in at.iter().chain(&[N]) {
        s.i32_const(0)
            .local_get(param)
            .local_get(OOB)
            .select()
            .local_set(param);
    }
}

/// `(func (param $d i32) (param $val i32) (param $n i32))`, the same as
/// `memory.fill 0`. Out of bounds, it traps before it writes ([`trap_or_mask`]).
/// When `n > chunk`, fills whole chunks front
/// to back while more than one chunk is left, then the last 1..=chunk bytes.
/// Since `d + n <= memory size <= 2^32`, `d + chunk` never wraps.
fn fill_helper(chunk: u32, page_log2: u32) -> Function {
    // i32.const holds the bit pattern; every comparison on it is unsigned.
    let c = chunk as i32;
    let mut f = Function::new([(1, ValType::I32)]);
    let mut s = f.instructions();
    trap_or_mask(&mut s, &[D], page_log2);
    // small: in one go
    s.local_get(N).i32_const(c).i32_le_u();
    s.if_(BlockType::Empty);
    s.local_get(D).local_get(VAL).local_get(N).memory_fill(0);
    s.return_().end();
    s.loop_(BlockType::Empty);
    s.local_get(D).local_get(VAL).i32_const(c).memory_fill(0);
    s.local_get(D).i32_const(c).i32_add().local_set(D);
    s.local_get(N).i32_const(c).i32_sub().local_tee(N);
    s.i32_const(c).i32_gt_u().br_if(0);
    s.end();
    s.local_get(D).local_get(VAL).local_get(N).memory_fill(0);
    s.end();
    f
}

/// `(func (param $d i32) (param $s i32) (param $n i32))`, the same as
/// `memory.copy 0 0`, including overlapping ranges (each chunk is itself a
/// `memory.copy`, so overlap within a chunk is handled by Wasmtime):
///
/// - `d <= s`: chunks front to back. The chunk at offset `k` writes below
///   `d + k + chunk <= s + k + chunk`, and every source byte not read yet is
///   at or above `s + k + chunk`: no write reaches an unread source byte.
/// - `d > s`: chunks back to front. With `n` bytes left to copy, the chunk
///   written starts at `d + n > s + n`, and every source byte not read yet is
///   below `s + n`: again no write reaches an unread source byte.
fn copy_helper(chunk: u32, page_log2: u32) -> Function {
    let c = chunk as i32;
    let mut f = Function::new([(1, ValType::I32)]);
    let mut s = f.instructions();
    trap_or_mask(&mut s, &[D, S], page_log2);
    s.local_get(N).i32_const(c).i32_le_u();
    s.if_(BlockType::Empty);
    s.local_get(D).local_get(S).local_get(N).memory_copy(0, 0);
    s.return_().end();
    s.local_get(D).local_get(S).i32_le_u().if_(BlockType::Empty);
    {
        // Front to back: [d, d + chunk) <- [s, s + chunk), then advance.
        s.loop_(BlockType::Empty);
        s.local_get(D).local_get(S).i32_const(c).memory_copy(0, 0);
        s.local_get(D).i32_const(c).i32_add().local_set(D);
        s.local_get(S).i32_const(c).i32_add().local_set(S);
        s.local_get(N).i32_const(c).i32_sub().local_tee(N);
        s.i32_const(c).i32_gt_u().br_if(0);
        s.end();
    }
    s.else_();
    {
        // Back to front: n -= chunk, then [d + n, +chunk) <- [s + n, +chunk).
        s.loop_(BlockType::Empty);
        s.local_get(N).i32_const(c).i32_sub().local_set(N);
        s.local_get(D).local_get(N).i32_add();
        s.local_get(S).local_get(N).i32_add();
        s.i32_const(c).memory_copy(0, 0);
        s.local_get(N).i32_const(c).i32_gt_u().br_if(0);
        s.end();
    }
    s.end();
    // The remaining 1..=chunk bytes: the first ones (back to front) or the
    // last ones (front to back).
    s.local_get(D).local_get(S).local_get(N).memory_copy(0, 0);
    s.end();
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    use wasmtime::{
        Config, Engine, Instance, Linker, Memory, MemoryType, Module, Store, Trap, UpdateDeadline,
    };

    const PAGE: u32 = 65536;

    /// A module exporting its memory `mem` of `pages` pages and `fill`/`copy`,
    /// each one bulk instruction on its three parameters.
    fn bulk_module(pages: u32) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
                 (memory (export "mem") {pages})
                 (func (export "fill") (param i32 i32 i32)
                   (memory.fill (local.get 0) (local.get 1) (local.get 2)))
                 (func (export "copy") (param i32 i32 i32)
                   (memory.copy (local.get 0) (local.get 1) (local.get 2))))"#
        ))
        .expect("wat")
    }

    fn rewritten(wasm: &[u8], chunk: u32) -> Vec<u8> {
        match make_interruptible_with_chunk(wasm, chunk).expect("rewrite") {
            Cow::Owned(out) => out,
            Cow::Borrowed(_) => panic!("module not rewritten"),
        }
    }

    struct Xorshift(u64);

    impl Xorshift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    /// A trap code, or the error text when it is not a trap.
    type Outcome = Result<(), String>;

    /// Calls `func(args)` in a new instance of `module` whose memory was set
    /// to `init`: returns how it ended and the memory afterwards.
    fn run(module: &Module, init: &[u8], func: &str, args: (u32, u32, u32)) -> (Outcome, Vec<u8>) {
        let mut store = Store::new(module.engine(), ());
        let instance = Instance::new(&mut store, module, &[]).expect("instance");
        let memory = instance.get_memory(&mut store, "mem").expect("mem");
        memory.data_mut(&mut store).copy_from_slice(init);
        let f = instance
            .get_typed_func::<(i32, i32, i32), ()>(&mut store, func)
            .expect("func");
        let outcome = f
            .call(&mut store, (args.0 as i32, args.1 as i32, args.2 as i32))
            .map_err(|e| match e.downcast_ref::<Trap>() {
                Some(trap) => format!("trap: {trap}"),
                None => format!("error: {e:?}"),
            });
        (outcome, memory.data(&store).to_vec())
    }

    /// Asserts equal outcomes and memories (reporting the first differing
    /// byte rather than two dumps of megabytes).
    fn assert_same(label: &str, a: &(Outcome, Vec<u8>), b: &(Outcome, Vec<u8>)) {
        assert_eq!(a.0, b.0, "{label}: outcomes differ");
        assert_eq!(a.1.len(), b.1.len(), "{label}: memory sizes differ");
        if let Some(at) = a.1.iter().zip(&b.1).position(|(x, y)| x != y) {
            panic!("{label}: memories differ first at byte {at}");
        }
    }

    #[test]
    fn bulk_without_bulk_ops_is_borrowed_and_identical() {
        let wasm = wat::parse_str(
            r#"(module
                 (memory (export "mem") 1)
                 (func $f (export "f") (param i32) (result i32)
                   (i32.store (local.get 0) (i32.const 7))
                   (i32.load (local.get 0)))
                 (data (i32.const 0) "abc"))"#,
        )
        .expect("wat");
        match make_interruptible(&wasm).expect("rewrite") {
            Cow::Borrowed(out) => assert_eq!(out, &wasm[..]),
            Cow::Owned(_) => panic!("rewritten without bulk ops"),
        }
        // No memory at all.
        let wasm = wat::parse_str("(module (func (export \"f\")))").expect("wat");
        assert!(matches!(make_interruptible(&wasm), Ok(Cow::Borrowed(_))));
        // Not wasm.
        assert!(make_interruptible(b"not wasm").is_err());
        assert!(make_interruptible(b"\0asm\x01\0\0\0\x01\x05\xff").is_err());
    }

    #[test]
    fn bulk_fill_and_copy_match_the_instructions() {
        let engine = Engine::new(&Config::new()).expect("engine");
        let wasm = bulk_module(320); // 20 MiB
        let original = Module::new(&engine, &wasm).expect("original");
        let chunked = Module::new(&engine, rewritten(&wasm, CHUNK)).expect("rewritten");
        let size = 320 * PAGE;
        let init = Xorshift(0x9e37_79b9_7f4a_7c15).bytes(size as usize);
        let c = CHUNK;
        let mib8 = 8 << 20;
        let fills = [
            (0, 0),
            (7, 1),
            (13, 100),
            (3, c - 1),
            (5, c),
            (9, c + 1),
            (1, mib8),
            (0, mib8 + 3),
            (size - c - 1, c + 1),
            (0, size),
        ];
        for (d, n) in fills {
            for val in [0xab, 0x1234] {
                let label = format!("fill d={d} val={val:#x} n={n}");
                let a = run(&original, &init, "fill", (d, val, n));
                let b = run(&chunked, &init, "fill", (d, val, n));
                assert_eq!(b.0, Ok(()), "{label}");
                assert_same(&label, &a, &b);
            }
        }
        let mib10 = 10 << 20;
        let mut copies = vec![
            (5, 1000, 100),
            (0, mib10, mib8),
            (mib10, 1, mib8 + 5),
            (0, mib10, c - 1),
            (0, mib10, c),
            (mib10, 0, c + 1),
            (4096, 4096, 3 * c),
        ];
        // Overlapping both ways, at distances below and above a chunk, with
        // overlaps above a chunk (first two) and below one (last).
        for (distance, n) in [
            (100, 3 * c + 5),
            (c + 7, 3 * c + 11),
            (2 * c + 5, 2 * c + 100),
        ] {
            copies.push((1000, 1000 + distance, n));
            copies.push((1000 + distance, 1000, n));
        }
        for (d, s, n) in copies {
            let label = format!("copy d={d} s={s} n={n}");
            let a = run(&original, &init, "copy", (d, s, n));
            let b = run(&chunked, &init, "copy", (d, s, n));
            assert_eq!(b.0, Ok(()), "{label}");
            assert_same(&label, &a, &b);
        }
    }

    #[test]
    fn bulk_out_of_bounds_traps_and_writes_nothing() {
        let engine = Engine::new(&Config::new()).expect("engine");
        let wasm = bulk_module(80); // 5 MiB
        let original = Module::new(&engine, &wasm).expect("original");
        let chunked = Module::new(&engine, rewritten(&wasm, CHUNK)).expect("rewritten");
        let size = 80 * PAGE;
        let init = Xorshift(12345).bytes(size as usize);
        let c = CHUNK;
        let max = u32::MAX;
        let fills = [
            (size - c, c + 1),
            (1, size),
            (size + 1, 0),
            (max, c + 2),
            (1, max),
            (c, max - c + 1), // d + n wraps to exactly 1 in 32 bits
        ];
        let copies = [
            (0, size - c, c + 1),
            (size - c, 0, c + 1),
            (max, 0, c + 2),
            (0, max, c + 2),
            (1, 0, max),
            (size + 1, 0, 0),
            (0, size + 1, 0),
        ];
        let cases = fills
            .iter()
            .map(|&(d, n)| ("fill", (d, 0x5a, n)))
            .chain(copies.iter().map(|&args| ("copy", args)));
        for (func, args) in cases {
            let label = format!("{func} {args:?}");
            let a = run(&original, &init, func, args);
            let b = run(&chunked, &init, func, args);
            assert!(
                b.0.as_ref().is_err_and(|e| e.contains("out of bounds")),
                "{label}: {:?}",
                b.0
            );
            assert_same(&label, &a, &b);
            assert_same(&label, &(b.0.clone(), init.clone()), &b);
        }
        // Zero length at exactly the end of memory is fine.
        for (func, args) in [
            ("fill", (size, 1, 0)),
            ("copy", (size, 0, 0)),
            ("copy", (0, size, 0)),
            ("copy", (size, size, 0)),
        ] {
            let b = run(&chunked, &init, func, args);
            assert_eq!(b.0, Ok(()), "{func} {args:?}");
            assert_same(func, &(Ok(()), init.clone()), &b);
        }
    }

    /// Runs a 256 MiB `memory.fill` while another thread advances the epoch
    /// every 100 us: returns the epoch callback's calls and the time taken.
    fn fill_under_epochs(engine: &Engine, wasm: &[u8]) -> (usize, Duration) {
        let module = Module::new(engine, wasm).expect("module");
        let mut store = Store::new(engine, 0usize);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            *ctx.data_mut() += 1;
            Ok(UpdateDeadline::Continue(1))
        });
        let instance = Instance::new(&mut store, &module, &[]).expect("instance");
        let fill = instance
            .get_typed_func::<(i32, i32, i32), ()>(&mut store, "fill")
            .expect("fill");
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = std::thread::spawn({
            let (engine, stop) = (engine.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_micros(100));
                    engine.increment_epoch();
                }
            }
        });
        let started = Instant::now();
        let result = fill.call(&mut store, (0, 0x5a, 256 << 20));
        let elapsed = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        ticker.join().expect("ticker");
        result.expect("fill");
        let memory = instance.get_memory(&mut store, "mem").expect("mem");
        let data = memory.data(&store);
        assert_eq!(
            (data[0], data[(256 << 20) - 1], data[256 << 20]),
            (0x5a, 0x5a, 0)
        );
        (*store.data(), elapsed)
    }

    #[test]
    fn bulk_long_fill_is_preemptible() {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).expect("engine");
        let wasm = bulk_module(4097); // 256 MiB and a page
        let (calls_before, time_before) = fill_under_epochs(&engine, &wasm);
        let (calls_after, time_after) = fill_under_epochs(&engine, &rewritten(&wasm, CHUNK));
        println!(
            "256 MiB memory.fill: original {time_before:?} with {calls_before} epoch callbacks, \
             rewritten {time_after:?} with {calls_after}"
        );
        assert!(calls_after >= 5, "only {calls_after} epoch callbacks");
    }

    /// Parses `wasm`: (types, functions, custom sections, called function
    /// indices, remaining bulk instructions as (op, memories)).
    #[allow(clippy::type_complexity)]
    fn inspect(
        wasm: &[u8],
    ) -> (
        u32,
        u32,
        Vec<(String, Vec<u8>)>,
        Vec<u32>,
        Vec<(&'static str, u32, u32)>,
    ) {
        let (mut types, mut functions) = (0, 0);
        let (mut customs, mut calls, mut bulk) = (Vec::new(), Vec::new(), Vec::new());
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.expect("parse") {
                Payload::TypeSection(r) => types += r.count(),
                Payload::ImportSection(r) => {
                    for i in r.into_imports() {
                        if matches!(i.expect("import").ty, TypeRef::Func(_)) {
                            functions += 1;
                        }
                    }
                }
                Payload::FunctionSection(r) => functions += r.count(),
                Payload::CustomSection(r) => {
                    customs.push((r.name().to_string(), r.data().to_vec()))
                }
                Payload::CodeSectionEntry(body) => {
                    let mut ops = body.get_operators_reader().expect("ops");
                    while !ops.eof() {
                        match ops.read().expect("op") {
                            Operator::Call { function_index } => calls.push(function_index),
                            Operator::MemoryFill { mem } => bulk.push(("fill", mem, mem)),
                            Operator::MemoryCopy { dst_mem, src_mem } => {
                                bulk.push(("copy", dst_mem, src_mem));
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        (types, functions, customs, calls, bulk)
    }

    #[test]
    fn bulk_helpers_trap_by_a_load_and_hand_the_bulk_operation_masked_addresses() {
        // GHSA-2w65-gj86-pqc2: Wasmtime 48.0.8's bulk libcalls check bounds
        // with no Spectre guard. In the helpers, an out-of-bounds operation
        // traps through a load before any bulk instruction, and every bulk
        // instruction comes after the `select`s that zero its operands when
        // out of bounds.
        let out = rewritten(&bulk_module(1), CHUNK);
        let mut bodies = Vec::new();
        for payload in Parser::new(0).parse_all(&out) {
            if let Payload::CodeSectionEntry(body) = payload.expect("payload") {
                bodies.push(body);
            }
        }
        let helpers = &bodies[bodies.len() - 2..];
        for (helper, params) in helpers.iter().zip([2, 3]) {
            let ops: Vec<Operator> = helper
                .get_operators_reader()
                .expect("operators")
                .into_iter()
                .collect::<Result<_, _>>()
                .expect("operators");
            let first_bulk = ops
                .iter()
                .position(|op| {
                    matches!(
                        op,
                        Operator::MemoryFill { .. } | Operator::MemoryCopy { .. }
                    )
                })
                .expect("a bulk instruction");
            let trap = ops
                .iter()
                .position(|op| matches!(op, Operator::I32Load8U { memarg } if memarg.offset == 1))
                .expect("the trapping load");
            let selects = ops[..first_bulk]
                .iter()
                .filter(|op| matches!(op, Operator::Select))
                .count();
            assert!(trap < first_bulk);
            assert_eq!(
                selects, params,
                "one select a parameter that addresses memory, and n"
            );
        }
    }

    #[test]
    fn bulk_output_validates_and_keeps_the_module() {
        let wasm = wat::parse_str(
            r#"(module $m
                 (type $t (func (param i32) (result i32)))
                 (import "env" "log" (func $log (param i32)))
                 (import "env" "mem" (memory 2))
                 (import "env" "tick" (func $tick))
                 (table 4 funcref)
                 (global $g (mut i32) (i32.const 5))
                 (func $start
                   (memory.fill (i32.const 0) (i32.const 1) (i32.const 10))
                   (call $tick))
                 (func $a (export "a") (param $n i32) (result i32)
                   (memory.copy (i32.const 100) (i32.const 0) (local.get $n))
                   (call $log (local.get $n))
                   (call_indirect (type $t) (local.get $n) (i32.const 0)))
                 (func $b (type $t) (i32.add (local.get 0) (global.get $g)))
                 (func $c (export "c") (result funcref) (ref.func $d))
                 (func $d)
                 (elem (i32.const 0) $b)
                 (elem declare func $d)
                 (start $start)
                 (data (i32.const 200) "hello"))"#,
        )
        .expect("wat");
        let out = rewritten(&wasm, CHUNK);
        let engine = Engine::new(&Config::new()).expect("engine");
        Module::validate(&engine, &out).expect("rewritten module validates");

        // One type and two functions appended; the helpers are called at
        // imports (2) + defined functions (5); names kept byte for byte.
        let (types, functions, customs, calls, bulk) = inspect(&wasm);
        let (types2, functions2, customs2, calls2, bulk2) = inspect(&out);
        assert_eq!((types2, functions2), (types + 1, functions + 2));
        assert_eq!(functions, 7);
        assert_eq!(calls, [1, 0]);
        assert_eq!(calls2, [7, 1, 8, 0]);
        assert!(customs.iter().any(|(name, _)| name == "name"));
        assert_eq!(customs, customs2);
        assert_eq!(bulk.len(), 2);
        assert!(bulk2.iter().all(|&(_, d, s)| (d, s) == (0, 0)));

        // And it runs: start fills, `a` copies and calls through the table.
        let module = Module::new(&engine, &out).expect("module");
        let mut store = Store::new(&engine, ());
        let memory = Memory::new(&mut store, MemoryType::new(2, None)).expect("memory");
        let mut linker = Linker::new(&engine);
        linker.func_wrap("env", "log", |_: i32| {}).expect("log");
        linker.func_wrap("env", "tick", || {}).expect("tick");
        linker.define(&store, "env", "mem", memory).expect("mem");
        let instance = linker.instantiate(&mut store, &module).expect("instance");
        let a = instance
            .get_typed_func::<i32, i32>(&mut store, "a")
            .expect("a");
        assert_eq!(a.call(&mut store, 10).expect("a"), 15);
        let data = memory.data(&store);
        assert_eq!(&data[..11], &[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]);
        assert_eq!(&data[100..111], &[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]);
        assert_eq!(&data[200..205], b"hello");
        let c = instance.get_typed_func::<(), Option<wasmtime::Func>>(&mut store, "c");
        assert!(c.expect("c").call(&mut store, ()).expect("c").is_some());
    }

    #[test]
    fn bulk_in_components_is_rewritten_in_every_nested_module() {
        let module = r#"(core module $m
                 (memory (export "mem") 1)
                 (func (export "fill") (param i32 i32 i32)
                   (memory.fill (local.get 0) (local.get 1) (local.get 2))))"#;
        let wasm =
            wat::parse_str(format!("(component {module} (component {module}))")).expect("wat");
        let Ok(Cow::Owned(out)) = make_component_interruptible(&wasm) else {
            panic!("not rewritten");
        };
        let engine = Engine::new(&Config::new()).expect("engine");
        wasmtime::component::Component::new(&engine, &out).expect("still a component");
        // both modules now call a helper instead of filling in one go
        let modules: Vec<_> = Parser::new(0)
            .parse_all(&out)
            .filter_map(|p| match p.expect("parses") {
                Payload::ModuleSection {
                    unchecked_range, ..
                } => {
                    Some(out[unchecked_range.start as usize..unchecked_range.end as usize].to_vec())
                }
                _ => None,
            })
            .collect();
        assert_eq!(modules.len(), 2);
        for module in modules {
            let (.., calls, _) = inspect(&module);
            assert_eq!(calls, [1]);
        }

        let plain = wat::parse_str("(component (core module))").expect("wat");
        assert!(matches!(
            make_component_interruptible(&plain),
            Ok(Cow::Borrowed(_))
        ));

        // deeper than WAT nests: each level a component section around the last
        let header = wat::parse_str("(component)").expect("wat");
        let deep = (0..=MAX_NESTING + 1).fold(header.clone(), |inner, _| {
            let mut outer = header.clone();
            outer.push(COMPONENT_SECTION);
            write_u32(&mut outer, inner.len() as u32);
            outer.extend_from_slice(&inner);
            outer
        });
        let refused = make_component_interruptible(&deep).expect_err("too deep");
        assert!(refused.contains("nested"), "{refused}");
    }

    #[test]
    fn bulk_on_other_memories_is_refused_and_memory64_left_alone() {
        for body in [
            "(memory.fill $m1 (local.get 0) (local.get 1) (local.get 2))",
            "(memory.copy $m0 $m1 (local.get 0) (local.get 1) (local.get 2))",
            "(memory.copy $m1 $m0 (local.get 0) (local.get 1) (local.get 2))",
        ] {
            let wasm = wat::parse_str(format!(
                r#"(module
                     (memory $m0 (export "mem") 1)
                     (memory $m1 1)
                     (func (export "fill") (param i32 i32 i32)
                       (memory.fill $m0 (local.get 0) (local.get 1) (local.get 2))
                       {body}))"#
            ))
            .expect("wat");
            let refused = make_interruptible(&wasm).expect_err(body);
            assert!(refused.contains("memory 0 only"), "{refused}");
        }

        let wasm = wat::parse_str(
            r#"(module
                 (memory i64 1)
                 (func (param i64 i32 i64)
                   (memory.fill (local.get 0) (local.get 1) (local.get 2))))"#,
        )
        .expect("wat");
        assert!(matches!(make_interruptible(&wasm), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn bulk_random_operations_match_with_a_small_chunk() {
        let engine = Engine::new(&Config::new()).expect("engine");
        let wasm = bulk_module(3);
        let original = Module::new(&engine, &wasm).expect("original");
        let chunked = Module::new(&engine, rewritten(&wasm, 64)).expect("rewritten");
        let size = 3 * PAGE;
        let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
        let mut traps = 0;
        for i in 0..400 {
            let init = rng.bytes(size as usize);
            let mut pick = |below: u32| (rng.next() % u64::from(below)) as u32;
            let d = pick(size + 100);
            let s = pick(size + 100);
            let n = match pick(5) {
                0 => pick(64),
                1 => pick(1000),
                2 => pick(size + 1),
                3 => size.saturating_sub(d.max(s)) + pick(3), // to the end, or just past it
                _ => u32::MAX - pick(100),
            };
            let (func, args) = if i % 2 == 0 {
                ("fill", (d, s, n))
            } else {
                ("copy", (d, s, n))
            };
            let label = format!("#{i} {func} {args:?}");
            let a = run(&original, &init, func, args);
            let b = run(&chunked, &init, func, args);
            assert_same(&label, &a, &b);
            traps += usize::from(a.0.is_err());
        }
        // Both outcomes are well represented.
        assert!((50..350).contains(&traps), "{traps} traps");
    }
}
