//! The loader's admin HTTP server under hostile clients, against the real `serve` binary: idle
//! connection floods, stalled half requests, and running out of file descriptors.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use backendtls_e2e::{try_http_get, wait_until, Loader};

/// The admin server's defaults (loader/src/admin/http.rs).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 512;
/// Descriptors the loader holds besides admin connections (stdio, epoll, listeners, watches...).
const LOADER_BASE_DESCRIPTORS: usize = 64;

const IDLE_CONNECTIONS: usize = 5_000;
/// How soon `/healthz` must answer while the idle connections are open.
const PROMPTLY: Duration = Duration::from_secs(2);

fn start_loader() -> (Loader, tempfile::TempDir) {
    let config = tempfile::Builder::new().prefix("btls-admin-").tempdir().expect("config dir");
    (Loader::start(config.path()), config)
}

fn admin_address(loader: &Loader) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, loader.admin_port()))
}

/// Sets the loader's soft RLIMIT_NOFILE while it runs (the hard limit stays, so it can go up again).
fn set_descriptor_limit(pid: u32, limit: u64) {
    let new = libc::rlimit { rlim_cur: limit, rlim_max: descriptor_limits(pid).rlim_max };
    // SAFETY: plain syscall with a valid pointer to a local and no old-limit output.
    let result = unsafe {
        libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut())
    };
    assert_eq!(result, 0, "prlimit: {}", std::io::Error::last_os_error());
}

fn descriptor_limits(pid: u32) -> libc::rlimit {
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscall reading into a local.
    let result = unsafe {
        libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old)
    };
    assert_eq!(result, 0, "prlimit: {}", std::io::Error::last_os_error());
    old
}

/// Lets this test process hold `needed` descriptors, up to its hard limit.
fn allow_descriptors_here(needed: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        assert!(
            limit.rlim_max >= needed,
            "this test opens {needed} sockets; the hard RLIMIT_NOFILE is {}",
            limit.rlim_max
        );
        if limit.rlim_cur < needed {
            limit.rlim_cur = needed;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

/// Connections waiting in the accept queue of the listener on 127.0.0.1:`port` (for a listening
/// socket, /proc/net/tcp's rx_queue is its accept queue).
fn accept_queue(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields[1] == local && fields[3] == "0A")
        .and_then(|fields| fields[4].split_once(':').map(|(_, rx)| rx.to_string()))
        .map(|rx| usize::from_str_radix(&rx, 16).expect("hex rx_queue"))
        .unwrap_or_else(|| panic!("no listener on 127.0.0.1:{port} in /proc/net/tcp"))
}

/// Opens `count` connections that send nothing. Between batches it lets the loader's accept
/// queue drain, so that no SYN is dropped (a debug build accepts more slowly than one client
/// thread connects, and a dropped SYN costs a second).
fn open_idle_connections(address: SocketAddr, count: usize) -> Vec<TcpStream> {
    const BATCH: usize = 100;
    let mut connections = Vec::with_capacity(count);
    while connections.len() < count {
        wait_until("the admin accept queue to drain", Duration::from_secs(10), || {
            let queued = accept_queue(address.port());
            (queued < BATCH).then_some(()).ok_or(queued)
        });
        for _ in 0..BATCH.min(count - connections.len()) {
            let i = connections.len();
            let connection =
                TcpStream::connect(address).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            connections.push(connection);
        }
    }
    connections
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|dir| dir.count()).unwrap_or(0)
}

/// User plus system CPU time the process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may contain spaces) start at field 3, "state".
    let fields: Vec<&str> =
        stat[stat.rfind(')').expect("stat has a comm") + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// `GET /healthz` answers 200 within [`PROMPTLY`].
fn assert_healthz_answers_promptly(loader: &Loader, context: &str) {
    let started = Instant::now();
    match try_http_get(loader.admin_port(), "127.0.0.1", "/healthz") {
        Ok((200, body)) => assert_eq!(body, "ok\n"),
        other => panic!("{context}: /healthz answered {other:?}"),
    }
    let took = started.elapsed();
    assert!(took < PROMPTLY, "{context}: /healthz took {took:?}");
}

/// Reads until the peer closes; panics if it stays open for `patience`.
fn wait_for_close(stream: &mut TcpStream, patience: Duration) {
    stream.set_read_timeout(Some(patience)).unwrap();
    let mut sink = Vec::new();
    match stream.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the loader kept the connection open ({e})"),
    }
}

/// 5,000 connections that never send a byte leave `/healthz` answering at once, and the loader
/// holds no more than its connection cap of them, whether its descriptor limit is above the cap
/// (the common default of 1,024: the cap closes the oldest idle connections) or below it (256:
/// running out of descriptors closes them).
#[test]
fn idle_connections_leave_healthz_answering() {
    allow_descriptors_here(IDLE_CONNECTIONS as u64 + 1_000);
    let (loader, _config) = start_loader();
    let pid = loader.pid().expect("loader runs");
    for limit in [1_024, 256] {
        set_descriptor_limit(pid, limit);
        let address = admin_address(&loader);
        let started = Instant::now();
        let idle = open_idle_connections(address, IDLE_CONNECTIONS);
        eprintln!("{IDLE_CONNECTIONS} connections opened in {:?}", started.elapsed());
        let context = format!("{IDLE_CONNECTIONS} idle connections, descriptor limit {limit}");
        assert_healthz_answers_promptly(&loader, &context);
        let held = open_descriptors(pid);
        assert!(
            held <= MAX_CONNECTIONS + LOADER_BASE_DESCRIPTORS,
            "{context}: the loader holds {held} descriptors"
        );
        drop(idle);
    }
}

/// A client that sends half a request line and stalls is disconnected after the header read
/// timeout, and so is one that sends nothing.
#[test]
fn stalled_partial_request_is_disconnected() {
    let (loader, _config) = start_loader();
    let address = admin_address(&loader);
    let mut partial = TcpStream::connect(address).unwrap();
    let mut silent = TcpStream::connect(address).unwrap();
    let started = Instant::now();
    partial.write_all(b"GET /hea").unwrap();
    let patience = HEADER_READ_TIMEOUT * 3;
    wait_for_close(&mut partial, patience);
    let took = started.elapsed();
    assert!(
        took >= HEADER_READ_TIMEOUT - Duration::from_millis(100) && took < patience,
        "the partial request was closed after {took:?}"
    );
    wait_for_close(&mut silent, patience);
    assert_healthz_answers_promptly(&loader, "after the stalled clients");
}

/// While every accept fails (no descriptor left and no idle connection to close), the loader
/// backs off instead of spinning on `accept`, logs the failure once, and serves the waiting
/// client as soon as descriptors are available again.
#[test]
fn accept_errors_do_not_spin() {
    let (loader, _config) = start_loader();
    let pid = loader.pid().expect("loader runs");
    let original = descriptor_limits(pid).rlim_cur;
    // Below the descriptors the loader already holds: every new one fails with EMFILE.
    set_descriptor_limit(pid, 3);
    let mut waiting = TcpStream::connect(admin_address(&loader)).unwrap();
    // Let the loader notice the pending connection and fail on it.
    wait_until("the loader to log the accept failure", Duration::from_secs(10), || {
        loader.log().contains("cannot accept connections").then_some(())
    });
    let (cpu_before, wall_before) = (cpu_time(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(2)); // the interval whose CPU use is measured
    let cpu = cpu_time(pid) - cpu_before;
    let wall = wall_before.elapsed();
    assert!(cpu < Duration::from_millis(200), "the loader used {cpu:?} of CPU in {wall:?}");

    set_descriptor_limit(pid, original);
    waiting.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    waiting.write_all(b"GET /healthz HTTP/1.1\r\nhost: loader\r\n\r\n").unwrap();
    let mut answer = String::new();
    waiting.read_to_string(&mut answer).expect("the waiting client is served");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
    let log = loader.log();
    let warnings = log.matches("cannot accept connections").count();
    assert_eq!(warnings, 1, "one warning per run of failures:\n{log}");
    assert!(log.contains("accepting connections again"), "{log}");
}
