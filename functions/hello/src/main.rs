//! `hello`: the sample faasd function. A small HTTP server that
//! - takes its listening socket from LISTEN_FDS (socket activation), or listens on
//!   `PORT` (default 8080) when started by hand; datagram sockets among LISTEN_FDS get an
//!   echo that names the instance;
//! - serves one connection on fd 3 and exits when started in accept mode
//!   (`LISTEN_FDNAMES=connection`);
//! - sends READY=1 (and WATCHDOG=1 when WATCHDOG_USEC is set) to NOTIFY_SOCKET;
//! - serves connections from a pool of `HELLO_THREADS` (default 8) threads, each blocking
//!   in accept on the shared listener;
//! - answers every request with which instance served it, and when it accepted
//!   (`X-Accepted-Ns`, CLOCK_MONOTONIC), which the benchmark uses.
//!
//! `HELLO_WATCHDOG_STOP_AFTER_MS` makes it stop sending WATCHDOG=1 after that long, to
//! show faasd's watchdog restarting a hung function.
//!
//! A few paths show what the function sees, for faasd's container tests and for anyone
//! looking around: `/interfaces` (its network interfaces), `/secret/<name>` (an OpenFaaS
//! secret mounted at /var/openfaas/secrets), `/alloc/<MiB>` (allocates and touches that
//! much memory, to see a memory limit at work), `/env/<NAME>` (an environment variable),
//! `/write` (tries to create a file in `/`, to see a read-only root; `/write-in/<dir>` in
//! another directory), and calls out:
//! `/connect/<host>:<port>` (an HTTP/1.0 request there, answering with what came back or
//! the error), `/udp/<host>:<port>` (one datagram, unconnected) and `/resolve/<name>` (its
//! addresses, through the system's resolver); `/threads/<n>` (starts n threads, to see a
//! pids limit at work), `/work/<ms>` (that much CPU time, for the autoscaler),
//! `/unshare` (tries to make a user namespace, to see a system call
//! filter at work), `/status/<code>` (answers with that status, for readiness checks),
//! `/sleep/<ms>` (answers after that long). An `X-Call-Id` (an async call's) is echoed.
//!
//! `hello --handler` is instead an OpenFaaS watchdog's `fprocess`: it reads the request's
//! body from stdin and writes its answer to stdout, after sleeping when the watchdog's
//! `Http_Path` is `/sleep/<ms>` (to hold a request in flight).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    os::{fd::FromRawFd, unix::net::UnixDatagram},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

static REQUESTS: AtomicU64 = AtomicU64::new(0);

fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes into our timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn notify(msg: &str) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    if let Ok(s) = UnixDatagram::unbound() {
        let _ = s.send_to(msg.as_bytes(), path);
    }
}

/// The sockets passed with the systemd protocol, if they are for us.
fn listen_fds() -> Option<(i32, Vec<String>)> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    if pid != std::process::id() {
        return None;
    }
    let n: i32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    Some((n, names.split(':').map(str::to_owned).collect()))
}

fn instance() -> String {
    std::env::var("FAASD_INSTANCE").unwrap_or_else(|_| format!("pid-{}", std::process::id()))
}

fn serve(mut stream: TcpStream, accepted_ns: u64) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0usize;
    let mut chunked = false;
    let mut call_id = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().unwrap_or(0);
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.trim().eq_ignore_ascii_case("chunked");
            } else if k.eq_ignore_ascii_case("x-call-id") {
                call_id = Some(v.trim().to_owned());
            }
        }
    }
    let body = if chunked {
        read_chunked(&mut reader)?
    } else {
        let mut body = vec![0u8; content_length.min(1 << 20)];
        reader.read_exact(&mut body)?;
        body
    };
    let n = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    sleep_if_asked(path);
    let mut text = match inspect(path) {
        Some(t) => t,
        None => format!(
            "Hello from faasd! instance={} request={n} path={path}\n",
            instance()
        ),
    };
    if let Ok(remote) = std::env::var("REMOTE_ADDR") {
        text.push_str(&format!("remote={remote}\n"));
    }
    if let Some(id) = call_id {
        text.push_str(&format!("call-id={id}\n"));
    }
    if !body.is_empty() {
        text.push_str(&format!(
            "you sent {} bytes: {}\n",
            body.len(),
            String::from_utf8_lossy(&body)
        ));
    }
    let status: u16 = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse().ok())
        .filter(|c| (200..600).contains(c))
        .unwrap_or(200);
    write!(
        stream,
        "HTTP/1.1 {status} Status\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Instance: {}\r\n\
         X-Accepted-Ns: {accepted_ns}\r\nConnection: close\r\n\r\n{text}",
        text.len(),
        instance(),
    )?;
    stream.flush()
}

/// A chunked request body (as of-watchdog's http mode forwards one), up to 1 MiB.
fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let size = size.split(';').next().unwrap_or("").trim();
        let n = usize::from_str_radix(size, 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {size:?}")))?;
        let mut chunk = vec![0u8; n + 2];
        reader.read_exact(&mut chunk)?;
        if n == 0 {
            // The trailer section ends with an empty line; there are no trailers here.
            return Ok(body);
        }
        if body.len() + n > 1 << 20 {
            return Err(std::io::Error::other("body larger than 1 MiB"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

fn socket_type(fd: i32) -> i32 {
    let mut ty: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one c_int into `ty`.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut ty).cast(),
            &mut len,
        )
    };
    ty
}

/// Answers every datagram with which instance got it. The socket is bound to the
/// function's address, so the reply leaves from that address.
fn echo_datagrams(udp: UdpSocket) {
    let _ = udp.set_nonblocking(false);
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = udp.recv_from(&mut buf) {
        let reply = format!("Hello from faasd! instance={} udp bytes={n}\n", instance());
        let _ = udp.send_to(reply.as_bytes(), from);
    }
}

extern "C" fn on_sigterm(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe. Connections being served are cut short, which is
    // what a stop after the grace period would do anyway.
    unsafe { libc::_exit(0) }
}

/// The answers of the inspection paths.
fn inspect(path: &str) -> Option<String> {
    if path == "/interfaces" {
        let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        return Some(names.join("\n") + "\n");
    }
    if let Some(name) = path.strip_prefix("/secret/") {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Some("no such secret name\n".into());
        }
        return Some(
            std::fs::read_to_string(format!("/var/openfaas/secrets/{name}"))
                .unwrap_or_else(|e| format!("cannot read secret {name}: {e}\n")),
        );
    }
    if let Some(name) = path.strip_prefix("/env/") {
        return Some(std::env::var(name).unwrap_or_else(|_| format!("{name} is not set")) + "\n");
    }
    if path == "/write" || path.starts_with("/write-in/") {
        let dir = path
            .strip_prefix("/write-in")
            .filter(|d| !d.is_empty())
            .unwrap_or("/");
        let probe = std::path::Path::new(dir).join(format!("hello-probe-{}", std::process::id()));
        let r = std::fs::write(&probe, b"x").map(|()| std::fs::remove_file(&probe));
        return Some(match r {
            Ok(_) => format!("wrote to {dir}\n"),
            Err(e) => format!("cannot write to {dir}: {e}\n"),
        });
    }
    if let Some(target) = path.strip_prefix("/connect/") {
        return Some(call_out(target));
    }
    if let Some(target) = path.strip_prefix("/udp/") {
        let sent = UdpSocket::bind("[::]:0")
            .or_else(|_| UdpSocket::bind("0.0.0.0:0"))
            .and_then(|s| s.send_to(b"hello", target));
        return Some(match sent {
            Ok(_) => format!("sent to {target}\n"),
            Err(e) => format!("cannot send to {target}: {e}\n"),
        });
    }
    if let Some(name) = path.strip_prefix("/resolve/") {
        use std::net::ToSocketAddrs;
        return Some(match (name, 0).to_socket_addrs() {
            Ok(addrs) => addrs.map(|a| format!("{}\n", a.ip())).collect(),
            Err(e) => format!("cannot resolve {name}: {e}\n"),
        });
    }
    if let Some(ms) = path.strip_prefix("/work/") {
        // That much CPU time, by this thread's own clock (waiting for a CPU does not
        // count): what a CPU-bound handler looks like to an autoscaler.
        let ms: u64 = ms.parse().ok()?;
        let cpu_ns = || {
            // SAFETY: timespec is plain data; zeroed is a valid value.
            let mut t: libc::timespec = unsafe { std::mem::zeroed() };
            // SAFETY: clock_gettime writes into the timespec we own.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
            t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
        };
        let until = cpu_ns() + ms * 1_000_000;
        let mut spins = 0u64;
        while cpu_ns() < until {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
        return Some(format!(
            "worked {ms} ms of CPU ({spins} spins) instance={}\n",
            instance()
        ));
    }
    if let Some(n) = path.strip_prefix("/threads/") {
        // Threads that live a second: how many a pids limit lets start.
        let n: usize = n.parse().ok()?;
        let mut started = 0;
        let mut error = String::new();
        let mut handles = Vec::new();
        for _ in 0..n {
            match std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(|| std::thread::sleep(Duration::from_secs(1)))
            {
                Ok(h) => {
                    started += 1;
                    handles.push(h);
                }
                Err(e) => {
                    error = format!(": {e}");
                    break;
                }
            }
        }
        for h in handles {
            let _ = h.join();
        }
        return Some(format!("started {started} of {n} threads{error}\n"));
    }
    if path == "/unshare" {
        // A new user namespace, which an unprivileged process may make unless a system
        // call filter refuses it.
        // SAFETY: unshare has no memory arguments; this thread moves to a new namespace.
        let r = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
        return Some(if r == 0 {
            "unshared a user namespace\n".into()
        } else {
            format!("unshare: {}\n", std::io::Error::last_os_error())
        });
    }
    if let Some(mib) = path.strip_prefix("/alloc/") {
        let mib: usize = mib.parse().ok()?;
        // Touch every page, so the memory is really used.
        let v = vec![1u8; mib << 20];
        let sum: usize = v.iter().step_by(4096).map(|b| *b as usize).sum();
        return Some(format!("allocated {mib} MiB ({sum} pages)\n"));
    }
    None
}

/// Connects to `target` (`host:port`), sends an HTTP/1.0 request and answers with the
/// response, or with why it could not.
fn call_out(target: &str) -> String {
    use std::net::ToSocketAddrs;
    let addrs = match target.to_socket_addrs() {
        Ok(a) => a.collect::<Vec<_>>(),
        Err(e) => return format!("cannot resolve {target}: {e}\n"),
    };
    let mut last = format!("{target} has no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(mut s) => {
                let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = write!(s, "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n");
                let mut answer = String::new();
                let _ = s.take(4096).read_to_string(&mut answer);
                return format!("connected to {addr}\n{answer}");
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    format!("cannot connect to {target}: {last}\n")
}

/// `/sleep/<ms>` holds the request that long before it is answered.
fn sleep_if_asked(path: &str) {
    if let Some(ms) = path.strip_prefix("/sleep/").and_then(|m| m.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// One request as a watchdog's handler.
fn handle_stdin() {
    let mut body = String::new();
    let _ = std::io::stdin().read_to_string(&mut body);
    let path = std::env::var("Http_Path").unwrap_or_default();
    sleep_if_asked(&path);
    print!("handled by {} path={path} body={body}", std::process::id());
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--handler") {
        return handle_stdin();
    }
    // HELLO_SIGTERM=default leaves SIGTERM's default action, as most small servers do (the
    // tests' way to check that faasd's init stops such a program).
    if std::env::var_os("HELLO_SIGTERM").is_none_or(|v| v != "default") {
        // SAFETY: installs a handler that only calls _exit. As pid 1 of its namespace the
        // function would receive SIGTERM only with a handler installed.
        unsafe { libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t) };
    }

    let listener = match listen_fds() {
        Some((1, names)) if names.first().map(String::as_str) == Some("connection") => {
            // Accept mode: one connection on fd 3, then exit.
            // SAFETY: fd 3 was passed to us as the connection.
            let conn = unsafe { TcpStream::from_raw_fd(3) };
            notify("READY=1");
            if let Err(e) = serve(conn, monotonic_ns()) {
                eprintln!("hello: {e}");
            }
            return;
        }
        Some((n, _)) if n >= 1 => {
            // Serve datagram sockets with an echo thread each; the first stream socket is
            // the HTTP listener.
            let mut http = None;
            for fd in 3..3 + n {
                if socket_type(fd) == libc::SOCK_DGRAM {
                    // SAFETY: fd was passed to us as a datagram socket.
                    let udp = unsafe { UdpSocket::from_raw_fd(fd) };
                    std::thread::spawn(move || echo_datagrams(udp));
                } else if http.is_none() {
                    // SAFETY: fd was passed to us as a listening stream socket.
                    http = Some(unsafe { TcpListener::from_raw_fd(fd) });
                }
            }
            http
        }
        _ => {
            let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
            Some(TcpListener::bind(format!("[::]:{port}")).expect("binding the port"))
        }
    };
    let listener = listener.inspect(|l| l.set_nonblocking(false).expect("blocking listener"));
    if let Some(usec) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|u| u.parse::<u64>().ok())
    {
        let stop_after = std::env::var("HELLO_WATCHDOG_STOP_AFTER_MS")
            .ok()
            .and_then(|m| m.parse::<u64>().ok())
            .map(Duration::from_millis);
        let started = std::time::Instant::now();
        std::thread::spawn(move || {
            while stop_after.is_none_or(|d| started.elapsed() < d) {
                notify("WATCHDOG=1");
                std::thread::sleep(Duration::from_micros(usec / 2));
            }
        });
    }
    eprintln!("hello: instance {} serving", instance());
    notify("READY=1");
    let Some(listener) = listener else {
        // Datagram sockets only: the echo threads do the work.
        loop {
            std::thread::park();
        }
    };
    // A fixed pool of threads, each blocking in accept on the shared listener: the kernel
    // hands every connection to one waiting thread, with no thread started per connection.
    // The main thread serves the connection that woke the function before it starts the
    // rest of the pool, so the pool costs the first request nothing.
    let workers: usize = std::env::var("HELLO_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(8)
        .max(1);
    let listener = std::sync::Arc::new(listener);
    accept_one(&listener);
    for _ in 1..workers {
        let listener = listener.clone();
        std::thread::spawn(move || {
            loop {
                accept_one(&listener);
            }
        });
    }
    loop {
        accept_one(&listener);
    }
}

fn accept_one(listener: &TcpListener) {
    match listener.accept() {
        Ok((c, _)) => {
            if let Err(e) = serve(c, monotonic_ns()) {
                eprintln!("hello: {e}");
            }
        }
        Err(e) => eprintln!("hello: accept: {e}"),
    }
}
