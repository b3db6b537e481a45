//! Just enough of a BTF reader to find kernel struct member offsets.
//!
//! The probe cannot use CO-RE relocations from Rust, so userspace resolves
//! the few offsets it needs from /sys/kernel/btf/vmlinux at start-up and
//! hands them to the probe as load-time constants.
use std::collections::HashMap;

use anyhow::{bail, Context, Result};

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Copy)]
struct TypeEntry {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// size for structs, referenced type id for modifiers and typedefs
    size_or_type: u32,
    /// byte offset of the kind-specific data following the 12-byte header
    data: usize,
}

pub struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    /// index = type id; id 0 is void
    entries: Vec<TypeEntry>,
    structs_by_name: HashMap<String, u32>,
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        let raw = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        Self::parse(&raw).with_context(|| format!("parsing {path}"))
    }

    pub fn parse(raw: &[u8]) -> Result<Self> {
        let u16_at = |o: usize| -> Result<u16> {
            Ok(u16::from_le_bytes(
                raw.get(o..o + 2).context("truncated")?.try_into()?,
            ))
        };
        let u32_at = |o: usize| -> Result<u32> {
            Ok(u32::from_le_bytes(
                raw.get(o..o + 4).context("truncated")?.try_into()?,
            ))
        };
        if u16_at(0)? != BTF_MAGIC {
            bail!("not little-endian BTF");
        }
        let hdr_len = u32_at(4)? as usize;
        let type_off = hdr_len + u32_at(8)? as usize;
        let type_len = u32_at(12)? as usize;
        let str_off = hdr_len + u32_at(16)? as usize;
        let str_len = u32_at(20)? as usize;
        let types = raw
            .get(type_off..type_off + type_len)
            .context("truncated type section")?;
        let strings = raw
            .get(str_off..str_off + str_len)
            .context("truncated string section")?;

        let mut entries = vec![TypeEntry {
            name_off: 0,
            kind: 0,
            vlen: 0,
            kind_flag: false,
            size_or_type: 0,
            data: 0,
        }];
        let mut pos = 0;
        while pos + 12 <= types.len() {
            let word = |o: usize| u32::from_le_bytes(types[o..o + 4].try_into().unwrap());
            let info = word(pos + 4);
            let entry = TypeEntry {
                name_off: word(pos),
                kind: (info >> 24) & 0x1f,
                vlen: (info & 0xffff) as usize,
                kind_flag: info >> 31 == 1,
                size_or_type: word(pos + 8),
                data: pos + 12,
            };
            let extra = match entry.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * entry.vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * entry.vlen,
                _ => 0,
            };
            entries.push(entry);
            pos += 12 + extra;
        }
        if pos > types.len() {
            bail!("truncated type entry");
        }

        let mut btf = Btf {
            types: types.to_vec(),
            strings: strings.to_vec(),
            entries,
            structs_by_name: HashMap::new(),
        };
        for id in 1..btf.entries.len() {
            let e = btf.entries[id];
            if e.kind == KIND_STRUCT && e.size_or_type > 0 {
                let name = btf.name(e.name_off).to_owned();
                if !name.is_empty() {
                    btf.structs_by_name.entry(name).or_insert(id as u32);
                }
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let bytes = self.strings.get(off as usize..).unwrap_or_default();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..end]).unwrap_or("")
    }

    fn word(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.types[off..off + 4].try_into().unwrap())
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.entries.get(id as usize) {
                Some(e)
                    if matches!(
                        e.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = e.size_or_type
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `member` in struct `name`, looking through anonymous
    /// structs and unions as C does.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32> {
        let id = *self
            .structs_by_name
            .get(name)
            .with_context(|| format!("struct {name} not found in kernel BTF"))?;
        self.find_member(id, member)
            .with_context(|| format!("struct {name} has no member {member} in kernel BTF"))
    }

    fn find_member(&self, id: u32, member: &str) -> Option<u32> {
        let e = self.entries.get(id as usize)?;
        if e.kind != KIND_STRUCT && e.kind != KIND_UNION {
            return None;
        }
        for i in 0..e.vlen {
            let m = e.data + 12 * i;
            let name_off = self.word(m);
            let member_type = self.word(m + 4);
            let raw_offset = self.word(m + 8);
            let bit_offset = if e.kind_flag {
                raw_offset & 0x00ff_ffff
            } else {
                raw_offset
            };
            let byte_offset = bit_offset / 8;
            let member_name = self.name(name_off);
            if member_name == member {
                return Some(byte_offset);
            }
            if member_name.is_empty() {
                if let Some(inner) = self.find_member(self.resolve(member_type), member) {
                    return Some(byte_offset + inner);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-built BTF: struct outer { int a; union { int b; int c; }; }
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0".to_vec();
        let (int, outer, a, b, c) = (1u32, 5u32, 11u32, 13u32, 15u32);
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        // id 1: int (size 4), followed by its encoding word
        push(&[int, KIND_INT << 24, 4, 32]);
        // id 2: anonymous union { b at 0, c at 0 }
        push(&[0, (KIND_UNION << 24) | 2, 4, b, 1, 0, c, 1, 0]);
        // id 3: struct outer { a at bit 0, anonymous union at bit 32 }
        push(&[outer, (KIND_STRUCT << 24) | 2, 8, a, 1, 0, 0, 2, 32]);
        let mut raw = Vec::new();
        raw.extend(BTF_MAGIC.to_le_bytes());
        raw.extend([1u8, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            raw.extend(w.to_le_bytes());
        }
        raw.extend(types);
        raw.extend(strings);
        raw
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 4);
        assert!(btf.member_offset("outer", "d").is_err());
        assert!(btf.member_offset("inner", "a").is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, clearly").is_err());
    }

    #[test]
    fn reads_this_kernel() {
        // Real kernel BTF: the offsets kernel-notes.md measured on 6.18.
        let btf = Btf::from_sys_fs().unwrap();
        assert_eq!(btf.member_offset("sock_common", "skc_dport").unwrap(), 12);
        assert_eq!(btf.member_offset("sock_common", "skc_num").unwrap(), 14);
        assert!(btf.member_offset("inet_timewait_sock", "tw_timer").unwrap() > 0);
    }
}
