//! Reads a server's leaf certificate with a TLS 1.2 ClientHello, without finishing the handshake.
//!
//! In TLS 1.2 the server's Certificate message travels in clear right after ServerHello, so a
//! ClientHello (with the policy hostname as SNI) and a few records are enough; no crypto is
//! needed here. The caller compares the certificate's SHA-256 with the digest Envoy reported for
//! the real connection, so a server that shows a different certificate is detected, not trusted.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Connect and read timeout (each).
pub const TIMEOUT: Duration = Duration::from_millis(500);
/// The most bytes read while looking for the Certificate message.
const READ_LIMIT: usize = 256 * 1024;

const RECORD_HANDSHAKE: u8 = 22;
const RECORD_ALERT: u8 = 21;
const HANDSHAKE_CERTIFICATE: u8 = 11;
const HANDSHAKE_SERVER_HELLO_DONE: u8 = 14;

#[derive(Debug)]
pub struct FetchError(String);

impl FetchError {
    pub fn new(message: impl Into<String>) -> FetchError {
        FetchError(message.into())
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<std::io::Error> for FetchError {
    fn from(e: std::io::Error) -> FetchError {
        FetchError(format!("leaf fetch I/O: {e}"))
    }
}

/// The DER leaf certificate `address` (`ip:port`) presents for `server_name`.
pub fn fetch_leaf(address: &str, server_name: &str) -> Result<Vec<u8>, FetchError> {
    let address: SocketAddr =
        address.parse().map_err(|_| FetchError::new(format!("not an ip:port: {address}")))?;
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(&client_hello(server_name))?;
    let mut reader = Records { stream, read: 0 };
    let mut handshake = Vec::new();
    loop {
        let (kind, body) = reader.next()?;
        match kind {
            RECORD_HANDSHAKE => handshake.extend_from_slice(&body),
            RECORD_ALERT => return Err(FetchError::new("the server answered with a TLS alert")),
            _ => return Err(FetchError::new("unexpected TLS record")),
        }
        if let Some(leaf) = leaf_from_handshake(&handshake)? {
            return Ok(leaf);
        }
    }
}

struct Records {
    stream: TcpStream,
    read: usize,
}

impl Records {
    fn next(&mut self) -> Result<(u8, Vec<u8>), FetchError> {
        let mut header = [0u8; 5];
        self.stream.read_exact(&mut header)?;
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        self.read += 5 + len;
        if self.read > READ_LIMIT {
            return Err(FetchError::new("no certificate within the read limit"));
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        Ok((header[0], body))
    }
}

/// The first certificate of the Certificate message, once the handshake bytes contain it.
fn leaf_from_handshake(mut bytes: &[u8]) -> Result<Option<Vec<u8>>, FetchError> {
    while bytes.len() >= 4 {
        let len = u24(&bytes[1..4]);
        if bytes.len() < 4 + len {
            return Ok(None);
        }
        let body = &bytes[4..4 + len];
        match bytes[0] {
            HANDSHAKE_CERTIFICATE => {
                // certificate_list<0..2^24-1>, each ASN.1Cert<1..2^24-1>.
                if body.len() < 6 {
                    return Err(FetchError::new("empty Certificate message"));
                }
                let cert_len = u24(&body[3..6]);
                let cert =
                    body.get(6..6 + cert_len).ok_or(FetchError::new("truncated certificate"))?;
                return Ok(Some(cert.to_vec()));
            }
            HANDSHAKE_SERVER_HELLO_DONE => {
                return Err(FetchError::new("the server sent no certificate"));
            }
            _ => bytes = &bytes[4 + len..],
        }
    }
    Ok(None)
}

fn u24(b: &[u8]) -> usize {
    usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2])
}

/// A TLS 1.2 ClientHello with SNI and the usual ECDHE suites, groups and signature schemes.
fn client_hello(server_name: &str) -> Vec<u8> {
    fn with_len16(out: &mut Vec<u8>, body: &[u8]) {
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
    }
    fn extension(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        with_len16(out, body);
    }
    let name = server_name.as_bytes();
    let mut extensions = Vec::new();
    if !name.is_empty() {
        let mut entry = vec![0u8]; // host_name
        with_len16(&mut entry, name);
        let mut list = Vec::new();
        with_len16(&mut list, &entry);
        extension(&mut extensions, 0x0000, &list);
    }
    // supported_groups: x25519, secp256r1, secp384r1.
    extension(&mut extensions, 0x000a, &[0, 6, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]);
    // ec_point_formats: uncompressed.
    extension(&mut extensions, 0x000b, &[1, 0]);
    // signature_algorithms.
    let schemes: [u16; 9] =
        [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601, 0x0201];
    let mut list = Vec::new();
    for s in schemes {
        list.extend_from_slice(&s.to_be_bytes());
    }
    let mut body = Vec::new();
    with_len16(&mut body, &list);
    extension(&mut extensions, 0x000d, &body);
    // extended_master_secret, renegotiation_info.
    extension(&mut extensions, 0x0017, &[]);
    extension(&mut extensions, 0xff01, &[0]);

    let suites: [u16; 10] =
        [0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c, 0x002f];
    let mut hello = vec![0x03, 0x03];
    // The random need not be unpredictable: the handshake is abandoned after the Certificate.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    for i in 0..4u64 {
        hello.extend_from_slice(
            &(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(i as u32 * 16)).to_be_bytes(),
        );
    }
    hello.push(0); // session_id
    let mut suite_bytes = Vec::new();
    for s in suites {
        suite_bytes.extend_from_slice(&s.to_be_bytes());
    }
    with_len16(&mut hello, &suite_bytes);
    hello.extend_from_slice(&[1, 0]); // compression: null
    with_len16(&mut hello, &extensions);

    let mut handshake = vec![1]; // client_hello
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![RECORD_HANDSHAKE, 0x03, 0x01];
    with_len16(&mut record, &handshake);
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hello_is_well_formed() {
        let r = client_hello("example.com");
        assert_eq!(&r[..3], &[22, 3, 1]);
        assert_eq!(usize::from(u16::from_be_bytes([r[3], r[4]])), r.len() - 5);
        assert_eq!(r[5], 1);
        assert_eq!(u24(&r[6..9]), r.len() - 9);
        assert!(r.windows(11).any(|w| w == b"example.com"));
    }

    #[test]
    fn certificate_is_found_across_messages() {
        let cert = [0x30, 0x03, 1, 2, 3];
        let mut hs = vec![2, 0, 0, 2, 0xaa, 0xbb]; // a ServerHello stand-in
        let mut body = vec![0, 0, 8, 0, 0, 5];
        body.extend_from_slice(&cert);
        hs.push(HANDSHAKE_CERTIFICATE);
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        assert_eq!(leaf_from_handshake(&hs[..8]).unwrap(), None);
        assert_eq!(leaf_from_handshake(&hs).unwrap(), Some(cert.to_vec()));
        assert!(leaf_from_handshake(&[HANDSHAKE_SERVER_HELLO_DONE, 0, 0, 0]).is_err());
    }
}
