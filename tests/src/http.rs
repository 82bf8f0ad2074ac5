//! A tiny HTTP/1.1 client over std TCP: enough to drive Envoy, its admin API and the loader's.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Applied to connect, every read and every write, so a stuck peer fails a test instead of hanging it.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET path` on 127.0.0.1:`port` with `Connection: close`; panics on I/O errors.
pub fn http_get(port: u16, host: &str, path: &str) -> (u16, String) {
    try_http_get(port, host, path)
        .unwrap_or_else(|e| panic!("GET http://127.0.0.1:{port}{path} (Host: {host}): {e}"))
}

/// `GET path` on 127.0.0.1:`port` with `Connection: close`: the status and the body.
pub fn try_http_get(port: u16, host: &str, path: &str) -> io::Result<(u16, String)> {
    let mut connection = HttpConnection::connect(port)?;
    connection.request(host, path, false)
}

/// One client connection used for several requests (keep-alive). Envoy serves every request on a
/// downstream connection from the same worker, so this also keeps reusing that worker's pooled
/// upstream connection.
pub struct HttpConnection {
    reader: BufReader<TcpStream>,
    closed: bool,
}

impl HttpConnection {
    pub fn connect(port: u16) -> io::Result<HttpConnection> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&address, SOCKET_TIMEOUT)?;
        stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
        stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
        Ok(HttpConnection { reader: BufReader::new(stream), closed: false })
    }

    /// `GET path` on this connection, keeping it open. Fails once the server has closed it.
    pub fn get(&mut self, host: &str, path: &str) -> io::Result<(u16, String)> {
        self.request(host, path, true)
    }

    /// Whether the server announced `Connection: close` or ended the stream.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn request(&mut self, host: &str, path: &str, keep_alive: bool) -> io::Result<(u16, String)> {
        if self.closed {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the server closed this connection",
            ));
        }
        let connection = if keep_alive { "keep-alive" } else { "close" };
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {connection}\r\n\r\n");
        self.reader.get_mut().write_all(request.as_bytes())?;
        let head = self.read_head()?;
        let body = self.read_body(&head)?;
        if head.connection_close || !keep_alive {
            self.closed = true;
        }
        Ok((head.status, String::from_utf8_lossy(&body).into_owned()))
    }

    fn read_head(&mut self) -> io::Result<ResponseHead> {
        let status_line = self.read_line()?;
        let status = parse_status_line(&status_line)?;
        let mut head =
            ResponseHead { status, content_length: None, chunked: false, connection_close: false };
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                return Ok(head);
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => head.content_length = value.parse().ok(),
                "transfer-encoding" => head.chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => head.connection_close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }

    fn read_body(&mut self, head: &ResponseHead) -> io::Result<Vec<u8>> {
        if head.chunked {
            return self.read_chunked_body();
        }
        let mut body = Vec::new();
        match head.content_length {
            Some(length) => {
                body.resize(length, 0);
                self.reader.read_exact(&mut body)?;
            }
            None => {
                // Without a length the body ends with the connection.
                self.reader.read_to_end(&mut body)?;
                self.closed = true;
            }
        }
        Ok(body)
    }

    fn read_chunked_body(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let size_line = self.read_line()?;
            let size_hex = size_line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {size_line:?}"))
            })?;
            if size == 0 {
                // Trailers (usually none) end with an empty line.
                while !self.read_line()?.is_empty() {}
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.reader.read_exact(&mut body[start..])?;
            self.read_line()?;
        }
    }

    /// One CRLF-terminated line without its terminator; EOF is an error (the response is cut short).
    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            self.closed = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response ended",
            ));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

struct ResponseHead {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    connection_close: bool,
}

fn parse_status_line(line: &str) -> io::Result<u16> {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(status))) if version.starts_with("HTTP/1.") => Ok(status),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {line:?}"))),
    }
}
