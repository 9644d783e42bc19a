//! Whether a function still has connections open, which keeps it from scaling down.

use std::net::Ipv6Addr;

use faasd_core::spec::Port;

/// Whether a TCP connection to one of the function's ports is still open (accepted
/// sockets live in this namespace, so `/proc/net/tcp6` sees them).
pub(super) fn open(addr: Ipv6Addr, ports: &[Port]) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp6") else {
        return false;
    };
    let key = faasd_common::BindingKey::new(addr, 0, 0);
    let hex_addr: String = key.addr.iter().map(|w| format!("{w:08X}")).collect();
    let locals: Vec<String> = ports
        .iter()
        .filter(|p| p.protocol == faasd_core::spec::Protocol::Tcp)
        .map(|p| format!("{hex_addr}:{:04X}", p.port))
        .collect();
    table.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let (Some(local), Some(_remote), Some(state)) = (f.nth(1), f.next(), f.next()) else {
            return false;
        };
        // 0A = LISTEN, 06 = TIME_WAIT, 07 = CLOSE: nothing left to serve.
        !matches!(state, "0A" | "06" | "07") && locals.iter().any(|x| x == local)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_connections_are_found_in_proc_format() {
        // The format check runs against this host's real table: a listening socket on
        // ::1 must not count as an open connection, an established one must.
        let l = std::net::TcpListener::bind("[::1]:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ports = [Port {
            name: "t".into(),
            port,
            protocol: faasd_core::spec::Protocol::Tcp,
        }];
        assert!(!open(Ipv6Addr::LOCALHOST, &ports));
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _s = l.accept().unwrap();
        assert!(open(Ipv6Addr::LOCALHOST, &ports));
    }
}
