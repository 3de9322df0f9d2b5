//! Pod IPs: one loopback address per pod, 127.0.0.2 to 127.0.0.250.
//!
//! The pool is process-wide because tests in one binary run in parallel and every
//! pod of every cluster listens on the same port. Before handing out an address the
//! allocator binds it briefly, so an address busy in another process (another test
//! binary, a stray service) is skipped.

use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};

static IN_USE: Mutex<BTreeSet<u8>> = Mutex::new(BTreeSet::new());

const FIRST: u8 = 2;
const LAST: u8 = 250;

/// A pod IP, returned to the pool on drop.
#[derive(Debug)]
pub struct PodIp(u8);

impl PodIp {
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, 0, self.0)
    }
}

impl Drop for PodIp {
    fn drop(&mut self) {
        IN_USE.lock().remove(&self.0);
    }
}

/// A free loopback address whose `port` can be bound right now, starting at a
/// random point so consecutive pods rarely reuse an address that just closed.
pub fn allocate(port: u16) -> Option<PodIp> {
    let mut used = IN_USE.lock();
    let span = u16::from(LAST - FIRST) + 1;
    let start = rand::random_range(0..span);
    for i in 0..span {
        let n = FIRST + ((start + i) % span) as u8;
        if used.contains(&n) {
            continue;
        }
        let probe = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, n), port));
        if probe.is_ok() {
            used.insert(n);
            return Some(PodIp(n));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_and_returned() {
        let a = allocate(0).unwrap();
        let b = allocate(0).unwrap();
        assert_ne!(a.addr(), b.addr());
        let n = a.0;
        drop(a);
        assert!(!IN_USE.lock().contains(&n));
        assert!(IN_USE.lock().contains(&b.0));
    }
}
