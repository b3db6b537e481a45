//! Writing a capture on a thread of its own, so that a slow or full disk
//! never stalls the ring reader: the reader hands over whole batches
//! through a bounded queue and, when the queue is full, counts the batch's
//! records as unwritten instead of waiting (the ring keeps absorbing what
//! the probe writes meanwhile). Buffers go back to the reader for reuse:
//! no allocation per batch once the queue has filled once.
use std::{
    collections::HashSet,
    fs::{File, OpenOptions},
    io::Write,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{
    format::{self, split_records, BlockHeader, BlockKind, BLOCK_HEADER_SIZE},
    Metadata,
};
use crate::{
    cgroups::{Hierarchy, Names},
    clock::Clock,
    decode::cgroup_of_raw,
};

/// A batch is handed to the writer once this full (or every second).
pub const BATCH_BYTES: usize = 1 << 20;

/// Where and how to write (`record -w`, `-C`, `-W`, `-G`).
#[derive(Clone, Debug)]
pub struct Rotation {
    pub path: PathBuf,
    /// Start a new file before this many bytes are exceeded.
    pub max_bytes: Option<u64>,
    /// Start a new file after this long.
    pub every: Option<Duration>,
    /// Keep only the newest this many files (deleting older ones).
    pub keep: Option<usize>,
}

impl Rotation {
    /// The name of file `index`: as tcpdump names its `-C` files, the
    /// first one as given and the others with the index appended.
    pub fn file_name(&self, index: u64) -> PathBuf {
        if index == 0 {
            self.path.clone()
        } else {
            let mut name = self.path.clone().into_os_string();
            name.push(index.to_string());
            name.into()
        }
    }
}

/// What the writer counts, shared with the reader.
#[derive(Default)]
pub struct WriterCounts {
    pub records_written: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Records dropped because the queue was full or a write failed.
    pub records_unwritten: AtomicU64,
    pub files: AtomicU64,
    /// The first write error, for the reader to report once.
    pub error: Mutex<Option<String>>,
}

enum Job {
    Block { buf: Vec<u8>, records: u32 },
    Finish,
}

/// The reader's side of the writer.
pub struct CaptureWriter {
    jobs: SyncSender<Job>,
    spare: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<()>>,
    pub counts: Arc<WriterCounts>,
    /// The batch being filled: a block header's room, then records.
    batch: Vec<u8>,
    batch_records: u32,
}

impl CaptureWriter {
    /// Creates the first file (refusing to start if it cannot be written)
    /// and the writing thread. At most `queue_bytes` of batches wait for
    /// the disk (32 MiB by default: seconds of the fastest churn); beyond
    /// that new ones are dropped and counted.
    pub fn create(rotation: Rotation, metadata: Metadata, queue_bytes: u64) -> Result<Self> {
        let counts = Arc::new(WriterCounts::default());
        let file = Output::open(&rotation, 0, &metadata)?;
        counts.files.store(1, Ordering::Relaxed);
        let (jobs, queue) = mpsc::sync_channel((queue_bytes as usize / BATCH_BYTES).max(1));
        let (give_back, spare) = mpsc::channel();
        let thread_counts = Arc::clone(&counts);
        let thread = std::thread::Builder::new()
            .name("capture-writer".into())
            .spawn(move || {
                let mut disk = Disk {
                    rotation,
                    metadata,
                    file,
                    counts: thread_counts,
                    cgroups: Names::new(Hierarchy::find()),
                    named: HashSet::new(),
                };
                for job in queue {
                    match job {
                        Job::Block { mut buf, records } => {
                            disk.write(&mut buf, records);
                            buf.clear();
                            let _ = give_back.send(buf);
                        }
                        Job::Finish => break,
                    }
                }
                disk.close();
            })
            .context("starting the capture writer thread")?;
        let mut writer = CaptureWriter {
            jobs,
            spare,
            thread: Some(thread),
            counts,
            batch: Vec::new(),
            batch_records: 0,
        };
        writer.batch = writer.fresh_buffer();
        Ok(writer)
    }

    fn fresh_buffer(&self) -> Vec<u8> {
        let mut buf = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BATCH_BYTES + 4096));
        buf.resize(BLOCK_HEADER_SIZE, 0);
        buf
    }

    /// Appends one ring record to the batch (the hot path: one copy).
    #[inline]
    pub fn record(&mut self, data: &[u8]) {
        self.batch.extend_from_slice(data);
        self.batch_records += 1;
        if self.batch.len() >= BATCH_BYTES {
            self.flush();
        }
    }

    /// Hands the batch to the writer, if it holds anything.
    pub fn flush(&mut self) {
        if self.batch_records == 0 {
            return;
        }
        let records = self.batch_records;
        let mut buf = self.fresh_buffer();
        std::mem::swap(&mut buf, &mut self.batch);
        self.batch_records = 0;
        // The header's kind, length and count; the writer adds the checksum.
        let header = BlockHeader {
            kind: BlockKind::Records as u32,
            len: (buf.len() - BLOCK_HEADER_SIZE) as u32,
            count: records,
            crc32: 0,
            ktime_ns: Clock::now_ktime_ns(),
        };
        buf[..BLOCK_HEADER_SIZE].copy_from_slice(&header.encode());
        self.send(buf, records);
    }

    /// Queues a JSON block (losses, summary); dropped if the queue is full.
    pub fn json_block(&mut self, kind: BlockKind, value: &Value) {
        let mut buf = Vec::new();
        let payload = serde_json::to_vec(value).unwrap_or_default();
        format::write_block(&mut buf, kind, 0, Clock::now_ktime_ns(), &payload);
        self.send(buf, 0);
    }

    fn send(&mut self, buf: Vec<u8>, records: u32) {
        match self.jobs.try_send(Job::Block { buf, records }) {
            Ok(()) => {}
            Err(TrySendError::Full(Job::Block { records, .. }))
            | Err(TrySendError::Disconnected(Job::Block { records, .. })) => {
                self.counts
                    .records_unwritten
                    .fetch_add(u64::from(records), Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }

    /// Writes what is queued and closes the file (blocking: at exit only).
    pub fn finish(&mut self) {
        self.flush();
        let _ = self.jobs.send(Job::Finish);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for CaptureWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The writer thread's side: the open file and its rotation.
struct Disk {
    rotation: Rotation,
    metadata: Metadata,
    file: Output,
    counts: Arc<WriterCounts>,
    /// The owners' cgroups, named here (off the reader's thread) from the
    /// host's hierarchy.
    cgroups: Names,
    /// The ids the current file has named already.
    named: HashSet<u64>,
}

impl Disk {
    fn write(&mut self, buf: &mut [u8], records: u32) {
        if records > 0 {
            // The checksum is computed here, off the reader's thread.
            let crc = crc32fast::hash(&buf[BLOCK_HEADER_SIZE..]);
            buf[12..16].copy_from_slice(&crc.to_le_bytes());
        }
        if self.due(buf.len() as u64) {
            self.rotate();
        }
        if records > 0 {
            self.name_cgroups(&buf[BLOCK_HEADER_SIZE..]);
        }
        match self.file.append(buf) {
            Ok(()) => {
                self.counts
                    .records_written
                    .fetch_add(u64::from(records), Ordering::Relaxed);
                self.counts
                    .bytes_written
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
            Err(err) => {
                self.counts
                    .records_unwritten
                    .fetch_add(u64::from(records), Ordering::Relaxed);
                let mut first = self.counts.error.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert_with(|| format!("writing {}: {err}", self.file.path.display()));
            }
        }
    }

    /// Writes a `Cgroups` block naming the owners' cgroups of these records
    /// that this file has not named yet, so that a reader knows each name
    /// before the records that need it.
    fn name_cgroups(&mut self, records: &[u8]) {
        let mut table = Vec::new();
        for data in split_records(records).flatten() {
            let id = cgroup_of_raw(data);
            if id != 0 && self.named.insert(id) {
                if let Some(cgroup) = self.cgroups.resolve(id) {
                    table.push(serde_json::json!([id, &*cgroup.path]));
                }
            }
        }
        if table.is_empty() {
            return;
        }
        let payload =
            serde_json::to_vec(&serde_json::json!({ "cgroups": table })).unwrap_or_default();
        let mut block = Vec::new();
        format::write_block(
            &mut block,
            BlockKind::Cgroups,
            0,
            Clock::now_ktime_ns(),
            &payload,
        );
        if let Err(err) = self.file.append(&block) {
            let mut first = self.counts.error.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert_with(|| format!("writing {}: {err}", self.file.path.display()));
        }
    }

    /// Whether this block must go to a new file.
    fn due(&self, len: u64) -> bool {
        let full = self
            .rotation
            .max_bytes
            .is_some_and(|max| self.file.len > self.file.header_len && self.file.len + len > max);
        let old = self
            .rotation
            .every
            .is_some_and(|every| self.file.opened.elapsed() >= every);
        full || old
    }

    fn rotate(&mut self) {
        let index = self.metadata.file_index + 1;
        self.metadata.file_index = index;
        self.file.close();
        match Output::open(&self.rotation, index, &self.metadata) {
            Ok(file) => {
                self.file = file;
                // Each file names its own cgroups: it reads on its own.
                self.named.clear();
                self.counts.files.fetch_add(1, Ordering::Relaxed);
                if let Some(keep) = self.rotation.keep {
                    if index >= keep as u64 {
                        let _ = std::fs::remove_file(self.rotation.file_name(index - keep as u64));
                    }
                }
            }
            Err(err) => {
                // Keep appending to the current file rather than lose records.
                let mut first = self.counts.error.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert_with(|| format!("{err:#}"));
            }
        }
    }

    fn close(mut self) {
        self.file.close();
    }
}

/// One capture file being written.
struct Output {
    path: PathBuf,
    file: Option<File>,
    /// Bytes in the file, all of them whole blocks.
    len: u64,
    header_len: u64,
    opened: Instant,
}

impl Output {
    fn open(rotation: &Rotation, index: u64, metadata: &Metadata) -> Result<Output> {
        let path = rotation.file_name(index);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let mut head = format::file_header().to_vec();
        let payload = serde_json::to_vec(&metadata.to_json())?;
        format::write_block(
            &mut head,
            BlockKind::Metadata,
            0,
            Clock::now_ktime_ns(),
            &payload,
        );
        file.write_all(&head)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Output {
            path,
            file: Some(file),
            len: head.len() as u64,
            header_len: head.len() as u64,
            opened: Instant::now(),
        })
    }

    /// Appends one block whole, or not at all: after a failed (partial)
    /// write the file is cut back to its last whole block.
    fn append(&mut self, block: &[u8]) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("the file is closed"));
        };
        match file.write_all(block) {
            Ok(()) => {
                self.len += block.len() as u64;
                Ok(())
            }
            Err(err) => {
                let _ = file.set_len(self.len);
                use std::io::Seek;
                let _ = file.seek(std::io::SeekFrom::Start(self.len));
                Err(err)
            }
        }
    }

    fn close(&mut self) {
        if let Some(file) = self.file.take() {
            let _ = file.sync_data();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::reader::{read_records, Reader, ReplayTally};
    use crate::decode::tests::{bytes_of, raw_event};
    use tcptrace_common::{tcp_state::*, AF_INET};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tcptrace-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn count_records(path: &std::path::Path) -> (u64, ReplayTally) {
        let mut reader = Reader::open(path).unwrap();
        let mut tally = ReplayTally::default();
        let mut n = 0;
        read_records(&mut reader, &mut tally, |_, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
        (n, tally)
    }

    #[test]
    fn records_round_trip_in_batches_and_rotate_by_size() {
        let dir = scratch("rotate");
        let rotation = Rotation {
            path: dir.join("c.tcpt"),
            max_bytes: Some(3 << 20),
            every: None,
            keep: Some(2),
        };
        let mut writer =
            CaptureWriter::create(rotation.clone(), Metadata::default(), 64 << 20).unwrap();
        let mut event = raw_event(AF_INET, ESTABLISHED, CLOSE_WAIT, 0);
        // No owner's cgroup: no Cgroups blocks beside the records.
        event.cgroup = 0;
        // 5.5 MiB of records: 6 batches, three files of two, two kept.
        let records = (11 << 19) / bytes_of(&event).len() as u64;
        for _ in 0..records {
            writer.record(bytes_of(&event));
        }
        writer.json_block(
            BlockKind::Summary,
            &serde_json::json!({"records_unwritten": 0}),
        );
        writer.finish();
        assert_eq!(
            writer.counts.records_written.load(Ordering::Relaxed),
            records
        );
        assert_eq!(writer.counts.records_unwritten.load(Ordering::Relaxed), 0);
        assert_eq!(writer.counts.files.load(Ordering::Relaxed), 3);
        assert!(
            !rotation.file_name(0).exists(),
            "the oldest file is deleted"
        );
        let (first, _) = count_records(&rotation.file_name(1));
        let (second, tally) = count_records(&rotation.file_name(2));
        let per_batch = (BATCH_BYTES - BLOCK_HEADER_SIZE).div_ceil(bytes_of(&event).len());
        assert_eq!(first, 2 * per_batch as u64);
        assert_eq!(
            Reader::open(&rotation.file_name(2))
                .unwrap()
                .metadata
                .file_index,
            2
        );
        assert!(tally.summary.is_some(), "the summary ends the last file");
        assert!(second > 0 && first + second < records);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn time_based_rotation_starts_a_file_per_period() {
        let dir = scratch("every");
        let rotation = Rotation {
            path: dir.join("t.tcpt"),
            max_bytes: None,
            every: Some(Duration::from_millis(50)),
            keep: None,
        };
        let mut writer =
            CaptureWriter::create(rotation.clone(), Metadata::default(), 32 << 20).unwrap();
        let event = raw_event(AF_INET, FIN_WAIT2, TIME_WAIT, 0);
        for _ in 0..3 {
            writer.record(bytes_of(&event));
            writer.flush();
            std::thread::sleep(Duration::from_millis(120));
        }
        writer.finish();
        // The first block goes into the first file; each later one finds
        // its file older than 50 ms.
        assert_eq!(writer.counts.files.load(Ordering::Relaxed), 3);
        for i in 0..3 {
            assert_eq!(count_records(&rotation.file_name(i)).0, 1, "file {i}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_path_is_refused_at_once() {
        let rotation = Rotation {
            path: PathBuf::from("/nonexistent-dir/c.tcpt"),
            max_bytes: None,
            every: None,
            keep: None,
        };
        let err = CaptureWriter::create(rotation, Metadata::default(), 32 << 20)
            .err()
            .unwrap();
        assert_eq!(
            format!("{err:#}"),
            "creating /nonexistent-dir/c.tcpt: No such file or directory (os error 2)"
        );
    }
}
