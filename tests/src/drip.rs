//! A hostile TLS backend for the "no Envoy worker blocks on the network" test: a TCP front that
//! proxies its first connection to a real TLS server and, on every later connection, reads what
//! the client sends and then drips empty TLS handshake records, one every 100 ms, for as long as
//! the client stays. A client with per-read timeouts (the dynamic module's old leaf fetch had
//! 500 ms ones) never times out and never gets a certificate.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An empty TLS 1.2 handshake record: content type 22, version 3.3, length 0.
const EMPTY_HANDSHAKE_RECORD: [u8; 5] = [22, 3, 3, 0, 0];
const DRIP_INTERVAL: Duration = Duration::from_millis(100);

pub struct DripFront {
    port: u16,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl DripFront {
    /// Listens on 127.0.0.1 (a free port); the first connection goes to 127.0.0.1:`backend_port`.
    pub fn start(backend_port: u16) -> DripFront {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the drip front");
        let port = listener.local_addr().expect("local address").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (connections.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let n = count.fetch_add(1, Ordering::SeqCst);
                let stopped = stopped.clone();
                std::thread::spawn(move || {
                    if n == 0 {
                        proxy(stream, backend_port);
                    } else {
                        drip(stream, &stopped);
                    }
                });
            }
        });
        DripFront { port, connections, stop }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for DripFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn proxy(client: TcpStream, backend_port: u16) {
    let Ok(backend) = TcpStream::connect(("127.0.0.1", backend_port)) else { return };
    let (Ok(mut client_read), Ok(mut backend_read)) = (client.try_clone(), backend.try_clone())
    else {
        return;
    };
    let (mut client_write, mut backend_write) = (client, backend);
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut backend_write);
        let _ = backend_write.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut backend_read, &mut client_write);
    let _ = client_write.shutdown(std::net::Shutdown::Write);
    let _ = upstream.join();
}

fn drip(mut stream: TcpStream, stop: &AtomicBool) {
    // Take whatever the client sends first (its ClientHello), without waiting for more.
    let _ = stream.set_read_timeout(Some(DRIP_INTERVAL));
    let mut hello = [0u8; 4096];
    let _ = stream.read(&mut hello);
    while !stop.load(Ordering::SeqCst) {
        if stream.write_all(&EMPTY_HANDSHAKE_RECORD).is_err() {
            return;
        }
        std::thread::sleep(DRIP_INTERVAL);
    }
}
