//! The sk_lookup program and its maps, driven through the library in a fresh namespace.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    time::Duration,
};

use faasd_common::{BindingKey, proto};
use faasd_core::config::GuardHook;
use faasd_dataplane::Dataplane;

use crate::{harness::Netns, require_privileges};

const PREFIX: &str = "fd00:faa5:1::/48";

fn addr(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

#[test]
fn steers_tcp_and_udp_to_sockets_bound_to_other_addresses() {
    require_privileges!();
    let ns = Netns::new("steer");
    ns.add_local_route(PREFIX);
    ns.run(|| {
        let mut dp = Dataplane::open(Path::new("/sys/fs/bpf")).unwrap();
        let fn_addr = addr("fd00:faa5:1::99");
        // The sockets listen on ::1 with ephemeral ports: nothing is bound to fn_addr.
        let tcp = TcpListener::bind("[::1]:0").unwrap();
        let udp = UdpSocket::bind("[::1]:0").unwrap();
        dp.bind(BindingKey::new(fn_addr, 7777, proto::TCP), 0, &tcp)
            .unwrap();
        dp.bind(BindingKey::new(fn_addr, 7777, proto::UDP), 1, &udp)
            .unwrap();

        let target = SocketAddr::from((fn_addr, 7777));
        let mut client = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
        let (mut conn, _) = tcp.accept().unwrap();
        // The accepted socket reports the address the client dialled.
        assert_eq!(conn.local_addr().unwrap(), target);
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");

        let sender = UdpSocket::bind("[::1]:0").unwrap();
        sender.send_to(b"datagram", target).unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = udp.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"datagram");

        let tcp_c = dp.counters().unwrap().slot(0);
        let udp_c = dp.counters().unwrap().slot(1);
        assert_eq!((tcp_c.lookups, tcp_c.steered, tcp_c.no_socket), (1, 1, 0));
        assert_eq!((udp_c.lookups, udp_c.steered, udp_c.no_socket), (1, 1, 0));
    });
}

#[test]
fn a_miss_falls_through_to_the_hosts_own_sockets() {
    require_privileges!();
    let ns = Netns::new("miss");
    ns.run(|| {
        let mut dp = Dataplane::open(Path::new("/sys/fs/bpf")).unwrap();
        let steered = TcpListener::bind("[::1]:0").unwrap();
        dp.bind(
            BindingKey::new(addr("fd00:faa5:1::1"), 80, proto::TCP),
            0,
            &steered,
        )
        .unwrap();
        // A plain service on the host, untouched by faasd.
        let plain = TcpListener::bind("[::1]:0").unwrap();
        let before = dp.status().misses;
        let _c = TcpStream::connect(plain.local_addr().unwrap()).unwrap();
        let (conn, _) = plain.accept().unwrap();
        assert_eq!(conn.local_addr().unwrap(), plain.local_addr().unwrap());
        assert!(dp.status().misses > before, "the miss is counted");
        assert_eq!(dp.counters().unwrap().slot(0).lookups, 0);
        // IPv4 is never steered, only counted.
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c4 = TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        assert!(dp.status().ipv4_passed >= 1);
    });
}

#[test]
fn a_binding_whose_socket_is_gone_refuses_and_counts() {
    require_privileges!();
    let ns = Netns::new("nosock");
    ns.add_local_route(PREFIX);
    ns.run(|| {
        let mut dp = Dataplane::open(Path::new("/sys/fs/bpf")).unwrap();
        let fn_addr = addr("fd00:faa5:1::7");
        let l = TcpListener::bind("[::1]:0").unwrap();
        dp.bind(BindingKey::new(fn_addr, 8080, proto::TCP), 3, &l)
            .unwrap();
        drop(l); // closing the socket removes it from the SOCKMAP
        let e =
            TcpStream::connect_timeout(&SocketAddr::from((fn_addr, 8080)), Duration::from_secs(5))
                .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
        assert_eq!(dp.counters().unwrap().slot(3).no_socket, 1);
        // The program logged it (aya-log), and faasd read it.
        let event = "binding [fd00:faa5:1::7]:8080/6 (slot 3) has no socket";
        let logged = wait_for_kernel_event(&dp, event);
        // A flood costs one record a second per CPU, not one per connection.
        for _ in 0..20 {
            let _ = TcpStream::connect_timeout(
                &SocketAddr::from((fn_addr, 8080)),
                Duration::from_secs(5),
            );
        }
        assert_eq!(dp.counters().unwrap().slot(3).no_socket, 21);
        // SAFETY: sysconf has no memory arguments.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) } as u64;
        assert!(
            dp.status().kernel_events <= logged + cpus,
            "{} events for 20 refusals on {cpus} CPUs",
            dp.status().kernel_events - logged
        );
    });
}

/// Waits (up to 5 s) until the data plane has read a kernel event containing `text`;
/// returns how many it has read.
fn wait_for_kernel_event(dp: &Dataplane, text: &str) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = dp.status();
        if s.last_kernel_event
            .as_deref()
            .is_some_and(|e| e.contains(text))
        {
            return s.kernel_events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no kernel event {text:?} within 5 s; last: {:?} of {}",
            s.last_kernel_event,
            s.kernel_events
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pinned_state_keeps_steering_and_is_adopted_by_the_next_daemon() {
    require_privileges!();
    let ns = Netns::new("adopt");
    ns.add_local_route(PREFIX);
    ns.run(|| {
        let fn_addr = addr("fd00:faa5:1::5");
        let key = BindingKey::new(fn_addr, 9000, proto::TCP);
        let l = TcpListener::bind("[::1]:0").unwrap();
        let first = {
            let mut dp = Dataplane::open(Path::new("/sys/fs/bpf")).unwrap();
            assert!(!dp.adopted());
            dp.bind(key, 4, &l).unwrap();
            dp.status().program_id
        }; // the "daemon" is gone: program, link and maps live on in bpffs
        let _c = TcpStream::connect(SocketAddr::from((fn_addr, 9000))).unwrap();
        let (conn, _) = l.accept().unwrap();
        assert_eq!(
            conn.local_addr().unwrap(),
            SocketAddr::from((fn_addr, 9000))
        );

        let dp = Dataplane::open(Path::new("/sys/fs/bpf")).unwrap();
        assert!(dp.adopted());
        assert_eq!(
            dp.status().program_id,
            first,
            "the same program, not a reload"
        );
        assert_eq!(dp.bindings(), vec![(key, 4)]);
        assert_eq!(
            dp.counters().unwrap().slot(4).steered,
            1,
            "counters survive too"
        );
        // What the program logged while no daemon read its log reaches the next one.
        drop(dp);
        drop(l);
        let _ =
            TcpStream::connect_timeout(&SocketAddr::from((fn_addr, 9000)), Duration::from_secs(5));
        let dp = Dataplane::open(Path::new("/sys/fs/bpf")).unwrap();
        assert!(dp.adopted());
        wait_for_kernel_event(
            &dp,
            "binding [fd00:faa5:1::5]:9000/6 (slot 4) has no socket",
        );
    });
}

/// Raises this process's open-file limit (root may raise the hard limit too).
fn raise_nofile(n: u64) -> bool {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit reads the struct we pass.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 }
}

#[test]
fn more_function_sockets_than_ephemeral_ports_fit() {
    require_privileges!();
    let ns = Netns::new("many");
    ns.add_local_route(PREFIX);
    ns.run(|| {
        // The ephemeral range is the namespace's own: a narrow one keeps the socket count
        // within the open-file limit these machines allow (20,000).
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "61000 61999").unwrap();
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let mut r = range.split_whitespace().map(|p| p.parse::<u32>().unwrap());
        let ephemeral = r.next().unwrap()..=r.next().unwrap();
        // More than one batch of the bindings read below (4,096).
        let n = ephemeral.end() - ephemeral.start() + 1 + 4_000;
        if !raise_nofile(u64::from(n) + 1_000) {
            crate::harness::skip(format_args!("cannot raise RLIMIT_NOFILE to {n}"));
            return;
        }
        let mut dp = Dataplane::open(Path::new("/sys/fs/bpf")).unwrap();
        let port = faasd_core::spec::Port {
            name: "http".into(),
            port: 8080,
            protocol: faasd_core::spec::Protocol::Tcp,
        };
        let prefix: faasd_core::config::Ipv6Net = PREFIX.parse().unwrap();
        let mut socks = Vec::with_capacity(n as usize);
        for i in 0..n {
            let a = prefix.nth(u128::from(i) + 1).unwrap();
            let s =
                faasd::sockets::create(a, &port, 8).unwrap_or_else(|e| panic!("socket {i}: {e}"));
            // Bound to the function address and port 8080: no ephemeral port taken.
            assert!(
                !ephemeral.contains(&u32::from(faasd::sockets::local_addr(&s).unwrap().port()))
            );
            dp.bind(BindingKey::new(a, 8080, proto::TCP), i, &s)
                .unwrap();
            socks.push(s);
        }
        assert_eq!(dp.status().bindings, n as usize);
        // Read back in batches, as a restarted daemon reads them: every binding, once.
        let read: std::collections::BTreeMap<BindingKey, u32> = dp.bindings().into_iter().collect();
        assert_eq!(read.len(), n as usize);
        assert!((0..n).all(|i| {
            let key = BindingKey::new(prefix.nth(u128::from(i) + 1).unwrap(), 8080, proto::TCP);
            read.get(&key) == Some(&i)
        }));
        let last = prefix.nth(u128::from(n)).unwrap();
        let c = TcpStream::connect_timeout(&SocketAddr::from((last, 8080)), Duration::from_secs(5))
            .unwrap();
        assert_eq!(c.peer_addr().unwrap(), SocketAddr::from((last, 8080)));
        assert_eq!(dp.counters().unwrap().slot(n - 1).steered, 1);
    });
}

#[test]
fn daemons_in_two_namespaces_do_not_share_pins() {
    require_privileges!();
    let a = Netns::new("pa");
    let b = Netns::new("pb");
    assert_ne!(a.pin_dir(), b.pin_dir());
    let ida = a.run(|| {
        Dataplane::open(Path::new("/sys/fs/bpf"))
            .unwrap()
            .status()
            .program_id
    });
    let idb = b.run(|| {
        Dataplane::open(Path::new("/sys/fs/bpf"))
            .unwrap()
            .status()
            .program_id
    });
    assert_ne!(ida, idb);
}

#[test]
fn pins_of_a_deleted_namespace_are_removed_by_the_next_daemon() {
    require_privileges!();
    let gone = Netns::new("gone");
    let pins = gone.pin_dir();
    gone.run(|| drop(Dataplane::open(Path::new("/sys/fs/bpf")).unwrap()));
    assert!(
        pins.is_dir(),
        "the data plane stays pinned after its daemon"
    );
    // The namespace is deleted under its pins, as `ip netns del` under a running daemon
    // would; the kernel detaches its program once the namespace is torn down.
    let deleted = std::process::Command::new("ip")
        .args(["netns", "del", &gone.name])
        .status()
        .unwrap();
    assert!(deleted.success());
    let other = Netns::new("other");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pins.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} is still there 10 s after its namespace was deleted",
            pins.display()
        );
        std::thread::sleep(Duration::from_millis(50));
        other.run(|| drop(Dataplane::open(Path::new("/sys/fs/bpf")).unwrap()));
    }
    // A live namespace's pins are kept.
    assert!(other.pin_dir().is_dir());
}

/// The guard at each hook on an Ethernet device, from a second namespace over a veth: a
/// datagram for a bound function address passes and is steered, datagrams for an address
/// of the prefix nobody binds are dropped and counted, and the status names the hook.
#[test]
fn the_guard_drops_what_no_binding_holds_at_either_hook() {
    require_privileges!();
    for hook in [GuardHook::Xdp, GuardHook::Tc] {
        let ns = Netns::new("guard");
        let peer = Netns::new("guard-peer");
        ns.add_local_route(PREFIX);
        let ip = |args: &[&str]| {
            let ok = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(ok.success(), "ip {args:?}");
        };
        ip(&[
            "-n", &ns.name, "link", "add", "gd0", "type", "veth", "peer", "name", "gd1", "netns",
            &peer.name,
        ]);
        for (netns, dev, a) in [
            (&ns, "gd0", "fd00:beef::1/64"),
            (&peer, "gd1", "fd00:beef::2/64"),
        ] {
            ip(&["-n", &netns.name, "addr", "add", a, "dev", dev, "nodad"]);
            ip(&["-n", &netns.name, "link", "set", dev, "up"]);
        }
        ip(&[
            "-n",
            &peer.name,
            "-6",
            "route",
            "add",
            "fd00:faa5::/32",
            "via",
            "fd00:beef::1",
        ]);
        ns.run(|| {
            let mut dp = Dataplane::open(Path::new("/sys/fs/bpf")).unwrap();
            dp.attach_guard("gd0", false, PREFIX.parse().unwrap(), hook)
                .unwrap_or_else(|e| panic!("{hook}: {e}"));
            let fn_addr = addr("fd00:faa5:1::99");
            let udp = UdpSocket::bind("[::1]:0").unwrap();
            dp.bind(BindingKey::new(fn_addr, 7777, proto::UDP), 0, &udp)
                .unwrap();
            peer.run(|| {
                let s = UdpSocket::bind("[fd00:beef::2]:0").unwrap();
                s.send_to(b"in", (fn_addr, 7777)).unwrap();
                for _ in 0..5 {
                    s.send_to(b"nobody", (addr("fd00:faa5:1::ffff"), 9))
                        .unwrap();
                }
            });
            udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 8];
            let (n, _) = udp.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"in", "{hook}");
            // The dropped ones follow the steered one on the same path.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while dp.status().xdp_dropped_no_binding < 5 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let s = dp.status();
            assert_eq!(s.guard_hook, hook.to_string());
            assert_eq!(s.xdp_interfaces, ["gd0"]);
            assert_eq!(
                (s.xdp_passed, s.xdp_dropped_no_binding),
                (1, 5),
                "{hook}: {s:?}"
            );
        });
    }
}
