//! The capture file's bytes: a file header, then blocks.
//!
//! ```text
//! file   := "TCPTRACE" version:u32 reserved:u32 block*
//! block  := kind:u32 len:u32 count:u32 crc32:u32 ktime_ns:u64 payload[len]
//! ```
//!
//! Little-endian throughout (records are the probe's native layout, and
//! the hosts BPF runs on with this probe are little-endian). The first
//! block is the metadata (JSON); `Records` blocks hold ring records exactly
//! as the probe wrote them, back to back, each starting with its
//! `RecordHeader`; `Losses` blocks (JSON) place the loss counters in time;
//! the `Summary` block (JSON) ends a file that was closed properly. Each
//! block is written with one write(2) and carries its payload's CRC-32: a
//! file cut short is read up to its last complete block, and damage is
//! found, never decoded as records.
use tcptrace_common::RecordHeader;

pub const MAGIC: &[u8; 8] = b"TCPTRACE";
/// Bumped when a reader of the previous version could not read the file.
/// Version 2 added the `Cgroups` block; version 1 files are still read.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version this tcptrace reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
pub const FILE_HEADER_SIZE: usize = 16;
pub const BLOCK_HEADER_SIZE: usize = 24;
/// No block is larger (a corrupted length is refused before it is read).
pub const MAX_BLOCK: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Metadata = 1,
    Records = 2,
    Losses = 3,
    Summary = 4,
    /// JSON `{"cgroups":[[id,"path"],...]}`: the names of the owners'
    /// cgroups in the records blocks that follow (each file names its own).
    Cgroups = 5,
}

impl BlockKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => BlockKind::Metadata,
            2 => BlockKind::Records,
            3 => BlockKind::Losses,
            4 => BlockKind::Summary,
            5 => BlockKind::Cgroups,
            _ => return None,
        })
    }
}

pub fn file_header() -> [u8; FILE_HEADER_SIZE] {
    let mut h = [0u8; FILE_HEADER_SIZE];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// A block's header, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub kind: u32,
    pub len: u32,
    /// Records in a `Records` block; 0 otherwise.
    pub count: u32,
    pub crc32: u32,
    /// When the block was written (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
}

impl BlockHeader {
    pub fn encode(&self) -> [u8; BLOCK_HEADER_SIZE] {
        let mut h = [0u8; BLOCK_HEADER_SIZE];
        h[0..4].copy_from_slice(&self.kind.to_le_bytes());
        h[4..8].copy_from_slice(&self.len.to_le_bytes());
        h[8..12].copy_from_slice(&self.count.to_le_bytes());
        h[12..16].copy_from_slice(&self.crc32.to_le_bytes());
        h[16..24].copy_from_slice(&self.ktime_ns.to_le_bytes());
        h
    }

    pub fn decode(h: &[u8; BLOCK_HEADER_SIZE]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        BlockHeader {
            kind: u32_at(0),
            len: u32_at(4),
            count: u32_at(8),
            crc32: u32_at(12),
            ktime_ns: u64::from_le_bytes(h[16..24].try_into().unwrap()),
        }
    }
}

/// Appends one whole block (header and payload) to `out`.
pub fn write_block(out: &mut Vec<u8>, kind: BlockKind, count: u32, ktime_ns: u64, payload: &[u8]) {
    let header = BlockHeader {
        kind: kind as u32,
        len: payload.len() as u32,
        count,
        crc32: crc32fast::hash(payload),
        ktime_ns,
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
}

/// The records of a `Records` block's payload, each with its offset in the
/// payload; stops at the first record whose length does not fit (returns
/// its offset as the error).
pub fn split_records(payload: &[u8]) -> RecordIter<'_> {
    RecordIter { payload, pos: 0 }
}

pub struct RecordIter<'a> {
    payload: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<&'a [u8], usize>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.payload[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let at = self.pos;
        if rest.len() < RecordHeader::SIZE {
            self.pos = self.payload.len();
            return Some(Err(at));
        }
        let len = u16::from_le_bytes([rest[2], rest[3]]) as usize;
        if len < RecordHeader::SIZE || len > rest.len() {
            self.pos = self.payload.len();
            return Some(Err(at));
        }
        self.pos += len;
        Some(Ok(&rest[..len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_header_round_trips() {
        let h = BlockHeader {
            kind: 2,
            len: 224,
            count: 2,
            crc32: 0xdead_beef,
            ktime_ns: 123_456_789,
        };
        assert_eq!(BlockHeader::decode(&h.encode()), h);
    }

    #[test]
    fn records_split_by_their_own_length() {
        let mut payload = vec![0u8; 24];
        payload[2..4].copy_from_slice(&16u16.to_le_bytes());
        payload[18..20].copy_from_slice(&8u16.to_le_bytes());
        let parts: Vec<_> = split_records(&payload).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].unwrap().len(), 16);
        assert_eq!(parts[1].unwrap().len(), 8);
        payload[18..20].copy_from_slice(&80u16.to_le_bytes());
        let parts: Vec<_> = split_records(&payload).collect();
        assert_eq!(parts[1], Err(16));
    }
}
