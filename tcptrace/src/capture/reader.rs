//! Reading a capture back: the header, then one block at a time, every
//! complete block before any damage.
use std::{
    fs::File,
    io::{BufReader, ErrorKind, Read},
    path::{Path, PathBuf},
};

use serde_json::Value;

use super::{
    format::{
        split_records, BlockHeader, BlockKind, BLOCK_HEADER_SIZE, FILE_HEADER_SIZE, FORMAT_VERSION,
        MAGIC, MAX_BLOCK, OLDEST_FORMAT_VERSION,
    },
    Metadata,
};
use crate::{decode::Record, probe::LossCounters};

/// Why a capture could not be read (further): names the file and the byte.
#[derive(Debug, thiserror::Error)]
#[error("{}: {what}", path.display())]
pub struct CaptureError {
    pub path: PathBuf,
    pub what: String,
    /// The file ended inside a block: cut short (killed, disk full), not
    /// damaged. Everything before it was read.
    pub truncated: bool,
}

/// One block of a capture.
pub enum Block<'a> {
    /// Ring records as the probe wrote them, back to back.
    Records {
        ktime_ns: u64,
        /// Byte offset of the payload in the file, for messages.
        offset: u64,
        payload: &'a [u8],
    },
    Losses {
        ktime_ns: u64,
        counters: Value,
    },
    Summary(Value),
    /// Cgroup ids and their paths.
    Cgroups(Vec<(u64, String)>),
}

/// What a capture carries besides its records, as `read_capture` hands it on.
pub enum Side<'a> {
    /// A `Losses` block: when it was written (CLOCK_MONOTONIC) and its
    /// counters, cumulative over the capture.
    Losses(u64, &'a Value),
    /// Names of cgroup ids, before the records that carry them.
    Cgroups(&'a [(u64, String)]),
}

/// Block headers and small blocks come through this buffer; a payload at
/// least this large is read straight into the block buffer.
const READ_BUFFER: usize = 64 << 10;

/// A block as read: its kind, when it was written, its payload.
type RawBlock<'a> = (BlockKind, u64, &'a [u8]);

pub struct Reader {
    path: PathBuf,
    file: BufReader<Box<dyn Read + Send>>,
    /// Byte offset of the next block.
    offset: u64,
    pub metadata: Metadata,
    buf: Vec<u8>,
}

impl Reader {
    /// Opens `path` and reads its header and metadata.
    pub fn open(path: &Path) -> Result<Reader, CaptureError> {
        let fail = |what: String, truncated| CaptureError {
            path: path.to_owned(),
            what,
            truncated,
        };
        let file = File::open(path).map_err(|e| fail(format!("cannot open: {e}"), false))?;
        // open(2) succeeds on a directory; its read(2) would fail at byte 0.
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(fail("is a directory, not a capture file".into(), false));
        }
        Reader::new(path, Box::new(file))
    }

    /// Reads a capture from any byte stream (`name` is for messages).
    pub fn new(name: &Path, input: Box<dyn Read + Send>) -> Result<Reader, CaptureError> {
        let path = name;
        let fail = |what: String, truncated| CaptureError {
            path: path.to_owned(),
            what,
            truncated,
        };
        let mut reader = Reader {
            path: path.to_owned(),
            file: BufReader::with_capacity(READ_BUFFER, input),
            offset: 0,
            metadata: Metadata::default(),
            buf: Vec::new(),
        };
        let mut header = [0u8; FILE_HEADER_SIZE];
        match read_full(&mut reader.file, &mut header) {
            Ok(n) if n == FILE_HEADER_SIZE => {}
            Ok(0) => return Err(fail("empty file, not a tcptrace capture".into(), false)),
            Ok(n) => {
                let magic = n.min(MAGIC.len());
                if header[..magic] == MAGIC[..magic] {
                    return Err(fail(
                        format!(
                            "byte 0: the capture ends inside its {FILE_HEADER_SIZE}-byte file \
                             header ({n} bytes; cut short?)"
                        ),
                        true,
                    ));
                }
            }
            Err(e) => return Err(fail(format!("byte 0: {e}"), false)),
        }
        if &header[..8] != MAGIC {
            return Err(fail(
                "byte 0: not a tcptrace capture (no TCPTRACE magic)".into(),
                false,
            ));
        }
        let version = u32::from_le_bytes(header[8..12].try_into().unwrap());
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(fail(
                format!(
                    "byte 8: capture format version {version}; this tcptrace ({}) reads \
                     versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}",
                    env!("CARGO_PKG_VERSION")
                ),
                false,
            ));
        }
        reader.offset = FILE_HEADER_SIZE as u64;
        let (kind, _, payload) = match reader.next_raw()? {
            Some(block) => block,
            None => {
                return Err(fail(
                    format!("byte {FILE_HEADER_SIZE}: no metadata block (cut short at start?)"),
                    true,
                ))
            }
        };
        let at = FILE_HEADER_SIZE;
        if kind != BlockKind::Metadata {
            return Err(fail(
                format!("byte {at}: the first block is a {kind:?} block, not the metadata"),
                false,
            ));
        }
        let value: Value = serde_json::from_slice(payload)
            .map_err(|e| fail(format!("byte {at}: bad metadata: {e}"), false))?;
        reader.metadata = Metadata::from_json(&value)
            .map_err(|e| fail(format!("byte {at}: bad metadata: {e}"), false))?;
        Ok(reader)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next block; `None` at the end of the file.
    pub fn next_block(&mut self) -> Result<Option<Block<'_>>, CaptureError> {
        let at = self.offset;
        let Some((kind, ktime_ns, _)) = self.next_raw()? else {
            return Ok(None);
        };
        let path = self.path.clone();
        let json = |payload: &[u8]| {
            serde_json::from_slice::<Value>(payload).map_err(|e| CaptureError {
                path: path.clone(),
                what: format!("byte {at}: bad {kind:?} block: {e}"),
                truncated: false,
            })
        };
        let payload = &self.buf[..];
        Ok(Some(match kind {
            BlockKind::Records => Block::Records {
                ktime_ns,
                offset: at + BLOCK_HEADER_SIZE as u64,
                payload,
            },
            BlockKind::Losses => Block::Losses {
                ktime_ns,
                counters: json(payload)?,
            },
            BlockKind::Summary => Block::Summary(json(payload)?),
            BlockKind::Cgroups => Block::Cgroups(
                json(payload)?["cgroups"]
                    .as_array()
                    .map(|rows| rows.iter().filter_map(cgroup_row).collect())
                    .unwrap_or_default(),
            ),
            BlockKind::Metadata => {
                return Err(CaptureError {
                    path,
                    what: format!("byte {at}: a second metadata block"),
                    truncated: false,
                })
            }
        }))
    }

    /// Reads the next block into `buf`: (kind, ktime, payload).
    fn next_raw(&mut self) -> Result<Option<RawBlock<'_>>, CaptureError> {
        let at = self.offset;
        let fail = |what: String, truncated| CaptureError {
            path: self.path.clone(),
            what: format!("byte {at}: {what}"),
            truncated,
        };
        let mut raw = [0u8; BLOCK_HEADER_SIZE];
        match read_full(&mut self.file, &mut raw) {
            Ok(0) => return Ok(None),
            Ok(n) if n < BLOCK_HEADER_SIZE => {
                return Err(fail(
                    format!("the capture ends inside a block header ({n} of {BLOCK_HEADER_SIZE} bytes; cut short?)"),
                    true,
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(fail(e.to_string(), false)),
        }
        let header = BlockHeader::decode(&raw);
        let Some(kind) = BlockKind::from_u32(header.kind) else {
            return Err(fail(
                format!("unknown block kind {} (damaged?)", header.kind),
                false,
            ));
        };
        let len = header.len as usize;
        if len > MAX_BLOCK {
            return Err(fail(
                format!("block length {len} is over the {MAX_BLOCK}-byte limit (damaged?)"),
                false,
            ));
        }
        // Read as it comes rather than into a buffer of the length the
        // header claims: a damaged length in a small file costs no 64 MiB.
        self.buf.clear();
        match (&mut self.file).take(len as u64).read_to_end(&mut self.buf) {
            Ok(n) if n < len => {
                return Err(fail(
                    format!(
                        "the capture ends inside a {kind:?} block ({n} of {len} bytes; cut short?)"
                    ),
                    true,
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(fail(e.to_string(), false)),
        }
        if crc32fast::hash(&self.buf) != header.crc32 {
            return Err(fail(
                format!("{kind:?} block fails its checksum (damaged)"),
                false,
            ));
        }
        self.offset += (BLOCK_HEADER_SIZE + len) as u64;
        Ok(Some((kind, header.ktime_ns, &self.buf)))
    }
}

/// Reads until `buf` is full or the file ends: the bytes read.
fn read_full(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What a capture said besides its records, as `read_records` found it.
#[derive(Default)]
pub struct ReplayTally {
    pub metadata: Metadata,
    /// The last loss counters written (cumulative over the capture).
    pub losses: LossCounters,
    pub records_unwritten: u64,
    pub summary: Option<serde_json::Value>,
    pub records: u64,
    pub bad_records: u64,
    /// The first problem met (damage or a cut), as a one-line message.
    pub damage: Option<String>,
    /// When the last block was written (CLOCK_MONOTONIC).
    pub last_ktime_ns: u64,
}

/// Reads one file's blocks, handing each decodable record to `each`.
/// Damage ends the file (noted in the tally) unless nothing at all could
/// be read, which is an error.
pub fn read_records(
    reader: &mut Reader,
    tally: &mut ReplayTally,
    each: impl FnMut(&[u8], &Record) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    read_capture(reader, tally, each, |_| {})
}

/// `[id, "path"]` of a `Cgroups` block.
fn cgroup_row(row: &Value) -> Option<(u64, String)> {
    Some((row.get(0)?.as_u64()?, row.get(1)?.as_str()?.to_string()))
}

/// As `read_records`, and hands what else the capture says to `side`: every
/// `Losses` block (`report` plots them over time) and the cgroups' names.
pub fn read_capture(
    reader: &mut Reader,
    tally: &mut ReplayTally,
    mut each: impl FnMut(&[u8], &Record) -> anyhow::Result<()>,
    mut side: impl FnMut(Side),
) -> anyhow::Result<()> {
    let path = reader.path().to_owned();
    loop {
        let block = match reader.next_block() {
            Ok(Some(block)) => block,
            Ok(None) => return Ok(()),
            Err(err) => return damaged(err, tally),
        };
        let written_at = match &block {
            Block::Records { ktime_ns, .. } | Block::Losses { ktime_ns, .. } => *ktime_ns,
            Block::Summary(_) | Block::Cgroups(_) => 0,
        };
        tally.last_ktime_ns = tally.last_ktime_ns.max(written_at);
        match block {
            Block::Records {
                payload, offset, ..
            } => {
                for part in split_records(payload) {
                    let data = match part {
                        Ok(data) => data,
                        Err(at) => {
                            let err = CaptureError {
                                path: path.clone(),
                                what: format!(
                                    "byte {}: a record's length is damaged",
                                    offset + at as u64
                                ),
                                truncated: false,
                            };
                            return damaged(err, tally);
                        }
                    };
                    if crate::decode::is_cgroup_record(data) {
                        if let Some((id, path)) = crate::decode::cgroup_named(data) {
                            side(Side::Cgroups(&[(id, path.to_string())]));
                        }
                        continue;
                    }
                    match Record::decode(data) {
                        Ok(record) => {
                            tally.records += 1;
                            each(data, &record)?;
                        }
                        Err(_) => tally.bad_records += 1,
                    }
                }
            }
            Block::Cgroups(table) => side(Side::Cgroups(&table)),
            Block::Losses { counters, ktime_ns } => {
                side(Side::Losses(ktime_ns, &counters));
                tally.losses = super::losses_from_json(&counters);
                tally.records_unwritten = counters["records_unwritten"].as_u64().unwrap_or(0);
            }
            Block::Summary(summary) => {
                tally.records_unwritten = summary["records_unwritten"]
                    .as_u64()
                    .unwrap_or(tally.records_unwritten);
                tally.losses = super::losses_from_json(&summary);
                tally.summary = Some(summary);
            }
        }
    }
}

/// Damage or a cut after some records is a warning (`tally.damage`); with
/// no record read at all, an error.
fn damaged(err: CaptureError, tally: &mut ReplayTally) -> anyhow::Result<()> {
    if tally.records == 0 {
        return Err(err.into());
    }
    tally.damage.get_or_insert_with(|| err.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use serde_json::json;
    use tcptrace_common::{tcp_state::*, AF_INET, AF_INET6, EVENT_OWNER_KNOWN};

    use super::*;
    use crate::{
        capture::format::{file_header, write_block, BlockHeader},
        decode::tests::{bytes_of, raw_event},
    };

    const NAME: &str = "t.tcpt";

    fn metadata() -> Metadata {
        Metadata {
            tcptrace_version: "0.1.0".into(),
            kernel_release: "6.1.0".into(),
            hostname: "h".into(),
            boot_id: "b".into(),
            realtime_minus_monotonic_ns: 1_700_000_000_000_000_000,
            started_ktime_ns: 1_000,
            command_line: vec!["tcptrace".into(), "record".into()],
            filters: json!({}),
            hooks: vec!["tp_btf/inet_sock_set_state".into()],
            timewait_detection: "exact".into(),
            file_index: 0,
            sockets_at_start: json!({}),
        }
    }

    /// Two transitions, back to back, as the probe writes them.
    fn records() -> Vec<u8> {
        let mut payload = Vec::new();
        let a = raw_event(AF_INET, SYN_SENT, ESTABLISHED, EVENT_OWNER_KNOWN);
        let b = raw_event(AF_INET6, ESTABLISHED, FIN_WAIT1, EVENT_OWNER_KNOWN);
        payload.extend_from_slice(bytes_of(&a));
        payload.extend_from_slice(bytes_of(&b));
        payload
    }

    /// The header and the metadata block.
    fn start() -> Vec<u8> {
        let mut out = file_header().to_vec();
        let meta = serde_json::to_vec(&metadata().to_json()).unwrap();
        write_block(&mut out, BlockKind::Metadata, 0, 1_000, &meta);
        out
    }

    /// A whole capture: metadata, records, losses, summary. Returns the
    /// bytes and the offsets of the records, losses and summary blocks.
    fn capture() -> (Vec<u8>, [usize; 3]) {
        let mut out = start();
        let records_at = out.len();
        write_block(&mut out, BlockKind::Records, 2, 2_000, &records());
        let losses_at = out.len();
        let losses = json!({"ring_reservation_failures": 3, "records_unwritten": 1});
        write_block(
            &mut out,
            BlockKind::Losses,
            0,
            3_000,
            &serde_json::to_vec(&losses).unwrap(),
        );
        let summary_at = out.len();
        let summary = json!({"ring_reservation_failures": 4, "records_unwritten": 2});
        write_block(
            &mut out,
            BlockKind::Summary,
            0,
            4_000,
            &serde_json::to_vec(&summary).unwrap(),
        );
        (out, [records_at, losses_at, summary_at])
    }

    fn open(bytes: Vec<u8>) -> Result<Reader, CaptureError> {
        Reader::new(Path::new(NAME), Box::new(Cursor::new(bytes)))
    }

    fn open_err(bytes: Vec<u8>) -> String {
        match open(bytes) {
            Ok(_) => panic!("the capture was accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// Reads every record; the error, or the tally.
    fn read_all(bytes: Vec<u8>) -> Result<ReplayTally, String> {
        let mut reader = open(bytes).map_err(|e| e.to_string())?;
        let mut tally = ReplayTally::default();
        read_records(&mut reader, &mut tally, |_, _| Ok(())).map_err(|e| e.to_string())?;
        Ok(tally)
    }

    #[test]
    fn every_block_round_trips() {
        let (bytes, [records_at, ..]) = capture();
        let mut reader = open(bytes.clone()).unwrap();
        assert_eq!(reader.metadata.to_json(), metadata().to_json());
        match reader.next_block().unwrap() {
            Some(Block::Records {
                ktime_ns,
                offset,
                payload,
            }) => {
                assert_eq!(ktime_ns, 2_000);
                assert_eq!(offset, (records_at + BLOCK_HEADER_SIZE) as u64);
                assert_eq!(payload, &records()[..]);
            }
            _ => panic!("not the records block"),
        }
        match reader.next_block().unwrap() {
            Some(Block::Losses { ktime_ns, counters }) => {
                assert_eq!(ktime_ns, 3_000);
                assert_eq!(counters["ring_reservation_failures"], 3);
            }
            _ => panic!("not the losses block"),
        }
        match reader.next_block().unwrap() {
            Some(Block::Summary(summary)) => assert_eq!(summary["records_unwritten"], 2),
            _ => panic!("not the summary block"),
        }
        assert!(reader.next_block().unwrap().is_none());
        assert!(reader.next_block().unwrap().is_none());

        let tally = read_all(bytes).unwrap();
        assert_eq!((tally.records, tally.bad_records), (2, 0));
        assert_eq!(tally.losses.ring_full, 4);
        assert_eq!(tally.records_unwritten, 2);
        assert!(tally.summary.is_some());
        assert_eq!(tally.damage, None);
        assert_eq!(tally.last_ktime_ns, 3_000);
    }

    #[test]
    fn metadata_alone_is_a_capture_without_records() {
        let tally = read_all(start()).unwrap();
        assert_eq!((tally.records, tally.damage), (0, None));
    }

    #[test]
    fn a_failed_checksum_names_the_block() {
        let (mut bytes, [records_at, losses_at, _]) = capture();
        // A record's length (bytes 2..4 of the first record) changed.
        bytes[records_at + BLOCK_HEADER_SIZE + 2] ^= 0x40;
        assert_eq!(
            read_all(bytes.clone()).err().unwrap(),
            format!("{NAME}: byte {records_at}: Records block fails its checksum (damaged)")
        );
        // After a good block, damage is noted and the records before it kept.
        let (mut good, _) = capture();
        good.truncate(losses_at);
        good.extend_from_slice(&bytes[records_at..]);
        let tally = read_all(good).unwrap();
        assert_eq!(tally.records, 2);
        assert_eq!(
            tally.damage.unwrap(),
            format!("{NAME}: byte {losses_at}: Records block fails its checksum (damaged)")
        );
    }

    #[test]
    fn a_damaged_record_length_under_a_good_checksum() {
        let mut payload = records();
        payload[2..4].copy_from_slice(&9999u16.to_le_bytes());
        let mut bytes = start();
        let at = bytes.len() + BLOCK_HEADER_SIZE;
        write_block(&mut bytes, BlockKind::Records, 2, 2_000, &payload);
        assert_eq!(
            read_all(bytes).err().unwrap(),
            format!("{NAME}: byte {at}: a record's length is damaged")
        );
    }

    #[test]
    fn a_cut_inside_a_block_header() {
        let (mut bytes, [_, losses_at, _]) = capture();
        bytes.truncate(losses_at + 10);
        let tally = read_all(bytes).unwrap();
        assert_eq!(tally.records, 2);
        assert_eq!(
            tally.damage.unwrap(),
            format!(
                "{NAME}: byte {losses_at}: the capture ends inside a block header (10 of 24 \
                 bytes; cut short?)"
            )
        );
    }

    #[test]
    fn a_cut_inside_the_first_records_block_reads_nothing() {
        let (mut bytes, [records_at, ..]) = capture();
        bytes.truncate(records_at + BLOCK_HEADER_SIZE + 100);
        assert_eq!(
            read_all(bytes).err().unwrap(),
            format!(
                "{NAME}: byte {records_at}: the capture ends inside a Records block (100 of 240 \
                 bytes; cut short?)"
            )
        );
    }

    #[test]
    fn a_cut_inside_the_file_header() {
        let (mut bytes, _) = capture();
        bytes.truncate(12);
        assert_eq!(
            open_err(bytes),
            format!(
                "{NAME}: byte 0: the capture ends inside its 16-byte file header (12 bytes; cut \
                 short?)"
            )
        );
        assert_eq!(
            open_err(b"TCPTRACE".to_vec()),
            format!(
                "{NAME}: byte 0: the capture ends inside its 16-byte file header (8 bytes; cut \
                 short?)"
            )
        );
        assert_eq!(
            open_err(file_header().to_vec()),
            format!("{NAME}: byte 16: no metadata block (cut short at start?)")
        );
    }

    /// A length up to the limit in a small file: read as far as the file
    /// goes, without a buffer of the claimed size.
    #[test]
    fn a_lying_huge_length_costs_no_allocation() {
        let mut bytes = start();
        let at = bytes.len();
        let header = BlockHeader {
            kind: BlockKind::Records as u32,
            len: MAX_BLOCK as u32,
            count: 1,
            crc32: 0,
            ktime_ns: 0,
        };
        bytes.extend_from_slice(&header.encode());
        bytes.extend_from_slice(&[0; 10]);
        let mut reader = open(bytes.clone()).unwrap();
        let err = reader.next_block().err().unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "{NAME}: byte {at}: the capture ends inside a Records block (10 of 67108864 \
                 bytes; cut short?)"
            )
        );
        assert!(err.truncated);
        assert!(reader.buf.capacity() < 1 << 20, "{}", reader.buf.capacity());

        // One byte over the limit is refused before anything is read.
        bytes[at + 4..at + 8].copy_from_slice(&(MAX_BLOCK as u32 + 1).to_le_bytes());
        assert_eq!(
            open(bytes).unwrap().next_block().err().unwrap().to_string(),
            format!(
                "{NAME}: byte {at}: block length 67108865 is over the 67108864-byte limit \
                 (damaged?)"
            )
        );
    }

    /// Found by `cargo xtask fuzz` in 8 s when payloads were still read
    /// into a buffer of the claimed length: a metadata block claiming
    /// 32 MiB in a 1 KiB file made a 32 MiB allocation (the fuzzer stops at
    /// 32 MiB: a lying length up to MAX_BLOCK cost 64 MiB per file).
    #[test]
    fn fuzz_lying_metadata_length() {
        let bytes = include_bytes!("../../tests/data/fuzz-oom-lying-length.tcpt");
        assert_eq!(bytes.len(), 1043);
        assert_eq!(
            open_err(bytes.to_vec()),
            format!(
                "{NAME}: byte 16: the capture ends inside a Metadata block (1003 of 33554569 \
                 bytes; cut short?)"
            )
        );
    }

    #[test]
    fn not_captures() {
        assert_eq!(
            open_err(Vec::new()),
            format!("{NAME}: empty file, not a tcptrace capture")
        );
        assert_eq!(
            open_err(b"hello".to_vec()),
            format!("{NAME}: byte 0: not a tcptrace capture (no TCPTRACE magic)")
        );
        let (mut bytes, _) = capture();
        bytes[0] = b't';
        assert_eq!(
            open_err(bytes),
            format!("{NAME}: byte 0: not a tcptrace capture (no TCPTRACE magic)")
        );
        let (mut bytes, _) = capture();
        bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            open_err(bytes),
            format!(
                "{NAME}: byte 8: capture format version 3; this tcptrace ({}) reads versions 1 to 2",
                env!("CARGO_PKG_VERSION")
            )
        );
        let dir = std::env::temp_dir();
        let err = Reader::open(&dir).err().unwrap().to_string();
        assert_eq!(
            err,
            format!("{}: is a directory, not a capture file", dir.display())
        );
    }

    #[test]
    fn blocks_out_of_place() {
        let mut bytes = file_header().to_vec();
        write_block(&mut bytes, BlockKind::Records, 2, 0, &records());
        assert_eq!(
            open_err(bytes),
            format!("{NAME}: byte 16: the first block is a Records block, not the metadata")
        );

        let mut bytes = start();
        let at = bytes.len();
        let meta = serde_json::to_vec(&metadata().to_json()).unwrap();
        write_block(&mut bytes, BlockKind::Metadata, 0, 0, &meta);
        assert_eq!(
            open(bytes).unwrap().next_block().err().unwrap().to_string(),
            format!("{NAME}: byte {at}: a second metadata block")
        );

        let mut bytes = start();
        let at = bytes.len();
        write_block(&mut bytes, BlockKind::Losses, 0, 0, b"[1,");
        assert_eq!(
            open(bytes.clone())
                .unwrap()
                .next_block()
                .err()
                .unwrap()
                .to_string(),
            format!(
                "{NAME}: byte {at}: bad Losses block: EOF while parsing a value at line 1 column 3"
            )
        );
        bytes[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(
            open(bytes).unwrap().next_block().err().unwrap().to_string(),
            format!("{NAME}: byte {at}: unknown block kind 9 (damaged?)")
        );
    }
}
