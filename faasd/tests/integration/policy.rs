//! Per-function source policy, enforced by the `sk_lookup` program: clients from two
//! addresses of the test's namespace, one allowed and one denied.

use std::{
    io::{Read, Write},
    net::{Ipv6Addr, SocketAddr, TcpStream},
    os::fd::FromRawFd,
};

use crate::harness::{Daemon, Netns};

/// Connects from `src` (bound first) to `dst` and sends one GET; the HTTP status.
fn get_from(src: Ipv6Addr, dst: SocketAddr) -> std::io::Result<u16> {
    let SocketAddr::V6(dst) = dst else {
        unreachable!("function addresses are IPv6")
    };
    let sa = |a: Ipv6Addr, port: u16| {
        // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
        let mut s: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        s.sin6_port = port.to_be();
        s.sin6_addr.s6_addr = a.octets();
        s
    };
    let len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: plain syscalls on a socket owned right away by the TcpStream.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sa(src, 0);
        if libc::bind(fd, (&raw const local).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sa(*dst.ip(), dst.port());
        if libc::connect(fd, (&raw const remote).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stream
    };
    let mut stream = stream;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp)?;
    Ok(resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

#[test]
fn a_denied_source_is_refused_and_counted_and_an_allowed_one_gets_in() {
    crate::require_privileges!();
    let ns = Netns::new("policy");
    let allowed: Ipv6Addr = "fd00:faa5:0:100::5".parse().unwrap();
    let denied: Ipv6Addr = "fd00:beef::5".parse().unwrap();
    for a in [allowed, denied] {
        ns.add_loopback_address(a);
    }
    let d = Daemon::start(&ns);
    let addr = d.deploy_hello(
        "guarded",
        &[
            "-a",
            "faasd.dev/ip-address-deny=any",
            "-a",
            "faasd.dev/ip-address-allow=fd00:faa5:0:100::/64",
        ],
    );
    let target = SocketAddr::from((addr, 8080));
    let e = ns.run(|| get_from(denied, target)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    let s = d.describe("guarded");
    assert_eq!(s.counters[0].policy_drops, 1);
    assert_eq!(s.state.activations, 0, "a refused client wakes nothing");
    assert_eq!(ns.run(|| get_from(allowed, target)).unwrap(), 200);
    assert_eq!(d.describe("guarded").state.activations, 1);
    // An update without the policy lets everyone in: the slots' policy is replaced.
    d.cli_ok(&[
        "deploy",
        "guarded",
        "--update",
        "--command",
        &crate::harness::hello_bin(),
    ]);
    assert_eq!(ns.run(|| get_from(denied, target)).unwrap(), 200);
}
