//! Where to attach in a kubelet binary: the Go runtime's memory entry points, found in `.symtab`
//! when present and in `.gopclntab` when the binary is stripped (Kubernetes release binaries are
//! built with `-s -w`); libc's `mmap`/`munmap`/`brk`/`sbrk` for non-Go builds. Also the function
//! table used to symbolize captured stacks.
use std::{os::unix::fs::OpenOptionsExt as _, path::Path};

use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a regular file (a directory or a device?): give the binary's path")]
    NotAFile { path: String },
    #[error("{path} is empty")]
    Empty { path: String },
    #[error(
        "{path} is cut short: {len} bytes, its ELF header places the section headers up to byte {needs} (a partial copy or download?)"
    )]
    Truncated { path: String, len: u64, needs: u64 },
    #[error("{path} is not an ELF object this agent can read")]
    NotElf {
        path: String,
        #[source]
        source: object::Error,
    },
    #[error("{path}: malformed .gopclntab ({reason})")]
    Pclntab { path: String, reason: &'static str },
    #[error("{path} is neither a Go binary nor linked with libc's mmap/brk: nothing to probe")]
    NothingToProbe { path: String },
    /// The binary's ELF machine (`e_machine`) is not the architecture whose registers this
    /// agent's uprobes read: its arguments would be read from the wrong registers.
    #[error(
        "{path} is built for {binary}; this agent's uprobes read {agent} registers: not probed"
    )]
    ForeignArch {
        path: String,
        binary: String,
        agent: &'static str,
    },
    /// This agent's architecture has no register map for the allocator uprobes.
    #[error(
        "{path}: the allocator uprobes are unsupported on {agent} (no register map): not probed"
    )]
    UnsupportedArch { path: String, agent: &'static str },
}

/// The architecture whose calling conventions this build's allocator uprobes read (the eBPF
/// object is built for the agent's own target architecture), or None where they have no
/// register map (the allocator uprobes are then not attached; see [`UNSUPPORTED_FEATURES`]).
pub fn uprobe_arch() -> Option<object::Architecture> {
    match std::env::consts::ARCH {
        "x86_64" => Some(object::Architecture::X86_64),
        "aarch64" => Some(object::Architecture::Aarch64),
        _ => None,
    }
}

/// Features this agent has no implementation of on `arch` (`std::env::consts::ARCH` names),
/// by the `feature` label of `oomprobe_feature_unsupported`: the kubelet allocator uprobes read
/// the Go register ABI and the C ABI from registers known for x86_64 and aarch64 only.
///
/// Go call sites on aarch64 come from the stack the eBPF program walks itself
/// (`probe_common::WalkedStack`: the kernel's arm64 walk stops where the Go runtime's system
/// stack links back to the goroutine's, which left 42.6 of 64 MiB on the leaking function).
pub fn unsupported_features(arch: &str) -> &'static [&'static str] {
    match arch {
        "x86_64" | "aarch64" => &[],
        _ => &["kubelet_alloc_uprobes"],
    }
}

/// For a little-endian ELF64 header whose section header table (`e_shoff` + `e_shnum` *
/// `e_shentsize`) ends beyond `data`: where it ends. None for anything else.
fn truncated_elf64(data: &[u8]) -> Option<u64> {
    let h = data.get(..64)?;
    if h[..4] != *b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return None;
    }
    let shoff = u64::from_le_bytes(h[0x28..0x30].try_into().ok()?);
    let shentsize = u64::from(u16::from_le_bytes(h[0x3a..0x3c].try_into().ok()?));
    let shnum = u64::from(u16::from_le_bytes(h[0x3c..0x3e].try_into().ok()?));
    let end = shoff.checked_add(shentsize.checked_mul(shnum)?)?;
    (end > data.len() as u64).then_some(end)
}

/// What a probe point measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Memory the Go heap commits (`runtime.sysMap`): the heap growing.
    GoHeapMap,
    /// Off-heap runtime allocations straight from the OS (`runtime.sysAlloc`).
    GoSysAlloc,
    /// Memory handed back (`runtime.sysFree`).
    GoFree,
    /// Pages the scavenger returns (`runtime.sysUnused`: madvise).
    GoUnused,
    /// libc `mmap` (length is the 2nd argument).
    LibcMmap,
    /// libc `munmap`.
    LibcMunmap,
    /// libc `brk`/`sbrk` (heap break moves).
    LibcBrk,
    LibcSbrk,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::GoHeapMap => "go_heap_map",
            Role::GoSysAlloc => "go_sys_alloc",
            Role::GoFree => "go_free",
            Role::GoUnused => "go_unused",
            Role::LibcMmap => "libc_mmap",
            Role::LibcMunmap => "libc_munmap",
            Role::LibcBrk => "libc_brk",
            Role::LibcSbrk => "libc_sbrk",
        }
    }

    /// A libc entry point (built without frame pointers: the caller is found by a stack scan).
    pub fn in_libc(self) -> bool {
        matches!(
            self,
            Role::LibcMmap | Role::LibcMunmap | Role::LibcBrk | Role::LibcSbrk
        )
    }

    /// Whether the bytes count as growth (true) or release (false).
    pub fn grows(self) -> bool {
        matches!(
            self,
            Role::GoHeapMap | Role::GoSysAlloc | Role::LibcMmap | Role::LibcBrk | Role::LibcSbrk
        )
    }
}

/// Go runtime entry points, by symbol, in order of preference. The arguments' registers follow
/// Go's internal register ABI (RAX, RBX, RCX...): `sysMap(v, n, stat)`, `sysAlloc(n, stat)`,
/// `sysFree(v, n, stat)`, `sysUnused(v, n)`.
/// The OS layer (`*OS`, go1.19+) comes first: the runtime also calls it directly (heap arena
/// metadata goes straight to `sysAllocOS`), so probing the wrappers would miss those bytes. The
/// wrappers are the fallback for older runtimes or when the OS layer was inlined away.
pub const GO_POINTS: &[(&str, Role)] = &[
    ("runtime.sysMapOS", Role::GoHeapMap),
    ("runtime.sysMap", Role::GoHeapMap),
    ("runtime.sysAllocOS", Role::GoSysAlloc),
    ("runtime.sysAlloc", Role::GoSysAlloc),
    ("runtime.sysFreeOS", Role::GoFree),
    ("runtime.sysFree", Role::GoFree),
    ("runtime.sysUnusedOS", Role::GoUnused),
    ("runtime.sysUnused", Role::GoUnused),
];

pub const LIBC_POINTS: &[(&str, Role)] = &[
    ("mmap", Role::LibcMmap),
    ("mmap64", Role::LibcMmap),
    ("munmap", Role::LibcMunmap),
    // glibc's malloc grows the heap through sbrk (brk takes an address, not a size).
    ("sbrk", Role::LibcSbrk),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Symtab,
    Pclntab,
    Dynsym,
}

impl Source {
    /// The serialized name: `symtab`, `pclntab`, `dynsym` (the ELF section or Go table read).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Symtab => "symtab",
            Source::Pclntab => "pclntab",
            Source::Dynsym => "dynsym",
        }
    }
}

/// One place to attach a uprobe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbePoint {
    pub symbol: String,
    /// File offset of the function's first instruction (what uprobes attach to).
    pub offset: u64,
    pub address: u64,
    pub source: Source,
    pub role: Role,
}

/// A Go function table: sorted entry addresses with names.
#[derive(Debug, Default, Clone)]
pub struct FuncTable {
    funcs: Vec<(u64, String)>,
    /// First address past the last function (0: unknown), so foreign frames do not resolve.
    end: u64,
}

impl FuncTable {
    pub fn len(&self) -> usize {
        self.funcs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.funcs.is_empty()
    }

    pub fn lookup_name(&self, name: &str) -> Option<u64> {
        self.funcs.iter().find(|(_, n)| n == name).map(|(a, _)| *a)
    }

    /// The function containing `addr`.
    pub fn symbolize(&self, addr: u64) -> Option<&str> {
        if self.end != 0 && addr >= self.end {
            return None;
        }
        let i = self.funcs.partition_point(|(a, _)| *a <= addr);
        let name = self.funcs.get(i.checked_sub(1)?).map(|(_, n)| n.as_str())?;
        // The linker's markers (`go:textfipsstart`, `go:textfipsend`, ...) are not functions:
        // an address after one, before the next Go function, is not Go code (in a cgo kubelet,
        // the C of cgo's mmap trampoline: a v1.36.1 kubelet's 56 MB of start-up maps were
        // named `go:textfipsend` on the lab).
        (!name.starts_with("go:")).then_some(name)
    }
}

/// System library directories searched for a dynamically linked kubelet's libc.
const LIB_DIRS: &[&str] = &[
    #[cfg(target_arch = "x86_64")]
    "/lib/x86_64-linux-gnu",
    #[cfg(target_arch = "x86_64")]
    "/usr/lib/x86_64-linux-gnu",
    #[cfg(target_arch = "aarch64")]
    "/lib/aarch64-linux-gnu",
    #[cfg(target_arch = "aarch64")]
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

fn uint(data: &[u8], off: usize, size: usize) -> Option<u64> {
    let b = data.get(off..off.checked_add(size)?)?;
    Some(match size {
        4 => u64::from(u32::from_le_bytes(b.try_into().ok()?)),
        8 => u64::from_le_bytes(b.try_into().ok()?),
        _ => return None,
    })
}

fn cstr_at(data: &[u8], off: usize) -> Option<String> {
    let rest = data.get(off..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok().map(str::to_string)
}

/// Parses a `.gopclntab` (Go 1.16 and later layouts) whose 1.18+ header carries the text start.
pub fn parse_pclntab(tab: &[u8]) -> Result<FuncTable, &'static str> {
    parse_pclntab_in(tab, None)
}

/// Parses a `.gopclntab`; `text_section` is the address of the binary's `.text` section, used
/// when a 1.18+ header's `textStart` is 0: an externally linked (cgo) binary leaves it
/// unrelocated, as release kubelets are (seen on a Kubernetes v1.34.4 kubelet built with
/// go1.26.8; Go's own debug/gosym takes the section address for the same reason).
pub fn parse_pclntab_in(tab: &[u8], text_section: Option<u64>) -> Result<FuncTable, &'static str> {
    let magic = uint(tab, 0, 4).ok_or("short header")? as u32;
    let ptr = *tab.get(7).ok_or("short header")? as usize;
    if ptr != 8 && ptr != 4 {
        return Err("pointer size");
    }
    let word = |i: usize| uint(tab, 8 + i * ptr, ptr).ok_or("short header");
    // Offsets and sizes below come from the file: summed with overflow checks, a table whose
    // numbers point past the address space is refused.
    let at = |base: usize, parts: &[usize]| -> Result<usize, &'static str> {
        parts
            .iter()
            .try_fold(base, |a, &p| a.checked_add(p))
            .ok_or("offset beyond the address space")
    };
    let index = |i: usize, stride: usize| i.checked_mul(stride).ok_or("function index overflows");
    let mut funcs = Vec::new();
    match magic {
        // go1.18-1.19 (0xfffffff0), go1.20+ (0xfffffff1)
        0xffff_fff0 | 0xffff_fff1 => {
            let nfunc = usize::try_from(word(0)?).map_err(|_| "nfunc")?;
            let text_start = match word(2)? {
                0 => text_section.ok_or("textStart unrelocated and no .text section")?,
                t => t,
            };
            let funcname = usize::try_from(word(3)?).map_err(|_| "funcnametab offset")?;
            let functab = usize::try_from(word(7)?).map_err(|_| "functab offset")?;
            for i in 0..nfunc {
                let e = at(functab, &[index(i, 8)?])?;
                let entry = uint(tab, e, 4).ok_or("functab")?;
                let funcoff = uint(tab, at(e, &[4])?, 4).ok_or("functab")? as usize;
                // The `_func` record starts with the same entry offset (`entryOff`): the linker
                // writes both from one value, so a difference is a damaged table, and a uprobe
                // at its address could land inside an instruction.
                if uint(tab, at(functab, &[funcoff])?, 4).ok_or("func")? != entry {
                    return Err("a function's table entry differs from its record's (damaged)");
                }
                let name_off = uint(tab, at(functab, &[funcoff, 4])?, 4).ok_or("func")? as usize;
                let name = cstr_at(tab, at(funcname, &[name_off])?).ok_or("name")?;
                let addr = text_start
                    .checked_add(entry)
                    .ok_or("function entry beyond the address space")?;
                funcs.push((addr, name));
            }
        }
        // go1.16-1.17
        0xffff_fffa => {
            let nfunc = usize::try_from(word(0)?).map_err(|_| "nfunc")?;
            let funcname = usize::try_from(word(2)?).map_err(|_| "funcnametab offset")?;
            let functab = usize::try_from(word(6)?).map_err(|_| "functab offset")?;
            for i in 0..nfunc {
                let e = at(functab, &[index(i, 2 * ptr)?])?;
                let entry = uint(tab, e, ptr).ok_or("functab")?;
                let funcoff = usize::try_from(uint(tab, at(e, &[ptr])?, ptr).ok_or("functab")?)
                    .map_err(|_| "func offset")?;
                // The `_func` record starts with the same entry (see above).
                if uint(tab, at(functab, &[funcoff])?, ptr).ok_or("func")? != entry {
                    return Err("a function's table entry differs from its record's (damaged)");
                }
                let name_off = uint(tab, at(functab, &[funcoff, ptr])?, 4).ok_or("func")? as usize;
                let name = cstr_at(tab, at(funcname, &[name_off])?).ok_or("name")?;
                funcs.push((entry, name));
            }
        }
        _ => return Err("unknown magic (Go older than 1.16, or not a pclntab)"),
    }
    funcs.sort_by_key(|(a, _)| *a);
    Ok(FuncTable { funcs, end: 0 })
}

/// `runtime.firstmoduledata.text` of a 64-bit Go 1.18+ binary: the start of Go's code, which an
/// external (cgo) link can place after C code at the start of `.text` (seen in a cgo kubectl
/// v1.34.4). The module data is found as the 8-byte-aligned word in a data section that points
/// at the pclntab and is followed by the funcnametab slice the header announces (go1.26 puts the
/// module data in its own `.go.module` section); `text` is its
/// 23rd word (pcHeader, 6 slices of 3 words, findfunctab, minpc, maxpc, then text).
fn go_text_start(elf: &object::File<'_>, pclntab_addr: u64, tab: &[u8]) -> Option<u64> {
    use object::{Object as _, ObjectSection as _};
    let magic = uint(tab, 0, 4)? as u32;
    if !matches!(magic, 0xffff_fff0 | 0xffff_fff1) || *tab.get(7)? != 8 {
        return None;
    }
    let funcname = pclntab_addr.checked_add(uint(tab, 8 + 3 * 8, 8)?)?;
    for name in [".go.module", ".noptrdata", ".data.rel.ro", ".data"] {
        let Some(sec) = elf.section_by_name(name) else {
            continue;
        };
        let Ok(data) = sec.data() else {
            continue;
        };
        let mut off = 0;
        while off + 23 * 8 <= data.len() {
            if uint(data, off, 8) == Some(pclntab_addr) && uint(data, off + 8, 8) == Some(funcname)
            {
                let text = uint(data, off + 22 * 8, 8)?;
                return (text != 0).then_some(text);
            }
            off += 8;
        }
    }
    None
}

/// The largest binary [`Binary::read`] reads into memory: 1 GiB (a kubelet is ~100 MB).
pub const MAX_READ_BYTES: u64 = 1 << 30;

/// A binary opened for probing. The agent maps it read-only ([`Binary::open`]), not read: a
/// kubelet is ~100 MB; only the pages of the ELF headers, `.gopclntab` and the symbol tables are
/// ever touched, and they are file pages (page cache the running kubelet usually holds
/// already), dropped with the mapping, not anonymous memory charged to the agent's cgroup.
/// `probe-points` reads it whole ([`Binary::read`]), so no truncation can fault it.
pub struct Binary {
    pub path: String,
    data: Bytes,
}

/// A binary's bytes: the file mapped, or bytes in memory ([`Binary::read`],
/// [`Binary::from_bytes`]).
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

impl Binary {
    /// The file opened for reading, checked to be a regular file and not empty.
    fn open_file(path: &Path) -> Result<(std::fs::File, u64), SymbolError> {
        let read_err = |source| SymbolError::Read {
            path: path.display().to_string(),
            source,
        };
        // O_NONBLOCK: opening a FIFO for reading must not wait for a writer (it is refused
        // just below as not a file); the flag has no effect on a regular file's reads.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(read_err)?;
        // mmap's own errors for these are ENODEV and EINVAL: say what is wrong instead.
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(SymbolError::NotAFile {
                path: path.display().to_string(),
            });
        }
        if meta.len() == 0 {
            return Err(SymbolError::Empty {
                path: path.display().to_string(),
            });
        }
        Ok((file, meta.len()))
    }

    /// The binary mapped read-only (the agent: a kubelet's pages are page cache, not memory
    /// charged to the agent's cgroup). A file truncated in place while mapped makes an access
    /// past its new end fault (SIGBUS): for a one-shot command, [`Binary::read`].
    pub fn open(path: &Path) -> Result<Binary, SymbolError> {
        let (file, _) = Binary::open_file(path)?;
        // SAFETY: a private read-only mapping. Its contents change (or the access faults) only
        // if the file is modified in place while mapped; a running executable cannot be written
        // (ETXTBSY), and installers replace binaries by rename, which leaves this inode intact.
        let data = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| SymbolError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Binary {
            path: path.display().to_string(),
            data: Bytes::Mapped(data),
        })
    }

    /// The binary read into memory, at most [`MAX_READ_BYTES`]: no mapping, so a file
    /// rewritten or truncated meanwhile is read as it was (or as far as it goes), never a
    /// SIGBUS (`oomprobe probe-points`). Errors as [`Binary::open`], and a file larger than
    /// the bound.
    pub fn read(path: &Path) -> Result<Binary, SymbolError> {
        use std::io::Read as _;
        let read_err = |source| SymbolError::Read {
            path: path.display().to_string(),
            source,
        };
        let too_large = |len: u64| {
            read_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{len} bytes, more than the {MAX_READ_BYTES} read"),
            ))
        };
        let (file, len) = Binary::open_file(path)?;
        if len > MAX_READ_BYTES {
            return Err(too_large(len));
        }
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(MAX_READ_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(read_err)?;
        if data.len() as u64 > MAX_READ_BYTES {
            return Err(too_large(data.len() as u64));
        }
        if data.is_empty() {
            return Err(SymbolError::Empty {
                path: path.display().to_string(),
            });
        }
        Ok(Binary {
            path: path.display().to_string(),
            data: Bytes::Owned(data),
        })
    }

    /// A binary from bytes already read (an ELF file's whole contents); `name` stands for its
    /// path in errors. Nothing is checked until a table is asked for, as with [`Binary::open`].
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Binary {
        Binary {
            path: name.to_string(),
            data: Bytes::Owned(bytes),
        }
    }

    fn elf(&self) -> Result<object::File<'_>, SymbolError> {
        object::File::parse(&*self.data).map_err(|source| match truncated_elf64(&self.data) {
            Some(needs) => SymbolError::Truncated {
                path: self.path.clone(),
                len: self.data.len() as u64,
                needs,
            },
            None => SymbolError::NotElf {
                path: self.path.clone(),
                source,
            },
        })
    }

    /// The Go function table, if this is a Go binary (stripped or not).
    pub fn go_functions(&self) -> Result<Option<FuncTable>, SymbolError> {
        let elf = self.elf()?;
        let Some(section) = elf.section_by_name(".gopclntab") else {
            return Ok(None);
        };
        let tab = section.data().map_err(|source| SymbolError::NotElf {
            path: self.path.clone(),
            source,
        })?;
        let text = go_text_start(&elf, section.address(), tab)
            .or_else(|| elf.section_by_name(".text").map(|s| s.address()));
        parse_pclntab_in(tab, text)
            .map(Some)
            .map_err(|reason| SymbolError::Pclntab {
                path: self.path.clone(),
                reason,
            })
    }

    /// Virtual address to file offset through the PT_LOAD segments.
    fn file_offset(elf: &object::File<'_>, addr: u64) -> Option<u64> {
        elf.segments().find_map(|seg| {
            let (off, size) = seg.file_range();
            let start = seg.address();
            // Segment fields come from the file: no sum may wrap.
            let into = addr.checked_sub(start).filter(|d| *d < size)?;
            into.checked_add(off)
        })
    }

    /// The probe points this binary offers, in GO_POINTS / LIBC_POINTS order.
    pub fn probe_points(&self) -> Result<Vec<ProbePoint>, SymbolError> {
        let elf = self.elf()?;
        let Some(arch) = uprobe_arch() else {
            return Err(SymbolError::UnsupportedArch {
                path: self.path.clone(),
                agent: std::env::consts::ARCH,
            });
        };
        if arch != elf.architecture() {
            return Err(SymbolError::ForeignArch {
                path: self.path.clone(),
                binary: format!("{:?}", elf.architecture()).to_lowercase(),
                agent: std::env::consts::ARCH,
            });
        }
        let defined = |s: &object::Symbol<'_, '_>| s.is_definition() && s.address() != 0;
        let mut symtab: Vec<(String, u64, Source)> = elf
            .symbols()
            .filter(defined)
            .filter_map(|s| Some((s.name().ok()?.to_string(), s.address(), Source::Symtab)))
            .collect();
        symtab.extend(
            elf.dynamic_symbols()
                .filter(defined)
                .filter_map(|s| Some((s.name().ok()?.to_string(), s.address(), Source::Dynsym))),
        );
        let go = self.go_functions()?;
        let mut out = Vec::new();
        if let Some(funcs) = &go {
            for (name, role) in GO_POINTS {
                if out.iter().any(|p: &ProbePoint| p.role == *role) {
                    continue;
                }
                let from_symtab = symtab
                    .iter()
                    .find(|(n, _, src)| n == name && *src == Source::Symtab)
                    .map(|(_, a, _)| *a);
                let (addr, source) = match from_symtab {
                    Some(a) => (a, Source::Symtab),
                    None => match funcs.lookup_name(name) {
                        Some(a) => (a, Source::Pclntab),
                        None => continue,
                    },
                };
                if let Some(offset) = Self::file_offset(&elf, addr) {
                    out.push(ProbePoint {
                        symbol: name.to_string(),
                        offset,
                        address: addr,
                        source,
                        role: *role,
                    });
                }
            }
        } else {
            for (name, role) in LIBC_POINTS {
                let Some((_, addr, source)) = symtab.iter().find(|(n, _, _)| n == name) else {
                    continue;
                };
                if out.iter().any(|p: &ProbePoint| p.role == *role) {
                    continue;
                }
                if let Some(offset) = Self::file_offset(&elf, *addr) {
                    out.push(ProbePoint {
                        symbol: name.to_string(),
                        offset,
                        address: *addr,
                        source: *source,
                        role: *role,
                    });
                }
            }
        }
        if out.is_empty() {
            return Err(SymbolError::NothingToProbe {
                path: self.path.clone(),
            });
        }
        Ok(out)
    }

    /// The link address of the page that maps file offset 0 (the first PT_LOAD's vaddr minus its
    /// offset, page-aligned): what the offset-0 mapping of a process's executable starts at when
    /// it is not relocated.
    pub fn offset0_load_address(&self) -> Option<u64> {
        let elf = self.elf().ok()?;
        elf.segments()
            .filter_map(|seg| {
                let (off, _) = seg.file_range();
                seg.address().checked_sub(off)
            })
            .min()
            .map(|a| a & !0xfff)
    }

    /// Function symbols of a non-Go binary (for symbolizing C/C++ call sites).
    pub fn elf_functions(&self) -> Option<FuncTable> {
        let elf = self.elf().ok()?;
        let mut funcs: Vec<(u64, String)> = Vec::new();
        let mut end = 0;
        for s in elf.symbols() {
            if s.kind() == object::SymbolKind::Text && s.address() != 0 {
                if let Ok(name) = s.name() {
                    funcs.push((s.address(), name.to_string()));
                    end = end.max(s.address().saturating_add(s.size()));
                }
            }
        }
        if funcs.is_empty() {
            return None;
        }
        funcs.sort_by_key(|(a, _)| *a);
        Some(FuncTable { funcs, end })
    }

    /// The libc a dynamically linked binary loads (DT_NEEDED libc.so.*), found in the system
    /// library directories under `root` (`/`, or a process's `/proc/PID/root`).
    pub fn needed_libc(&self, root: &Path) -> Option<std::path::PathBuf> {
        let elf = self.elf().ok()?;
        let needs_libc = elf
            .imports()
            .ok()?
            .iter()
            .any(|i| std::str::from_utf8(i.library()).is_ok_and(|l| l.starts_with("libc.so")));
        if !needs_libc {
            return None;
        }
        LIB_DIRS
            .iter()
            .map(|d| root.join(d.trim_start_matches('/')).join("libc.so.6"))
            .find(|p| p.exists())
    }

    /// Addresses of the named functions from `.symtab` only (for cross-checking).
    pub fn symtab_address(&self, name: &str) -> Option<u64> {
        let elf = self.elf().ok()?;
        elf.symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 little-endian executable header (no sections) for machine `e_machine`.
    fn elf_header(e_machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // ELFCLASS64
        h[5] = 1; // ELFDATA2LSB
        h[6] = 1; // EV_CURRENT
        h[16] = 2; // ET_EXEC
        h[18..20].copy_from_slice(&e_machine.to_le_bytes());
        h[20] = 1;
        h[52] = 64; // e_ehsize
        h[54] = 56; // e_phentsize
        h[58] = 64; // e_shentsize
        h
    }

    /// An address past a linker marker is not attributed to it (nor to the function before).
    #[test]
    fn linker_markers_are_not_functions() {
        let t = FuncTable {
            funcs: vec![
                (0x1000, "main.a".into()),
                (0x2000, "go:textfipsend".into()),
                (0x3000, "main.b".into()),
            ],
            end: 0x4000,
        };
        assert_eq!(t.symbolize(0x1500), Some("main.a"));
        assert_eq!(t.symbolize(0x2500), None);
        assert_eq!(t.symbolize(0x3500), Some("main.b"));
        assert_eq!(
            crate::kubelet::tracker::call_site(&[0x2500, 0x3500], 0, Some(&t), 0),
            "main.b"
        );
    }

    /// A binary cut short (a partial copy) says so, with its length and where its headers end.
    #[test]
    fn a_truncated_binary_says_it_is_cut_short() {
        let mut h = elf_header(62);
        h[0x28..0x30].copy_from_slice(&100_000u64.to_le_bytes()); // e_shoff
        h[0x3c..0x3e].copy_from_slice(&30u16.to_le_bytes()); // e_shnum
        h.resize(3000, 0);
        let e = Binary::from_bytes("/x/kubelet", h)
            .go_functions()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/x/kubelet is cut short: 3000 bytes, its ELF header places the section headers up to byte 101920 (a partial copy or download?)"
        );
    }

    /// `Binary::read` holds the bytes: the same points as the mapping, and a file truncated
    /// afterwards changes nothing (a mapping would fault with SIGBUS on the lost pages).
    /// A directory, an empty file and a FIFO are refused as by `open`.
    #[test]
    fn a_read_binary_survives_its_file_being_truncated() {
        let exe = std::env::current_exe().unwrap();
        let dir = std::env::temp_dir().join(format!("oomprobe-read-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("bin");
        std::fs::copy(&exe, &copy).unwrap();
        let want = Binary::open(&exe).unwrap().needed_libc(Path::new("/"));
        let bin = Binary::read(&copy).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&copy)
            .unwrap()
            .set_len(0)
            .unwrap();
        assert!(want.is_some());
        assert_eq!(bin.needed_libc(Path::new("/")), want);
        assert!(matches!(
            Binary::read(&copy),
            Err(SymbolError::Empty { .. })
        ));
        assert!(matches!(
            Binary::read(&dir),
            Err(SymbolError::NotAFile { .. })
        ));
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            Binary::read(&fifo),
            Err(SymbolError::NotAFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_binary_of_another_architecture_is_refused_not_probed() {
        const EM_X86_64: u16 = 62;
        const EM_AARCH64: u16 = 183;
        let (foreign, name) = if std::env::consts::ARCH == "x86_64" {
            (EM_AARCH64, "aarch64")
        } else {
            (EM_X86_64, "x86_64")
        };
        let path =
            std::env::temp_dir().join(format!("oomprobe-foreign-elf-{}", std::process::id()));
        std::fs::write(&path, elf_header(foreign)).unwrap();
        let err = Binary::open(&path).unwrap().probe_points();
        let _ = std::fs::remove_file(&path);
        match err {
            Err(SymbolError::ForeignArch { binary, agent, .. }) => {
                assert_eq!(binary, name);
                assert_eq!(agent, std::env::consts::ARCH);
            }
            other => panic!("expected ForeignArch, got {other:?}"),
        }
    }

    #[test]
    fn the_allocator_uprobes_are_unsupported_only_without_a_register_map() {
        assert!(unsupported_features("x86_64").is_empty());
        assert!(unsupported_features("aarch64").is_empty());
        assert_eq!(unsupported_features("riscv64"), &["kubelet_alloc_uprobes"]);
        assert_eq!(
            unsupported_features("powerpc64"),
            &["kubelet_alloc_uprobes"]
        );
    }

    /// A synthetic go1.20 table with two functions.
    fn table() -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&0xffff_fff1u32.to_le_bytes());
        t.extend_from_slice(&[0, 0, 1, 8]);
        let header_words = 8;
        let funcname = 8 + header_words * 8;
        let names = b"runtime.sysMap\0main.leak\0";
        let functab = funcname + names.len();
        let words: [u64; 8] = [2, 0, 0x401000, funcname as u64, 0, 0, 0, functab as u64];
        for w in words {
            t.extend_from_slice(&w.to_le_bytes());
        }
        t.extend_from_slice(names);
        // functab: 2 entries of (entryoff, funcoff) + end entry, then the _func records.
        let funcs_at = 2 * 8 + 4;
        for (entry, i) in [(0x200u32, 0u32), (0x100, 1)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&(funcs_at + i * 8).to_le_bytes());
        }
        t.extend_from_slice(&0x300u32.to_le_bytes());
        for (entry, name_off) in [(0x200u32, 0u32), (0x100, 15)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&name_off.to_le_bytes());
        }
        t
    }

    #[test]
    fn parses_go120_table() {
        let ft = parse_pclntab(&table()).unwrap();
        assert_eq!(ft.len(), 2);
        assert_eq!(ft.lookup_name("runtime.sysMap"), Some(0x401200));
        assert_eq!(ft.lookup_name("main.leak"), Some(0x401100));
        assert_eq!(ft.symbolize(0x401150), Some("main.leak"));
        assert_eq!(ft.symbolize(0x401250), Some("runtime.sysMap"));
        assert_eq!(ft.symbolize(0x400000), None);
        // A relocated header word wins over the section's address.
        let ft = parse_pclntab_in(&table(), Some(0x500000)).unwrap();
        assert_eq!(ft.lookup_name("main.leak"), Some(0x401100));
    }

    #[test]
    fn a_table_entry_that_differs_from_its_record_is_damage_not_an_address() {
        // The trial's case: one function's table entry moved by 3 bytes (its `_func` record
        // still says 0x100): refused, so no uprobe lands mid-instruction.
        let mut t = table();
        let functab = 8 + 8 * 8 + b"runtime.sysMap\0main.leak\0".len();
        let e = functab + 8;
        t[e..e + 4].copy_from_slice(&0x103u32.to_le_bytes());
        assert_eq!(
            parse_pclntab(&t).unwrap_err(),
            "a function's table entry differs from its record's (damaged)"
        );
    }

    #[test]
    fn unrelocated_text_start_takes_the_text_section() {
        // An externally linked binary's header says textStart 0.
        let mut t = table();
        t[8 + 2 * 8..8 + 3 * 8].copy_from_slice(&0u64.to_le_bytes());
        assert!(parse_pclntab(&t).is_err());
        let ft = parse_pclntab_in(&t, Some(0x401000)).unwrap();
        assert_eq!(ft.lookup_name("runtime.sysMap"), Some(0x401200));
        assert_eq!(ft.lookup_name("main.leak"), Some(0x401100));
    }

    #[test]
    fn rejects_garbage_tables() {
        assert!(parse_pclntab(b"nope").is_err());
        let mut t = table();
        t[0] = 0x12;
        assert!(parse_pclntab(&t).is_err());
        let mut t = table();
        t.truncate(60);
        assert!(parse_pclntab(&t).is_err());
    }

    /// What the `elf_symbols` fuzz target does with an input: every table, as an ELF file and
    /// as a bare `.gopclntab`. Must return, never panic.
    fn everything(data: &[u8]) {
        let _ = parse_pclntab(data);
        let _ = parse_pclntab_in(data, Some(u64::MAX - 16));
        let bin = Binary::from_bytes("fuzz", data.to_vec());
        let _ = bin.go_functions();
        let _ = bin.probe_points();
        let _ = bin.elf_functions();
        let _ = bin.symtab_address("runtime.sysMap");
    }

    /// Found by fuzzing (elf_symbols): a go1.20 table (the seed binary's, cut) whose entries
    /// added to a text start near the top of the address space overflowed (`text_start + entry`).
    #[test]
    fn fuzz_text_start_plus_entry_overflow_is_an_error() {
        let data = include_bytes!("../../tests/data/fuzz/elf_symbols/text-start-overflow");
        assert_eq!(
            parse_pclntab_in(data, Some(u64::MAX - 16)).err(),
            Some("function entry beyond the address space")
        );
        everything(data);
    }

    /// Header offsets at the top of `usize`: every sum is checked, the table refused.
    #[test]
    fn offsets_past_the_address_space_are_errors() {
        for word in [3, 7] {
            let mut t = table();
            let at = 8 + word * 8;
            t[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            assert!(parse_pclntab(&t).is_err(), "word {word}");
        }
    }
}
