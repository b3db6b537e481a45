//! Bad capture files given to `-r`: one line on stderr naming the file
//! (and the byte, where there is one), never a panic; exit 1 when nothing
//! could be read, 0 with a warning when the records before the damage or
//! the cut were. The damaged files are made from one real capture,
//! `tcptrace record` with the real probe while a peer makes connections.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    thread,
    time::Duration,
};

use tcptrace_common::record_kind;

use crate::harness::{self, Netns, Peer, Tracer, TRACER};

const FILE_HEADER: usize = 16;
const BLOCK_HEADER: usize = 24;
const RECORDS: u32 = 2;

/// A block of a capture file, as the test finds it.
#[derive(Clone, Copy, Debug)]
struct BlockAt {
    offset: usize,
    kind: u32,
    len: usize,
}

/// The capture every test damages, recorded once.
struct Capture {
    bytes: Vec<u8>,
    blocks: Vec<BlockAt>,
    /// `-r FILE --all --json`'s transitions, one JSON line each.
    transitions: Vec<String>,
}

impl Capture {
    fn records_blocks(&self) -> Vec<BlockAt> {
        self.blocks
            .iter()
            .copied()
            .filter(|b| b.kind == RECORDS)
            .collect()
    }

    /// Transitions in the records blocks before `offset`.
    fn transitions_before(&self, offset: usize) -> usize {
        self.records_blocks()
            .iter()
            .filter(|b| b.offset < offset)
            .map(|b| {
                let payload = &self.bytes[b.offset + BLOCK_HEADER..][..b.len];
                let mut n = 0;
                let mut at = 0;
                while at < payload.len() {
                    if payload[at] == record_kind::TRANSITION {
                        n += 1;
                    }
                    at += u16::from_le_bytes([payload[at + 2], payload[at + 3]]) as usize;
                }
                n
            })
            .sum()
    }
}

fn dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capture_input");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn blocks_of(bytes: &[u8]) -> Vec<BlockAt> {
    assert_eq!(&bytes[..8], b"TCPTRACE");
    let mut blocks = Vec::new();
    let mut offset = FILE_HEADER;
    while offset < bytes.len() {
        let field = |i: usize| u32::from_le_bytes(bytes[offset + i..][..4].try_into().unwrap());
        let (kind, len) = (field(0), field(4) as usize);
        blocks.push(BlockAt { offset, kind, len });
        offset += BLOCK_HEADER + len;
    }
    assert_eq!(offset, bytes.len(), "whole blocks");
    blocks
}

/// Records two bursts of connections more than a second apart (the
/// records are written out every second), so that the capture holds at
/// least two records blocks.
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let netns = Netns::new();
        let file = dir().join("full.tcpt");
        let (server, port) = Peer::server_with(
            &netns,
            "127.0.0.1:0",
            "close-second",
            0,
            &["--connections", "6"],
        );
        let (mut child, notify) = Tracer::spawn(
            &netns,
            &[
                "record",
                "-w",
                file.to_str().unwrap(),
                "-d",
                "3",
                "--netns",
                "self",
            ],
        );
        harness::wait_ready(&notify, &mut child)
            .unwrap_or_else(|why| panic!("tcptrace record did not start: {why}"));
        let target = format!("127.0.0.1:{port}");
        for burst in 0..2 {
            if burst > 0 {
                thread::sleep(Duration::from_millis(1400));
            }
            let client =
                Peer::client_with(&netns, &target, "close-first", 0, &["--connections", "3"]);
            assert_eq!(client.finish_all().len(), 3);
        }
        assert_eq!(server.finish_all().len(), 6);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "tcptrace record: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&file).unwrap();
        let blocks = blocks_of(&bytes);
        let capture = Capture {
            bytes,
            blocks,
            transitions: Vec::new(),
        };
        assert!(
            capture.records_blocks().len() >= 2,
            "two records blocks at least: {:?}",
            capture.blocks
        );
        let full = read(&file);
        assert_eq!(full.code, 0);
        assert_eq!(full.stderr, Vec::<String>::new());
        assert_eq!(
            full.transitions.len(),
            capture.transitions_before(usize::MAX)
        );
        // 6 connections, ten transitions each at least.
        assert!(full.transitions.len() >= 60, "{:#?}", full.transitions);
        Capture {
            transitions: full.transitions,
            ..capture
        }
    })
}

struct Outcome {
    code: i32,
    transitions: Vec<String>,
    stdout: String,
    stderr: Vec<String>,
}

/// `tcptrace [VIEW] -r FILE --json` (and `--all` for the tail).
fn read_with(view: Option<&str>, file: &Path) -> Outcome {
    let mut cmd = Command::new(TRACER);
    cmd.args(view);
    cmd.arg("-r").arg(file).arg("--json");
    if view.is_none() {
        cmd.arg("--all");
    }
    let out = cmd.output().expect("running tcptrace");
    let stdout = String::from_utf8(out.stdout).unwrap();
    Outcome {
        code: out.status.code().expect("exited, not killed"),
        transitions: stdout
            .lines()
            .filter(|l| l.starts_with(r#"{"type":"transition""#))
            .map(String::from)
            .collect(),
        stdout,
        stderr: String::from_utf8(out.stderr)
            .unwrap()
            .lines()
            .map(String::from)
            .collect(),
    }
}

fn read(file: &Path) -> Outcome {
    read_with(None, file)
}

/// The capture with `damage` done to it, in a file of its own.
fn damaged(name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = capture().bytes.clone();
    damage(&mut bytes);
    let file = dir().join(name);
    std::fs::write(&file, bytes).unwrap();
    file
}

/// Nothing read: exit 1, this one line, nothing on stdout.
fn assert_refused(file: &Path, message: &str) {
    for view in [None, Some("life"), Some("hist")] {
        let out = read_with(view, file);
        assert_eq!(out.stderr, [message], "{view:?}");
        assert_eq!((out.code, out.stdout.as_str()), (1, ""), "{view:?}");
    }
}

/// Read up to the damage: exit 0, this one warning, and the transitions
/// of the blocks before `offset`, as the whole file gives them.
fn assert_read_before(file: &Path, offset: usize, warning: &str) {
    let capture = capture();
    let out = read(file);
    assert_eq!(out.stderr, [warning]);
    assert_eq!(out.code, 0);
    let kept = capture.transitions_before(offset);
    assert!(kept > 0 && kept < capture.transitions.len(), "{kept}");
    assert_eq!(out.transitions, capture.transitions[..kept]);
    assert!(
        out.stdout
            .lines()
            .last()
            .unwrap()
            .starts_with(r#"{"type":"summary""#),
        "the summary still ends the output"
    );
    for view in ["life", "hist"] {
        let out = read_with(Some(view), file);
        assert_eq!(out.stderr, [warning], "{view}");
        assert_eq!(out.code, 0, "{view}");
    }
}

#[test]
fn wrong_magic() {
    let file = damaged("magic.tcpt", |b| b[..8].copy_from_slice(b"TCPDUMP!"));
    assert_refused(
        &file,
        &format!(
            "tcptrace: {}: byte 0: not a tcptrace capture (no TCPTRACE magic)",
            file.display()
        ),
    );
}

#[test]
fn a_future_format_version() {
    let file = damaged("version.tcpt", |b| {
        b[8..12].copy_from_slice(&3u32.to_le_bytes())
    });
    assert_refused(
        &file,
        &format!(
            "tcptrace: {}: byte 8: capture format version 3; this tcptrace ({}) reads versions 1 to 2",
            file.display(),
            env!("CARGO_PKG_VERSION")
        ),
    );
}

#[test]
fn cut_short_inside_a_records_block() {
    let last = *capture().records_blocks().last().unwrap();
    let have = last.len / 2;
    let file = damaged("cut.tcpt", |b| {
        b.truncate(last.offset + BLOCK_HEADER + have)
    });
    assert_read_before(
        &file,
        last.offset,
        &format!(
            "tcptrace: warning: {}: byte {}: the capture ends inside a Records block ({have} of \
             {} bytes; cut short?); every record before it was read",
            file.display(),
            last.offset,
            last.len
        ),
    );
}

#[test]
fn cut_short_inside_the_first_records_block() {
    let first = capture().records_blocks()[0];
    let file = damaged("cut-first.tcpt", |b| {
        b.truncate(first.offset + BLOCK_HEADER + 10)
    });
    assert_refused(
        &file,
        &format!(
            "tcptrace: {}: byte {}: the capture ends inside a Records block (10 of {} bytes; \
             cut short?)",
            file.display(),
            first.offset,
            first.len
        ),
    );
}

/// A record's length changed inside a block: the block's checksum fails,
/// and nothing of it is decoded.
#[test]
fn a_damaged_record_length() {
    let blocks = capture().records_blocks();
    let last = *blocks.last().unwrap();
    // The length (bytes 2..4) of the block's second record.
    let second = |b: &Vec<u8>, block: BlockAt| {
        let payload = block.offset + BLOCK_HEADER;
        payload + u16::from_le_bytes([b[payload + 2], b[payload + 3]]) as usize + 2
    };
    let file = damaged("record-length.tcpt", |b| {
        let at = second(b, last);
        b[at] ^= 0x10;
    });
    assert_read_before(
        &file,
        last.offset,
        &format!(
            "tcptrace: warning: {}: byte {}: Records block fails its checksum (damaged); every \
             record before it was read",
            file.display(),
            last.offset
        ),
    );
    let file = damaged("record-length-first.tcpt", |b| {
        let at = second(b, blocks[0]);
        b[at] ^= 0x10;
    });
    assert_refused(
        &file,
        &format!(
            "tcptrace: {}: byte {}: Records block fails its checksum (damaged)",
            file.display(),
            blocks[0].offset
        ),
    );
}

#[test]
fn an_empty_file() {
    let file = dir().join("empty.tcpt");
    std::fs::write(&file, b"").unwrap();
    assert_refused(
        &file,
        &format!(
            "tcptrace: {}: empty file, not a tcptrace capture",
            file.display()
        ),
    );
}

#[test]
fn a_nonexistent_file() {
    let file = dir().join("nonexistent.tcpt");
    assert_refused(
        &file,
        &format!(
            "tcptrace: {}: cannot open: No such file or directory (os error 2)",
            file.display()
        ),
    );
}

#[test]
fn a_directory() {
    let dir = dir();
    assert_refused(
        &dir,
        &format!(
            "tcptrace: {}: is a directory, not a capture file",
            dir.display()
        ),
    );
}
