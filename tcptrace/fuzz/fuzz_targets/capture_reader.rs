//! Any bytes as a capture file (`tcptrace -r`): the header, every block,
//! every record decoded and formatted as JSON and as a table row. Nothing
//! may panic, hang or allocate without bound; damage is an error value.
//!
//! Each input is read as it is, and once more with every complete block's
//! checksum made right, or the fuzzer would hardly ever get past the
//! CRC-32 to the JSON blocks and the records.
#![no_main]

use std::{io::Cursor, path::Path};

use libfuzzer_sys::fuzz_target;
use tcptrace::{
    capture::{
        format::{BLOCK_HEADER_SIZE, FILE_HEADER_SIZE},
        reader::{read_capture, Reader, ReplayTally, Side},
    },
    cgroups::Names,
    clock::Clock,
    decode::{end_name, Record},
    printer::{json, ConnectionRecord, HumanFormat, OwnerCgroup},
};

fuzz_target!(|data: &[u8]| {
    read(data);
    if let Some(fixed) = with_good_checksums(data) {
        read(&fixed);
    }
});

fn read(data: &[u8]) {
    let name = Path::new("fuzz.tcpt");
    let mut reader = match Reader::new(name, Box::new(Cursor::new(data.to_vec()))) {
        Ok(reader) => reader,
        Err(err) => {
            check_message(&err.to_string());
            return;
        }
    };
    let clock = Clock::with_offset(reader.metadata.realtime_minus_monotonic_ns as i128);
    // Wide: the owner's container column too.
    let mut human = HumanFormat::new(true);
    let mut out = Vec::new();
    let mut tally = ReplayTally::default();
    // The capture's cgroup names, as `-r` learns them (one closure at a time).
    let names = std::cell::RefCell::new(Names::empty());
    let result = read_capture(
        &mut reader,
        &mut tally,
        |raw, record| {
            // The record handed over is the decoding of its bytes.
            assert_eq!(Record::decode(raw).as_ref(), Ok(record));
            let names = names.borrow();
            match record {
                Record::Transition(t) => {
                    let cgroup = OwnerCgroup {
                        id: t.cgroup,
                        name: names.get(t.cgroup),
                    };
                    json::write_transition(&mut out, &clock, t, cgroup);
                    human.write_transition(&mut out, &clock, t, cgroup);
                }
                Record::Connection(c) => {
                    let record = ConnectionRecord {
                        ktime_ns: c.event.ktime_ns,
                        pid: c.pid(),
                        comm: c.comm(),
                        ends: c.endpoints(),
                        netns: c.event.netns,
                        closer: c.closer(),
                        start_seen: c.start_seen(),
                        handshake_ns: c.handshake_ns(),
                        established_ns: c.established_ns(),
                        closing_ns: c.closing_ns(),
                        time_wait_ns: c.time_wait_ns(),
                        lifetime_ns: c.lifetime_ns(),
                        seen_for_ns: c.event.lifetime_ns,
                        end: end_name(c.event.end),
                        cgroup: OwnerCgroup {
                            id: c.cgroup(),
                            name: names.get(c.cgroup()),
                        },
                    };
                    json::write_connection(&mut out, &clock, &record);
                    human.write_connection(&mut out, &clock, &record);
                }
            }
            out.clear();
            Ok(())
        },
        |side| {
            if let Side::Cgroups(table) = side {
                names.borrow_mut().learn(table);
            }
        },
    );
    match result {
        Ok(()) => {
            if let Some(damage) = &tally.damage {
                assert!(tally.records > 0, "a warning with nothing read: {damage}");
                check_message(damage);
            }
        }
        Err(err) => {
            assert_eq!(
                tally.records, 0,
                "an error after records were read: {err:#}"
            );
            check_message(&format!("{err:#}"));
        }
    }
}

/// Every refusal is one line naming the file.
fn check_message(message: &str) {
    assert!(message.starts_with("fuzz.tcpt: "), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

/// The input with each complete block's CRC-32 set to its payload's;
/// `None` when every checksum was right already.
fn with_good_checksums(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = data.to_vec();
    let mut at = FILE_HEADER_SIZE;
    let mut changed = false;
    while at + BLOCK_HEADER_SIZE <= out.len() {
        let field = |i: usize| u32::from_le_bytes(out[at + i..at + i + 4].try_into().unwrap());
        let len = field(4) as usize;
        let payload = at + BLOCK_HEADER_SIZE;
        if len > out.len() - payload {
            break;
        }
        let crc = crc32fast::hash(&out[payload..payload + len]);
        if crc != field(12) {
            out[at + 12..at + 16].copy_from_slice(&crc.to_le_bytes());
            changed = true;
        }
        at = payload + len;
    }
    changed.then_some(out)
}
