//! The load-time configuration and the filters every record passes before it
//! reaches userspace.
use tcptrace_common::{
    Endpoints, ProbeConfig, AF_INET, AF_INET6, CONFIG_CGROUP_FILTER, CONFIG_IPV4, CONFIG_IPV6,
    CONFIG_LPORT_FILTER, CONFIG_NETNS_FILTER, CONFIG_PID_FILTER, CONFIG_PORT_EITHER,
    CONFIG_RPORT_FILTER, EVENT_OWNER_IN_CGROUP, EVENT_OWNER_KNOWN,
};

/// Userspace writes the real configuration here at load time.
#[no_mangle]
pub static CONFIG: ProbeConfig = ProbeConfig::empty();

#[inline(always)]
pub fn config_flags() -> u32 {
    // Volatile reads: the static's initializer is a placeholder that
    // userspace replaces, so the compiler must not fold it.
    unsafe { core::ptr::read_volatile(&CONFIG.flags) }
}

#[inline(always)]
pub fn config_u64(field: &u64) -> u64 {
    unsafe { core::ptr::read_volatile(field) }
}

#[inline(always)]
pub fn config_u32(field: &u32) -> u32 {
    unsafe { core::ptr::read_volatile(field) }
}

#[inline(always)]
pub fn wants(old: u8, new: u8) -> bool {
    let mask = unsafe { core::ptr::read_volatile(&CONFIG.transitions[(old & 15) as usize]) };
    new < 16 && mask & (1 << new) != 0
}

#[inline(always)]
pub fn port_allowed(bitmap: &[u64; 1024], port: u16) -> bool {
    let word = unsafe { core::ptr::read_volatile(&bitmap[(port >> 6) as usize]) };
    word & (1u64 << (port & 63)) != 0
}

/// The filters every record passes before it reaches userspace.
/// `passes_filters` as a call of its own, for the rarer paths: their
/// frames stay small (see `StateChange`), the state change's path pays no
/// call.
/// `owner` holds the EVENT_OWNER_KNOWN and EVENT_OWNER_IN_CGROUP bits of
/// what is known of the socket's owner.
#[inline(never)]
pub fn passes_filters_apart(endpoints: &Endpoints, owner: u8, pid: u32) -> bool {
    passes_filters(endpoints, owner, pid)
}

#[inline(always)]
pub fn passes_filters(endpoints: &Endpoints, owner: u8, pid: u32) -> bool {
    let flags = config_flags();
    let family_ok = match endpoints.family {
        AF_INET => flags & CONFIG_IPV4 != 0,
        AF_INET6 => flags & CONFIG_IPV6 != 0,
        _ => false,
    };
    if !family_ok {
        return false;
    }
    if flags & CONFIG_NETNS_FILTER != 0 && endpoints.netns != config_u32(&CONFIG.netns) {
        return false;
    }
    let (sport, dport) = (endpoints.lport, endpoints.rport);
    if flags & CONFIG_PORT_EITHER != 0 {
        if !port_allowed(&CONFIG.lports, sport) && !port_allowed(&CONFIG.rports, dport) {
            return false;
        }
    } else {
        if flags & CONFIG_LPORT_FILTER != 0 && !port_allowed(&CONFIG.lports, sport) {
            return false;
        }
        if flags & CONFIG_RPORT_FILTER != 0 && !port_allowed(&CONFIG.rports, dport) {
            return false;
        }
    }
    if flags & CONFIG_CGROUP_FILTER != 0 && owner & EVENT_OWNER_IN_CGROUP == 0 {
        return false;
    }
    let owner_known = owner & EVENT_OWNER_KNOWN != 0;
    !(flags & CONFIG_PID_FILTER != 0 && (!owner_known || pid != config_u32(&CONFIG.pid)))
}

/// The owner's cgroup, and whether it is in `--cgroup`'s subtree: the
/// current task's, so only in the owner's own context. The ancestor
/// helper is called only with the filter on.
#[inline(always)]
pub fn current_cgroup() -> (u64, u8) {
    use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id};
    let id = unsafe { bpf_get_current_cgroup_id() };
    if config_flags() & CONFIG_CGROUP_FILTER == 0 {
        return (id, 0);
    }
    let level = config_u32(&CONFIG.cgroup_level) as i32;
    let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
    let inside = ancestor != 0 && ancestor == config_u64(&CONFIG.cgroup);
    (id, if inside { EVENT_OWNER_IN_CGROUP } else { 0 })
}
