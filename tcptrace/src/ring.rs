//! Reading the BPF ring buffer in batches.
//!
//! aya's reader publishes the consumer position after every record. That
//! position shares a cache line the probe reads on every reservation, so
//! each record bounced it between the reader's CPU and the producers'. This
//! reader walks a whole batch and publishes the position once. The layout
//! is the kernel's (kernel/bpf/ringbuf.c): page 0 holds the consumer
//! position (read-write), page 1 the producer position, then the data
//! pages, mapped twice in a row so that a record that wraps reads as one.
use std::{
    os::fd::{AsFd, AsRawFd, RawFd},
    sync::atomic::{AtomicU32, AtomicUsize, Ordering},
};

use anyhow::{Context, Result};
use aya::maps::MapData;

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HEADER_SIZE: usize = 8;

/// One mmap()ed region, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(fd: RawFd, len: usize, prot: libc::c_int, offset: usize) -> Result<Self> {
        // SAFETY: a fresh shared mapping of the ring buffer map's fd; the
        // kernel checks the offset, length and protection.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping the ring buffer");
        }
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

pub struct RingReader {
    /// Keeps the map (and its fd) alive.
    map: MapData,
    consumer: Mapping,
    producer: Mapping,
    page_size: usize,
    mask: usize,
    /// Our consumer position, published once per batch.
    pos: usize,
}

// SAFETY: the mappings are only touched through &mut self.
unsafe impl Send for RingReader {}

impl RingReader {
    pub fn new(map: MapData, byte_size: u32) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let size = byte_size as usize;
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = Mapping::new(fd, page_size, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page_size + 2 * size, libc::PROT_READ, page_size)?;
        // SAFETY: the consumer page starts with the consumer position.
        let pos = unsafe { &*(consumer.ptr as *const AtomicUsize) }.load(Ordering::Acquire);
        Ok(RingReader {
            map,
            consumer,
            producer,
            page_size,
            mask: size - 1,
            pos,
        })
    }

    fn producer_pos(&self) -> usize {
        // SAFETY: the producer page starts with the producer position, which
        // the kernel writes with release semantics.
        unsafe { &*(self.producer.ptr as *const AtomicUsize) }.load(Ordering::Acquire)
    }

    /// Hands at most `max` records to `each`, in order, then tells the
    /// kernel their space is free. Returns how many it handed over.
    pub fn drain(&mut self, max: usize, mut each: impl FnMut(&[u8])) -> usize {
        let start = self.pos;
        let mut producer = self.producer_pos();
        let mut handed = 0;
        // SAFETY (whole loop): offsets stay inside the data pages, which are
        // mapped twice in a row, so a record never runs off the mapping; a
        // record's bytes stay ours until the consumer position moves past it.
        let data = unsafe { (self.producer.ptr as *const u8).add(self.page_size) };
        while handed < max {
            if self.pos == producer {
                producer = self.producer_pos();
                if self.pos == producer {
                    break;
                }
            }
            let offset = self.pos & self.mask;
            let header =
                unsafe { &*(data.add(offset) as *const AtomicU32) }.load(Ordering::Acquire);
            if header & BUSY_BIT != 0 {
                // Reserved, not yet submitted: the rest waits.
                break;
            }
            let len = (header & !(BUSY_BIT | DISCARD_BIT)) as usize;
            if header & DISCARD_BIT == 0 {
                let record =
                    unsafe { std::slice::from_raw_parts(data.add(offset + HEADER_SIZE), len) };
                each(record);
                handed += 1;
            }
            self.pos += (HEADER_SIZE + len).next_multiple_of(8);
        }
        if self.pos != start {
            // SAFETY: the consumer page starts with the consumer position;
            // release pairs with the kernel's acquire before it reuses space.
            unsafe { &*(self.consumer.ptr as *const AtomicUsize) }
                .store(self.pos, Ordering::Release);
        }
        handed
    }
}

impl AsRawFd for RingReader {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}
