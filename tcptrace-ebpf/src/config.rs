//! The load-time configuration and the filters every record passes before it
//! reaches userspace.
use tcptrace_common::{
    Endpoints, ProbeConfig, AF_INET, AF_INET6, CONFIG_IPV4, CONFIG_IPV6, CONFIG_LPORT_FILTER,
    CONFIG_NETNS_FILTER, CONFIG_PID_FILTER, CONFIG_PORT_EITHER, CONFIG_RPORT_FILTER,
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
#[inline(never)]
pub fn passes_filters_apart(endpoints: &Endpoints, owner_known: bool, pid: u32) -> bool {
    passes_filters(endpoints, owner_known, pid)
}

#[inline(always)]
pub fn passes_filters(endpoints: &Endpoints, owner_known: bool, pid: u32) -> bool {
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
    !(flags & CONFIG_PID_FILTER != 0 && (!owner_known || pid != config_u32(&CONFIG.pid)))
}
