//! Names of new cgroups: cgroup:cgroup_mkdir gives each new cgroup's id and
//! path. Userspace names the cgroups that already exist by walking the
//! hierarchy; this names those created later even if they are gone before
//! userspace could see them (short-lived containers).
use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes, programs::TracePointContext, EbpfContext,
};
use tcptrace_common::{CgroupEvent, COUNTER_RING_FULL};

use crate::{
    config::{config_u32, CONFIG},
    emit::wakeup_flag,
    maps::{count, EVENTS},
};

pub fn try_cgroup_mkdir(ctx: &TracePointContext, now: u64) -> Result<(), i64> {
    let offsets = &CONFIG.offsets;
    let root: i32 = unsafe { ctx.read_at(config_u32(&offsets.mkdir_root) as usize) }?;
    // Only the cgroup v2 hierarchy (id 0): the probe records v2 ids.
    if root != 0 {
        return Ok(());
    }
    let id: u64 = unsafe { ctx.read_at(config_u32(&offsets.mkdir_id) as usize) }?;
    let loc: u32 = unsafe { ctx.read_at(config_u32(&offsets.mkdir_path) as usize) }?;
    let Some(mut entry) = EVENTS.reserve::<CgroupEvent>(0) else {
        count(COUNTER_RING_FULL);
        return Ok(());
    };
    // Written in place: the record is as large as the BPF stack.
    let event = entry.as_mut_ptr();
    unsafe {
        (*event).header = CgroupEvent::HEADER;
        (*event).id = id;
        (*event).path_len = loc >> 16;
        (*event)._pad = 0;
        let path = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
        if bpf_probe_read_kernel_str_bytes(path, &mut (*event).path).is_err() {
            (*event).path[0] = 0;
        }
    }
    entry.submit(wakeup_flag(now));
    Ok(())
}
