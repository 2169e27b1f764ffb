//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): struct member offsets and
//! enum values, so the kernel programs can follow `task_struct -> css_set -> cgroup -> kernfs_node`
//! on whatever kernel runs, without hard-coded layouts.
//!
//! Format: Documentation/bpf/btf.rst (type section of `struct btf_type` records).
use std::{collections::HashMap, path::Path};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("kernel BTF not readable at {path} (is CONFIG_DEBUG_INFO_BTF set?)")]
    Missing {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("kernel BTF has no enumerator {0}")]
    NoEnumerator(String),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    Composite { name: u32, members: Vec<Member> },
    Enum { values: Vec<(u32, i64)> },
    Other,
}

/// Parsed type section.
pub struct Btf {
    strings: Vec<u8>,
    /// Index 0 is the void type; ids start at 1 as in the kernel.
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
}

impl Btf {
    /// The running kernel's BTF (`OOMPROBE_BTF` overrides the path).
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        match std::env::var_os("OOMPROBE_BTF") {
            Some(p) => Self::from_path(Path::new(&p)),
            None => Self::from_path(Path::new(VMLINUX)),
        }
    }

    pub fn from_path(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Missing {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |o: usize| {
            data.get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if u16_at(0) != Some(0xeb9f) {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(4).ok_or(BtfError::Malformed("short header"))? as usize;
        let type_off = u32_at(8).ok_or(BtfError::Malformed("short header"))? as usize;
        let type_len = u32_at(12).ok_or(BtfError::Malformed("short header"))? as usize;
        let str_off = u32_at(16).ok_or(BtfError::Malformed("short header"))? as usize;
        let str_len = u32_at(20).ok_or(BtfError::Malformed("short header"))? as usize;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        let start = hdr_len + type_off;
        let end = start + type_len;
        if end > data.len() {
            return Err(BtfError::Malformed("type section out of bounds"));
        }
        let mut types = vec![Type::Other];
        let mut pos = start;
        let trunc = BtfError::Malformed("truncated type record");
        while pos < end {
            let name = u32_at(pos).ok_or(BtfError::Malformed("truncated type record"))?;
            let info = u32_at(pos + 4).ok_or(BtfError::Malformed("truncated type record"))?;
            pos += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => {
                    pos += 4;
                    Type::Other
                }
                KIND_ARRAY => {
                    pos += 12;
                    Type::Other
                }
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let m_name = u32_at(pos).ok_or(BtfError::Malformed("member"))?;
                        let m_type = u32_at(pos + 4).ok_or(BtfError::Malformed("member"))?;
                        let m_off = u32_at(pos + 8).ok_or(BtfError::Malformed("member"))?;
                        let bit_offset = if kind_flag { m_off & 0xff_ffff } else { m_off };
                        members.push(Member {
                            name: m_name,
                            type_id: m_type,
                            bit_offset,
                        });
                        pos += 12;
                    }
                    Type::Composite { name, members }
                }
                KIND_ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let n = u32_at(pos).ok_or(BtfError::Malformed("enum"))?;
                        let v = u32_at(pos + 4).ok_or(BtfError::Malformed("enum"))? as i32;
                        values.push((n, i64::from(v)));
                        pos += 8;
                    }
                    Type::Enum { values }
                }
                KIND_ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let n = u32_at(pos).ok_or(BtfError::Malformed("enum64"))?;
                        let lo = u32_at(pos + 4).ok_or(BtfError::Malformed("enum64"))?;
                        let hi = u32_at(pos + 8).ok_or(BtfError::Malformed("enum64"))?;
                        values.push((n, ((u64::from(hi) << 32) | u64::from(lo)) as i64));
                        pos += 12;
                    }
                    Type::Enum { values }
                }
                KIND_FUNC_PROTO => {
                    pos += 8 * vlen;
                    Type::Other
                }
                KIND_DATASEC => {
                    pos += 12 * vlen;
                    Type::Other
                }
                0 | 2 | 7..=12 | 16 | 18 => Type::Other,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            types.push(ty);
        }
        if pos != end {
            return Err(trunc);
        }
        let mut btf = Btf {
            strings,
            types,
            structs_by_name: HashMap::new(),
        };
        let mut by_name = HashMap::new();
        for (id, ty) in btf.types.iter().enumerate() {
            if let Type::Composite { name, members } = ty {
                if *name != 0 && !members.is_empty() {
                    by_name
                        .entry(btf.str_at(*name).to_string())
                        .or_insert(id as u32);
                }
            }
        }
        btf.structs_by_name = by_name;
        Ok(btf)
    }

    fn str_at(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Byte offset of `member` in `struct strukt`, looking through anonymous structs and unions.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        self.find_member(id, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.to_string(),
                member: member.to_string(),
            })
    }

    /// The first of `members` that `strukt` has (fields renamed across kernel versions).
    pub fn member_offset_any(&self, strukt: &str, members: &[&str]) -> Result<u32, BtfError> {
        let mut last = None;
        for m in members {
            match self.member_offset(strukt, m) {
                Ok(off) => return Ok(off),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| BtfError::NoStruct(strukt.to_string())))
    }

    fn find_member(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        let Type::Composite { members, .. } = self.types.get(id as usize)? else {
            return None;
        };
        for m in members {
            if m.name != 0 && self.str_at(m.name) == member {
                return Some(m.bit_offset);
            }
        }
        for m in members.iter().filter(|m| m.name == 0) {
            if let Some(inner) = self.find_member(m.type_id, member, depth + 1) {
                return Some(m.bit_offset + inner);
            }
        }
        None
    }

    /// Value of an enumerator (e.g. `memory_cgrp_id`) in any enum.
    pub fn enum_value(&self, enumerator: &str) -> Result<i64, BtfError> {
        self.types
            .iter()
            .find_map(|t| match t {
                Type::Enum { values } => values
                    .iter()
                    .find(|(n, _)| self.str_at(*n) == enumerator)
                    .map(|(_, v)| *v),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoEnumerator(enumerator.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: struct outer { int a; union { int b; long c; }; } and an enum.
    fn blob() -> Vec<u8> {
        let strings = b"\0outer\0a\0b\0c\0int\0long\0ids\0first_id\0second_id\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: long
        push(&[s("long"), KIND_INT << 24, 8, 64]);
        // 3: anonymous union { int b; long c; }
        push(&[0, (KIND_UNION << 24) | 2, 8]);
        push(&[s("b"), 1, 0, s("c"), 2, 0]);
        // 4: struct outer { int a; <anon union> at 64 bits }
        push(&[s("outer"), (KIND_STRUCT << 24) | 2, 16]);
        push(&[s("a"), 1, 0, 0, 3, 64]);
        // 5: enum ids { first_id = 0, second_id = 7 }
        push(&[s("ids"), (KIND_ENUM << 24) | 2, 4]);
        push(&[s("first_id"), 0, s("second_id"), 7]);
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 8);
        assert_eq!(btf.member_offset_any("outer", &["zz", "c"]).unwrap(), 8);
        assert!(matches!(
            btf.member_offset("outer", "zz"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(BtfError::NoStruct(_))
        ));
        assert_eq!(btf.enum_value("second_id").unwrap(), 7);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all").is_err());
        let mut b = blob();
        b.truncate(40);
        assert!(Btf::parse(&b).is_err());
    }

    #[test]
    fn reads_this_kernels_cgroup_chain_when_present() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("SKIP: no {VMLINUX} on this machine (CONFIG_DEBUG_INFO_BTF off)");
            return;
        };
        assert!(btf.member_offset("task_struct", "cgroups").unwrap() > 0);
        assert!(btf.member_offset("cgroup", "kn").unwrap() > 0);
        btf.member_offset_any("kernfs_node", &["__parent", "parent"])
            .unwrap();
        assert!(btf.enum_value("memory_cgrp_id").unwrap() >= 0);
    }
}
