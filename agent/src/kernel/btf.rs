//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): struct member offsets and
//! enum values, so the kernel programs can follow `task_struct -> css_set -> cgroup -> kernfs_node`
//! on whatever kernel runs, without hard-coded layouts.
//!
//! Format: Documentation/bpf/btf.rst (type section of `struct btf_type` records).
use std::path::Path;

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

/// Parsed lazily: the raw type section and where each type's record starts. Members and
/// enumerators are read from the bytes when asked for, so loading keeps no per-type structures
/// (the kernel's BTF has ~100k types; materializing them tripled the agent's start-up peak).
pub struct Btf {
    data: Vec<u8>,
    /// Byte range of the string section in `data`.
    strings: std::ops::Range<usize>,
    /// Record offset in `data` per type id; index 0 is the void type.
    offsets: Vec<u32>,
}

fn le32(data: &[u8], o: usize) -> Option<u32> {
    data.get(o..o + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Bytes that follow a type record's 12-byte header.
fn trailing(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION => 12 * vlen,
        KIND_ENUM => 8 * vlen,
        KIND_ENUM64 => 12 * vlen,
        KIND_FUNC_PROTO => 8 * vlen,
        KIND_DATASEC => 12 * vlen,
        0 | 2 | 7..=12 | 16 | 18 => 0,
        _ => return None,
    })
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
        Self::parse_owned(data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        Self::parse_owned(data.to_vec())
    }

    fn parse_owned(data: Vec<u8>) -> Result<Self, BtfError> {
        let short = BtfError::Malformed("short header");
        if data.get(0..2) != Some(&[0x9f, 0xeb][..]) {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let word = |o: usize| le32(&data, o).map(|v| v as usize);
        let (Some(hdr_len), Some(type_off), Some(type_len), Some(str_off), Some(str_len)) =
            (word(4), word(8), word(12), word(16), word(20))
        else {
            return Err(short);
        };
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if strings.end > data.len() {
            return Err(BtfError::Malformed("string section out of bounds"));
        }
        let start = hdr_len + type_off;
        let end = start + type_len;
        if end > data.len() {
            return Err(BtfError::Malformed("type section out of bounds"));
        }
        let mut offsets = vec![0u32];
        let mut pos = start;
        while pos < end {
            let info = le32(&data, pos + 4).ok_or(BtfError::Malformed("truncated type record"))?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            offsets.push(pos as u32);
            pos += 12 + trailing(kind, vlen).ok_or(BtfError::Malformed("unknown type kind"))?;
        }
        if pos != end {
            return Err(BtfError::Malformed("truncated type record"));
        }
        Ok(Btf {
            data,
            strings,
            offsets,
        })
    }

    fn str_at(&self, off: u32) -> &str {
        let strings = &self.data[self.strings.clone()];
        let rest = strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// (name offset, kind, vlen, kind_flag, body offset) of type `id`.
    fn header(&self, id: u32) -> Option<(u32, u32, usize, bool, usize)> {
        let pos = *self.offsets.get(id as usize)? as usize;
        if id == 0 {
            return None;
        }
        let name = le32(&self.data, pos)?;
        let info = le32(&self.data, pos + 4)?;
        Some((
            name,
            (info >> 24) & 0x1f,
            (info & 0xffff) as usize,
            info >> 31 == 1,
            pos + 12,
        ))
    }

    /// Members of a struct or union: (name offset, type id, bit offset).
    fn members(&self, id: u32) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        let h = self
            .header(id)
            .filter(|h| h.1 == KIND_STRUCT || h.1 == KIND_UNION);
        let (vlen, flag, body) = h.map_or((0, false, 0), |h| (h.2, h.3, h.4));
        (0..vlen).filter_map(move |i| {
            let o = body + 12 * i;
            let off = le32(&self.data, o + 8)?;
            Some((
                le32(&self.data, o)?,
                le32(&self.data, o + 4)?,
                if flag { off & 0xff_ffff } else { off },
            ))
        })
    }

    /// Byte offset of `member` in `struct strukt`, looking through anonymous structs and unions.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = (1..self.offsets.len() as u32)
            .find(|&id| {
                self.header(id).is_some_and(|(name, kind, vlen, _, _)| {
                    (kind == KIND_STRUCT || kind == KIND_UNION)
                        && vlen > 0
                        && name != 0
                        && self.str_at(name) == strukt
                })
            })
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        self.find_member(id, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.to_string(),
                member: member.to_string(),
            })
    }

    /// `sizeof(struct strukt)` in bytes.
    pub fn struct_size(&self, strukt: &str) -> Result<u32, BtfError> {
        let id = self.struct_id(strukt)?;
        let pos = self.offsets[id as usize] as usize;
        le32(&self.data, pos + 8).ok_or(BtfError::Malformed("truncated type record"))
    }

    fn struct_id(&self, strukt: &str) -> Result<u32, BtfError> {
        (1..self.offsets.len() as u32)
            .find(|&id| {
                self.header(id).is_some_and(|(name, kind, vlen, _, _)| {
                    (kind == KIND_STRUCT || kind == KIND_UNION)
                        && vlen > 0
                        && name != 0
                        && self.str_at(name) == strukt
                })
            })
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))
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
        if let Some((_, _, bits)) = self
            .members(id)
            .find(|(name, _, _)| *name != 0 && self.str_at(*name) == member)
        {
            return Some(bits);
        }
        self.members(id)
            .filter(|(name, _, _)| *name == 0)
            .find_map(|(_, ty, bits)| Some(bits + self.find_member(ty, member, depth + 1)?))
    }

    /// Value of an enumerator (e.g. `memory_cgrp_id`) in any enum.
    pub fn enum_value(&self, enumerator: &str) -> Result<i64, BtfError> {
        (1..self.offsets.len() as u32)
            .find_map(|id| {
                let (_, kind, vlen, _, body) = self.header(id)?;
                let (stride, wide) = match kind {
                    KIND_ENUM => (8, false),
                    KIND_ENUM64 => (12, true),
                    _ => return None,
                };
                (0..vlen).find_map(|i| {
                    let o = body + stride * i;
                    if self.str_at(le32(&self.data, o)?) != enumerator {
                        return None;
                    }
                    let lo = le32(&self.data, o + 4)?;
                    Some(if wide {
                        ((u64::from(le32(&self.data, o + 8)?) << 32) | u64::from(lo)) as i64
                    } else {
                        i64::from(lo as i32)
                    })
                })
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
        assert_eq!(btf.struct_size("outer").unwrap(), 16);
        assert!(matches!(
            btf.struct_size("nope"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all").is_err());
        let mut b = blob();
        b.truncate(40);
        assert!(Btf::parse(&b).is_err());
    }

    /// What bpftool (libbpf's own BTF reader, a different implementation) says of this
    /// kernel's BTF: `STRUCT 'name'` entries with `'member' ... bits_offset=N` lines, and
    /// `'ENUMERATOR' val=N` lines.
    fn bpftool_dump() -> String {
        let out = std::process::Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX, "format", "raw"])
            .output()
            .unwrap_or_else(|e| {
                panic!("bpftool not runnable ({e}): `cargo xtask setup` installs Debian's bpftool")
            });
        assert!(
            out.status.success(),
            "bpftool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("bpftool prints UTF-8")
    }

    /// The byte offset bpftool gives for `strukt.member` (first non-empty struct of that name,
    /// as [`Btf::member_offset`] takes).
    fn bpftool_offset(dump: &str, strukt: &str, member: &str) -> Option<u32> {
        let head = format!("] STRUCT '{strukt}' ");
        let mut lines = dump
            .lines()
            .skip_while(|l| !l.contains(&head) || l.ends_with("vlen=0"));
        lines.next()?;
        lines
            .take_while(|l| l.starts_with('\t'))
            .find(|l| l.trim_start().starts_with(&format!("'{member}' ")))
            .and_then(|l| l.split("bits_offset=").nth(1))
            .and_then(|b| b.split_whitespace().next()?.parse::<u32>().ok())
            .map(|bits| bits / 8)
    }

    #[test]
    fn reads_this_kernels_cgroup_chain_exactly_as_bpftool() {
        // The agent needs this file on every kernel it runs on (CONFIG_DEBUG_INFO_BTF=y); so does
        // this test: it fails rather than skip where the kernel lacks it.
        let btf = Btf::from_sys_fs().unwrap_or_else(|e| {
            panic!("{VMLINUX} unreadable ({e}): this kernel lacks CONFIG_DEBUG_INFO_BTF")
        });
        let dump = bpftool_dump();
        for (strukt, member) in [
            ("task_struct", "cgroups"),
            ("cgroup", "kn"),
            ("css_set", "subsys"),
        ] {
            let want = bpftool_offset(&dump, strukt, member)
                .unwrap_or_else(|| panic!("bpftool has no {strukt}.{member}"));
            assert_eq!(
                btf.member_offset(strukt, member).unwrap(),
                want,
                "{strukt}.{member}"
            );
        }
        let parent = ["__parent", "parent"]
            .iter()
            .find_map(|m| bpftool_offset(&dump, "kernfs_node", m))
            .expect("bpftool: kernfs_node has neither __parent nor parent");
        assert_eq!(
            btf.member_offset_any("kernfs_node", &["__parent", "parent"])
                .unwrap(),
            parent
        );
        let want: i64 = dump
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("'memory_cgrp_id' val="))
            .and_then(|v| v.trim().parse().ok())
            .expect("bpftool: no memory_cgrp_id enumerator");
        assert_eq!(btf.enum_value("memory_cgrp_id").unwrap(), want);
    }
}
