//! Reads of kernel objects: fields at offsets userspace took from BTF, as
//! direct loads (BTF-typed pointers) or helper reads.
use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use tcptrace_common::{Endpoints, AF_INET6};

use crate::config::{config_u32, CONFIG};

/// Loads a field of an object a BTF tracepoint was handed (or reached
/// through one), directly: the verifier knows the pointer's BTF type and
/// the offset (a frozen read-only global), checks the access against that
/// type, and makes the load fault-safe. Cheaper than a
/// bpf_probe_read_kernel call; only for fields inside the pointed-to type
/// itself (not, say, inet_sock's fields through a struct sock pointer).
#[inline(always)]
pub fn load_btf_field<T: Copy>(base: u64, offset: &u32) -> T {
    unsafe { core::ptr::read_volatile((base + config_u32(offset) as u64) as *const T) }
}

/// A full socket's local port: skc_num (a direct load), or at a -> CLOSE,
/// where the kernel has cleared it already, inet_sock.inet_sport (beyond
/// struct sock: a helper read).
#[inline(always)]
pub fn local_port(sk: u64) -> Result<u16, i64> {
    let num: u16 = load_btf_field(sk, &CONFIG.offsets.tw_num);
    if num != 0 {
        return Ok(num);
    }
    Ok(u16::from_be(read_field::<u16>(
        sk,
        &CONFIG.offsets.sk_sport,
    )?))
}

/// Reads a field of a kernel object at an offset userspace took from BTF.
#[inline(always)]
pub fn read_field<T>(base: u64, offset: &u32) -> Result<T, i64> {
    Ok(unsafe { bpf_probe_read_kernel((base + config_u32(offset) as u64) as *const T)? })
}

/// Namespace, family, ports and addresses of a timewait socket.
#[inline(always)]
pub fn timewait_endpoints(tw: u64, endpoints: &mut Endpoints) -> Result<(), i64> {
    let offsets = &CONFIG.offsets;
    endpoints.family = read_field(tw, &offsets.sk_family)?;
    endpoints.lport = read_field(tw, &offsets.tw_num)?;
    endpoints.rport = u16::from_be(read_field(tw, &offsets.tw_dport)?);
    endpoints.netns = netns_of(tw)?;
    // Read straight into place: a copy would need room on the stack.
    let (laddr, raddr) = if endpoints.family == AF_INET6 {
        (&offsets.sk_v6_saddr, &offsets.sk_v6_daddr)
    } else {
        endpoints.laddr = [0; 16];
        endpoints.raddr = [0; 16];
        (&offsets.tw_saddr, &offsets.tw_daddr)
    };
    let len = if endpoints.family == AF_INET6 { 16 } else { 4 };
    read_bytes(tw, laddr, &mut endpoints.laddr[..len])?;
    read_bytes(tw, raddr, &mut endpoints.raddr[..len])
}

/// Reads bytes of a kernel object at an offset userspace took from BTF.
#[inline(always)]
pub fn read_bytes(base: u64, offset: &u32, dest: &mut [u8]) -> Result<(), i64> {
    unsafe { bpf_probe_read_kernel_buf((base + config_u32(offset) as u64) as *const u8, dest) }
        .map_err(|e| e as i64)
}

/// Inode number of the network namespace of a socket (full or timewait).
#[inline(always)]
pub fn netns_of(sk: u64) -> Result<u32, i64> {
    let net: u64 = read_field(sk, &CONFIG.offsets.skc_net)?;
    read_field(net, &CONFIG.offsets.net_inum)
}

/// The socket's addresses as the tracepoint's own record would have them.
/// Loaded as 8- and 4-byte words: a byte array through a volatile load is
/// taken apart byte by byte, which costs time and stack.
#[inline(always)]
pub fn socket_addresses(sk: u64, endpoints: &mut Endpoints) -> Result<(), i64> {
    let offsets = &CONFIG.offsets;
    let (laddr, raddr) = (
        endpoints.laddr.as_mut_ptr() as *mut u64,
        endpoints.raddr.as_mut_ptr() as *mut u64,
    );
    // SAFETY: laddr and raddr are 16 bytes each; unaligned writes.
    unsafe {
        if endpoints.family == AF_INET6 {
            let l = config_u32(&offsets.sk_v6_saddr);
            let r = config_u32(&offsets.sk_v6_daddr);
            laddr.write_unaligned(load_word(sk, l));
            laddr.add(1).write_unaligned(load_word(sk, l + 8));
            raddr.write_unaligned(load_word(sk, r));
            raddr.add(1).write_unaligned(load_word(sk, r + 8));
        } else {
            // The bound local address (skc_rcv_saddr, inside struct sock: a
            // direct load) equals inet_saddr once a TCP socket has an address.
            let l: u32 = load_btf_field(sk, &offsets.tw_saddr);
            let r: u32 = load_btf_field(sk, &offsets.sk_daddr);
            laddr.write_unaligned(u64::from(l));
            laddr.add(1).write_unaligned(0);
            raddr.write_unaligned(u64::from(r));
            raddr.add(1).write_unaligned(0);
        }
    }
    Ok(())
}

/// An 8-byte word of a BTF-typed object at `offset` (see `load_btf_field`).
#[inline(always)]
pub fn load_word(base: u64, offset: u32) -> u64 {
    unsafe { core::ptr::read_volatile((base + offset as u64) as *const u64) }
}
