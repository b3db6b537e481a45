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
        MAGIC, MAX_BLOCK,
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

/// A block as read: its kind, when it was written, its payload.
type RawBlock<'a> = (BlockKind, u64, &'a [u8]);

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
}

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
            file: BufReader::with_capacity(1 << 20, input),
            offset: 0,
            metadata: Metadata::default(),
            buf: Vec::new(),
        };
        let mut header = [0u8; FILE_HEADER_SIZE];
        match read_full(&mut reader.file, &mut header) {
            Ok(n) if n == FILE_HEADER_SIZE => {}
            Ok(0) => return Err(fail("empty file, not a tcptrace capture".into(), false)),
            Ok(_) => {}
            Err(e) => return Err(fail(format!("byte 0: {e}"), false)),
        }
        if &header[..8] != MAGIC {
            return Err(fail(
                "byte 0: not a tcptrace capture (no TCPTRACE magic)".into(),
                false,
            ));
        }
        let version = u32::from_le_bytes(header[8..12].try_into().unwrap());
        if version != FORMAT_VERSION {
            return Err(fail(
                format!(
                    "byte 8: capture format version {version}; this tcptrace ({}) reads \
                     version {FORMAT_VERSION}",
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
                format!("byte {at}: the first block is not metadata"),
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
        self.buf.resize(len, 0);
        match read_full(&mut self.file, &mut self.buf) {
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
    read_capture(reader, tally, each, |_, _| {})
}

/// As `read_records`, and hands every `Losses` block to `losses` too: when
/// it was written (CLOCK_MONOTONIC) and its counters, cumulative over the
/// capture (`report` plots them over time).
pub fn read_capture(
    reader: &mut Reader,
    tally: &mut ReplayTally,
    mut each: impl FnMut(&[u8], &Record) -> anyhow::Result<()>,
    mut losses: impl FnMut(u64, &Value),
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
            Block::Summary(_) => 0,
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
                    match Record::decode(data) {
                        Ok(record) => {
                            tally.records += 1;
                            each(data, &record)?;
                        }
                        Err(_) => tally.bad_records += 1,
                    }
                }
            }
            Block::Losses { counters, ktime_ns } => {
                losses(ktime_ns, &counters);
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

fn damaged(err: CaptureError, tally: &mut ReplayTally) -> anyhow::Result<()> {
    if tally.records == 0 && !err.truncated {
        return Err(err.into());
    }
    tally.damage.get_or_insert_with(|| err.to_string());
    Ok(())
}
