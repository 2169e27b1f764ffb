//! Symbol resolution of a kubelet binary: arbitrary bytes as an ELF file (its `.symtab`,
//! `.dynsym`, `.gopclntab`, Go module data and PT_LOAD segments), and as a bare `.gopclntab`.
//! Seeds: a real go1.26 binary (stripped), its `.gopclntab`, and a C binary.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oomprobe::kubelet::symbols::{parse_pclntab, parse_pclntab_in, Binary};

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = parse_pclntab(data) {
        let _ = t.symbolize(0x401000);
    }
    if let Ok(t) = parse_pclntab_in(data, Some(u64::MAX - 16)) {
        let _ = t.symbolize(u64::MAX);
    }
    let bin = Binary::from_bytes("fuzz", data.to_vec());
    let _ = bin.go_functions();
    let _ = bin.probe_points();
    if let Some(t) = bin.elf_functions() {
        let _ = t.symbolize(0x401000);
    }
    let _ = bin.symtab_address("runtime.sysMap");
});
